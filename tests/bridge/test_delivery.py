"""Delivery: the retry policy, and channel workers driving a scripted adapter over a real SQLite store."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import ClassVar

import pytest
import yaml

from bridge.channels import ChannelConfig, PhiLevel, Post, SendResult
from bridge.compose import Templates
from bridge.config import DeliveryConfig
from bridge.delivery import ChannelWorker, Dispatcher, RateLimiter, RetryPolicy, alert_for
from bridge.errors import ConfigError, Permanent, Retryable
from bridge.events import ClinicalEvent, EventType, Lifecycle, Severity, Subject
from bridge.mapping import mappings_dir
from bridge.store import ClaimedDelivery, JournalEntry, NewDelivery
from bridge.store.sqlite import SQLiteStore

EventFactory = Callable[..., ClinicalEvent]
EntryFactory = Callable[..., JournalEntry]

CHANNEL = "chan"
#: Fast enough for tests, with no jitter so delays are exact.
FAST = RetryPolicy(max_attempts=5, initial=0.001, max_delay=0.01, multiplier=2.0, jitter=0.0)


class FakeAdapter:
    """An outbound adapter that records what it is asked to send and fails as scripted.

    ``script`` maps an event id to the exceptions its successive sends raise;
    once they are used up, sends of that event succeed.
    """

    config_model: ClassVar[type[ChannelConfig]] = ChannelConfig
    max_text: ClassVar[int] = 1_000
    rate_per_sec: ClassVar[float] = 0.0
    supports_threads: ClassVar[bool] = True
    supports_update: ClassVar[bool] = True

    def __init__(self, script: dict[str, list[Exception]] | None = None) -> None:
        self.script = {event_id: list(errors) for event_id, errors in (script or {}).items()}
        #: Event ids in the order ``send`` was called, failures included.
        self.calls: list[str] = []
        #: Posts that were sent successfully.
        self.sent: list[Post] = []

    def render(self, post: Post) -> Post:
        return post

    async def send(self, payload: Post) -> SendResult:
        self.calls.append(payload.event.id)
        pending = self.script.get(payload.event.id)
        if pending:
            raise pending.pop(0)
        self.sent.append(payload)
        return SendResult(external_id=f"ext-{len(self.sent)}")

    async def aclose(self) -> None:
        return None


class UnthreadedAdapter(FakeAdapter):
    supports_threads: ClassVar[bool] = False
    supports_update: ClassVar[bool] = False


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates.load()


@pytest.fixture
def make_worker(store: SQLiteStore, templates: Templates) -> Callable[..., ChannelWorker]:
    def factory(adapter: FakeAdapter, policy: RetryPolicy = FAST) -> ChannelWorker:
        return ChannelWorker(
            CHANNEL,
            adapter,
            store,
            policy=policy,
            templates=templates,
            phi=PhiLevel.LIMITED,
            poll_interval=0.01,
            max_in_flight=4,
        )

    return factory


WorkerFactory = Callable[..., ChannelWorker]


async def commit(store: SQLiteStore, make_entry: EntryFactory, *events: ClinicalEvent) -> None:
    await store.commit_message(make_entry(), [(e, [NewDelivery(CHANNEL)]) for e in events], dedup_window=3600.0)


async def claim_one(store: SQLiteStore, *, later: float = 0.0) -> ClaimedDelivery:
    (claimed,) = await store.claim(CHANNEL, now=time.time() + later, limit=10)
    return claimed


async def row(
    store: SQLiteStore, event: ClinicalEvent, *, alert: bool = False
) -> tuple[str, int, float, str, str | None]:
    """The event's delivery; with ``alert``, its alert's (the delivery the edit's outcome created)."""
    rows = await store.query(
        "SELECT status, attempts, next_attempt_at, last_error, external_id FROM deliveries"
        f" WHERE event_id=? AND shadow_of IS {'NOT ' if alert else ''}NULL",
        (event.id,),
    )
    assert len(rows) == 1
    status, attempts, next_attempt_at, last_error, external_id = rows[0]
    return status, attempts, next_attempt_at, last_error, external_id


@asynccontextmanager
async def running(worker: ChannelWorker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        worker.stop()
        await asyncio.wait_for(task, 2.0)


async def settled(store: SQLiteStore, count: int) -> None:
    """Wait until ``count`` deliveries are delivered or dead (a bound, not a timing assertion)."""
    async with asyncio.timeout(2.0):
        while True:
            rows = await store.query("SELECT count(*) FROM deliveries WHERE status IN ('delivered', 'dead')")
            if rows[0][0] >= count:
                return
            await asyncio.sleep(0.005)


# -- RetryPolicy --------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "expected"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0)])
def test_delay_grows_exponentially(attempt: int, expected: float) -> None:
    policy = RetryPolicy(initial=1.0, multiplier=2.0, max_delay=600.0, jitter=0.3)

    assert policy.delay(attempt, rand=lambda: 0.0) == pytest.approx(expected)


@pytest.mark.parametrize("attempt", [6, 10, 100, 5_000])
def test_delay_is_capped_at_max_delay(attempt: int) -> None:
    # 5,000 attempts is the regression: the power overflowed a float and the delivery stuck in flight.
    policy = RetryPolicy(initial=1.0, multiplier=2.0, max_delay=20.0, jitter=0.0)

    assert policy.delay(attempt) == 20.0


@pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, 0.999_999])
@pytest.mark.parametrize("attempt", [1, 3, 12])
def test_jitter_stays_between_base_less_jitter_and_base(attempt: int, rand: float) -> None:
    policy = RetryPolicy(initial=2.0, multiplier=3.0, max_delay=300.0, jitter=0.4)
    base = min(300.0, 2.0 * 3.0 ** (attempt - 1))

    delay = policy.delay(attempt, rand=lambda: rand)

    assert base * (1 - 0.4) <= delay <= base


