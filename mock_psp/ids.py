"""Stripe-looking identifiers drawn from a seeded random source (never uuid4).

The same seed and the same sequence of calls give the same ids, which is what
makes a run replayable byte for byte.
"""

from __future__ import annotations

import random
import string

_ALPHABET = string.ascii_letters + string.digits
ID_BODY_LENGTH = 24
SECRET_BODY_LENGTH = 32


class IdSource:
    """Draws ids like ``pi_3Nx...`` from its own random stream."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def _body(self, length: int) -> str:
        return "".join(self._rng.choice(_ALPHABET) for _ in range(length))

    def new(self, prefix: str) -> str:
        assert prefix and prefix.isidentifier(), prefix
        return f"{prefix}_{self._body(ID_BODY_LENGTH)}"

    def secret(self, prefix: str) -> str:
        return f"{prefix}_{self._body(SECRET_BODY_LENGTH)}"


def substream(parent: random.Random, label: str) -> random.Random:
    """A child stream seeded from the parent, so each concern draws independently.

    Ids, API faults, webhook faults and settlement faults each get their own stream:
    turning a fault on then does not shift every id of the run.
    """
    seed = parent.getrandbits(64)
    return random.Random(f"{label}:{seed}")
