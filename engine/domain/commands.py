"""Commands a client sends to the engine, validated on construction.

A command that exists is well formed: each ``__post_init__`` raises
``InvalidRequest`` naming the field, so nothing malformed reaches a
transaction. ``fingerprint()`` is the canonical request an idempotency key is
bound to.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, is_dataclass
from enum import StrEnum

from engine.domain.errors import InvalidRequest
from engine.domain.marketplace import Split, parse_splits
from engine.domain.money import parse_amount_minor, parse_currency
from engine.domain.validation import (
    parse_idempotency_key,
    parse_identifier,
    parse_metadata,
    parse_payment_method,
    refuse_pans,
)


class CaptureMethod(StrEnum):
    MANUAL = "manual"
    AUTOMATIC = "automatic"


class Operation(StrEnum):
    """The scope of an idempotency key, next to the merchant."""

    CREATE_PAYMENT = "create_payment"
    AUTHORIZE = "authorize"
    CAPTURE = "capture"
    VOID = "void"
    REFUND = "refund"
    PAYOUT = "payout"


def _fingerprint(operation: Operation, body: dict[str, object]) -> str:
    body = {key: value for key, value in body.items() if key != "idempotency_key"}
    canonical = json.dumps([operation.value, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _plain(command: object) -> dict[str, object]:
    """The command's fields as plain data, as ``asdict`` gives them, without its deep copy
    (a command's fields are strings, numbers, a flat dict and a tuple of splits)."""
    body: dict[str, object] = {}
    for name in command.__dataclass_fields__:  # type: ignore[attr-defined]
        value = getattr(command, name)
        if isinstance(value, tuple | list) and value:
            value = [asdict(item) if is_dataclass(item) else item for item in value]  # type: ignore[arg-type]
        body[name] = value
    return body


def _set(command: object, name: str, value: object) -> None:
    object.__setattr__(command, name, value)


@dataclass(frozen=True, slots=True)
class CreatePayment:
    merchant_id: str
    idempotency_key: str
    order_id: str
    amount_minor: int
    currency: str
    payment_method: str
    capture_method: str = CaptureMethod.MANUAL.value
    metadata: dict[str, str] = field(default_factory=dict)
    # A marketplace payment's lines, one per seller, adding up to ``amount_minor``.
    splits: tuple[Split, ...] = ()

    operation = Operation.CREATE_PAYMENT

    def __post_init__(self) -> None:
        refuse_pans(_plain(self))
        parse_identifier(self.merchant_id, "merchant_id")
        parse_idempotency_key(self.idempotency_key)
        parse_identifier(self.order_id, "order_id")
        parse_amount_minor(self.amount_minor)
        _set(self, "currency", parse_currency(self.currency))
        parse_payment_method(self.payment_method)
        if self.capture_method not in {m.value for m in CaptureMethod}:
            raise InvalidRequest(
                "capture_method_invalid", "capture_method is manual or automatic", "capture_method"
            )
        _set(self, "metadata", parse_metadata(self.metadata))
        _set(self, "splits", parse_splits(self.splits, self.amount_minor))

    def fingerprint(self) -> str:
        body = _plain(self)
        if not self.splits:
            del body["splits"]  # a plain payment's fingerprint is what it always was
        return _fingerprint(self.operation, body)


@dataclass(frozen=True, slots=True)
class PaymentCommand:
    """A write on an existing payment: authorize, void; base of capture and refund."""

    merchant_id: str
    idempotency_key: str
    payment_id: str

    def __post_init__(self) -> None:
        refuse_pans(_plain(self))
        parse_identifier(self.merchant_id, "merchant_id")
        parse_idempotency_key(self.idempotency_key)
        parse_identifier(self.payment_id, "payment_id")

    @property
    def operation(self) -> Operation:
        raise NotImplementedError

    def fingerprint(self) -> str:
        return _fingerprint(self.operation, _plain(self))


@dataclass(frozen=True, slots=True)
class Authorize(PaymentCommand):
    @property
    def operation(self) -> Operation:
        return Operation.AUTHORIZE


@dataclass(frozen=True, slots=True)
class Void(PaymentCommand):
    @property
    def operation(self) -> Operation:
        return Operation.VOID


@dataclass(frozen=True, slots=True)
class Capture(PaymentCommand):
    """Capture all (``amount_minor=None``) or part of the authorized amount."""

    amount_minor: int | None = None

    def __post_init__(self) -> None:
        PaymentCommand.__post_init__(self)
        if self.amount_minor is not None:
            parse_amount_minor(self.amount_minor)

    @property
    def operation(self) -> Operation:
        return Operation.CAPTURE


@dataclass(frozen=True, slots=True)
class Refund(PaymentCommand):
    """Refund all that is left (``amount_minor=None``) or part of it."""

    amount_minor: int | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        PaymentCommand.__post_init__(self)
        if self.amount_minor is not None:
            parse_amount_minor(self.amount_minor)
        if self.reason is not None:
            parse_identifier(self.reason, "reason")

    @property
    def operation(self) -> Operation:
        return Operation.REFUND


@dataclass(frozen=True, slots=True)
class CreatePayout:
    """Send ``amount_minor`` of a seller's available balance to its bank account."""

    seller_id: str
    idempotency_key: str
    currency: str
    amount_minor: int

    operation = Operation.PAYOUT

    def __post_init__(self) -> None:
        refuse_pans(_plain(self))
        parse_identifier(self.seller_id, "seller_id")
        parse_idempotency_key(self.idempotency_key)
        _set(self, "currency", parse_currency(self.currency))
        parse_amount_minor(self.amount_minor)

    @property
    def merchant_id(self) -> str:
        """Idempotency keys are scoped by who asks: here, the seller."""
        return self.seller_id

    def fingerprint(self) -> str:
        return _fingerprint(self.operation, _plain(self))
