"""API keys per merchant, stored hashed.

A key is shown once, when it is created; the database keeps its SHA-256 and a
short prefix for display. ``sk_`` keys (secret) may write; ``rk_`` keys
(restricted) may only read. Keys are long random strings, so a plain SHA-256
(no salt, no stretching) is enough: there is nothing to guess.

``KeyCache`` keeps what a key was found to be for ``ttl_s`` (bounded in entries), so
a busy key costs no database read per request; a revoked key stops working within
``ttl_s`` in every process (``KeyStore.revoke`` only writes ``revoked_at``: nothing
tells the other processes, their caches simply forget). ``CACHE_TTL_S`` stays under a
second for that reason; a busy key still costs at most one read per process in it.
Unknown keys are never cached: each one is looked up.

Every read and write is a unit of work (``Database.transaction``): its statements
and its commit go the one way the engine's do.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from engine.adapters import schema as t
from engine.adapters.database import Database

PREFIXES = {"secret": "sk_", "restricted": "rk_"}
KEY_LENGTH_MAX = 200
CACHE_TTL_S = 0.5
REVOCATION_S_MAX = 1.0  # the promise: a revoked key is refused everywhere within this
CACHE_ENTRIES_MAX = 10_000
LIST_ROWS_MAX = 1_000


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    merchant_id: str
    kind: str

    @property
    def can_write(self) -> bool:
        return self.kind == "secret"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown of a key: never the key, never its hash."""

    id: str
    merchant_id: str
    kind: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class Revoked(enum.Enum):
    NOW = "revoked"
    ALREADY = "already_revoked"
    UNKNOWN = "unknown"


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, database: Database):
        self.db = database

    def create(self, key_id: str, merchant_id: str, kind: str, secret: str, at: datetime) -> None:
        assert kind in PREFIXES and secret.startswith(PREFIXES[kind]), (kind, secret[:3])
        with self.db.transaction() as unit:
            unit.execute(
                t.api_keys.insert().values(
                    id=key_id, merchant_id=merchant_id, kind=kind, key_hash=key_hash(secret),
                    prefix=secret[:12], created_at=at,
                )
            )  # fmt: skip
            unit.commit()

    def revoke(self, key_id: str, at: datetime) -> Revoked:
        """Mark the key revoked at ``at``; a key already revoked keeps its first time."""
        k = t.api_keys.c
        with self.db.transaction() as unit:
            changed = unit.execute(
                t.api_keys.update()
                .where(k.id == key_id, k.revoked_at.is_(None))
                .values(revoked_at=at)
            ).rowcount
            if changed:
                unit.commit()
                return Revoked.NOW
            found = unit.execute(sa.select(k.id).where(k.id == key_id)).first()
        return Revoked.UNKNOWN if found is None else Revoked.ALREADY

    def list_keys(self, merchant_id: str | None = None) -> list[KeyInfo]:
        """Keys oldest first (at most ``LIST_ROWS_MAX``), one merchant's or everyone's."""
        k = t.api_keys.c
        query = (
            sa.select(k.id, k.merchant_id, k.kind, k.prefix, k.created_at, k.revoked_at)
            .order_by(k.created_at, k.id)
            .limit(LIST_ROWS_MAX)
        )
        if merchant_id is not None:
            query = query.where(k.merchant_id == merchant_id)
        with self.db.transaction() as unit:  # read only: rolled back on exit
            return [KeyInfo(*row) for row in unit.execute(query)]

    def authenticate(self, secret: str) -> Principal | None:
        if not secret or len(secret) > KEY_LENGTH_MAX:
            return None
        digest = key_hash(secret)
        k = t.api_keys.c
        with self.db.transaction() as unit:  # read only: rolled back on exit
            row = unit.execute(
                sa.select(k.id, k.merchant_id, k.kind, k.key_hash).where(
                    k.key_hash == digest, k.revoked_at.is_(None)
                )
            ).first()
        if row is None:
            return None
        key_id, merchant_id, kind, found_hash = row
        if not hmac.compare_digest(found_hash, digest):
            return None
        return Principal(key_id, merchant_id, kind)


class KeyCache:
    """Found keys by hash for ``ttl_s``, least recently used out first past ``entries_max``."""

    def __init__(
        self,
        store: KeyStore,
        monotonic: Callable[[], float],
        ttl_s: float = CACHE_TTL_S,
        entries_max: int = CACHE_ENTRIES_MAX,
    ) -> None:
        assert 0 <= ttl_s <= REVOCATION_S_MAX and entries_max > 0
        self.store = store
        self.monotonic = monotonic
        self.ttl_s = ttl_s
        self.entries_max = entries_max
        self._found: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, secret: str) -> Principal | None:
        """The key's principal if it was found recently; None means "ask the store"."""
        if not secret or len(secret) > KEY_LENGTH_MAX:
            return None
        digest = key_hash(secret)
        with self._lock:
            entry = self._found.get(digest)
            if entry is None:
                return None
            if entry[1] <= self.monotonic():
                del self._found[digest]
                return None
            self._found.move_to_end(digest)
            return entry[0]

    def authenticate(self, secret: str) -> Principal | None:
        """Ask the store (a database read) and remember a key that was found."""
        found = self.store.authenticate(secret)
        if found is not None and self.ttl_s > 0:
            digest = key_hash(secret)
            with self._lock:
                self._found[digest] = (found, self.monotonic() + self.ttl_s)
                self._found.move_to_end(digest)
                while len(self._found) > self.entries_max:
                    self._found.popitem(last=False)
        return found