def test_jitter_spreads_delays_within_bounds() -> None:
    policy = RetryPolicy(initial=10.0, jitter=0.3)
    rng = random.Random(7)

    delays = [policy.delay(1, rand=rng.random) for _ in range(200)]

    assert all(7.0 <= d <= 10.0 for d in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    ("defer", "expected"),
    [
        pytest.param(120.0, 120.0, id="retry-after-longer-wins"),
        pytest.param(0.5, 4.0, id="retry-after-shorter-does-not-shorten"),
        pytest.param(4.0, 4.0, id="equal"),
        pytest.param(None, 4.0, id="none"),
    ],
)
def test_retry_after_is_a_floor(defer: float | None, expected: float) -> None:
    policy = RetryPolicy(initial=1.0, multiplier=2.0, jitter=0.0)

    assert policy.delay(3, defer=defer) == expected


@pytest.mark.parametrize(("attempts", "exhausted"), [(1, False), (2, False), (3, True), (4, True)])
def test_exhausted_at_max_attempts(attempts: int, exhausted: bool) -> None:
    assert RetryPolicy(max_attempts=3).exhausted(attempts) is exhausted


@pytest.mark.parametrize(("override", "expected"), [(None, 7), (2, 2)])
def test_policy_from_config_takes_the_channel_override(override: int | None, expected: int) -> None:
    cfg = DeliveryConfig(max_attempts=7, initial_backoff=0.5, max_backoff=30.0, multiplier=3.0, jitter=0.1)

    policy = RetryPolicy.from_config(cfg, max_attempts=override)

    assert policy == RetryPolicy(max_attempts=expected, initial=0.5, max_delay=30.0, multiplier=3.0, jitter=0.1)


# -- ChannelWorker.deliver ----------------------------------------------------------------


