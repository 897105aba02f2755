"""After the workload: quiescence, then everything the checks read, over HTTP.

Quiescence (faults off): poll, bounded, until the provider has no webhook
waiting or in flight, no payment of the run is ``processing`` or holds a refund
reservation, no capture or void answered 202 lately (within the recovery
grace) still finds its payment ``authorized``, no payment waits for a customer
(3DS) who has acted at the provider already (the engine's recovery polls it on
its schedule), and two listings of the run's payments in a row are the same.
The engine's own workers (in the server or ``paychaos serve worker``) do the
recovering; live mode only waits and watches. Webhooks the provider holds
back for later are hurried by moving the provider's clock forward, by less
than the receiver's signature tolerance in all, so their signatures stay fresh.

Then a snapshot: every payment of every order of the run (listed by order id,
so payments whose creation the client never heard of are found too), each with
its history, refunds and ledger; the merchants' balances; the provider's
ground truth restricted to the run's orders and the provider's intents.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from loadtests.live.clients import Evidence, Unknown, operation, template
from loadtests.live.http import Answer, EngineApi, PspAdmin
from mock_psp.truth import EffectKind, GroundTruth, MoneyEffect

POLL_S = 1.0
READS_CONCURRENT_MAX = 8
READ_TRIES_MAX = 6
READ_BACKOFF_S = 0.5
PAGE_SIZE = 100
# The engine refuses a webhook signed more than 300 s from its clock; stay well inside.
PSP_CLOCK_ADVANCE_S_MAX = 240
HURRY_AFTER_S = 2.0


class ReadFailed(Exception):
    """The engine gave no usable answer to a read: the checks cannot be complete."""


@dataclass(slots=True)
class Snapshot:
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)  # with history, refunds
    ledgers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    unresolved: dict[str, int] = field(default_factory=dict)  # payment id -> open 202s
    balances: list[dict[str, Any]] = field(default_factory=list)  # per API key
    truth: GroundTruth = field(default_factory=GroundTruth)
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)  # provider intent id ->
    webhooks: dict[str, Any] = field(default_factory=dict)
    fault_counts: dict[str, int] = field(default_factory=dict)
    fault_records: list[dict[str, Any]] = field(default_factory=list)


async def read(
    api: EngineApi,
    key: int,
    path: str,
    params: dict[str, Any] | None = None,
    evidence: Evidence | None = None,
) -> Any:
    """A GET, retried (bounded) while the engine cannot answer; the JSON body.

    A 500 is retried too, and noted as an untyped answer (invariant E).
    """
    answer = Answer(None, None, 0.0)
    for attempt in range(READ_TRIES_MAX):
        answer = await api.send(key, "GET", path, params=params)
        if answer.status == 200:
            return answer.body
        if evidence is not None:
            evidence.note_untyped(f"GET {template(path)}", answer)
        if answer.status not in {None, 429, 500, 502, 503, 504}:
            break
        await asyncio.sleep(max(READ_BACKOFF_S * 2**attempt, answer.retry_after_s))
    raise ReadFailed(f"GET {path} answered {answer.status} {answer.code or ''}".strip())


async def gather_bounded(work: list[Any]) -> list[Any]:
    slots = asyncio.Semaphore(READS_CONCURRENT_MAX)

    async def one(item: Any) -> Any:
        async with slots:
            return await item

    return list(await asyncio.gather(*(one(item) for item in work)))


async def listing(api: EngineApi, evidence: Evidence) -> dict[str, dict[str, Any]]:
    """Every payment of the run's orders, by id (the short form, without history)."""

    async def of_order(order_id: str) -> list[dict[str, Any]]:
        key = evidence.order_keys[order_id]
        params = {"order_id": order_id, "limit": PAGE_SIZE}
        body = await read(api, key, "/v1/payments", params, evidence)
        return [payment(item, "GET /v1/payments") for item in data(body, "GET /v1/payments")]

    found = await gather_bounded([of_order(order_id) for order_id in evidence.orders])
    return {str(payment["id"]): payment for page in found for payment in page}


def unresolved(payments: dict[str, dict[str, Any]], unknown: list[Unknown]) -> dict[str, int]:
    """Authorizations once answered 202 whose payment is still ``processing``, per payment."""
    counts: dict[str, int] = {}
    for item in unknown:
        state = payments.get(item.payment_id, {}).get("state")
        if operation(item.sent.path) == "authorize" and state == "processing":
            counts[item.payment_id] = counts.get(item.payment_id, 0) + 1
    return counts


def awaiting_recovery(
    payments: dict[str, dict[str, Any]], unknown: list[Unknown], now_s: float, grace_s: float
) -> set[str]:
    """Payments a capture or void answered 202 may still move, within ``grace_s`` of the answer.

    The engine keeps a 202 as the key's answer for good and shows no attempts,
    so only the payment tells: while it is still ``authorized`` the attempt may
    be open, or resolved as failed (the provider saved a 500). Past the grace
    live mode stops waiting; the agreement with the provider (I7) judges it.
    """
    return {
        item.payment_id
        for item in unknown
        if operation(item.sent.path) in {"capture", "void"}
        and now_s - item.answered_at_s < grace_s
        and payments.get(item.payment_id, {}).get("state") == "authorized"
    }


def open_work(payments: dict[str, dict[str, Any]], evidence: Evidence, grace_s: float) -> int:
    busy = {
        pid
        for pid, payment in payments.items()
        if payment["state"] == "processing" or payment.get("refund_reserved_minor", 0) > 0
    }
    busy |= awaiting_recovery(payments, evidence.unknown, time.monotonic(), grace_s)
    return len(busy)


