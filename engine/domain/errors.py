"""The engine's one exception tree: every ``PaychaosError`` is defined here.

Expected outcomes are typed errors with a stable machine-readable ``code`` and
an HTTP status hint; broken invariants are ``assert``s. Lower-layer exceptions
(SQLAlchemy, drivers) are translated in ``engine.adapters.database`` only. The
modules that raise an error re-export it (``engine.adapters.database``,
``engine.adapters.webhook_signature``, ``engine.workers.relay``,
``engine.workers.reconciliation``); ``tests/unit/test_error_tree.py`` keeps every
subclass here and drawn below.

    PaychaosError                         code              http
    ├── Unauthorized                      unauthorized      401
    ├── Forbidden                         forbidden         403
    ├── RateLimited                       rate_limited      429
    ├── PayloadTooLarge                   request_too_large 413
    ├── UnsupportedMediaType              content_type_unsupported  415
    ├── InvalidRequest                    (field-specific)  400
    │   ├── CurrencyMismatch              currency_mismatch 400
    │   ├── AmountExceeded                amount_exceeds_*  400
    │   ├── SettlementFileInvalid         settlement_file_invalid  400
    │   └── WebhookRejected               webhook_*         400
    ├── NotFound                          *_not_found       404
    ├── IdempotencyKeyReused              idempotency_key_reused   422
    ├── Conflict                                            409
    │   ├── IdempotencyKeyInFlight        idempotency_key_in_flight
    │   ├── IllegalTransition             illegal_transition
    │   ├── OperationInProgress           operation_in_progress
    │   ├── OrderAlreadyActive            order_already_active
    │   ├── InsufficientFunds             insufficient_funds
    │   └── EventTooEarly                 event_too_early
    ├── StoreUnavailable                  store_unavailable 503
    ├── SchemaOutOfDate                   schema_out_of_date 503
    ├── WebhookSecretMissing              webhook_secret_missing  503
    ├── PublishFailed                     bus_unavailable   503
    ├── ReportUnavailable                 settlement_report_unavailable  503
    └── LedgerGuardRefused                ledger_guard_refused  500
"""

from __future__ import annotations


class PaychaosError(Exception):
    code: str = "paychaos_error"
    http_status: int = 500

    def __init__(self, code: str | None = None, message: str = "", field: str | None = None):
        self.code = code or type(self).code
        self.message = message or self.code
        self.field = field
        super().__init__(self.message)

    def as_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class Unauthorized(PaychaosError):
    code = "unauthorized"
    http_status = 401


class Forbidden(PaychaosError):
    code = "forbidden"
    http_status = 403


class RateLimited(PaychaosError):
    code = "rate_limited"
    http_status = 429

    def __init__(
        self, retry_after_s: float, message: str = "too many requests for this API key; slow down"
    ):
        self.retry_after_s = retry_after_s
        super().__init__(message=message)


class PayloadTooLarge(PaychaosError):
    code = "request_too_large"
    http_status = 413


class UnsupportedMediaType(PaychaosError):
    code = "content_type_unsupported"
    http_status = 415


class InvalidRequest(PaychaosError):
    code = "invalid_request"
    http_status = 400

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(code, message, field)


class CurrencyMismatch(InvalidRequest):
    def __init__(self, expected: str, got: str):
        super().__init__(
            "currency_mismatch", f"currency {got} does not match {expected}", field="currency"
        )


class AmountExceeded(InvalidRequest):
    pass


class SettlementFileInvalid(InvalidRequest):
    """A provider settlement report that cannot be read, and where: line and column.

    ``reason`` is a stable machine-readable word (``empty``, ``missing_column``,
    ``bad_number``, ``too_many_decimals``, ...); ``field`` is the column.
    CSV names ``line N, column C``; a JSON row names ``data[i]`` and its field.
    """

    code = "settlement_file_invalid"

    def __init__(
        self,
        reason: str,
        problem: str,
        *,
        line: int | None = None,
        row_index: int | None = None,
        column: str | None = None,
    ):
        self.reason = reason
        self.line = line
        self.row_index = row_index
        where = [] if line is None else [f"line {line}"]
        if row_index is not None:
            where.append(f"data[{row_index}]")
        if column is not None:
            where.append(f"{'column' if row_index is None else 'field'} {column}")
        prefix = ", ".join(where) or "the report"
        super().__init__(type(self).code, f"{prefix}: {problem}", field=column)

    def as_dict(self) -> dict[str, object]:
        body = super().as_dict()
        body["reason"] = self.reason
        if self.line is not None:
            body["line"] = self.line
        if self.row_index is not None:
            body["row_index"] = self.row_index
        return body


class NotFound(PaychaosError):
    code = "not_found"
    http_status = 404


class IdempotencyKeyReused(PaychaosError):
    code = "idempotency_key_reused"
    http_status = 422


class Conflict(PaychaosError):
    code = "conflict"
    http_status = 409


class IdempotencyKeyInFlight(Conflict):
    code = "idempotency_key_in_flight"


class IllegalTransition(Conflict):
    code = "illegal_transition"

    def __init__(self, from_state: str, to_state: str):
        self.from_state = from_state
        self.to_state = to_state
        super().__init__(message=f"a payment cannot go from {from_state} to {to_state}")


class OperationInProgress(Conflict):
    code = "operation_in_progress"


class OrderAlreadyActive(Conflict):
    code = "order_already_active"


class InsufficientFunds(Conflict):
    """A payout larger than the seller's available balance."""

    code = "insufficient_funds"


class EventTooEarly(Conflict):
    """A provider event about money the engine has not yet seen move (a dispute on a
    charge whose capture is still on its way): not recorded, so a redelivery is taken."""

    code = "event_too_early"


class StoreUnavailable(PaychaosError):
    code = "store_unavailable"
    http_status = 503


class SchemaOutOfDate(PaychaosError):
    """The database's schema is older than the code: migrate before serving."""

    code = "schema_out_of_date"
    http_status = 503


class LedgerGuardRefused(PaychaosError):
    """The database refused a ledger write (unbalanced, closed or append-only).

    The engine asserts balance before writing, so this means a defect, not bad
    input: callers should let it stop the world.
    """

    code = "ledger_guard_refused"
    http_status = 500


class WebhookRejected(InvalidRequest):
    """A webhook delivery whose signature or timestamp does not verify."""


class WebhookSecretMissing(PaychaosError):
    """No signing secret is configured: a server set up wrong (the provider retries)."""

    code = "webhook_secret_missing"
    http_status = 503

    def __init__(self) -> None:
        super().__init__(message="no webhook signing secret is configured: nothing can be verified")


class PublishFailed(PaychaosError):
    """The bus did not acknowledge a batch: nothing is marked, the next run publishes it again."""

    code = "bus_unavailable"
    http_status = 503


class ReportUnavailable(PaychaosError):
    """The provider did not hand over its report this time: try again next loop."""

    code = "settlement_report_unavailable"
    http_status = 503