async def test_delivered_is_recorded_and_audited_as_disclosed(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    event = make_event()
    await commit(store, make_entry, event)
    adapter = FakeAdapter()

    await make_worker(adapter).deliver(await claim_one(store))

    status, attempts, _, last_error, external_id = await row(store, event)
    assert (status, attempts, last_error, external_id) == ("delivered", 1, "", "ext-1")
    assert [p.event.id for p in adapter.sent] == [event.id]
    assert await store.query("SELECT action, channel, event_id, detail FROM audit") == [
        ("disclosed", CHANNEL, event.id, "phi=limited")
    ]


async def test_retryable_goes_back_to_pending_not_before_its_defer(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    event = make_event()
    await commit(store, make_entry, event)
    adapter = FakeAdapter({event.id: [Retryable("rate limited", defer=30.0)]})
    before = time.time()

    await make_worker(adapter).deliver(await claim_one(store))

    status, attempts, next_attempt_at, last_error, _ = await row(store, event)
    assert (status, attempts, last_error) == ("pending", 1, "rate limited")
    assert next_attempt_at >= before + 30.0
    assert await store.claim(CHANNEL, now=time.time(), limit=10) == []


async def test_retryable_without_defer_waits_the_backoff(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    event = make_event()
    await commit(store, make_entry, event)
    adapter = FakeAdapter({event.id: [Retryable("502 from target")]})
    policy = RetryPolicy(max_attempts=5, initial=10.0, jitter=0.0)
    before = time.time()

    await make_worker(adapter, policy).deliver(await claim_one(store))
    after = time.time()

    _, _, next_attempt_at, _, _ = await row(store, event)
    assert before + 10.0 <= next_attempt_at <= after + 10.0


async def test_exhausted_attempts_go_dead(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    event = make_event()
    await commit(store, make_entry, event)
    adapter = FakeAdapter({event.id: [Retryable("busy"), Retryable("busy"), Retryable("busy")]})
    worker = make_worker(adapter, RetryPolicy(max_attempts=2, initial=0.001, jitter=0.0))

    await worker.deliver(await claim_one(store))
    await worker.deliver(await claim_one(store, later=1.0))

    status, attempts, _, last_error, _ = await row(store, event)
    assert (status, attempts) == ("dead", 2)
    assert last_error.startswith("attempts exhausted")
    assert [d.event_id for d in await store.dead_letters()] == [event.id]
    assert adapter.calls == [event.id, event.id]


async def test_permanent_goes_dead_without_retry(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    event = make_event()
    await commit(store, make_entry, event)
    adapter = FakeAdapter({event.id: [Permanent("400 invalid payload")]})

    await make_worker(adapter).deliver(await claim_one(store))

    status, attempts, _, last_error, _ = await row(store, event)
    assert (status, attempts, last_error) == ("dead", 1, "400 invalid payload")
    assert await store.claim(CHANNEL, now=time.time() + 3600, limit=10) == []
    assert await store.disabled_channels() == {}
    assert [r[0] for r in await store.query("SELECT action FROM audit")] == ["delivery.dead"]


async def test_permanent_with_disable_channel_disables_the_channel(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    failing, waiting = make_event(thread_key="A"), make_event(thread_key="B")
    await commit(store, make_entry, failing, waiting)
    adapter = FakeAdapter({failing.id: [Permanent("token_revoked", disable_channel=True)]})
    first = (await store.claim(CHANNEL, now=time.time(), limit=1))[0]

    await make_worker(adapter).deliver(first)

    assert await store.disabled_channels() == {CHANNEL: "token_revoked"}
    assert (await row(store, failing))[0] == "dead"
    assert (await row(store, waiting))[0] == "dead"
    assert adapter.calls == [failing.id]


async def test_unexpected_exception_is_recorded_as_a_retry(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    event = make_event()
    await commit(store, make_entry, event)
    adapter = FakeAdapter({event.id: [RuntimeError("adapter bug")]})

    await make_worker(adapter).deliver(await claim_one(store))

    status, attempts, _, last_error, _ = await row(store, event)
    assert (status, attempts, last_error) == ("pending", 1, "internal error: RuntimeError")


@pytest.mark.parametrize(
    ("adapter_class", "thread_ref"),
    [
        pytest.param(FakeAdapter, "ext-1", id="threads"),
        pytest.param(UnthreadedAdapter, None, id="no-threads"),
    ],
)
async def test_first_post_of_a_thread_becomes_the_thread_root_where_threads_exist(
    store: SQLiteStore,
    make_entry: EntryFactory,
    make_event: EventFactory,
    make_worker: WorkerFactory,
    adapter_class: type[FakeAdapter],
    thread_ref: str | None,
) -> None:
    await commit(store, make_entry, make_event(), make_event())
    adapter = adapter_class()
    worker = make_worker(adapter)

    await worker.deliver(await claim_one(store))
    await worker.deliver(await claim_one(store))

    assert [p.thread_ref for p in adapter.sent] == [None, thread_ref]


# -- ChannelWorker.run --------------------------------------------------------------------


async def test_running_worker_survives_an_adapter_bug_and_retries(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    event = make_event()
    await commit(store, make_entry, event)
    adapter = FakeAdapter({event.id: [RuntimeError("adapter bug")]})

    async with running(make_worker(adapter)) as task:
        await settled(store, 1)
        assert not task.done()

    assert adapter.calls == [event.id, event.id]
    assert (await row(store, event))[0] == "delivered"


async def test_thread_is_delivered_in_order_across_a_retry(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    first, second, third = make_event(), make_event(), make_event()
    await commit(store, make_entry, first, second)
    await commit(store, make_entry, third)
    adapter = FakeAdapter({first.id: [Retryable("429", defer=0.05)]})

    async with running(make_worker(adapter)):
        await settled(store, 3)

    assert adapter.calls == [first.id, first.id, second.id, third.id]
    assert [p.event.id for p in adapter.sent] == [first.id, second.id, third.id]


async def test_dead_event_blocks_neither_its_thread_nor_another(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    poison, after_poison = make_event(thread_key="A"), make_event(thread_key="A")
    other = make_event(thread_key="B")
    await commit(store, make_entry, poison, other, after_poison)
    adapter = FakeAdapter({poison.id: [Permanent("422 unprocessable")]})

    async with running(make_worker(adapter)):
        await settled(store, 3)

    assert (await row(store, poison))[0] == "dead"
    assert {p.event.id for p in adapter.sent} == {other.id, after_poison.id}
    assert adapter.calls.index(poison.id) < adapter.calls.index(after_poison.id)


async def test_rate_limiter_spaces_calls_one_interval_apart() -> None:
    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        await limiter.acquire()
    assert slept == [0.25, 0.5]
    now[0] += 10  # idle long enough: the next call goes at once
    await limiter.acquire()
    assert slept == [0.25, 0.5]


async def test_rate_limiter_with_no_rate_never_waits() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    limiter = RateLimiter(0.0, sleep=sleep)
    for _ in range(5):
        await limiter.acquire()
    assert slept == []


class StallingAdapter(FakeAdapter):
    """Holds every send of one event until ``release`` is set, as a slow target would."""

    def __init__(self, stalled: str) -> None:
        super().__init__()
        self.stalled = stalled
        self.release = asyncio.Event()
        self.started: list[str] = []

    async def send(self, payload: Post) -> SendResult:
        self.started.append(payload.event.id)
        if payload.event.id == self.stalled:
            await self.release.wait()
        return await super().send(payload)


async def test_slow_send_holds_up_only_its_own_thread(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    # Regression: the worker waited for a whole claimed batch, so one slow post stalled every encounter.
    slow, after_slow = make_event(thread_key="A"), make_event(thread_key="A")
    other = make_event(thread_key="B")
    await commit(store, make_entry, slow, after_slow)
    adapter = StallingAdapter(slow.id)

    async with running(make_worker(adapter)):
        async with asyncio.timeout(2.0):
            while slow.id not in adapter.started:
                await asyncio.sleep(0.005)
        await commit(store, make_entry, other)
        await settled(store, 1)
        assert [p.event.id for p in adapter.sent] == [other.id]
        adapter.release.set()
        await settled(store, 3)

    assert [p.event.id for p in adapter.sent] == [other.id, slow.id, after_slow.id]


async def test_dispatcher_starts_and_stops_its_workers(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    event = make_event()
    adapter = FakeAdapter()
    dispatcher = Dispatcher({CHANNEL: make_worker(adapter)})

    dispatcher.start()
    assert dispatcher.running
    await commit(store, make_entry, event)
    dispatcher.wake([CHANNEL, "not-a-channel"])
    await settled(store, 1)
    await asyncio.wait_for(dispatcher.stop(), 2.0)

    assert not dispatcher.running
    assert [p.event.id for p in adapter.sent] == [event.id]


# -- ChannelWorker.post_for: the channel's locale, kind and PHI level ----------------------------


def worker_for(
    store: SQLiteStore, templates: Templates, *, locale: str = "en", kind: str | None = None
) -> ChannelWorker:
    return ChannelWorker(
        CHANNEL, FakeAdapter(), store, policy=FAST, templates=templates, phi=PhiLevel.LIMITED, locale=locale, kind=kind
    )


@pytest.mark.parametrize(
    ("locale", "title", "label"),
    [
        ("en", "Corrected result: Potassium · A.T. (…0001) · Bed ICU-101-A", "Corrected"),
        ("de", "Befund korrigiert: Potassium · A.T. (…0001) · Bett ICU-101-A", "Korrigiert"),
    ],
)
async def test_post_is_worded_in_the_channels_locale_with_its_label(
    store: SQLiteStore,
    make_entry: EntryFactory,
    make_event: EventFactory,
    templates: Templates,
    locale: str,
    title: str,
    label: str,
) -> None:
    event = make_event(
        type=EventType.RESULT_CORRECTED,
        lifecycle=Lifecycle.CORRECT,
        subject=Subject(kind="result", key="LAB:F1", text="Potassium"),
        links={"corrects": "LAB:F1"},
    )
    await commit(store, make_entry, event)

    post = worker_for(store, templates, locale=locale).post_for(await claim_one(store))

    assert (post.title, post.label) == (title, label)
    assert post.event.patient.mrn is not None and post.event.patient.mrn.value == "…0001"
    assert post.event.patient.family == "T" and post.event.patient.birth_date is None


async def test_a_new_post_has_no_label(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, templates: Templates
) -> None:
    await commit(store, make_entry, make_event())
    assert worker_for(store, templates, locale="de").post_for(await claim_one(store)).label is None


async def test_post_takes_the_wording_of_its_channel_kind(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    doc = yaml.safe_load((mappings_dir() / "templates" / "en.yaml").read_text(encoding="utf-8"))
    doc["channels"] = {"slack": {"events": {"encounter.admitted": {"title": "New on the ward[: {patient}]"}}}}
    templates = Templates.from_documents({"en": doc})
    await commit(store, make_entry, make_event())
    claimed = await claim_one(store)

    assert worker_for(store, templates, kind="slack").post_for(claimed).title == "New on the ward: A.T."
    assert worker_for(store, templates, kind="inbox").post_for(claimed).title.startswith("Admitted: A.T.")


def test_a_worker_for_a_locale_without_templates_is_a_config_error(store: SQLiteStore, templates: Templates) -> None:
    with pytest.raises(ConfigError) as caught:
        worker_for(store, templates, locale="fr")
    assert caught.value.path == f"channels.{CHANNEL}.locale"


# -- a correction that raises the severity alerts as well as edits (issue #4 review, finding 4) ----------


def alert_case_post(lifecycle: Lifecycle, severity: Severity, *, original_ref: str | None) -> Post:
    event = ClinicalEvent(
        id="evt-1",
        type=EventType.RESULT_CORRECTED if lifecycle is Lifecycle.CORRECT else EventType.RESULT_RETRACTED,
        severity=severity,
        occurred_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        source="urn:test",
        thread_key="T",
        dedup_key="D",
        lifecycle=lifecycle,
        links={"corrects" if lifecycle is Lifecycle.CORRECT else "cancels": "LAB:F1"},
    )
    return Post("evt-1.chan", CHANNEL, event, "title", "summary", thread_ref="ts-root", original_ref=original_ref)


C, W, N = Severity.CRITICAL, Severity.WARNING, Severity.NOTICE


@pytest.mark.parametrize(
    ("lifecycle", "severity", "shown", "original_ref", "alerts"),
    [
        pytest.param(Lifecycle.CORRECT, C, N, "ts-1", True, id="normal-to-critical"),
        pytest.param(Lifecycle.CORRECT, W, N, "ts-1", True, id="more-severe"),
        # Review 2, finding 6: the post already shows a critical value and was alerted then; the same
        # correction re-sent, or another critical value, edits without a second broadcast.
        pytest.param(Lifecycle.CORRECT, C, C, "ts-1", False, id="critical-already-shown-only-edits"),
        pytest.param(Lifecycle.CORRECT, C, None, "ts-1", True, id="critical-whatever-was-shown"),
        pytest.param(Lifecycle.CORRECT, W, W, "ts-1", False, id="as-severe"),
        pytest.param(Lifecycle.CORRECT, N, C, "ts-1", False, id="critical-to-normal"),
        pytest.param(Lifecycle.CORRECT, W, None, "ts-1", False, id="not-critical-and-nothing-known"),
        pytest.param(Lifecycle.CORRECT, C, N, None, False, id="no-edit-it-is-a-new-post-anyway"),
        pytest.param(Lifecycle.CANCEL, C, N, "ts-1", False, id="a-withdrawal-only-strikes"),
    ],
)
def test_alert_for_a_correction_that_edits_a_less_severe_post(
    lifecycle: Lifecycle, severity: Severity, shown: Severity | None, original_ref: str | None, alerts: bool
) -> None:
    post = alert_case_post(lifecycle, severity, original_ref=original_ref)

    alert = alert_for(post, shown)

    if alerts:
        # The same post, as a reply in the thread: thread kept, nothing to edit.
        assert alert == replace(post, original_ref=None)
        assert alert.thread_ref == "ts-root"
    else:
        assert alert is None


async def shown_then_corrected(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, shown: Severity, corrected: Severity
) -> ClinicalEvent:
    """A result of severity ``shown`` delivered as ts-original, then its correction of severity ``corrected``."""
    original = make_event(type=EventType.RESULT_FINAL, severity=shown, subject=Subject(kind="result", key="LAB:F1"))
    await commit(store, make_entry, original)
    await store.mark_delivered((await claim_one(store)).id, external_id="ts-original", thread_root=True)
    correction = make_event(
        type=EventType.RESULT_CORRECTED,
        severity=corrected,
        subject=Subject(kind="result", key="LAB:F1"),
        lifecycle=Lifecycle.CORRECT,
        links={"corrects": "LAB:F1"},
    )
    await commit(store, make_entry, correction)
    return correction


class EditThenAlertAdapter(FakeAdapter):
    """Answers an edit with the edited post's id (as Slack does); ``alert_errors`` fail the alerts in turn."""

    def __init__(self, alert_errors: list[Exception] | None = None) -> None:
        super().__init__()
        self.alert_errors = list(alert_errors or [])
        #: ("edit", original_ref) or ("post", thread_ref) per call, failures included.
        self.kinds: list[tuple[str, str | None]] = []

    async def send(self, payload: Post) -> SendResult:
        if payload.original_ref is not None:
            self.kinds.append(("edit", payload.original_ref))
            self.sent.append(payload)
            return SendResult(external_id=payload.original_ref)
        self.kinds.append(("post", payload.thread_ref))
        if self.alert_errors:
            raise self.alert_errors.pop(0)
        self.sent.append(payload)
        return SendResult(external_id=f"ext-{len(self.sent)}")


@pytest.mark.parametrize(
    ("shown", "corrected", "alerts"),
    [
        pytest.param(N, C, True, id="normal-to-critical-edits-then-alerts"),
        pytest.param(C, N, False, id="critical-to-normal-only-edits"),
    ],
)
async def test_correction_edits_its_post_then_alerts_in_the_thread_as_a_delivery_of_its_own(
    store: SQLiteStore,
    make_entry: EntryFactory,
    make_event: EventFactory,
    make_worker: WorkerFactory,
    shown: Severity,
    corrected: Severity,
    alerts: bool,
) -> None:
    correction = await shown_then_corrected(store, make_entry, make_event, shown, corrected)
    adapter = EditThenAlertAdapter()
    worker = make_worker(adapter)

    edit = await claim_one(store)
    await worker.deliver(edit)

    # The edit goes alone, recorded under the edited post: the next correction edits that post again.
    assert adapter.kinds == [("edit", "ts-original")]
    status, attempts, _, _, external_id = await row(store, correction)
    assert (status, attempts, external_id) == ("delivered", 1, "ts-original")
    if not alerts:
        assert await store.claim(CHANNEL, now=time.time(), limit=10) == []
        assert await store.query("SELECT count(*) FROM deliveries WHERE event_id=?", (correction.id,)) == [(1,)]
        return
    # Its outcome made the alert's delivery, handed out next: a new post in the thread, of the same event.
    alert = await claim_one(store)
    assert (alert.id, alert.event.id, alert.original_ref, alert.original_refs) == (
        f"{edit.id}.alert",
        correction.id,
        None,
        (),
    )
    assert alert.thread_ref == "ts-original"
    await worker.deliver(alert)
    assert adapter.kinds == [("edit", "ts-original"), ("post", "ts-original")]
    assert all(p.event.id == correction.id for p in adapter.sent)
    assert (await row(store, correction, alert=True))[0::4] == ("delivered", "ext-2")
    assert await store.query("SELECT shadow_of FROM deliveries WHERE id=?", (alert.id,)) == [("ts-original",)]


async def test_alert_that_fails_is_retried_alone_and_leaves_the_edit_delivered(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    correction = await shown_then_corrected(store, make_entry, make_event, N, C)
    adapter = EditThenAlertAdapter([Retryable("timeout")])
    worker = make_worker(adapter)

    await worker.deliver(await claim_one(store))
    await worker.deliver(await claim_one(store))
    assert (await row(store, correction))[0::4] == ("delivered", "ts-original")
    status, attempts, _, last_error, _ = await row(store, correction, alert=True)
    assert (status, attempts, last_error) == ("pending", 1, "timeout")

    await worker.deliver(await claim_one(store, later=1.0))

    edit, alert = ("edit", "ts-original"), ("post", "ts-original")
    assert adapter.kinds == [edit, alert, alert], "the edit is not repeated"
    assert (await row(store, correction, alert=True))[0:2] == ("delivered", 2)
    assert (await row(store, correction))[0::4] == ("delivered", "ts-original")


async def test_alert_that_fails_for_good_is_a_dead_letter_of_its_own_and_replays_alone(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    correction = await shown_then_corrected(store, make_entry, make_event, N, C)
    adapter = EditThenAlertAdapter([Permanent("msg_too_long")])
    worker = make_worker(adapter)

    await worker.deliver(await claim_one(store))
    await worker.deliver(await claim_one(store))

    assert (await row(store, correction))[0::4] == ("delivered", "ts-original")
    status, _, _, last_error, _ = await row(store, correction, alert=True)
    assert (status, last_error) == ("dead", "msg_too_long")
    assert adapter.kinds == [("edit", "ts-original"), ("post", "ts-original")]

    assert await store.replay(None) == 1
    await worker.deliver(await claim_one(store))
    assert adapter.kinds == [("edit", "ts-original"), ("post", "ts-original"), ("post", "ts-original")]
    assert (await row(store, correction, alert=True))[0] == "delivered"


@pytest.mark.parametrize(
    ("lifecycle", "link"),
    [
        pytest.param(Lifecycle.CORRECT, "corrects", id="a-later-correction-edits-the-alert-too"),
        pytest.param(Lifecycle.CANCEL, "cancels", id="a-withdrawal-strikes-the-alert-too"),
    ],
)
async def test_what_follows_an_alerted_correction_changes_the_alert_with_the_post(
    store: SQLiteStore,
    make_entry: EntryFactory,
    make_event: EventFactory,
    make_worker: WorkerFactory,
    lifecycle: Lifecycle,
    link: str,
) -> None:
    await shown_then_corrected(store, make_entry, make_event, N, C)
    adapter = EditThenAlertAdapter()
    worker = make_worker(adapter)
    await worker.deliver(await claim_one(store))
    await worker.deliver(await claim_one(store))
    later = make_event(
        type=EventType.RESULT_CORRECTED if lifecycle is Lifecycle.CORRECT else EventType.RESULT_RETRACTED,
        severity=N,
        subject=Subject(kind="result", key="LAB:F1"),
        lifecycle=lifecycle,
        links={link: "LAB:F1"},
    )
    await commit(store, make_entry, later)

    claimed = await claim_one(store)
    assert (claimed.original_ref, claimed.original_refs, claimed.original_severity) == (
        "ts-original",
        ("ts-original", "ext-2"),
        C,
    )
    await worker.deliver(claimed)

    assert adapter.kinds[2:] == [("edit", "ts-original"), ("edit", "ext-2")]
    assert [p.event.id for p in adapter.sent[2:]] == [later.id, later.id]
    # Recorded under the post, not the alert: the next one finds both again, and no new alert (less severe).
    assert (await row(store, later))[0::4] == ("delivered", "ts-original")
    assert await store.claim(CHANNEL, now=time.time(), limit=10) == []


# --- the original is gone: the adapter posted the correction anew (review 2, findings 2 and 8) ---


class GoneOriginalAdapter(EditThenAlertAdapter):
    """Answers an edit as Slack's adapter does when the original was deleted: it posted anew, under a new id."""

    async def send(self, payload: Post) -> SendResult:
        if payload.original_ref is not None:
            self.kinds.append(("edit", payload.original_ref))
            self.sent.append(payload)
            return SendResult(external_id=f"ts-anew-{len(self.sent)}", posted_anew=True)
        return await super().send(payload)


async def test_a_correction_posted_anew_is_recorded_as_its_own_post_and_not_alerted_twice(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    correction = await shown_then_corrected(store, make_entry, make_event, N, C)
    adapter = GoneOriginalAdapter()

    await make_worker(adapter).deliver(await claim_one(store))

    # The new post is the alert (a critical reply is broadcast): no second post.
    assert adapter.kinds == [("edit", "ts-original")]
    status, _, _, _, external_id = await row(store, correction)
    assert (status, external_id) == ("delivered", "ts-anew-1")

    # The next correction edits the post that is there: the one posted anew, not the deleted original.
    again = make_event(
        type=EventType.RESULT_CORRECTED,
        severity=N,
        subject=Subject(kind="result", key="LAB:F1"),
        lifecycle=Lifecycle.CORRECT,
        links={"corrects": "LAB:F1"},
    )
    await commit(store, make_entry, again)
    claimed = await claim_one(store)
    assert (claimed.event.id, claimed.original_ref, claimed.original_severity) == (again.id, "ts-anew-1", C)


# --- review 2, finding 3: a withdrawal strikes every post of the subject, in one delivery ---


async def withdrawn_after_two_posts(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> ClinicalEvent:
    """A preliminary critical report delivered as ts-prelim, its final report as ts-final, then the withdrawal."""
    for type_, severity, external_id in (
        (EventType.RESULT_PRELIMINARY, C, "ts-prelim"),
        (EventType.RESULT_FINAL, N, "ts-final"),
    ):
        await commit(
            store, make_entry, make_event(type=type_, severity=severity, subject=Subject(kind="result", key="LAB:F1"))
        )
        await store.mark_delivered((await claim_one(store)).id, external_id=external_id, thread_root=False)
    withdrawal = make_event(
        type=EventType.RESULT_RETRACTED,
        subject=Subject(kind="result", key="LAB:F1"),
        lifecycle=Lifecycle.CANCEL,
        links={"cancels": "LAB:F1"},
    )
    await commit(store, make_entry, withdrawal)
    return withdrawal


async def test_a_withdrawal_strikes_each_post_of_the_report_and_records_the_latest(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    withdrawal = await withdrawn_after_two_posts(store, make_entry, make_event)
    adapter = EditThenAlertAdapter()

    await make_worker(adapter).deliver(await claim_one(store))

    assert adapter.kinds == [("edit", "ts-final"), ("edit", "ts-prelim")]
    assert all(p.event.id == withdrawal.id for p in adapter.sent)
    status, _, _, _, external_id = await row(store, withdrawal)
    assert (status, external_id) == ("delivered", "ts-final")


async def test_a_strike_that_fails_retries_the_whole_withdrawal(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    withdrawal = await withdrawn_after_two_posts(store, make_entry, make_event)

    class SecondStrikeFails(EditThenAlertAdapter):
        async def send(self, payload: Post) -> SendResult:
            if payload.original_ref == "ts-prelim" and not any(k == ("edit", "ts-prelim") for k in self.kinds):
                self.kinds.append(("edit", "ts-prelim"))
                raise Retryable("timeout")
            return await super().send(payload)

    adapter = SecondStrikeFails()
    worker = make_worker(adapter)
    await worker.deliver(await claim_one(store))
    assert (await row(store, withdrawal))[0] == "pending"

    await worker.deliver(await claim_one(store, later=1.0))

    assert adapter.kinds == [("edit", "ts-final"), ("edit", "ts-prelim")] * 2
    assert (await row(store, withdrawal))[0::4] == ("delivered", "ts-final")


async def test_an_adapter_that_cannot_edit_posts_the_withdrawal_once(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    withdrawal = await withdrawn_after_two_posts(store, make_entry, make_event)
    adapter = UnthreadedAdapter()

    await make_worker(adapter).deliver(await claim_one(store))

    assert [p.original_ref for p in adapter.sent] == [None]
    assert (await row(store, withdrawal))[0] == "delivered"


# --- review 2, finding 4b: a replayed correction that a later one replaced is not sent ---


async def test_a_replayed_alert_whose_post_a_later_correction_changed_is_not_sent(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, make_worker: WorkerFactory
) -> None:
    first = await shown_then_corrected(store, make_entry, make_event, N, C)
    # The edit lands, the alert fails for good: its own delivery is dead, the correction's is not.
    adapter = EditThenAlertAdapter([Permanent("msg_too_long")])
    worker = make_worker(adapter)
    await worker.deliver(await claim_one(store))
    await worker.deliver(await claim_one(store))
    assert (await row(store, first))[0] == "delivered"
    assert (await row(store, first, alert=True))[0] == "dead"
    second = make_event(
        type=EventType.RESULT_CORRECTED,
        severity=N,
        subject=Subject(kind="result", key="LAB:F1"),
        lifecycle=Lifecycle.CORRECT,
        links={"corrects": "LAB:F1"},
    )
    await commit(store, make_entry, second)
    await worker.deliver(await claim_one(store))
    sent = list(adapter.kinds)

    assert await store.replay(None) == 1
    async with running(worker):
        async with asyncio.timeout(2.0):
            while (await row(store, first, alert=True))[0] != "superseded":
                await asyncio.sleep(0.005)

    assert adapter.kinds == sent, "the post keeps the later correction: nothing is sent again"
    assert adapter.sent[-1].event.id == second.id
