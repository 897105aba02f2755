"""Test payment methods: Stripe's documented ``pm_card_*`` tokens and what each one does.

A payment method token selects behaviour exactly as on Stripe's test mode: succeed,
decline with a given reason, ask for 3D Secure (then succeed or decline), or succeed
and be disputed right after the money is captured. Tokens only: the core refuses raw
card numbers before it ever looks a token up.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class Decline:
    code: str
    decline_code: str
    message: str
    param: str | None = None


@dataclass(frozen=True, slots=True)
class DisputeSpec:
    reason: str
    inquiry: bool  # an inquiry (warning_*) withdraws no funds


class Flow(Enum):
    SUCCEED = "succeed"
    DECLINE = "decline"
    AUTHENTICATE = "authenticate"  # requires_action first


@dataclass(frozen=True, slots=True)
class CardProfile:
    token: str
    brand: str
    last4: str
    flow: Flow = Flow.SUCCEED
    decline: Decline | None = None  # on confirm, or after 3DS when flow is AUTHENTICATE
    dispute: DisputeSpec | None = None
    funding: str = "credit"
    bypass_pending: bool = False  # funds available at once instead of after the delay


GENERIC = Decline("card_declined", "generic_decline", "Your card was declined.")
INSUFFICIENT = Decline("card_declined", "insufficient_funds", "Your card has insufficient funds.")
LOST = Decline("card_declined", "lost_card", "Your card was declined.")
STOLEN = Decline("card_declined", "stolen_card", "Your card was declined.")
EXPIRED = Decline("expired_card", "expired_card", "Your card has expired.", "exp_month")
INCORRECT_CVC = Decline(
    "incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect.", "cvc"
)
PROCESSING = Decline(
    "processing_error",
    "processing_error",
    "An error occurred while processing your card. Try again in a little bit.",
)
FRAUDULENT = Decline("card_declined", "fraudulent", "Your card was declined.")
VELOCITY = Decline("card_declined", "card_velocity_exceeded", "Your card was declined.")

DECLINES_BY_CODE: dict[str, Decline] = {
    d.decline_code: d
    for d in (GENERIC, INSUFFICIENT, LOST, STOLEN, EXPIRED, INCORRECT_CVC, PROCESSING, FRAUDULENT)
}


def _cards() -> list[CardProfile]:
    decline = Flow.DECLINE
    auth = Flow.AUTHENTICATE
    return [
        CardProfile("pm_card_visa", "visa", "4242"),
        CardProfile("pm_card_visa_debit", "visa", "5556", funding="debit"),
        CardProfile("pm_card_mastercard", "mastercard", "4444"),
        CardProfile("pm_card_amex", "amex", "8431"),
        CardProfile("pm_card_discover", "discover", "1117"),
        CardProfile("pm_card_jcb", "jcb", "0505"),
        CardProfile("pm_card_unionpay", "unionpay", "0005"),
        CardProfile("pm_card_bypassPending", "visa", "0077", bypass_pending=True),
        CardProfile("pm_card_chargeDeclined", "visa", "0002", decline, GENERIC),
        CardProfile("pm_card_visa_chargeDeclined", "visa", "0002", decline, GENERIC),
        CardProfile(
            "pm_card_chargeDeclinedInsufficientFunds", "visa", "9995", decline, INSUFFICIENT
        ),
        CardProfile(
            "pm_card_visa_chargeDeclinedInsufficientFunds", "visa", "9995", decline, INSUFFICIENT
        ),
        CardProfile("pm_card_chargeDeclinedLostCard", "visa", "9987", decline, LOST),
        CardProfile("pm_card_visa_chargeDeclinedLostCard", "visa", "9987", decline, LOST),
        CardProfile("pm_card_chargeDeclinedStolenCard", "visa", "9979", decline, STOLEN),
        CardProfile("pm_card_visa_chargeDeclinedStolenCard", "visa", "9979", decline, STOLEN),
        CardProfile("pm_card_chargeDeclinedExpiredCard", "visa", "0069", decline, EXPIRED),
        CardProfile("pm_card_chargeDeclinedIncorrectCvc", "visa", "0127", decline, INCORRECT_CVC),
        CardProfile("pm_card_chargeDeclinedProcessingError", "visa", "0119", decline, PROCESSING),
        CardProfile("pm_card_chargeDeclinedFraudulent", "visa", "0019", decline, FRAUDULENT),
        CardProfile(
            "pm_card_visa_chargeDeclinedVelocityLimitExceeded", "visa", "6975", decline, VELOCITY
        ),
        CardProfile("pm_card_authenticationRequired", "visa", "3184", auth),
        CardProfile("pm_card_threeDSecure2Required", "visa", "3155", auth),
        CardProfile("pm_card_threeDSecureRequired", "visa", "3063", auth),
        CardProfile(
            "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds",
            "visa",
            "3178",
            auth,
            INSUFFICIENT,
        ),
        CardProfile(
            "pm_card_createDispute", "visa", "0259", dispute=DisputeSpec("fraudulent", False)
        ),
        CardProfile(
            "pm_card_createDisputeProductNotReceived",
            "visa",
            "2685",
            dispute=DisputeSpec("product_not_received", False),
        ),
        CardProfile(
            "pm_card_createDisputeInquiry", "visa", "1976", dispute=DisputeSpec("fraudulent", True)
        ),
    ]


TEST_CARDS: dict[str, CardProfile] = {card.token: card for card in _cards()}


def find_test_card(token: str) -> CardProfile | None:
    return TEST_CARDS.get(token)
