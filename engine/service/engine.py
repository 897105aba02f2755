"""The payment engine: one public entry, ``PaymentEngine``, composed of its use cases.

Each public method is one unit of work. Money operations are split around the
provider call (the sans-IO seam): ``begin_*`` records the attempt and its
provider idempotency key and returns the ``ProviderCall`` to make; the caller
makes it; ``complete_*`` applies the ``ProviderOutcome``. An ``unknown``
outcome leaves the attempt open until ``resolve_attempt`` gets the provider's
answer: the engine never guesses. Every state change writes, in the same
transaction, a history row, an outbox event and (when money moves) a balanced
ledger journal. Every write is idempotent per (merchant, operation, key).

The steps live one module per use case, each a class over the shared plumbing
(``engine.service.steps.Steps``: database, clock, ids, settings, units of work,
keys, ``_move``/``_record``/``_post``):

    Steps                      steps.py     plumbing
    ├── OutcomeSteps           outcomes.py  applying the provider's answers
    │   ├── PaymentSteps       payments.py  create, authorize, capture, void, refund, settle
    │   ├── EventSteps         events.py    provider events, disputes
    │   │   └── WebhookSteps   webhooks.py  webhook intake, inbox, dead letters
    │   └── RecoverySteps      recovery.py  due attempts, lookups, review, fees, key expiry
    ├── PayoutSteps            payouts.py   sellers' payouts
    └── ReadSteps              reads.py     payments, ledgers, wallets, balances, outbox

``PaymentEngine`` inherits them all (mixins over one ``Steps``, so one object
holds one database, clock and id source, and a step of one use case calls the
plumbing or another's rule, such as a webhook applying an outcome, directly).
The names other packages import from here are re-exported below.
"""

from __future__ import annotations

from engine.service.payments import PaymentSteps
from engine.service.payouts import PayoutSteps
from engine.service.reads import ReadSteps
from engine.service.recovery import CUSTOMER_TO_ACT, RecoverySteps
from engine.service.steps import RECOVERY_SCHEDULE, EngineSettings
from engine.service.webhooks import Translate, WebhookSteps

__all__ = [
    "CUSTOMER_TO_ACT",
    "RECOVERY_SCHEDULE",
    "EngineSettings",
    "PaymentEngine",
    "Translate",
]


class PaymentEngine(PaymentSteps, WebhookSteps, RecoverySteps, PayoutSteps, ReadSteps):
    """The engine's steps, every use case's, over one database, clock and id source."""
