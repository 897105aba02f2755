"""API keys per merchant, stored hashed.

A key is shown once, when it is created; the database keeps its SHA-256 and a
short prefix for display. ``sk_`` keys (secret) may write; ``rk_`` keys
(restricted) may only read. Keys are long random strings, so a plain SHA-256
(no salt, no stretching) is enough: there is nothing to guess.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from engine.adapters import schema as t
from engine.adapters.database import Database

PREFIXES = {"secret": "sk_", "restricted": "rk_"}
KEY_LENGTH_MAX = 200


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    merchant_id: str
    kind: str

    @property
    def can_write(self) -> bool:
        return self.kind == "secret"


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, database: Database):
        self.db = database

    def create(self, key_id: str, merchant_id: str, kind: str, secret: str, at: datetime) -> None:
        assert kind in PREFIXES and secret.startswith(PREFIXES[kind]), (kind, secret[:3])
        with self.db.transaction() as c:
            c.execute(
                t.api_keys.insert().values(
                    id=key_id, merchant_id=merchant_id, kind=kind, key_hash=key_hash(secret),
                    prefix=secret[:12], created_at=at,
                )
            )  # fmt: skip
            c.commit()

    def authenticate(self, secret: str) -> Principal | None:
        if not secret or len(secret) > KEY_LENGTH_MAX:
            return None
        digest = key_hash(secret)
        k = t.api_keys.c
        with self.db.engine.connect() as c:
            row = c.execute(
                sa.select(k.id, k.merchant_id, k.kind, k.key_hash).where(
                    k.key_hash == digest, k.revoked_at.is_(None)
                )
            ).first()
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        return Principal(row.id, row.merchant_id, row.kind)
