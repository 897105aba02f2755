"""The workers: recovery on a schedule, the outbox relay, the webhook inbox and its DLQ.

On SQLite and PostgreSQL; time is a FixedClock and nothing sleeps.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider
from engine.adapters.psp_http import HttpProvider, RetryPolicy
from engine.adapters.stripe_dialect import event_from_stripe
from engine.audit import audit
from engine.domain.commands import Authorize
from engine.domain.errors import Conflict, NotFound
from engine.domain.ports import FixedClock, SeededIds
from engine.domain.provider import OutcomeStatus, ProviderCall, ProviderEvent, ProviderOutcome
from engine.entrypoints.cli import app
from engine.service.driver import perform
from engine.service.engine import RECOVERY_SCHEDULE, EngineSettings, PaymentEngine
from engine.service.views import OutboxEvent
from engine.workers import (
    InboxProcessor,
    InProcessPublisher,
    OutboxRelay,
    Projection,
    RecoveryWorker,
)
from mock_psp.clock import ManualClock
from mock_psp.core import ProviderCore
from mock_psp.transport import CoreTransport
from mock_psp.webhooks import event_payload
from tests.integration.helpers import MERCHANT, captured, create, refund


def assert_audit_holds(database: Database) -> None:
    with database.engine.connect() as connection:
        assert [(r.name, r.violations) for r in audit(connection) if not r.ok] == []


def history_states(engine: PaymentEngine, payment_id: str) -> list[str]:
    return [item["to_state"] for item in engine.get_payment(payment_id).history]


class BlindProvider(FakeProvider):
    """A provider that does the work but can never say what became of it."""

    def lookup(self, call: ProviderCall) -> ProviderOutcome:
        return ProviderOutcome(OutcomeStatus.UNKNOWN)


def processing_payment(engine: PaymentEngine, provider: FakeProvider, key: str = "p1") -> str:
    payment_id = create(engine, key=key, order_id=f"order-{key}").payment.id
    provider.fail_next.append("after")  # the response is lost: the ambiguous case
    begun = engine.begin_authorize(Authorize(MERCHANT, f"auth-{key}", payment_id))
    assert perform(engine, provider, begun).payment.state == "processing"
    return payment_id


# -- recovery on a schedule ------------------------------------------------------------
def test_recovery_follows_the_schedule_then_flags_the_attempt_for_review(
    engine: PaymentEngine, clock: FixedClock, database: Database
) -> None:
    provider = BlindProvider()
    payment_id = processing_payment(engine, provider)
    worker = RecoveryWorker(engine, provider)
    for step in RECOVERY_SCHEDULE:
        clock.advance(step - timedelta(seconds=1))
        assert engine.due_attempts() == [], f"due before its {step} step"
        clock.advance(timedelta(seconds=1))
        assert len(engine.due_attempts()) == 1
        report = worker.run_once()
        assert (report.looked_up, report.still_unknown, report.resolved) == (1, 1, 0)
    clock.advance(timedelta(days=30))
    assert engine.due_attempts() == []  # flagged: no more lookups
    [flagged] = engine.attempts_for_review()
    assert flagged.payment_id == payment_id
    assert engine.get_payment(payment_id).state == "processing"  # never guessed
    assert len(engine.unresolved_attempts(timedelta(seconds=30))) == 1  # old API unchanged
    # An answer (a person's lookup, a late webhook) still resolves it and clears the flag.
    answer = FakeProvider.lookup(provider, flagged)
    engine.resolve_attempt(flagged.attempt_id, answer)
    assert engine.get_payment(payment_id).state == "authorized"
    assert engine.attempts_for_review() == []
    assert provider.truth[payment_id].charges == 1
    assert_audit_holds(database)


def test_a_resolved_attempt_is_never_due(engine: PaymentEngine, clock: FixedClock) -> None:
    provider = FakeProvider()
    captured(engine, provider)
    clock.advance(timedelta(days=3))
    assert engine.due_attempts() == []


def test_an_attempt_left_pending_by_a_crash_is_sent_again_with_its_key(
    engine: PaymentEngine, clock: FixedClock
) -> None:
    provider = FakeProvider()
    payment_id = create(engine).payment.id
    engine.begin_authorize(Authorize(MERCHANT, "a", payment_id))  # crash: never called
    clock.advance(RECOVERY_SCHEDULE[0])
    report = RecoveryWorker(engine, provider).run_once()
    assert (report.looked_up, report.resent, report.resolved) == (1, 1, 1)
    assert engine.get_payment(payment_id).state == "authorized"
    assert provider.truth[payment_id].charges == 1


@pytest.fixture
def psp() -> Iterator[tuple[HttpProvider, ProviderCore]]:
    faults = {"api_rules": [{"endpoints": ["payment_intents.create"], "timeout_after_rate": 1.0}]}
    core = ProviderCore(ManualClock(), random.Random(5), faults=faults)
    provider = HttpProvider(
        "http://psp.test", "sk_test_workers", transport=CoreTransport(core),
        retry=RetryPolicy(attempts_max=1), rng=random.Random(1), sleep=lambda _s: None,
    )  # fmt: skip
    yield provider, core
    provider.close()


def test_recovery_resolves_a_timeout_after_processing_over_http(
    engine: PaymentEngine, clock: FixedClock, database: Database, psp: Any
) -> None:
    provider, core = psp
    payment_id = create(engine).payment.id
    result = perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a", payment_id)))
    assert (result.status_code, result.payment.state) == (202, "processing")
    worker = RecoveryWorker(engine, provider)
    assert worker.run_once().looked_up == 0  # not due yet
    clock.advance(RECOVERY_SCHEDULE[0])
    report = worker.run_once()
    assert (report.looked_up, report.resolved, report.resent) == (1, 1, 0)
    payment = engine.get_payment(payment_id)
    assert payment.state == "authorized"
    truth = core.truth.per_payment_intent()[payment["provider_payment_id"]]
    assert truth.successful_charge_count == 1
    clock.advance(timedelta(days=2))
    assert engine.due_attempts() == [] and engine.attempts_for_review() == []
    assert_audit_holds(database)


# -- outbox relay ------------------------------------------------------------------------
class Crash(Exception):
    """The relay's process dies here."""


