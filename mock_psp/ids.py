"""Stripe-looking identifiers drawn from a seeded random source (never uuid4).

The same seed and the same sequence of calls give the same ids, which is what
makes a run replayable byte for byte.
"""

from __future__ import annotations

import random
import string

_ALPHABET = string.ascii_letters + string.digits
# A word's top byte -> the character its top 6 bits pick (a bytes.translate table),
# and the top bytes that pick nothing (``choice`` redraws): deleted by translate.
_TOP_BYTE_CHAR = bytes(
    ord(_ALPHABET[byte >> 2]) if byte >> 2 < len(_ALPHABET) else 0 for byte in range(256)
)
_REDRAWN = bytes(byte for byte in range(256) if byte >> 2 >= len(_ALPHABET))
ID_BODY_LENGTH = 24
SECRET_BODY_LENGTH = 32


class IdSource:
    """Draws ids like ``pi_3Nx...`` from its own random stream."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def _body(self, length: int) -> str:
        # Exactly what ``rng.choice(_ALPHABET)`` per character draws, several times
        # faster: choice takes the top 6 bits of one 32-bit word per try and redraws
        # at 62 or more. ``getrandbits(32 * n)`` returns the next n words, the first
        # in the least significant place; exactly as many words are drawn as the
        # one-by-one loop would draw, so the stream stays the same for what follows.
        draw = self._rng.getrandbits
        chars = b""
        need = length
        while need:
            words = draw(32 * need).to_bytes(4 * need, "little")
            chars += words[3::4].translate(_TOP_BYTE_CHAR, _REDRAWN)
            need = length - len(chars)
        return chars.decode("ascii")

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
