"""Webhook deliveries: the inbox that keeps them, applies them and counts their failures.

A verified delivery is kept durably before the provider gets its 2xx
(``store_webhook``), or kept and applied in one unit of work (``take_webhook``);
the inbox worker applies kept rows (``apply_webhook``) through
``engine.service.events``. A failed application is counted against the row,
which stays ``pending`` until ``settings.webhook_attempts_max`` and is then
``dead``: a dead letter, listed and put back in line by hand. The row's moves
are the inbox lifecycle's table (``engine.domain.lifecycles``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from engine.adapters.store import Row, Store
from engine.domain.errors import (
    Conflict,
    EventTooEarly,
    InvalidRequest,
    LedgerGuardRefused,
    NotFound,
    PaychaosError,
    StoreUnavailable,
)
from engine.domain.lifecycles import INBOX_MOVES, InboxStatus, moved
from engine.domain.provider import EventType, ProviderEvent
from engine.domain.validation import PAN_SEPARATORS
from engine.service.events import EventSteps
from engine.service.views import InboxItem, InboxResult

# Failures of a webhook's application that count against it (then dead-letter it).
# A database outage is nobody's fault and a defect must stop the world: neither counts.
Translate = Callable[[Mapping[str, Any]], ProviderEvent]
# Keys, and any 13-19 digit run in the separators a card number may be printed with
# (engine.domain.validation.PAN_SEPARATORS): stored error text keeps none of them.
_SECRET = re.compile(
    rf"\b(?:sk|rk|pk|whsec)_[A-Za-z0-9_]+|(?<!\d)\d(?:[{re.escape(PAN_SEPARATORS)}]?\d){{12,18}}(?!\d)"
)
ERROR_TEXT_MAX = 500
# A dispute's decision that overtook its opening waits for it, not for a person: the
# opening is already on its way, and the provider retries it for up to three days.
DISPUTE_DECISIONS = frozenset({EventType.DISPUTE_WON.value, EventType.DISPUTE_LOST.value})
EARLY_DECISION_WAIT = timedelta(days=3)
I = InboxStatus  # noqa: E741


class WebhookSteps(EventSteps):
    def store_webhook(self, provider_event_id: str, event_type: str, payload: str) -> str:
        """Keep a verified delivery durably before answering 2xx: ``stored`` or ``duplicate``."""
        self._check_webhook(provider_event_id, event_type, payload)
        return self._run(lambda s: self._keep_webhook(
            s, provider_event_id, event_type, payload, kept=s.inbox_by_event(provider_event_id)
        ))  # fmt: skip

    def take_webhook(self, event: ProviderEvent, payload: str) -> tuple[str, str | None]:
        """Keep a verified delivery and apply it, in one transaction where it applies.

        ``("duplicate", None)`` for an event already kept; ``("applied", outcome)``
        with the event's outcome when the row and the application committed as one
        unit of work; ``("pending", error)`` when the application failed (an event
        too early, for one): the row alone is kept with the failure counted, for the
        inbox worker to retry, exactly as a failed ``apply_webhook`` leaves it.
        """
        self._check_webhook(event.event_id, event.type, payload)

        def step(s: Store) -> tuple[str, str | None]:
            loaded = s.load(self._event_reads(event, inbox=True))
            kept = self._keep_webhook(s, event.event_id, event.type, payload, kept=loaded.inbox,
                                      applied=True)  # fmt: skip
            if kept != "stored":
                return "duplicate", None
            return I.APPLIED.value, self._take_event(s, event, loaded).outcome

        try:
            return self._run(step)
        except (StoreUnavailable, LedgerGuardRefused):
            raise
        except PaychaosError as exc:
            error = _error_text(exc)
        kept = self._run(lambda s: self._keep_webhook(
            s, event.event_id, event.type, payload, kept=s.inbox_by_event(event.event_id),
            error=error,
        ))  # fmt: skip
        return (I.PENDING.value, error) if kept == "stored" else ("duplicate", None)

    def _check_webhook(self, provider_event_id: str, event_type: str, payload: str) -> None:
        if not 0 < len(provider_event_id) <= 255 or not 0 < len(event_type) <= 64:
            raise InvalidRequest("webhook_malformed", "event id or type is missing or too long")
        if len(payload.encode()) > self.settings.webhook_payload_bytes_max:
            raise InvalidRequest("webhook_too_large", "webhook payload is too large", "body")

    def _keep_webhook(
        self,
        s: Store,
        provider_event_id: str,
        event_type: str,
        payload: str,
        *,
        kept: Row | None,
        applied: bool = False,
        error: str | None = None,
    ) -> str:
        """The inbox row: pending, applied (its event applied in this unit) or pending
        after one failed application (``error``); ``duplicate`` if the event is kept
        already (``kept``: its inbox row, as read in this unit)."""
        if kept is not None:
            return "duplicate"
        now = self.clock.now()
        attempts = int(applied or error is not None)
        status = I.APPLIED if applied else I.PENDING
        if error is not None:
            status = self._status_after_failure(attempts)
        s.insert_inbox(
            {
                "provider_event_id": provider_event_id, "type": event_type,
                "payload": payload, "status": moved(INBOX_MOVES, None, status).value,
                "attempts": attempts, "last_error": error, "received_at": now,
                "applied_at": now if applied else None,
            }
        )  # fmt: skip
        return "stored"

    def pending_webhooks(self, limit: int = 100) -> list[int]:
        """Inbox rows waiting to be applied, oldest first."""
        return self._run(lambda s: s.pending_inbox(min(limit, self.settings.page_size_max)))

    def apply_webhook(self, inbox_id: int, translate: Translate) -> InboxResult:
        """Translate and apply one pending inbox row in one transaction, or count a failure."""

        def step(s: Store) -> InboxResult:
            row = s.inbox_row(inbox_id, lock=True)
            if row is None or row["status"] != I.PENDING:
                return InboxResult(inbox_id, row["provider_event_id"] if row else None, "skipped")
            event = translate(json.loads(row["payload"]))
            result = self._take_event(s, event, s.load(self._event_reads(event)))
            s.update_inbox(inbox_id, status=moved(INBOX_MOVES, I.PENDING, I.APPLIED).value,
                           attempts=row["attempts"] + 1,
                           applied_at=self.clock.now())  # fmt: skip
            return InboxResult(inbox_id, row["provider_event_id"], I.APPLIED.value,
                               result.outcome)  # fmt: skip

        try:
            return self._run(step)
        except (StoreUnavailable, LedgerGuardRefused):
            raise
        except (PaychaosError, ValueError, KeyError, TypeError) as exc:
            error = _error_text(exc)
        return self._run(lambda s: self._webhook_failed(s, inbox_id, error))

    def _status_after_failure(self, attempts: int) -> InboxStatus:
        """A webhook whose ``attempts``-th application failed: tried again, or dead."""
        return I.DEAD if attempts >= self.settings.webhook_attempts_max else I.PENDING

    def _waits_for_its_opening(self, row: Row, error: str) -> bool:
        """A dispute's decision refused as too early stays pending (not dead) while its
        opening may still arrive."""
        return (
            row["type"] in DISPUTE_DECISIONS
            and error.startswith(f"{EventTooEarly.code}:")
            and self.clock.now() < row["received_at"] + EARLY_DECISION_WAIT
        )

    def _webhook_failed(self, s: Store, inbox_id: int, error: str) -> InboxResult:
        row = s.inbox_row(inbox_id, lock=True)
        assert row is not None
        if row["status"] != I.PENDING:
            # Another worker took it since this one failed: its outcome stands.
            return InboxResult(inbox_id, row["provider_event_id"], "skipped")
        attempts = row["attempts"] + 1
        waits = self._waits_for_its_opening(row, error)
        status = moved(INBOX_MOVES, I.PENDING,
                       I.PENDING if waits else self._status_after_failure(attempts))  # fmt: skip
        s.update_inbox(inbox_id, status=status.value, attempts=attempts, last_error=error)
        return InboxResult(inbox_id, row["provider_event_id"], status.value, error=error)

    def dead_letters(self, limit: int = 100) -> list[InboxItem]:
        limit = min(limit, self.settings.page_size_max)
        return self._run(lambda s: [InboxItem.of(row) for row in s.dead_inbox(limit)])

    def retry_dead_letter(self, provider_event_id: str) -> InboxItem:
        """Put a dead letter back in line, with a fresh count of attempts."""

        def step(s: Store) -> InboxItem:
            row = s.inbox_by_event(provider_event_id, lock=True)
            if row is None:
                raise NotFound("dead_letter_not_found", f"no webhook {provider_event_id} in "
                               "the inbox", field="event_id")  # fmt: skip
            if row["status"] != I.DEAD:
                state = row["status"]
                raise Conflict("not_a_dead_letter", f"webhook {provider_event_id} is {state}")
            status = moved(INBOX_MOVES, I.DEAD, I.PENDING).value
            s.update_inbox(row["id"], status=status, attempts=0)
            row.update(status=status, attempts=0)
            return InboxItem.of(row)

        return self._run(step)


def _error_text(exc: Exception) -> str:
    """An error as kept in the inbox: short, and with anything like a key or card blanked."""
    if isinstance(exc, PaychaosError):
        text = f"{exc.code}: {exc.message}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return _SECRET.sub("[redacted]", text)[:ERROR_TEXT_MAX]