class CrashAfterPublishing(InProcessPublisher):
    def __init__(self, consumer: Projection):
        super().__init__(consumer)
        self.crashes = 1

    def publish(self, events: Any) -> int:
        duplicates = super().publish(events)
        if self.crashes:
            self.crashes -= 1
            raise Crash("after publishing, before mark_published")
        return duplicates


def some_payments(engine: PaymentEngine) -> list[str]:
    provider = FakeProvider()
    first = captured(engine, provider, key="c1", order_id="o1")
    refund(engine, provider, first, "r1", 2_000)
    second = captured(engine, provider, key="c2", order_id="o2", amount_minor=5_000)
    third = create(engine, key="c3", order_id="o3").payment.id
    return [first, second, third]


def test_the_relay_republishes_after_a_crash_and_the_consumer_dedupes(
    engine: PaymentEngine, database: Database
) -> None:
    payment_ids = some_payments(engine)
    events = engine.unpublished_events()
    consumer = Projection()
    relay = OutboxRelay(engine, CrashAfterPublishing(consumer), batch_max=4)
    with pytest.raises(Crash):
        relay.run_once()
    assert len(engine.unpublished_events()) == len(events)  # nothing was marked
    published = 0
    for _ in range(len(events)):  # bounded: a batch of 4 per run
        report = relay.run_once()
        published += report.published
        if report.published == 0:
            break
    assert published == len(events)
    assert engine.unpublished_events() == []
    assert consumer.duplicates == 4 and len(consumer.seen) == len(events)  # at least once
    for payment_id in payment_ids:
        assert consumer.state_of(payment_id) == engine.get_payment(payment_id).state
    assert_audit_holds(database)


def test_the_projection_ignores_an_older_event_arriving_late() -> None:
    projection = Projection()
    newer = {"payment_id": "pay_1", "seq": 3, "to_state": "captured"}
    older = {"payment_id": "pay_1", "seq": 2, "to_state": "authorized"}
    assert projection.consume("evt_3", newer) and projection.consume("evt_2", older)
    assert not projection.consume("evt_3", newer)
    assert projection.state_of("pay_1") == "captured"


def test_published_messages_carry_the_event(engine: PaymentEngine) -> None:
    from engine.workers.relay import message_body

    create(engine)
    [event] = engine.unpublished_events()
    body = json.loads(message_body(event))
    assert body["event_id"] == event.event_id and body["payload"]["to_state"] == "created"
    assert isinstance(event, OutboxEvent)


# -- webhook inbox and dead letters -------------------------------------------------------
class Flaky:
    """A translator that fails ``failures`` times, then translates like the real one."""

    def __init__(self, failures: int, message: str = "translation failed"):
        self.failures = failures
        self.message = message
        self.calls = 0

    def __call__(self, event: Mapping[str, Any]) -> ProviderEvent:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ValueError(self.message)
        return event_from_stripe(event)