async def customers_acted(psp: PspAdmin, payments: dict[str, dict[str, Any]]) -> int:
    """Payments the engine shows waiting for the customer (3DS) whose intent has moved on
    at the provider: the engine's recovery polls them on its schedule, so wait for it."""
    waiting = sorted(
        str(p["provider_payment_id"])
        for p in payments.values()
        if p["state"] == "requires_action" and p.get("provider_payment_id")
    )
    intents = await gather_bounded([psp.payment_intent(pi) for pi in waiting])
    return sum(1 for intent in intents if intent and intent.get("status") != "requires_action")


async def quiesce(
    api: EngineApi, psp: PspAdmin, evidence: Evidence, timeout_s: float, grace_s: float
) -> tuple[float | None, int]:
    """Wait until nothing is left to do: (seconds it took or None, provider clock moved by)."""
    started = time.monotonic()
    previous: dict[str, dict[str, Any]] | None = None
    advanced_s = 0
    while time.monotonic() - started < timeout_s:
        hooks = await psp.webhooks()
        if hooks["pending"] or hooks["in_flight"]:
            advanced_s += await hurry(psp, hooks, advanced_s)
            previous = None
        else:
            current = await listing(api, evidence)
            busy = open_work(current, evidence, grace_s) + await customers_acted(psp, current)
            if not busy and current == previous:
                return time.monotonic() - started, advanced_s
            previous = None if busy else current
        await asyncio.sleep(POLL_S)
    return None, advanced_s


async def hurry(psp: PspAdmin, hooks: dict[str, Any], advanced_s: int) -> int:
    """Move the provider's clock to its next held-back delivery (bounded in all)."""
    due_at_s = hooks.get("next_due_at")
    if due_at_s is None or hooks["in_flight"] or advanced_s >= PSP_CLOCK_ADVANCE_S_MAX:
        return 0
    gap_s = float(due_at_s) - await psp.now_s()
    if gap_s < HURRY_AFTER_S:
        return 0
    step_s = int(min(gap_s, PSP_CLOCK_ADVANCE_S_MAX - advanced_s))
    await psp.advance_clock(step_s)
    return step_s


async def snapshot(api: EngineApi, psp: PspAdmin, evidence: Evidence) -> Snapshot:
    shot = Snapshot()
    found = await listing(api, evidence)
    keys = {pid: evidence.order_keys[str(p["order_id"])] for pid, p in found.items()}

    async def full(pid: str) -> None:
        path = f"/v1/payments/{pid}"
        shot.payments[pid] = payment(await read(api, keys[pid], path, evidence=evidence), path)
        ledger = await read(api, keys[pid], f"{path}/ledger", evidence=evidence)
        shot.ledgers[pid] = data(ledger, f"{path}/ledger")

    await gather_bounded([full(pid) for pid in sorted(found)])
    shot.unresolved = unresolved(shot.payments, evidence.unknown)
    shot.balances = await balances(api)
    shot.truth = run_truth(await psp.ground_truth(), set(evidence.orders))
    intent_ids = {str(p["provider_payment_id"]) for p in shot.payments.values()
                  if p.get("provider_payment_id")}  # fmt: skip
    intent_ids |= {e.payment_intent_id for e in shot.truth.effects() if e.payment_intent_id}
    intents = await gather_bounded([psp.payment_intent(pi) for pi in sorted(intent_ids)])
    shot.intents = {str(pi["id"]): pi for pi in intents if pi is not None}
    shot.webhooks = await psp.webhooks()
    shot.fault_counts = await psp.fault_counts()
    shot.fault_records = await psp.fault_records()
    return shot


async def balances(api: EngineApi) -> list[dict[str, Any]]:
    found = [await read(api, key, "/v1/balance") for key in range(len(api.api_keys))]
    for body in found:
        if not (isinstance(body, dict) and "merchant_id" in body and isinstance(
            body.get("balances"), dict
        )):  # fmt: skip
            raise ReadFailed("GET /v1/balance: not a balance (merchant_id, balances)")
    return found


PAYMENT_FIELDS = ("id", "merchant_id", "order_id", "amount_minor", "state", "authorized_minor",
                  "captured_minor", "refunded_minor")  # fmt: skip


def payment(body: Any, where: str) -> dict[str, Any]:
    """A payment document, or ReadFailed naming what is missing: the checks need them all."""
    missing = [name for name in PAYMENT_FIELDS if not isinstance(body, dict) or name not in body]
    if missing:
        raise ReadFailed(f"{where}: not a payment (no {', '.join(missing)})")
    assert isinstance(body, dict)
    return body


def data(body: Any, where: str) -> list[Any]:
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ReadFailed(f"{where}: no data list")
    return list(body["data"])


def run_truth(document: dict[str, Any], orders: set[str]) -> GroundTruth:
    """The provider's money effects on the run's orders, as a ``GroundTruth`` again."""
    truth = GroundTruth()
    for effect in document["effects"]:
        if effect.get("order_ref") not in orders:
            continue
        truth.record(
            MoneyEffect(
                float(effect["at"]),
                EffectKind(effect["kind"]),
                int(effect["amount"]),
                str(effect["currency"]),
                str(effect["object_id"]),
                effect.get("payment_intent"),
                effect.get("order_ref"),
            )
        )
    return truth
