"""The real clock and id source, for servers and the command line only.

The core never imports this module: simulations and tests hand the engine
virtual, seeded ones instead.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from engine.domain.ports import card_safe_id


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class RandomIds:
    def new_id(self, prefix: str) -> str:
        return card_safe_id(prefix, lambda: secrets.randbits(80))