def store_core_events(engine: PaymentEngine, core: ProviderCore) -> list[str]:
    ids = []
    for event in core.state.events.values():
        ids.append(event.id)
        assert engine.store_webhook(event.id, event.type, event_payload(event).decode()) == "stored"
    return ids


def test_a_duplicate_delivery_is_accepted_and_stored_once(engine: PaymentEngine, psp: Any) -> None:
    provider, core = psp
    payment_id = create(engine).payment.id
    perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a", payment_id)))
    event_ids = store_core_events(engine, core)
    event = core.state.events[event_ids[-1]]
    assert engine.store_webhook(event.id, event.type, event_payload(event).decode()) == "duplicate"
    assert len(engine.pending_webhooks()) == len(event_ids)
    report = InboxProcessor(engine).run_once()
    assert (report.applied, report.failed) == (len(event_ids), 0)
    assert engine.get_payment(payment_id).state == "authorized"
    assert engine.store_webhook(event.id, event.type, "{}") == "duplicate"  # even after applying
    assert engine.pending_webhooks() == []


def test_a_taken_delivery_is_kept_and_applied_in_one_unit_and_only_once(
    engine: PaymentEngine, database: Database, psp: Any
) -> None:
    provider, core = psp
    payment_id = create(engine).payment.id
    perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a", payment_id)))
    events = list(core.state.events.values())
    taken = [engine.take_webhook(event_from_stripe(json.loads(event_payload(e))),
                                 event_payload(e).decode()) for e in events]  # fmt: skip
    assert {status for status, _ in taken} == {"applied"}
    assert engine.pending_webhooks() == []  # nothing left for the worker
    again = engine.take_webhook(event_from_stripe(json.loads(event_payload(events[-1]))), "{}")
    assert again == ("duplicate", None)
    assert engine.store_webhook(events[-1].id, events[-1].type, "{}") == "duplicate"
    assert engine.get_payment(payment_id).state == "authorized"
    assert_audit_holds(database)


def test_a_taken_delivery_that_fails_to_apply_is_kept_pending_for_the_worker(
    engine: PaymentEngine, database: Database, clock: FixedClock
) -> None:
    payment_id = create(engine).payment.id
    early = ProviderEvent("evt_early", "charge.dispute.created", clock.now(), payment_id,
                          amount_minor=100)  # fmt: skip
    status, error = engine.take_webhook(early, '{"id": "evt_early"}')
    assert status == "pending" and error is not None and error.startswith("event_too_early")
    assert len(engine.pending_webhooks()) == 1  # durable, counted once, the worker's now
    with database.engine.connect() as connection:
        row = connection.exec_driver_sql(
            "SELECT status, attempts, applied_at FROM webhook_inbox"
        ).one()
    assert (row.status, row.attempts, row.applied_at) == ("pending", 1, None)
    assert history_states(engine, payment_id) == ["created"]  # nothing of it applied
    assert engine.take_webhook(early, "{}") == ("duplicate", None)


def test_a_failing_webhook_goes_dead_then_a_retry_applies_it_exactly_once(
    engine: PaymentEngine, database: Database, psp: Any
) -> None:
    provider, core = psp
    payment_id = create(engine).payment.id
    perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a", payment_id)))
    event_ids = store_core_events(engine, core)
    attempts_max = engine.settings.webhook_attempts_max
    processor = InboxProcessor(engine, translate=Flaky(attempts_max * len(event_ids)))
    for loop in range(attempts_max):
        report = processor.run_once()
        assert (report.applied, report.failed) == (0, len(event_ids))
        assert report.dead == (len(event_ids) if loop == attempts_max - 1 else 0)
    assert processor.run_once().failed == 0  # dead letters are left alone
    dead = engine.dead_letters()
    assert [item.provider_event_id for item in dead] == event_ids
    assert {(item.attempts, item.last_error) for item in dead} == {
        (attempts_max, "ValueError: translation failed")
    }
    assert engine.get_payment(payment_id).state == "processing"
    for event_id in event_ids:
        assert engine.retry_dead_letter(event_id).status == "pending"
    assert processor.run_once().applied == len(event_ids)
    assert processor.run_once().applied == 0
    assert engine.dead_letters() == []
    assert history_states(engine, payment_id) == ["created", "processing", "authorized"]
    assert_audit_holds(database)


