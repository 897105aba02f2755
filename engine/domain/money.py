"""Money as integer minor units plus an ISO 4217 currency.

Floats never carry money. A currency's exponent says how many minor units make
a major one (JPY 0, USD 2, KWD 3); formatting and parsing go through it.
Arithmetic across currencies is refused with ``CurrencyMismatch``.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.domain.errors import CurrencyMismatch, InvalidRequest

# ISO 4217 exponents of the currencies the engine accepts. A bounded, explicit
# list: an unknown code is bad input, never a guess at two decimals.
CURRENCY_EXPONENTS: dict[str, int] = {
    "AED": 2,
    "AUD": 2,
    "BHD": 3,
    "BRL": 2,
    "CAD": 2,
    "CHF": 2,
    "CLP": 0,
    "CNY": 2,
    "CZK": 2,
    "DKK": 2,
    "EUR": 2,
    "GBP": 2,
    "HKD": 2,
    "HUF": 2,
    "IDR": 2,
    "ILS": 2,
    "INR": 2,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KRW": 0,
    "KWD": 3,
    "MXN": 2,
    "MYR": 2,
    "NOK": 2,
    "NZD": 2,
    "OMR": 3,
    "PHP": 2,
    "PLN": 2,
    "SAR": 2,
    "SEK": 2,
    "SGD": 2,
    "THB": 2,
    "TND": 3,
    "TRY": 2,
    "TWD": 2,
    "UGX": 0,
    "USD": 2,
    "VND": 0,
    "XAF": 0,
    "XOF": 0,
    "ZAR": 2,
}

# The largest amount a single payment may carry, in minor units of any
# currency: eleven digits keeps every sum of a payment's amounts in a signed
# 64-bit column with room to spare.
AMOUNT_MINOR_MAX = 99_999_999_999


def currency_exponent(currency: str) -> int:
    exponent = CURRENCY_EXPONENTS.get(currency)
    if exponent is None:
        raise InvalidRequest(
            "currency_unknown", f"unknown ISO 4217 currency {currency!r}", field="currency"
        )
    return exponent


def parse_currency(value: object, field: str = "currency") -> str:
    if not isinstance(value, str) or value.upper() not in CURRENCY_EXPONENTS:
        raise InvalidRequest(
            "currency_unknown", f"unknown ISO 4217 currency {value!r}", field=field
        )
    return value.upper()


def parse_amount_minor(value: object, field: str = "amount_minor") -> int:
    """An amount a client asks for: a positive integer no larger than the maximum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest("amount_invalid", "amount must be an integer in minor units", field)
    if value <= 0:
        raise InvalidRequest("amount_invalid", "amount must be greater than zero", field)
    if value > AMOUNT_MINOR_MAX:
        raise InvalidRequest(
            "amount_too_large", f"amount must be at most {AMOUNT_MINOR_MAX} minor units", field
        )
    return value


@dataclass(frozen=True, slots=True)
class Money:
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        assert isinstance(self.amount_minor, int) and not isinstance(self.amount_minor, bool)
        assert self.currency in CURRENCY_EXPONENTS, self.currency

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise CurrencyMismatch(self.currency, other.currency)

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount_minor < other.amount_minor

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount_minor <= other.amount_minor

    def format(self) -> str:
        """``12.34 USD``, ``1234 JPY``, ``1.234 KWD``: exact, from the exponent."""
        exponent = currency_exponent(self.currency)
        sign = "-" if self.amount_minor < 0 else ""
        units = abs(self.amount_minor)
        if exponent == 0:
            return f"{sign}{units} {self.currency}"
        major, minor = divmod(units, 10**exponent)
        return f"{sign}{major}.{minor:0{exponent}d} {self.currency}"
