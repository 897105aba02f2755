"""Money: integer minor units, currency exponents, pricing with a documented rounding rule.

Rounding rule for percentage fees: round half up on the exact integer product,
``(amount_minor * fee_bps + 5_000) // 10_000``, then add the fixed fee. No floats.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# ISO 4217 exponents for the currencies the mock accepts (Stripe's zero-decimal and
# three-decimal lists, plus common two-decimal ones). Bounded on purpose.
ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])
TWO_DECIMAL = frozenset(
    [
        "usd",
        "eur",
        "gbp",
        "chf",
        "cad",
        "aud",
        "nzd",
        "sek",
        "nok",
        "dkk",
        "pln",
        "czk",
        "huf",
        "ron",
        "bgn",
        "hkd",
        "sgd",
        "mxn",
        "brl",
        "inr",
        "zar",
        "ils",
        "try",
        "aed",
        "sar",
        "thb",
        "myr",
        "php",
        "idr",
    ]
)
SUPPORTED_CURRENCIES = ZERO_DECIMAL | THREE_DECIMAL | TWO_DECIMAL

AMOUNT_MINOR_MAX = 99_999_999  # Stripe's amount_too_large bound for card payments
BPS_DENOMINATOR = 10_000


def currency_exponent(currency: str) -> int:
    currency = currency.lower()
    assert currency in SUPPORTED_CURRENCIES, currency
    if currency in ZERO_DECIMAL:
        return 0
    if currency in THREE_DECIMAL:
        return 3
    return 2


def format_major(amount_minor: int, currency: str) -> str:
    """``1234, "usd" -> "12.34"``; ``-5, "kwd" -> "-0.005"``; ``700, "jpy" -> "700"``."""
    exponent = currency_exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 10**exponent)
    if exponent == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:0{exponent}d}"


class Pricing(BaseModel):
    """What the provider charges per successful card payment and per dispute."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fee_bps: int = Field(default=290, ge=0, le=5_000)  # 290 bps = 2.9 %
    fee_fixed_minor: int = Field(default=30, ge=0, le=10_000)
    # The fixed part differs per currency in reality (30 cents, 30 yen would be odd).
    fee_fixed_minor_by_currency: dict[str, int] = Field(default_factory=dict)
    dispute_fee_minor: int = Field(default=1_500, ge=0, le=100_000)
    dispute_fee_returned_on_win: bool = True

    def charge_fee_minor(self, amount_minor: int, currency: str) -> int:
        assert amount_minor >= 0, amount_minor
        percent_part = (amount_minor * self.fee_bps + BPS_DENOMINATOR // 2) // BPS_DENOMINATOR
        fixed = self.fee_fixed_minor_by_currency.get(currency, self.fee_fixed_minor)
        return percent_part + fixed