def test_a_dead_letter_keeps_no_secret_and_no_card_number(engine: PaymentEngine) -> None:
    engine.settings = EngineSettings(webhook_attempts_max=1)
    engine.store_webhook("evt_1", "payment_intent.succeeded", "{}")
    leaky = ("bad sk_test_abc123XYZ whsec_s3cret card 4242 4242 4242 4242 "
             "4000.0566.5566.5556 5555/5555/5555/4444 " + "x" * 900)  # fmt: skip
    InboxProcessor(engine, translate=Flaky(1, leaky)).run_once()
    [item] = engine.dead_letters()
    assert item.last_error is not None and len(item.last_error) <= 500
    for secret in ("sk_test_abc123XYZ", "whsec_s3cret", "4242 4242", "4000.0566", "5555/5555"):
        assert secret not in item.last_error
    assert item.last_error.startswith("ValueError: bad [redacted]")


def test_a_malformed_stored_webhook_is_dead_lettered_not_lost(engine: PaymentEngine) -> None:
    engine.store_webhook("evt_bad", "payment_intent.succeeded", "{not json")
    for _ in range(engine.settings.webhook_attempts_max):
        InboxProcessor(engine).run_once()
    [item] = engine.dead_letters()
    assert item.provider_event_id == "evt_bad" and item.last_error
    assert item.last_error.startswith("JSONDecodeError")


def test_retrying_an_unknown_or_live_webhook_is_refused(engine: PaymentEngine) -> None:
    with pytest.raises(NotFound):
        engine.retry_dead_letter("evt_nope")
    engine.store_webhook("evt_live", "payment_intent.created", "{}")
    with pytest.raises(Conflict):
        engine.retry_dead_letter("evt_live")


# -- the command line ------------------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A migrated database that a CLI command can open by URL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'workers.db'}"
        Database(url, migrate=True).dispose()
        yield url
    else:
        from tests.conftest import fresh_postgres

        database = fresh_postgres(request.getfixturevalue("postgres_url"))
        yield database.url
        database.dispose()


def stripe_event(event_id: str, payment_id: str) -> str:
    intent = {
        "id": f"pi_{payment_id}", "object": "payment_intent", "status": "requires_capture",
        "amount_capturable": 10_000, "metadata": {"payment_id": payment_id},
    }  # fmt: skip
    event = {
        "id": event_id, "object": "event", "created": 1_767_225_600,
        "type": "payment_intent.amount_capturable_updated", "data": {"object": intent},
    }  # fmt: skip
    return json.dumps(event)


def test_dlq_list_retry_and_the_worker_loop_from_the_command_line(
    db_url: str, clock: FixedClock
) -> None:
    database = Database(db_url)
    engine = PaymentEngine(database, clock, SeededIds(random.Random(4)))
    payment_id = create(engine).payment.id
    engine.store_webhook("evt_cli_1", "payment_intent.amount_capturable_updated",
                         stripe_event("evt_cli_1", payment_id))  # fmt: skip
    for _ in range(engine.settings.webhook_attempts_max):
        InboxProcessor(engine, translate=Flaky(1)).run_once()
    runner = CliRunner()

    listed = runner.invoke(app, ["dlq", "list", "--db", db_url])
    assert listed.exit_code == 0, listed.output
    assert "evt_cli_1" in listed.output and "translation failed" in listed.output

    unknown = runner.invoke(app, ["dlq", "retry", "evt_missing", "--db", db_url])
    assert unknown.exit_code == 2 and "no webhook evt_missing" in unknown.output
    assert "Traceback" not in unknown.output

    retried = runner.invoke(app, ["dlq", "retry", "evt_cli_1", "--db", db_url])
    assert retried.exit_code == 0 and "pending again" in retried.output

    worker = runner.invoke(
        app, ["serve", "worker", "--db", db_url, "--psp", "http://127.0.0.1:9",
              "--interval-s", "0", "--max-loops", "2"],
    )  # fmt: skip
    assert worker.exit_code == 0, worker.output
    assert "2 loops" in worker.output and "1 webhooks applied" in worker.output
    assert engine.get_payment(payment_id).state == "authorized"
    assert engine.unpublished_events() == [] and engine.pending_webhooks() == []
    empty = runner.invoke(app, ["dlq", "list", "--db", db_url])
    assert empty.exit_code == 0 and "evt_cli_1" not in empty.output
    assert_audit_holds(database)
    database.dispose()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--psp", "ftp://x", "--db", "sqlite://"], "--psp"),
        (["--psp", "http://x", "--bus", "redis://x", "--db", "sqlite://"], "--bus"),
        (["--psp", "http://x", "--db", "sqlite://"], "--db"),  # not migrated
        (["--psp", "http://x", "--db", "nosuch://x"], "--db"),
    ],
)
def test_the_worker_refuses_bad_options_clearly(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["serve", "worker", *args, "--max-loops", "1"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
