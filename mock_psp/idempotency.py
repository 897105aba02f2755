"""Idempotency keys as Stripe documents them, in provider time.

- The status and body of the first response are saved once the endpoint starts
  executing (5xx included) and replayed for the same key.
- Validation failures, 401s, 429s, 503 load shedding and lost requests save nothing:
  the endpoint never started, so a retry is safe.
- The same key with other parameters (or another endpoint) gets 400 idempotency_error.
- A request arriving while the first one with its key is still in flight (its response
  not yet delivered: ``completes_at_s``) gets 409.
- Keys expire 24 h after their first use; a client that timed out can look a key up.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson
import zstandard

from mock_psp.errors import IdempotencyKeyInUse, IdempotencyMismatch, InvalidRequestError

KEY_TTL_S = 24 * 3_600.0
KEY_LENGTH_MAX = 255
KEYS_MAX = 1_000_000
ZSTD_LEVEL = 1  # fast: bodies are saved for every request, read back rarely
ZDICT_BYTES_MAX = 32_768

JsonDict = dict[str, Any]


class Packer:
    """zstd with one preset dictionary (earlier bodies, whose keys and constants later
    ones repeat); its compressor is made once and reused. zlib took about 60 us a
    body, most of it making a compressor, where zstd takes 3. Not for concurrent use
    (zstd's compressors are not): each store has its own, used under its core's lock."""

    __slots__ = ("_compressor", "_decompressor")

    def __init__(self, zdict: bytes = b"") -> None:
        data = (
            zstandard.ZstdCompressionDict(zdict, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
            if zdict else None
        )  # fmt: skip
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=data)
        self._decompressor = zstandard.ZstdDecompressor(dict_data=data)

    def pack(self, raw: bytes) -> bytes:
        # Copied: the compressor's bytes keep the allocation of the worst case (the
        # input's size and more) however small the result, for as long as they live.
        return bytes(memoryview(self._compressor.compress(raw)))

    def unpack(self, packed: bytes) -> bytes:
        return self._decompressor.decompress(packed)


@dataclass(frozen=True, slots=True)
class SavedResponse:
    """A first response as saved for its key: the status and the body's JSON, compressed.

    Every key is kept a day, and a day of a busy provider is millions of keys: as
    compressed JSON a body takes a couple of hundred bytes, as objects several
    kilobytes. ``packer`` is the store's (see ``Packer``; one shared object). A
    replay reads the body back (rare); ``IdempotencyStore.saved`` is how one is made.
    """

    status: int
    body_zjson: bytes
    packer: Packer = field(repr=False, compare=False)

    @classmethod
    def of(cls, status: int, body: JsonDict, packer: Packer) -> SavedResponse:
        return cls(status, packer.pack(orjson.dumps(body)), packer)

    @property
    def body(self) -> JsonDict:
        body: JsonDict = orjson.loads(self.packer.unpack(self.body_zjson))
        return body


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    key: str
    fingerprint: str
    method: str
    path: str
    request_id: str
    created_at_s: float
    completes_at_s: float
    response: SavedResponse


@dataclass(frozen=True, slots=True)
class IdempotencyLookup:
    """What a client that lost a response can learn about its key."""

    key: str
    found: bool
    in_flight: bool = False
    method: str | None = None
    path: str | None = None
    request_id: str | None = None
    created_at_s: float | None = None
    response: SavedResponse | None = None

    def to_json(self) -> JsonDict:
        return {
            "object": "idempotency_lookup",
            "idempotency_key": self.key,
            "found": self.found,
            "in_flight": self.in_flight,
            "method": self.method,
            "path": self.path,
            "request_id": self.request_id,
            "created": None if self.created_at_s is None else int(self.created_at_s),
            "response_status": None if self.response is None else self.response.status,
            "response_body": None if self.response is None else self.response.body,
        }


def check_key_format(key: str) -> None:
    if not key or len(key) > KEY_LENGTH_MAX:
        raise InvalidRequestError(
            f"Idempotency keys must be 1 to {KEY_LENGTH_MAX} characters long.",
            param="Idempotency-Key",
            code="idempotency_key_invalid",
        )


class IdempotencyStore:
    __slots__ = (
        "_keys_max", "_packer", "_records", "_ttl_s", "_zdict", "_zdict_kinds", "evicted_count",
    )  # fmt: skip

    def __init__(self, ttl_s: float = KEY_TTL_S, keys_max: int = KEYS_MAX) -> None:
        assert ttl_s > 0 and keys_max > 0
        self._ttl_s = ttl_s
        self._keys_max = keys_max
        # Insertion order is creation order because provider time never runs backwards.
        self._records: OrderedDict[str, IdempotencyRecord] = OrderedDict()
        self._zdict = b""  # the bodies' preset dictionary (see ``saved``)
        self._zdict_kinds: set[str] = set()
        self._packer = Packer()
        self.evicted_count = 0

    def saved(self, status: int, body: JsonDict) -> SavedResponse:
        """A response to save, compressed against the store's dictionary.

        The dictionary is the first successful body of each kind of object (a
        PaymentIntent, a Refund, ...) seen so far: a new kind extends it (a new
        packer; earlier records keep the one they were made with).
        """
        kind = body.get("object")
        if status == 200 and isinstance(kind, str) and kind not in self._zdict_kinds:
            self._zdict_kinds.add(kind)
            sample = orjson.dumps(body)
            self._zdict = (self._zdict + sample)[-ZDICT_BYTES_MAX:]
            self._packer = Packer(self._zdict)
        return SavedResponse.of(status, body, self._packer)

    def _expire(self, now_s: float) -> None:
        while self._records:
            key, record = next(iter(self._records.items()))
            if record.created_at_s + self._ttl_s > now_s:
                return
            del self._records[key]

    def replay_or_none(self, key: str, fingerprint: str, now_s: float) -> IdempotencyRecord | None:
        """The saved record to replay, None for a fresh key; raises on misuse."""
        self._expire(now_s)
        record = self._records.get(key)
        if record is None:
            return None
        if now_s < record.completes_at_s:
            raise IdempotencyKeyInUse(key)
        if record.fingerprint != fingerprint:
            raise IdempotencyMismatch(key)
        return record

    def save(self, record: IdempotencyRecord) -> None:
        assert record.key not in self._records, "a live key is saved once"
        self._records[record.key] = record
        while len(self._records) > self._keys_max:
            self._records.popitem(last=False)
            self.evicted_count += 1

    def lookup(self, key: str, now_s: float) -> IdempotencyLookup:
        self._expire(now_s)
        record = self._records.get(key)
        if record is None:
            return IdempotencyLookup(key=key, found=False)
        return IdempotencyLookup(
            key=key,
            found=True,
            in_flight=now_s < record.completes_at_s,
            method=record.method,
            path=record.path,
            request_id=record.request_id,
            created_at_s=record.created_at_s,
            response=record.response,
        )

    def __len__(self) -> int:
        return len(self._records)

    def clear(self) -> None:
        self._records.clear()
