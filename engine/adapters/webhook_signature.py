"""Stripe-style webhook signatures: ``Stripe-Signature: t=<unix>,v1=<hex hmac>``.

The signed payload is ``f"{t}.{body}"`` under HMAC-SHA256 with the endpoint's
secret. A delivery is accepted only if one ``v1`` signature matches (compared
in constant time) and its timestamp is within the tolerance of ``now``, so a
genuine event replayed later is refused too.

An empty secret verifies nothing: HMAC under an empty key is something anybody
can compute, so ``verify`` refuses to run without a secret
(``WebhookSecretMissing``, a 503: a server set up wrong, and the provider
retries later) rather than accept forgeries.
"""

from __future__ import annotations

import hashlib
import hmac

# Defined in the error tree, re-exported here where they are raised.
from engine.domain.errors import WebhookRejected as WebhookRejected
from engine.domain.errors import WebhookSecretMissing as WebhookSecretMissing

TOLERANCE_S = 300
HEADER_LENGTH_MAX = 4_096


def sign(payload: bytes, secret: str, timestamp_s: int) -> str:
    signed = f"{timestamp_s}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp_s},v1={digest}"


def verify(
    payload: bytes, header: str | None, secret: str, now_s: float, tolerance_s: int = TOLERANCE_S
) -> None:
    """Raise ``WebhookRejected`` unless the header signs ``payload`` recently;
    ``WebhookSecretMissing`` whatever the header when ``secret`` is empty."""
    if not secret:
        raise WebhookSecretMissing()
    if not header or len(header) > HEADER_LENGTH_MAX:
        raise WebhookRejected("webhook_signature_missing", "no signature", "Stripe-Signature")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookRejected(
            "webhook_signature_malformed", "signature header is malformed", "Stripe-Signature"
        )
    expected = sign(payload, secret, timestamp).split("v1=", 1)[1]
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise WebhookRejected(
            "webhook_signature_invalid", "signature does not match", "Stripe-Signature"
        )
    if abs(now_s - timestamp) > tolerance_s:
        raise WebhookRejected(
            "webhook_timestamp_out_of_tolerance",
            f"signature timestamp is more than {tolerance_s} s from now",
            "Stripe-Signature",
        )
