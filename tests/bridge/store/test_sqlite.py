"""The embedded SQLite store on a real file: schema, group commit, dedup, claims, threads, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import StoreError
from bridge.events import ClinicalEvent, EventType, Identifier, Lifecycle, Patient, Severity, Subject
from bridge.hl7.reader import parse
from bridge.mapping import Mapper
from bridge.store import (
    ClaimedDelivery,
    CommitResult,
    DeliveryStatus,
    JournalEntry,
    MessageStatus,
    NewDelivery,
)
from bridge.store import sqlite as sqlite_module
from bridge.store.sqlite import MIGRATIONS, SQLiteStore

EventFactory = Callable[..., ClinicalEvent]
EntryFactory = Callable[..., JournalEntry]

DAY = 86_400.0
RECEIVED = datetime(2024, 1, 15, 11, 0, tzinfo=UTC)


def routed(
    *events: ClinicalEvent, channels: tuple[str, ...] = ("chan",)
) -> list[tuple[ClinicalEvent, list[NewDelivery]]]:
    return [(event, [NewDelivery(c) for c in channels]) for event in events]


async def claim(
    store: SQLiteStore, channel: str = "chan", *, limit: int = 10, later: float = 0.0
) -> list[ClaimedDelivery]:
    return await store.claim(channel, now=time.time() + later, limit=limit)


async def state(store: SQLiteStore, delivery_id: str) -> tuple[str, int]:
    rows = await store.query("SELECT status, attempts FROM deliveries WHERE id=?", (delivery_id,))
    assert len(rows) == 1
    return str(rows[0][0]), int(rows[0][1])


async def count(store: SQLiteStore, table: str) -> int:
    rows = await store.query(f"SELECT count(*) FROM {table}")
    return int(rows[0][0])


async def on_writer(store: SQLiteStore, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    # The writer's own connection is the one whose settings make commits durable; there is
    # no public way to reach it, so these tests use the private job queue on purpose.
    return await store._write(fn)


async def unhung(awaitable: Awaitable[Any]) -> Any:
    """Await a store call that a dead writer would leave hanging forever; a hang fails the test instead."""
    return await asyncio.wait_for(awaitable, timeout=5.0)


@contextlib.asynccontextmanager
async def writer_held(store: SQLiteStore) -> AsyncIterator[None]:
    """Keep the writer inside one job, so that writes queued meanwhile wait and land in one batch."""
    started, gate = threading.Event(), threading.Event()

    def hold(_conn: sqlite3.Connection) -> None:
        started.set()
        gate.wait(5.0)

    blocker = asyncio.ensure_future(on_writer(store, hold))
    assert await asyncio.to_thread(started.wait, 5.0)
    try:
        yield
    finally:
        gate.set()
        await unhung(blocker)


def hl7(msh7: str, *segments: str, terminator: str = "\r") -> bytes:
    """A message from APP/HOSP with control id C1 whose MSH-7 and body vary."""
    msh = f"MSH|^~\\&|APP|HOSP|||{msh7}||ORU^R01|C1|P|2.5"
    return terminator.join((msh, *segments)).encode() + terminator.encode()


async def deliver_in_order(store: SQLiteStore, external_ids: list[str], channel: str = "chan") -> None:
    """Claim the single head of the thread and mark it delivered, once per external id."""
    for external_id in external_ids:
        (head,) = await claim(store, channel)
        await store.mark_delivered(head.id, external_id=external_id, thread_root=False)


# -- schema -------------------------------------------------------------------------------


async def test_connections_use_wal_and_synchronous_full(store: SQLiteStore) -> None:
    assert await store.query("PRAGMA journal_mode") == [("wal",)]
    assert await store.query("PRAGMA synchronous") == [(2,)]  # 2 = FULL
    assert await on_writer(store, lambda c: c.execute("PRAGMA journal_mode").fetchone()) == ("wal",)
    assert await on_writer(store, lambda c: c.execute("PRAGMA synchronous").fetchone()) == (2,)


async def test_new_database_is_at_the_latest_schema_version(store: SQLiteStore) -> None:
    assert await store.query("PRAGMA user_version") == [(len(MIGRATIONS),)]


async def test_reopening_keeps_data_and_schema_version(
    db_path: Path, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    first = SQLiteStore(db_path)
    await first.open()
    await first.commit_message(make_entry(), routed(make_event()), dedup_window=DAY)
    await first.close()

    # Re-running the first migration would fail on CREATE TABLE of an existing table.
    second = SQLiteStore(db_path)
    await second.open()
    try:
        assert await second.query("PRAGMA user_version") == [(len(MIGRATIONS),)]
        assert await count(second, "journal") == 1
        assert await count(second, "deliveries") == 1
    finally:
        await second.close()


async def test_upgrade_runs_only_the_migrations_not_yet_applied(
    db_path: Path, make_entry: EntryFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = SQLiteStore(db_path)
    await first.open()
    await first.journal(make_entry())
    await first.close()

    monkeypatch.setattr(sqlite_module, "MIGRATIONS", (*MIGRATIONS, "CREATE TABLE added_later (x INTEGER);"))
    second = SQLiteStore(db_path)
    await second.open()
    try:
        assert await second.query("PRAGMA user_version") == [(len(MIGRATIONS) + 1,)]
        assert await count(second, "added_later") == 0
        assert await count(second, "journal") == 1
    finally:
        await second.close()


async def test_database_from_a_newer_version_refuses_to_open(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    conn.close()
    newer = SQLiteStore(db_path)
    with pytest.raises(StoreError, match="newer"):
        await newer.open()
    await newer.close()


async def test_store_that_is_not_open_raises_store_error(db_path: Path, make_entry: EntryFactory) -> None:
    closed = SQLiteStore(db_path)
    with pytest.raises(StoreError):
        await closed.journal(make_entry())
    with pytest.raises(StoreError):
        await closed.inbox_items()


async def test_store_is_healthy_only_while_its_writer_runs(db_path: Path) -> None:
    s = SQLiteStore(db_path)
    assert not s.healthy
    await s.open()
    assert s.healthy
    await s.close()
    assert not s.healthy


@pytest.mark.parametrize("lease_seconds", [0.0, -1.0])
async def test_lease_must_be_positive(db_path: Path, lease_seconds: float) -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        SQLiteStore(db_path, lease_seconds=lease_seconds)


async def test_digest_migration_keeps_rows_from_before_it_with_an_empty_digest(
    db_path: Path, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    conn = sqlite3.connect(db_path)
    for number, script in enumerate(MIGRATIONS[:2], start=1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
    conn.execute(
        "INSERT INTO journal (id, received_at, listener, transport, control_id, sending_application,"
        " sending_facility, status, raw) VALUES ('old', ?, 'test', 'mllp', 'C1', 'APP', 'HOSP', 'accepted', ?)",
        (time.time(), hl7("20250101", "OBX|1||K^4.1")),
    )
    conn.commit()
    conn.close()
    upgraded = SQLiteStore(db_path)
    await upgraded.open()
    try:
        # The old row's body is unknown: the triple alone decides, as it did when the row was written.
        result = await upgraded.commit_message(
            make_entry(control_id="C1", sending_application="APP", sending_facility="HOSP", raw=hl7("1", "X|2")),
            routed(make_event()),
            dedup_window=DAY,
        )
        assert result == CommitResult(duplicate=True)
        assert await upgraded.query("SELECT body_digest FROM journal WHERE id='old'") == [("",)]
    finally:
        await upgraded.close()


# -- the writer ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cancelled", "written"),
    [
        # Cancelled before the writer reached it: skipped, and the writer goes on.
        pytest.param("queued", {"running"}, id="queued-job"),
        # Cancelled while running: it completes (nobody gets its result), and the writer goes on.
        pytest.param("running", {"running", "queued"}, id="running-job"),
    ],
)
async def test_cancelled_caller_does_not_stop_the_writer(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, cancelled: str, written: set[str]
) -> None:
    # Regression: resolving the future of a cancelled caller raised InvalidStateError in the writer
    # thread, which died; every later write then waited forever.
    started, gate = threading.Event(), threading.Event()

    def mark(conn: sqlite3.Connection, key: str) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, x'00')", (key,))

    def running(conn: sqlite3.Connection) -> None:
        started.set()
        gate.wait(5.0)
        mark(conn, "running")

    jobs = {"running": asyncio.ensure_future(on_writer(store, running))}
    assert await asyncio.to_thread(started.wait, 5.0)
    jobs["queued"] = asyncio.ensure_future(on_writer(store, lambda c: mark(c, "queued")))
    await asyncio.sleep(0)  # the second job is queued behind the running one
    jobs[cancelled].cancel()
    with pytest.raises(asyncio.CancelledError):
        await jobs[cancelled]
    gate.set()
    await unhung(asyncio.gather(*(job for name, job in jobs.items() if name != cancelled)))

    later = await unhung(store.commit_message(make_entry(), routed(make_event()), dedup_window=DAY))

    assert len(later.delivery_ids) == 1
    assert store.healthy
    assert {r[0] for r in await store.query("SELECT key FROM meta WHERE key IN ('running', 'queued')")} == written


class _Escapes(BaseException):
    """Not an ``Exception``: gets past the per-job handler, as nothing ordinary does."""


async def test_batch_that_fails_unexpectedly_fails_its_callers_and_the_writer_goes_on(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    def escape(_conn: sqlite3.Connection) -> None:
        raise _Escapes

    async with writer_held(store):
        neighbour = asyncio.ensure_future(store.commit_message(make_entry(), routed(make_event()), dedup_window=DAY))
        bad = asyncio.ensure_future(on_writer(store, escape))
        await asyncio.sleep(0)  # both queue up behind the held job: one batch

    results = await unhung(asyncio.gather(neighbour, bad, return_exceptions=True))

    assert [type(r) for r in results] == [StoreError, StoreError]
    assert await count(store, "journal") == 0  # the whole batch was rolled back
    later = await unhung(store.commit_message(make_entry(), routed(make_event()), dedup_window=DAY))
    assert len(later.delivery_ids) == 1
    assert store.healthy


# -- commit_message -----------------------------------------------------------------------


async def test_commit_writes_journal_events_and_deliveries_together(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    entry = make_entry()
    routed_event, unrouted_event = make_event(), make_event()
    result = await store.commit_message(
        entry,
        [*routed(routed_event, channels=("a", "b")), (unrouted_event, [])],
        dedup_window=DAY,
    )

    assert result == CommitResult(duplicate=False, delivery_ids=result.delivery_ids, channels=("a", "b"))
    assert len(result.delivery_ids) == 2
    assert await store.query("SELECT id, status, control_id FROM journal") == [
        (entry.id, MessageStatus.ACCEPTED.value, entry.control_id)
    ]
    assert sorted(await store.query("SELECT id, message_id, status FROM events")) == sorted(
        [(routed_event.id, entry.id, "routed"), (unrouted_event.id, entry.id, "unrouted")]
    )
    deliveries = await store.query("SELECT id, event_id, channel, status, attempts FROM deliveries ORDER BY channel")
    assert [(d[1], d[2], d[3], d[4]) for d in deliveries] == [
        (routed_event.id, "a", "pending", 0),
        (routed_event.id, "b", "pending", 0),
    ]
    assert sorted(d[0] for d in deliveries) == sorted(result.delivery_ids)


async def test_failing_job_in_a_batch_does_not_undo_the_others(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    taken = make_event()
    await store.commit_message(make_entry(), routed(taken), dedup_window=DAY)

    # Hold the writer inside one job so that every commit below queues up and lands in one batch.
    started, gate = threading.Event(), threading.Event()

    def hold(_conn: sqlite3.Connection) -> None:
        started.set()
        gate.wait(5.0)

    blocker = asyncio.ensure_future(on_writer(store, hold))
    assert await asyncio.to_thread(started.wait, 5.0)
    commits_before = store.commits

    good = [(make_entry(), make_event()) for _ in range(10)]
    clash = make_entry()
    tasks = [asyncio.ensure_future(store.commit_message(e, routed(ev), dedup_window=DAY)) for e, ev in good[:5]]
    tasks.append(asyncio.ensure_future(store.commit_message(clash, routed(make_event(id=taken.id)), dedup_window=DAY)))
    tasks += [asyncio.ensure_future(store.commit_message(e, routed(ev), dedup_window=DAY)) for e, ev in good[5:]]
    await asyncio.sleep(0)  # every task runs up to its queued job
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await blocker

    assert store.commits - commits_before == 2  # the blocker's batch, then all eleven jobs in one
    failure = results.pop(5)
    assert isinstance(failure, StoreError)
    assert isinstance(failure.__cause__, sqlite3.IntegrityError)
    assert all(isinstance(r, CommitResult) and not r.duplicate for r in results)
    journaled = {r[0] for r in await store.query("SELECT id FROM journal")}
    assert clash.id not in journaled  # its journal row went with its savepoint
    assert {e.id for e, _ in good} <= journaled
    assert await count(store, "events") == 11
    assert await count(store, "deliveries") == 11


async def test_group_commit_batches_concurrent_writes(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    before = store.commits
    results = await asyncio.gather(
        *(store.commit_message(make_entry(), routed(make_event()), dedup_window=DAY) for _ in range(200))
    )
    assert len({r.delivery_ids for r in results}) == 200
    assert await count(store, "deliveries") == 200
    assert store.commits - before < 200


# -- dedup --------------------------------------------------------------------------------


async def test_same_control_id_within_window_is_journaled_as_duplicate_and_creates_nothing(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    first = make_entry(control_id="C1")
    await store.commit_message(first, routed(make_event()), dedup_window=DAY)
    again = make_entry(control_id="C1")

    result = await store.commit_message(again, routed(make_event()), dedup_window=DAY)

    assert result == CommitResult(duplicate=True, delivery_ids=())
    assert await store.query("SELECT status FROM journal WHERE id=?", (again.id,)) == [("duplicate",)]
    assert await count(store, "events") == 1
    assert await count(store, "deliveries") == 1


@pytest.mark.parametrize("differs", ["control_id", "sending_application", "sending_facility"])
async def test_message_differing_in_one_of_msh3_msh4_msh10_is_not_a_duplicate(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, differs: str
) -> None:
    key = {"control_id": "C1", "sending_application": "APP", "sending_facility": "FAC"}
    await store.commit_message(make_entry(**key), routed(make_event()), dedup_window=DAY)

    result = await store.commit_message(make_entry(**{**key, differs: "OTHER"}), routed(make_event()), dedup_window=DAY)

    assert not result.duplicate
    assert len(result.delivery_ids) == 1


@pytest.mark.parametrize(
    ("age", "window"),
    [
        pytest.param(0.001, 0.0, id="window-zero"),
        pytest.param(3600.0, 60.0, id="older-than-window"),
    ],
)
async def test_same_control_id_outside_window_is_accepted_again(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, age: float, window: float
) -> None:
    now = time.time()
    await store.commit_message(
        make_entry(control_id="C1", received_at=now - age), routed(make_event()), dedup_window=window
    )

    result = await store.commit_message(
        make_entry(control_id="C1", received_at=now), routed(make_event()), dedup_window=window
    )

    assert not result.duplicate
    assert len(result.delivery_ids) == 1
    assert await store.query("SELECT DISTINCT status FROM journal") == [("accepted",)]


async def test_resend_after_a_rejection_is_not_a_duplicate(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    await store.journal(make_entry(control_id="C1", status=MessageStatus.REJECTED, ack_code="AE"))

    result = await store.commit_message(make_entry(control_id="C1"), routed(make_event()), dedup_window=DAY)

    assert not result.duplicate
    assert len(result.delivery_ids) == 1


@pytest.mark.parametrize(
    ("first", "again", "duplicate", "reused"),
    [
        pytest.param(
            hl7("20250101120000", "OBX|1||K^4.1"),
            hl7("20250101120500", "OBX|1||K^4.1"),
            True,
            False,
            id="resend-with-fresh-msh7",
        ),
        pytest.param(
            hl7("20250101120000", "OBX|1||K^4.1"),
            hl7("20250101120000", "OBX|1||K^4.1", terminator="\r\n"),
            True,
            False,
            id="resend-with-crlf-terminators",
        ),
        pytest.param(
            hl7("20250101120000", "OBX|1||K^4.1"),
            hl7("20250101120000", "OBX|1||K^5.9"),
            False,
            True,
            id="reused-control-id-other-body",
        ),
    ],
)
async def test_duplicate_needs_the_same_body_after_msh_as_well_as_the_same_control_id(
    store: SQLiteStore,
    make_entry: EntryFactory,
    make_event: EventFactory,
    first: bytes,
    again: bytes,
    duplicate: bool,
    reused: bool,
) -> None:
    # Regression: a sender whose counter reset reused a control id and its new message was dropped.
    key = {"control_id": "C1", "sending_application": "APP", "sending_facility": "HOSP"}
    await store.commit_message(make_entry(**key, raw=first), routed(make_event()), dedup_window=DAY)

    result = await store.commit_message(make_entry(**key, raw=again), routed(make_event()), dedup_window=DAY)

    assert (result.duplicate, result.control_id_reused) == (duplicate, reused)
    assert len(result.delivery_ids) == (0 if duplicate else 1)


async def test_resend_of_a_message_that_reused_a_control_id_is_a_duplicate(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    key = {"control_id": "C1", "sending_application": "APP", "sending_facility": "HOSP"}
    await store.commit_message(make_entry(**key, raw=hl7("1", "OBX|1||K^4.1")), routed(make_event()), dedup_window=DAY)
    second = hl7("2", "OBX|1||K^5.9")
    await store.commit_message(make_entry(**key, raw=second), routed(make_event()), dedup_window=DAY)

    result = await store.commit_message(make_entry(**key, raw=second), routed(make_event()), dedup_window=DAY)

    assert result == CommitResult(duplicate=True)
    assert await count(store, "deliveries") == 2


async def test_same_event_dedup_key_within_window_is_duplicate_without_deliveries(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    await store.commit_message(make_entry(), routed(make_event(dedup_key="LAB|1")), dedup_window=DAY)
    repeat = make_event(dedup_key="LAB|1")

    result = await store.commit_message(make_entry(), routed(repeat), dedup_window=DAY)

    assert result == CommitResult(duplicate=False, delivery_ids=())
    assert await store.query("SELECT status FROM events WHERE id=?", (repeat.id,)) == [("duplicate",)]
    assert await count(store, "deliveries") == 1


async def test_same_event_dedup_key_outside_window_is_routed_again(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    now = time.time()
    await store.commit_message(
        make_entry(received_at=now - 3600), routed(make_event(dedup_key="LAB|1")), dedup_window=60
    )
    repeat = make_event(dedup_key="LAB|1")

    result = await store.commit_message(make_entry(received_at=now), routed(repeat), dedup_window=60)

    assert len(result.delivery_ids) == 1
    assert await store.query("SELECT status FROM events WHERE id=?", (repeat.id,)) == [("routed",)]


# -- claim --------------------------------------------------------------------------------


async def test_claim_hands_out_only_the_oldest_open_delivery_of_a_thread(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    first, second, third = make_event(), make_event(), make_event()
    await store.commit_message(make_entry(), routed(first, second), dedup_window=DAY)
    await store.commit_message(make_entry(), routed(third), dedup_window=DAY)

    assert [c.event.id for c in await claim(store)] == [first.id]
    assert await claim(store) == []  # the head is in flight: the thread waits


async def test_claim_hands_out_heads_of_different_threads_together(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    a1, a2 = make_event(thread_key="A"), make_event(thread_key="A")
    b1 = make_event(thread_key="B")
    await store.commit_message(make_entry(), routed(a1, b1, a2), dedup_window=DAY)

    assert [c.event.id for c in await claim(store)] == [a1.id, b1.id]


async def test_claim_respects_channel_and_limit(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    a, b = make_event(thread_key="A"), make_event(thread_key="B")
    await store.commit_message(make_entry(), routed(a, b, channels=("one", "two")), dedup_window=DAY)

    claimed = await claim(store, "one", limit=1)

    assert [(c.channel, c.event.id) for c in claimed] == [("one", a.id)]
    assert [(c.channel, c.event.id) for c in await claim(store, "two")] == [("two", a.id), ("two", b.id)]


async def test_dead_head_does_not_block_the_rest_of_its_thread(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    first, second = make_event(), make_event()
    await store.commit_message(make_entry(), routed(first, second), dedup_window=DAY)
    (head,) = await claim(store)
    await store.mark_dead(head.id, error="poison")

    assert [c.event.id for c in await claim(store)] == [second.id]


async def test_pending_head_waiting_for_retry_blocks_its_thread(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    first, second = make_event(), make_event()
    await store.commit_message(make_entry(), routed(first, second), dedup_window=DAY)
    (head,) = await claim(store)
    await store.mark_retry(head.id, next_attempt_at=time.time() + 3600, error="rate limited")

    assert await claim(store) == []
    assert [c.event.id for c in await claim(store, later=7200)] == [first.id]


async def test_claimed_delivery_is_in_flight_with_attempts_counted(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    await store.commit_message(make_entry(), routed(make_event()), dedup_window=DAY)

    (claimed,) = await claim(store)
    assert claimed.attempts == 1
    assert await state(store, claimed.id) == ("in_flight", 1)

    await store.mark_retry(claimed.id, next_attempt_at=0.0, error="try again")
    assert await state(store, claimed.id) == ("pending", 1)
    (again,) = await claim(store)
    assert again.attempts == 2
    assert await state(store, claimed.id) == ("in_flight", 2)


async def test_reclaim_in_flight_returns_deliveries_to_pending(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    await store.commit_message(
        make_entry(), routed(make_event(thread_key="A"), make_event(thread_key="B")), dedup_window=DAY
    )
    claimed = await claim(store)

    assert await store.reclaim_in_flight() == 2

    assert [await state(store, c.id) for c in claimed] == [("pending", 1), ("pending", 1)]
    assert [c.id for c in await claim(store)] == [c.id for c in claimed]


async def test_retry_does_not_revive_a_delivery_killed_by_disabling_its_channel(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    # Regression: a send still in flight when another one disabled the channel came back as pending.
    await store.commit_message(make_entry(), routed(make_event()), dedup_window=DAY)
    (claimed,) = await claim(store)
    await store.disable_channel("chan", reason="token revoked")

    await store.mark_retry(claimed.id, next_attempt_at=0.0, error="rate limited")

    assert await state(store, claimed.id) == ("dead", 1)
    assert await claim(store) == []


async def test_claim_walks_the_queue_in_event_order_without_sorting_the_backlog(store: SQLiteStore) -> None:
    plan = await store.query(
        f"EXPLAIN QUERY PLAN {sqlite_module._CLAIM_SQL}", ("chan", "pending", 0.0, "pending", "in_flight", 10)
    )
    details = [str(row[3]) for row in plan]

    assert any("deliveries_queue" in d for d in details)
    assert not any("TEMP B-TREE" in d for d in details)


async def test_delivery_in_flight_past_its_lease_is_claimed_again(
    db_path: Path, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    # Regression: a send whose outcome could not be recorded stayed in flight, its thread blocked, until restart.
    leased = SQLiteStore(db_path, lease_seconds=60.0)
    await leased.open()
    try:
        await leased.commit_message(
            make_entry(), routed(make_event(), make_event(), channels=("chan", "other")), dedup_window=DAY
        )
        (head,) = await claim(leased)
        (other,) = await claim(leased, "other")
        assert await claim(leased, later=30) == []  # within the lease: still in flight, the thread waits

        (again,) = await claim(leased, later=120)

        assert (again.id, again.attempts) == (head.id, 2)
        assert await state(leased, head.id) == ("in_flight", 2)
        assert await state(leased, other.id) == ("in_flight", 1)  # another channel's lease is its own claim's
    finally:
        await leased.close()


@pytest.mark.parametrize("body", ['{"id": "evt-0001"}', "not json at all"])
async def test_undecodable_event_body_is_dead_lettered_and_the_others_are_claimed(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, body: str
) -> None:
    # Regression: one bad body made every claim of its channel fail, forever.
    broken, fine, behind = make_event(thread_key="A"), make_event(thread_key="B"), make_event(thread_key="A")
    await store.commit_message(make_entry(), routed(broken, fine, behind), dedup_window=DAY)
    await on_writer(store, lambda c: c.execute("UPDATE events SET body=? WHERE id=?", (body, broken.id)))

    assert [c.event.id for c in await claim(store)] == [fine.id]

    assert await store.query("SELECT status, last_error FROM deliveries WHERE event_id=?", (broken.id,)) == [
        ("dead", "undecodable event body (ValidationError)")
    ]
    assert await store.query("SELECT action, channel, event_id FROM audit") == [("delivery.dead", "chan", broken.id)]
    assert [c.event.id for c in await claim(store)] == [behind.id]  # a dead head blocks nothing


# -- threads and original posts -----------------------------------------------------------


async def test_thread_root_is_stored_and_handed_to_the_next_claim_in_that_channel(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    await store.commit_message(
        make_entry(), routed(make_event(), make_event(), channels=("one", "two")), dedup_window=DAY
    )
    (root,) = await claim(store, "one")
    assert root.thread_ref is None
    await store.mark_delivered(root.id, external_id="ts-root", thread_root=True)

    (reply,) = await claim(store, "one")
    (other_channel,) = await claim(store, "two")

    assert reply.thread_ref == "ts-root"
    assert other_channel.thread_ref is None
    assert await state(store, root.id) == ("delivered", 1)


async def test_delivery_that_is_not_a_thread_root_starts_no_thread(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    await store.commit_message(make_entry(), routed(make_event(), make_event()), dedup_window=DAY)
    (first,) = await claim(store)
    await store.mark_delivered(first.id, external_id="ts-1", thread_root=False)

    (second,) = await claim(store)

    assert second.thread_ref is None


async def test_correction_finds_the_latest_delivered_post_of_its_subject(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    def result(type_: EventType, key: str, **extra: Any) -> ClinicalEvent:
        return make_event(type=type_, subject=Subject(kind="result", key=key), **extra)

    await store.commit_message(
        make_entry(),
        routed(
            result(EventType.RESULT_FINAL, "ORD-2"),
            result(EventType.RESULT_PRELIMINARY, "ORD-1"),
            result(EventType.RESULT_FINAL, "ORD-1"),
        ),
        dedup_window=DAY,
    )
    await deliver_in_order(store, ["ts-other", "ts-prelim", "ts-final"])
    correction = result(EventType.RESULT_CORRECTED, "ORD-1", lifecycle=Lifecycle.CORRECT, links={"corrects": "ORD-1"})
    await store.commit_message(make_entry(), routed(correction), dedup_window=DAY)

    (claimed,) = await claim(store)

    assert claimed.event.id == correction.id
    # Regression: the first post (the preliminary report) was edited, and the final one stood uncorrected.
    assert claimed.original_ref == "ts-final"


async def test_cancellation_finds_the_delivered_post_of_the_cancelled_type_in_its_thread(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    await store.commit_message(
        make_entry(),
        routed(
            make_event(type=EventType.ENCOUNTER_ADMITTED, thread_key="OTHER"),
            make_event(type=EventType.ENCOUNTER_ADMITTED),
            make_event(type=EventType.ENCOUNTER_TRANSFERRED),
        ),
        dedup_window=DAY,
    )
    other_thread, this_thread = await claim(store)
    await store.mark_delivered(other_thread.id, external_id="ts-other-admit", thread_root=False)
    await store.mark_delivered(this_thread.id, external_id="ts-admit", thread_root=False)
    await deliver_in_order(store, ["ts-transfer"])
    cancel = make_event(
        type=EventType.ENCOUNTER_CANCELLED,
        lifecycle=Lifecycle.CANCEL,
        links={"cancels": "encounter.admitted"},
    )
    await store.commit_message(make_entry(), routed(cancel), dedup_window=DAY)

    (claimed,) = await claim(store)

    assert claimed.event.id == cancel.id
    assert claimed.original_ref == "ts-admit"


@pytest.mark.parametrize("posted", [EventType.ENCOUNTER_ADMITTED, EventType.ENCOUNTER_ARRIVED])
async def test_cancellation_naming_several_event_types_finds_whichever_was_posted(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, posted: EventType
) -> None:
    # Regression: "encounter.admitted,encounter.arrived" (an A11) was taken for one subject key.
    await store.commit_message(
        make_entry(),
        routed(make_event(type=posted), make_event(type=EventType.ENCOUNTER_TRANSFERRED)),
        dedup_window=DAY,
    )
    await deliver_in_order(store, ["ts-original", "ts-transfer"])
    cancel = make_event(
        type=EventType.ENCOUNTER_CANCELLED,
        lifecycle=Lifecycle.CANCEL,
        links={"cancels": "encounter.admitted,encounter.arrived"},
    )
    await store.commit_message(make_entry(), routed(cancel), dedup_window=DAY)

    (claimed,) = await claim(store)

    assert claimed.original_ref == "ts-original"


async def test_cancel_target_not_made_only_of_event_types_is_a_subject_key(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    key = "ORD-1,encounter.admitted"
    await store.commit_message(
        make_entry(),
        routed(
            make_event(type=EventType.ENCOUNTER_ADMITTED),
            make_event(type=EventType.ORDER_PLACED, subject=Subject(kind="order", key=key)),
        ),
        dedup_window=DAY,
    )
    await deliver_in_order(store, ["ts-admit", "ts-order"])
    cancel = make_event(
        type=EventType.ORDER_CANCELLED,
        subject=Subject(kind="order", key=key),
        lifecycle=Lifecycle.CANCEL,
        links={"cancels": key},
    )
    await store.commit_message(make_entry(), routed(cancel), dedup_window=DAY)

    (claimed,) = await claim(store)

    assert claimed.original_ref == "ts-order"


async def test_mapped_order_change_and_cancellation_refer_to_the_post_of_the_order(
    store: SQLiteStore, make_entry: EntryFactory
) -> None:
    # orders.yaml links by the order's subject key (placer number in its namespace), not by event type:
    # another order of the same visit, or an earlier change of this one, is never the target.
    mapper = Mapper.load()

    def mapped(control: str, orc: str) -> ClinicalEvent:
        segments = (
            f"MSH|^~\\&|CPOE|TESTHOSP|LAB|TESTHOSP|20240115103000||ORM^O01|{control}|P|2.5.1",
            "PID|1||12345^^^TESTHOSP^MR||Testpatient^Alpha",
            "PV1|1|I|ICU^1^A" + "|" * 16 + "V555",
            orc,
            "OBR|1|||CBC^Blood count",
        )
        message = parse(("\r".join(segments) + "\r").encode())
        (event,) = mapper.map_hl7(message, message_id=control, source="urn:test", received_at=RECEIVED, origin={})
        return event

    for control, orc, external_id in (("M1", "ORC|NW|PL1^CPOE", "ts-pl1"), ("M2", "ORC|NW|PL2^CPOE", "ts-pl2")):
        await store.commit_message(make_entry(), routed(mapped(control, orc)), dedup_window=DAY)
        await deliver_in_order(store, [external_id])
    refs: list[str | None] = []
    for control, orc in (("M3", "ORC|XO|PL1^CPOE|F1^LAB"), ("M4", "ORC|CA|PL1^CPOE|F1^LAB")):
        await store.commit_message(make_entry(), routed(mapped(control, orc)), dedup_window=DAY)
        (claimed,) = await claim(store)
        refs.append(claimed.original_ref)
        # An edit is recorded under the id of the post it edited (recorded_send): it made no post of its own.
        await store.mark_delivered(claimed.id, external_id=claimed.original_ref, thread_root=False)

    assert refs == ["ts-pl1", "ts-pl1"]


@pytest.mark.parametrize(
    ("lifecycle", "links"),
    [
        pytest.param(Lifecycle.CORRECT, {"corrects": "V-TEST-0001"}, id="correct"),
        pytest.param(Lifecycle.CANCEL, {"cancels": "encounter.admitted"}, id="cancel"),
    ],
)
async def test_no_original_ref_when_the_original_was_never_delivered(
    store: SQLiteStore,
    make_entry: EntryFactory,
    make_event: EventFactory,
    lifecycle: Lifecycle,
    links: dict[str, str],
) -> None:
    await store.commit_message(make_entry(), routed(make_event(type=EventType.ENCOUNTER_ADMITTED)), dedup_window=DAY)
    (original,) = await claim(store)
    await store.mark_dead(original.id, error="gone")
    await store.commit_message(make_entry(), routed(make_event(lifecycle=lifecycle, links=links)), dedup_window=DAY)

    (claimed,) = await claim(store)

    assert claimed.original_ref is None


@pytest.mark.parametrize(
    ("audit_detail", "audited"),
    [pytest.param("phi=minimal", True, id="with-detail"), pytest.param(None, False, id="without")],
)
async def test_mark_delivered_writes_the_disclosure_audit_row_when_given_its_detail(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, audit_detail: str | None, audited: bool
) -> None:
    event = make_event()
    await store.commit_message(make_entry(), routed(event), dedup_window=DAY)
    (claimed,) = await claim(store)

    await store.mark_delivered(claimed.id, external_id="ts-1", thread_root=False, audit_detail=audit_detail)

    assert await state(store, claimed.id) == ("delivered", 1)
    expected = [("disclosed", "chan", event.id, audit_detail)] if audited else []
    assert await store.query("SELECT action, channel, event_id, detail FROM audit") == expected


# -- disabled channels and dead letters ---------------------------------------------------


async def test_disable_channel_kills_open_deliveries_and_new_ones(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    first = await store.commit_message(
        make_entry(),
        routed(make_event(thread_key="A"), make_event(thread_key="B"), channels=("bad", "good")),
        dedup_window=DAY,
    )
    await claim(store, "bad", limit=1)  # one in flight, one pending: both are open

    assert await store.disable_channel("bad", reason="invalid_auth") == 2
    later = await store.commit_message(make_entry(), routed(make_event(), channels=("bad", "good")), dedup_window=DAY)

    assert await store.disabled_channels() == {"bad": "invalid_auth"}
    assert len(first.delivery_ids) + len(later.delivery_ids) == 6
    assert await store.query(
        "SELECT channel, status, count(*) FROM deliveries GROUP BY channel, status ORDER BY channel"
    ) == [("bad", "dead", 3), ("good", "pending", 3)]
    assert await claim(store, "bad") == []
    dead = await store.dead_letters()
    assert len(dead) == 3
    assert {(d.channel, d.status) for d in dead} == {("bad", DeliveryStatus.DEAD)}
    assert all("invalid_auth" in d.last_error for d in dead)


async def test_replay_of_chosen_ids_makes_them_pending_and_reenables_the_channel(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    result = await store.commit_message(
        make_entry(), routed(make_event(thread_key="A"), make_event(thread_key="B")), dedup_window=DAY
    )
    await store.disable_channel("chan", reason="invalid_auth")
    chosen, left = result.delivery_ids

    assert await store.replay([chosen]) == 1

    assert await state(store, chosen) == ("pending", 0)
    assert await state(store, left) == ("dead", 0)
    assert await store.disabled_channels() == {}
    assert [c.id for c in await claim(store)] == [chosen]
    assert [d.id for d in await store.dead_letters()] == [left]


async def test_replay_of_all_makes_every_dead_letter_pending(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    result = await store.commit_message(
        make_entry(), routed(make_event(thread_key="A"), make_event(thread_key="B")), dedup_window=DAY
    )
    for claimed in await claim(store):
        await store.mark_dead(claimed.id, error="attempts exhausted")

    assert await store.replay(None) == 2

    assert [await state(store, d) for d in result.delivery_ids] == [("pending", 0), ("pending", 0)]
    assert await store.dead_letters() == []
    actions = [r[0] for r in await store.query("SELECT action FROM audit")]
    assert actions == ["dlq.replayed"]


# -- inbox --------------------------------------------------------------------------------


async def test_inbox_append_is_idempotent_per_delivery_id(store: SQLiteStore) -> None:
    first = await store.inbox_append("d1", {"title": "Admitted"})
    again = await store.inbox_append("d1", {"title": "Admitted"})

    assert again == first
    assert [(i["id"], i["title"]) for i in await store.inbox_items()] == [(first, "Admitted")]


async def test_inbox_items_page_after_a_feed_id(store: SQLiteStore) -> None:
    ids = [await store.inbox_append(f"d{n}", {"n": n}) for n in range(5)]

    assert [i["n"] for i in await store.inbox_items(after=ids[1])] == [2, 3, 4]
    assert [i["n"] for i in await store.inbox_items(after=ids[1], limit=2)] == [2, 3]
    assert await store.inbox_items(after=ids[-1]) == []
    assert [i["n"] for i in await store.inbox_items(limit=2)] == [3, 4]  # the newest, oldest first


async def test_secret_is_created_once_and_survives_reopen(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "s.db")
    await first.open()
    key = await first.secret("phi-pseudonym")
    assert key == await first.secret("phi-pseudonym")
    assert key != await first.secret("other")
    await first.close()
    again = SQLiteStore(tmp_path / "s.db")
    await again.open()
    assert await again.secret("phi-pseudonym") == key
    await again.close()
    assert len(key) == 32


async def test_subscription_progress_commits_with_the_events_and_never_goes_back(
    store: SQLiteStore, make_entry: Callable[..., JournalEntry], make_event: Callable[..., ClinicalEvent]
) -> None:
    from bridge.store import SubscriptionProgress

    assert (await store.subscription_state("enc")).last_event_number == 0
    snapshot = ("Encounter/1", "2", '{"resourceType": "Encounter", "id": "1"}')
    progress = SubscriptionProgress("enc", last_event_number=7, watermark="2026-11-22T10:00:00Z", snapshots=(snapshot,))
    await store.commit_message(make_entry(), [(make_event(), [])], dedup_window=0, progress=progress)
    await store.commit_message(
        make_entry(), [(make_event(), [])], dedup_window=0, progress=SubscriptionProgress("enc", last_event_number=5)
    )
    state = await store.subscription_state("enc")
    assert (state.last_event_number, state.watermark) == (7, "2026-11-22T10:00:00Z")
    expected = {"Encounter/1": {"resourceType": "Encounter", "id": "1"}}
    assert await store.snapshots(["Encounter/1", "Encounter/2"]) == expected
    await store.record_subscription("enc", status="active", last_seen_at=123.0)
    state = await store.subscription_state("enc")
    assert (state.status, state.last_seen_at, state.last_event_number) == ("active", 123.0, 7)
    with pytest.raises(ValueError):
        await store.record_subscription("enc", last_event_number=1)


@pytest.mark.parametrize("mode, pragma", [("FULL", 2), ("NORMAL", 1)])
async def test_synchronous_setting_reaches_the_writer(tmp_path: Path, mode: str, pragma: int) -> None:
    store = SQLiteStore(tmp_path / "s.db", synchronous=mode)
    await store.open()
    try:
        level = await store._write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        assert level == pragma
    finally:
        await store.close()


def test_unknown_synchronous_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(tmp_path / "s.db", synchronous="OFF")


# -- what a correction or cancellation supersedes (issue #4 review, findings 1, 2, 3, 12) ----------


def fact(
    type_: EventType,
    key: str | None = None,
    *,
    kind: str | None = None,
    lifecycle: Lifecycle = Lifecycle.NEW,
    link: str | None = None,
    severity: Severity = Severity.NOTICE,
    thread_key: str = "TESTHOSP|V-TEST-0001",
) -> dict[str, Any]:
    """make_event overrides of one fact: its subject kind defaults to the type's family (result.* → result).

    ``link`` is the value of ``corrects`` (correct) or ``cancels`` (cancel); it defaults to the key.
    """
    links = {}
    if lifecycle in (Lifecycle.CORRECT, Lifecycle.CANCEL):
        links = {"corrects" if lifecycle is Lifecycle.CORRECT else "cancels": link or str(key)}
    return {
        "type": type_,
        "subject": Subject(kind=kind or type_.value.split(".")[0], key=key),
        "lifecycle": lifecycle,
        "links": links,
        "severity": severity,
        "thread_key": thread_key,
    }


def correction(type_: EventType, key: str, **extra: Any) -> dict[str, Any]:
    return fact(type_, key, lifecycle=Lifecycle.CORRECT, **extra)


def cancellation(type_: EventType, key: str | None, **extra: Any) -> dict[str, Any]:
    return fact(type_, key, lifecycle=Lifecycle.CANCEL, **extra)


VISIT = "V-TEST-0001"
T = EventType
#: Another patient, whose report may carry a filler number that collides with one of the default patient's.
OTHER_PATIENT = Patient(mrn=Identifier(value="MRN-TEST-0002", authority="TESTHOSP"), family="Testpatient")
#: (what the channel showed, as make_event overrides and the external id the delivery recorded: a new
#: post's own id, an edit the id of the post it edited, as Slack answers), the event that follows, and the
#: post it must edit or strike (None: nothing qualifies, it is posted anew).
SUPERSEDES_CASES = [
    pytest.param(
        [(fact(T.RESULT_PRELIMINARY, "LAB:F1"), "ts-prelim"), (fact(T.RESULT_FINAL, "LAB:F1"), "ts-final")],
        correction(T.RESULT_CORRECTED, "LAB:F1"),
        "ts-final",
        id="1-correction-edits-the-final-report-not-the-preliminary",
    ),
    pytest.param(
        [
            (fact(T.RESULT_PRELIMINARY, "LAB:F1"), "ts-prelim"),
            (fact(T.RESULT_FINAL, "LAB:F1"), "ts-final"),
            (correction(T.RESULT_CORRECTED, "LAB:F1"), "ts-final"),
        ],
        cancellation(T.RESULT_RETRACTED, "LAB:F1"),
        "ts-final",
        id="1-withdrawal-after-a-correction-strikes-the-final-report",
    ),
    pytest.param(
        [
            (fact(T.APPOINTMENT_BOOKED, "SCH:A1"), "ts-booked"),
            (cancellation(T.APPOINTMENT_CANCELLED, "SCH:A1"), "ts-booked"),
            (fact(T.APPOINTMENT_BOOKED, "SCH:A1"), "ts-rebooked"),
        ],
        correction(T.APPOINTMENT_RESCHEDULED, "SCH:A1"),
        "ts-rebooked",
        id="1-reschedule-edits-the-new-booking-not-the-cancelled-one",
    ),
    pytest.param(
        [(fact(T.ORDER_PLACED, "CPOE:ORD1"), "ts-order"), (fact(T.RESULT_FINAL, "CPOE:ORD1"), "ts-result")],
        correction(T.RESULT_CORRECTED, "CPOE:ORD1"),
        "ts-result",
        id="2-result-keyed-by-the-placer-number-edits-the-result-not-the-order",
    ),
    pytest.param(
        [(fact(T.ORDER_PLACED, "CPOE:ORD1"), "ts-order")],
        correction(T.RESULT_CORRECTED, "CPOE:ORD1"),
        None,
        id="2-result-correction-never-edits-an-order",
    ),
    pytest.param(
        [(fact(T.RESULT_FINAL, "CPOE:ORD1"), "ts-result")],
        cancellation(T.ORDER_CANCELLED, "CPOE:ORD1"),
        None,
        id="2-order-cancellation-never-strikes-a-result",
    ),
    pytest.param(
        [(fact(T.ORDER_PLACED, "CPOE:ORD1"), "ts-lab-order")],
        correction(T.ORDER_CHANGED, "CPOE:ORD1", kind="medication"),
        None,
        id="2-pharmacy-change-never-edits-a-lab-order-of-the-same-number",
    ),
    pytest.param(
        [(fact(T.MEDICATION_ORDERED, "CPOE:ORD1"), "ts-medication")],
        correction(T.ORDER_CHANGED, "CPOE:ORD1", kind="medication"),
        "ts-medication",
        id="2-pharmacy-change-edits-the-medication-order",
    ),
    pytest.param(
        [(fact(T.DOCUMENT_AVAILABLE, "DOC:D1"), "ts-doc")],
        correction(T.DOCUMENT_AMENDED, "DOC:D2", link="DOC:D1"),
        "ts-doc",
        id="12-addendum-edits-its-parent",
    ),
    pytest.param(
        [
            (fact(T.DOCUMENT_AVAILABLE, "DOC:D1"), "ts-doc"),
            (correction(T.DOCUMENT_AMENDED, "DOC:D2", link="DOC:D1"), "ts-doc"),
        ],
        cancellation(T.DOCUMENT_CANCELLED, "DOC:D2"),
        None,
        id="12-withdrawn-addendum-does-not-strike-its-parent",
    ),
    pytest.param(
        [
            (fact(T.ENCOUNTER_ADMITTED, VISIT), "ts-admit"),
            (fact(T.ENCOUNTER_TRANSFERRED, VISIT), "ts-to-icu"),
            (fact(T.ENCOUNTER_TRANSFERRED, VISIT, lifecycle=Lifecycle.UPDATE), "ts-to-radiology"),
            (fact(T.ENCOUNTER_TRANSFERRED, VISIT, lifecycle=Lifecycle.UPDATE), "ts-back-from-radiology"),
        ],
        cancellation(T.ENCOUNTER_CANCELLED, VISIT, link="encounter.transferred"),
        "ts-to-icu",
        id="1-A12-strikes-the-transfer-not-a-later-tracking-move",
    ),
    pytest.param(
        [
            (fact(T.ENCOUNTER_ADMITTED, VISIT), "ts-admit"),
            (cancellation(T.ENCOUNTER_CANCELLED, VISIT, link="encounter.admitted,encounter.arrived"), "ts-admit"),
            (fact(T.ENCOUNTER_ADMITTED, VISIT), "ts-readmit"),
        ],
        cancellation(T.ENCOUNTER_CANCELLED, VISIT, link="encounter.admitted,encounter.arrived"),
        "ts-readmit",
        id="types-A11-after-a-readmission-strikes-the-readmission",
    ),
    pytest.param(
        [(fact(T.RESULT_FINAL, "LAB:F1", thread_key="OTHER-VISIT"), "ts-other-visit")],
        correction(T.RESULT_CORRECTED, "LAB:F1"),
        "ts-other-visit",
        id="rev2-7-a-subject-key-reaches-the-patients-post-in-another-thread",
    ),
    pytest.param(
        [({**fact(T.RESULT_FINAL, "LAB:F1", thread_key="OTHER-VISIT"), "patient": OTHER_PATIENT}, "ts-other")],
        correction(T.RESULT_CORRECTED, "LAB:F1"),
        None,
        id="rev2-7-never-another-patients-post-of-the-same-key",
    ),
    pytest.param(
        [
            (fact(T.ENCOUNTER_ADMITTED, VISIT, thread_key="OTHER-VISIT"), "ts-other-admit"),
        ],
        cancellation(T.ENCOUNTER_CANCELLED, VISIT, link="encounter.admitted,encounter.arrived"),
        None,
        id="a-link-naming-types-stays-in-its-thread",
    ),
    pytest.param(
        [
            (fact(T.RESULT_PRELIMINARY, "LAB:F1", severity=Severity.CRITICAL), "ts-prelim"),
            (fact(T.RESULT_FINAL, "LAB:F1"), "ts-final"),
        ],
        correction(T.RESULT_CORRECTED, "LAB:F1"),
        "ts-final",
        id="rev2-3-a-correction-edits-the-latest-post-only",
    ),
]


async def show(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, shown: list[tuple[dict[str, Any], str]]
) -> None:
    """Commit and deliver each fact in turn to "chan", recording the given external id."""
    for overrides, external_id in shown:
        await store.commit_message(make_entry(), routed(make_event(**overrides)), dedup_window=DAY)
        (head,) = await claim(store)
        await store.mark_delivered(head.id, external_id=external_id, thread_root=False)


@pytest.mark.parametrize(("shown", "then", "edits"), SUPERSEDES_CASES)
async def test_correction_or_cancellation_edits_the_latest_new_post_it_supersedes(
    store: SQLiteStore,
    make_entry: EntryFactory,
    make_event: EventFactory,
    shown: list[tuple[dict[str, Any], str]],
    then: dict[str, Any],
    edits: str | None,
) -> None:
    await show(store, make_entry, make_event, shown)
    event = make_event(**then)
    await store.commit_message(make_entry(), routed(event), dedup_window=DAY)

    (claimed,) = await claim(store)

    assert claimed.event.id == event.id
    assert claimed.original_ref == edits


def test_supersedes_table_comes_from_the_catalogue() -> None:
    table = sqlite_module.supersedes_table()

    assert table[(T.RESULT_CORRECTED, Lifecycle.CORRECT)] == (
        "result.preliminary",
        "result.final",
        "result.critical",
        "result.corrected",
    )
    assert "order.placed" not in table[(T.RESULT_RETRACTED, Lifecycle.CANCEL)]
    assert (T.ORDER_COMPLETED, Lifecycle.UPDATE) not in table  # an update supersedes nothing
    assert sqlite_module.supersedes_table() is table  # read once


#: What the channel "holder" has of the thread (make_event overrides, and how its delivery ended), the
#: event that follows (routed to "routed" only) and the channels it must reach (":dead": created dead).
FOLLOW_CASES = [
    pytest.param(
        [(fact(T.RESULT_CRITICAL, "LAB:F1", severity=Severity.CRITICAL), "delivered")],
        correction(T.RESULT_CORRECTED, "LAB:F1"),
        ["holder", "routed"],
        id="3-correction-reaches-the-channel-holding-the-critical-post",
    ),
    pytest.param(
        [(fact(T.RESULT_CRITICAL, "LAB:F1", severity=Severity.CRITICAL), "delivered")],
        cancellation(T.RESULT_RETRACTED, "LAB:F1"),
        ["holder", "routed"],
        id="3-withdrawal-reaches-the-channel-holding-the-critical-post",
    ),
    pytest.param(
        [(fact(T.RESULT_CRITICAL, "LAB:F1", severity=Severity.CRITICAL), "pending")],
        correction(T.RESULT_CORRECTED, "LAB:F1"),
        ["holder", "routed"],
        id="3-post-still-to-be-sent-counts",
    ),
    pytest.param(
        [(fact(T.ENCOUNTER_ADMITTED, VISIT), "delivered")],
        cancellation(T.ENCOUNTER_CANCELLED, VISIT, link="encounter.admitted,encounter.arrived"),
        ["holder", "routed"],
        id="3-A11-reaches-the-channel-holding-the-admission",
    ),
    pytest.param(
        [(fact(T.RESULT_CRITICAL, "LAB:F1", severity=Severity.CRITICAL), "dead")],
        correction(T.RESULT_CORRECTED, "LAB:F1"),
        ["holder:dead", "routed"],
        id="rev2-4a-dead-post-gets-its-correction-dead-too",
    ),
    pytest.param(
        [(fact(T.RESULT_CRITICAL, "LAB:F1", thread_key="OTHER-VISIT"), "delivered")],
        correction(T.RESULT_CORRECTED, "LAB:F1"),
        ["holder", "routed"],
        id="rev2-7-the-patients-post-in-another-thread-is-followed",
    ),
    pytest.param(
        [({**fact(T.RESULT_CRITICAL, "LAB:F1", thread_key="OTHER-VISIT"), "patient": OTHER_PATIENT}, "delivered")],
        correction(T.RESULT_CORRECTED, "LAB:F1"),
        ["routed"],
        id="rev2-7-another-patients-post-of-the-same-key-is-not-followed",
    ),
    pytest.param(
        [(fact(T.ENCOUNTER_ADMITTED, VISIT, thread_key="OTHER-VISIT"), "delivered")],
        cancellation(T.ENCOUNTER_CANCELLED, VISIT, link="encounter.admitted,encounter.arrived"),
        ["routed"],
        id="3-a-link-naming-types-follows-in-its-thread-only",
    ),
    pytest.param(
        [(fact(T.ORDER_PLACED, "CPOE:ORD1"), "delivered")],
        correction(T.RESULT_CORRECTED, "CPOE:ORD1"),
        ["routed"],
        id="2-3-result-correction-does-not-follow-an-order-post",
    ),
    pytest.param(
        [(fact(T.ORDER_PLACED, "CPOE:ORD1"), "delivered")],
        fact(T.ORDER_COMPLETED, "CPOE:ORD1", lifecycle=Lifecycle.UPDATE),
        ["routed"],
        id="3-an-update-goes-where-its-routes-say",
    ),
]


@pytest.mark.parametrize(("held", "then", "channels"), FOLLOW_CASES)
async def test_correction_or_cancellation_also_goes_to_every_channel_holding_its_post(
    store: SQLiteStore,
    make_entry: EntryFactory,
    make_event: EventFactory,
    held: list[tuple[dict[str, Any], str]],
    then: dict[str, Any],
    channels: list[str],
) -> None:
    for overrides, fate in held:
        await store.commit_message(
            make_entry(), routed(make_event(**overrides), channels=("holder",)), dedup_window=DAY
        )
        if fate == "pending":
            continue
        (head,) = await claim(store, "holder")
        if fate == "dead":
            await store.mark_dead(head.id, error="gone")
        else:
            await store.mark_delivered(head.id, external_id="ts-held", thread_root=False)
    event = make_event(**then)

    result = await store.commit_message(make_entry(), routed(event, channels=("routed",)), dedup_window=DAY)

    rows = await store.query("SELECT channel, status FROM deliveries WHERE event_id=? ORDER BY channel", (event.id,))
    expected = [(c.partition(":")[0], c.partition(":")[2] or "pending") for c in channels]
    assert rows == expected
    assert sorted(result.delivery_ids) == sorted(f"{event.id}.{c}" for c, _ in expected)
    assert sorted(result.channels) == [c for c, status in expected if status == "pending"]


async def test_correction_routed_nowhere_still_edits_the_post_it_follows(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    await store.commit_message(
        make_entry(), routed(make_event(**fact(T.RESULT_CRITICAL, "LAB:F1")), channels=("oncall",)), dedup_window=DAY
    )
    (critical,) = await claim(store, "oncall")
    await store.mark_delivered(critical.id, external_id="ts-critical", thread_root=False)
    event = make_event(**correction(T.RESULT_CORRECTED, "LAB:F1"))

    result = await store.commit_message(make_entry(), [(event, [])], dedup_window=DAY)

    assert result.channels == ("oncall",)
    assert await store.query("SELECT status FROM events WHERE id=?", (event.id,)) == [("routed",)]
    (claimed,) = await claim(store, "oncall")
    assert (claimed.event.id, claimed.original_ref) == (event.id, "ts-critical")


async def test_correction_follows_its_post_once_per_channel_and_not_as_a_duplicate(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    await store.commit_message(
        make_entry(), routed(make_event(**fact(T.RESULT_FINAL, "LAB:F1")), channels=("a", "b")), dedup_window=DAY
    )
    event = make_event(**correction(T.RESULT_CORRECTED, "LAB:F1"))

    first = await store.commit_message(make_entry(), routed(event, channels=("a",)), dedup_window=DAY)
    again = await store.commit_message(
        make_entry(),
        routed(make_event(**correction(T.RESULT_CORRECTED, "LAB:F1"), dedup_key=event.dedup_key)),
        dedup_window=DAY,
    )

    assert sorted(first.channels) == ["a", "b"]
    assert again.delivery_ids == () and again.channels == ()


async def test_correction_following_its_post_to_a_disabled_channel_is_dead_there(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    await store.commit_message(
        make_entry(), routed(make_event(**fact(T.RESULT_FINAL, "LAB:F1")), channels=("off",)), dedup_window=DAY
    )
    (final,) = await claim(store, "off")
    await store.mark_delivered(final.id, external_id="ts-final", thread_root=False)
    await store.disable_channel("off", reason="invalid_auth")
    event = make_event(**correction(T.RESULT_CORRECTED, "LAB:F1"))

    result = await store.commit_message(make_entry(), routed(event, channels=("on",)), dedup_window=DAY)

    assert result.channels == ("on",)
    rows = await store.query("SELECT channel, status FROM deliveries WHERE event_id=? ORDER BY channel", (event.id,))
    assert rows == [("off", "dead"), ("on", "pending")]


@pytest.mark.parametrize(
    ("shown", "then", "severity"),
    [
        pytest.param(
            [(fact(T.RESULT_FINAL, "LAB:F1", severity=Severity.NOTICE), "ts-final")],
            correction(T.RESULT_CORRECTED, "LAB:F1", severity=Severity.CRITICAL),
            Severity.NOTICE,
            id="the-original-post",
        ),
        pytest.param(
            [
                (fact(T.RESULT_FINAL, "LAB:F1", severity=Severity.NOTICE), "ts-final"),
                (correction(T.RESULT_CORRECTED, "LAB:F1", severity=Severity.CRITICAL), "ts-final"),
            ],
            correction(T.RESULT_CORRECTED, "LAB:F1", severity=Severity.WARNING),
            Severity.CRITICAL,
            id="as-an-earlier-correction-edited-it",
        ),
        pytest.param(
            [(fact(T.RESULT_FINAL, "LAB:F2", severity=Severity.WARNING), "ts-other")],
            correction(T.RESULT_CORRECTED, "LAB:F1", severity=Severity.CRITICAL),
            None,
            id="no-post",
        ),
    ],
)
async def test_claim_tells_the_severity_the_edited_post_shows(
    store: SQLiteStore,
    make_entry: EntryFactory,
    make_event: EventFactory,
    shown: list[tuple[dict[str, Any], str]],
    then: dict[str, Any],
    severity: Severity | None,
) -> None:
    await show(store, make_entry, make_event, shown)
    await store.commit_message(make_entry(), routed(make_event(**then)), dedup_window=DAY)

    (claimed,) = await claim(store)

    assert claimed.original_severity == severity


async def test_subject_kind_migration_keeps_old_rows_resolvable(
    db_path: Path, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    # A database at schema 4: its events have no subject kind, its thread index leads with the channel.
    conn = sqlite3.connect(db_path)
    for number, script in enumerate(MIGRATIONS[:4], start=1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
    final = make_event(**fact(T.RESULT_FINAL, "LAB:F1"))
    now = time.time()
    conn.execute(
        "INSERT INTO journal (id, received_at, listener, transport, status, raw) VALUES ('m', ?, 't', 'mllp', ?, ?)",
        (now, "accepted", b"MSH|"),
    )
    conn.execute(
        "INSERT INTO events (id, message_id, type, severity, lifecycle, thread_key, dedup_key, subject_key, status,"
        " created_at, body) VALUES (?, 'm', ?, ?, 'new', ?, 'old', 'LAB:F1', 'routed', ?, ?)",
        (final.id, final.type.value, final.severity.value, final.thread_key, now, final.model_dump_json()),
    )
    conn.execute(
        "INSERT INTO deliveries (id, event_id, event_seq, channel, thread_key, status, next_attempt_at, external_id,"
        " created_at, updated_at) VALUES ('old.chan', ?, 1, 'chan', ?, 'delivered', ?, 'ts-old', ?, ?)",
        (final.id, final.thread_key, now, now, now),
    )
    conn.commit()
    conn.close()
    upgraded = SQLiteStore(db_path)
    await upgraded.open()
    try:
        indexes = {r[0] for r in await upgraded.query("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "deliveries_thread" in indexes and "deliveries_thread_open" not in indexes
        event = make_event(**correction(T.RESULT_CORRECTED, "LAB:F1"))
        result = await upgraded.commit_message(make_entry(), [(event, [])], dedup_window=DAY)

        (claimed,) = await claim(upgraded)

        assert result.channels == ("chan",)
        assert (claimed.event.id, claimed.original_ref) == (event.id, "ts-old")
        kinds = await upgraded.query("SELECT id, subject_kind FROM events ORDER BY seq")
        assert kinds == [(final.id, None), (event.id, "result")]
    finally:
        await upgraded.close()


async def test_channels_holding_a_post_are_found_on_the_thread_index(store: SQLiteStore) -> None:
    # Every correction and cancellation runs this lookup inside the commit: no scan of the outbox.
    event = ClinicalEvent(
        id="e",
        type=T.RESULT_CORRECTED,
        occurred_at=RECEIVED,
        source="urn:test",
        thread_key="T",
        dedup_key="d",
        subject=Subject(kind="result", key="K"),
        lifecycle=Lifecycle.CORRECT,
        links={"corrects": "K"},
    )
    found = sqlite_module._superseded(event, sqlite_module.supersedes_table())
    assert found is not None
    source, args = found.source("T")
    plan = await store.query(
        f"EXPLAIN QUERY PLAN SELECT d.channel, d.status != ?, d.thread_key FROM {source}"
        " AND d.status IN (?, ?, ?, ?) ORDER BY d.event_seq",
        ("dead", *args, "delivered", "pending", "in_flight", "dead"),
    )
    details = " | ".join(str(row[3]) for row in plan)

    # Review 2, finding 9: from the subject's events, then their deliveries; never the whole thread.
    assert details.startswith("SEARCH e USING INDEX events_subject (subject_key=?)"), details
    assert "SEARCH d USING INDEX deliveries_event (event_id=?)" in details, details
    assert "SCAN" not in details, details


# --- review 2: own posts (2), dead originals (4a), configured channels (10), query plans (9) ---


async def test_a_correction_posted_anew_is_corrected_and_withdrawn_in_its_turn(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    # The final report went elsewhere; this channel got the critical correction as a new post of its
    # own (no original to edit). The next correction edits it, the withdrawal strikes it.
    final = make_event(**fact(T.RESULT_FINAL, "LAB:F1"))
    await store.commit_message(make_entry(), routed(final, channels=("other",)), dedup_window=DAY)
    critical = make_event(**correction(T.RESULT_CORRECTED, "LAB:F1", severity=Severity.CRITICAL))
    await store.commit_message(make_entry(), routed(critical), dedup_window=DAY)
    (posted,) = await claim(store)
    assert posted.original_ref is None
    await store.mark_delivered(posted.id, external_id="ts-fresh", thread_root=False)

    refs = []
    for then in (correction(T.RESULT_CORRECTED, "LAB:F1"), cancellation(T.RESULT_RETRACTED, "LAB:F1")):
        event = make_event(**then)
        result = await store.commit_message(make_entry(), routed(event, channels=("other",)), dedup_window=DAY)
        assert "chan" in result.channels, "it follows the channel's own post of the subject"
        (claimed,) = await claim(store)
        refs.append((claimed.original_ref, claimed.original_severity))
        await store.mark_delivered(claimed.id, external_id=claimed.original_ref, thread_root=False)

    assert refs == [("ts-fresh", Severity.CRITICAL), ("ts-fresh", Severity.NOTICE)]


async def test_rows_claimed_before_migration_6_count_as_posts_only_when_new(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    final = make_event(**fact(T.RESULT_FINAL, "LAB:F1"))
    edit = make_event(**correction(T.RESULT_CORRECTED, "LAB:F1"))
    await store.commit_message(make_entry(), routed(final), dedup_window=DAY)
    await deliver_in_order(store, ["ts-final"])
    await store.commit_message(make_entry(), routed(edit), dedup_window=DAY)
    # As an old row: an edit recorded under a new id, claimed before original_ref was kept.
    await deliver_in_order(store, ["ts-old-edit"])
    await store.query("UPDATE deliveries SET original_ref = NULL")
    await store.commit_message(
        make_entry(), routed(withdraw := make_event(**cancellation(T.RESULT_RETRACTED, "LAB:F1"))), dedup_window=DAY
    )

    (claimed,) = await claim(store)

    assert (claimed.event.id, claimed.original_ref) == (withdraw.id, "ts-final")


async def test_a_correction_of_a_dead_post_is_created_dead_and_replayed_after_it(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    critical = make_event(**fact(T.RESULT_CRITICAL, "LAB:F1", severity=Severity.CRITICAL))
    await store.commit_message(make_entry(), routed(critical, channels=("oncall",)), dedup_window=DAY)
    (head,) = await claim(store, "oncall")
    await store.mark_dead(head.id, error="slack down")
    fix = make_event(**correction(T.RESULT_CORRECTED, "LAB:F1"))

    result = await store.commit_message(make_entry(), routed(fix, channels=("chan",)), dedup_window=DAY)

    assert result.channels == ("chan",), "nothing to wake in oncall"
    rows = await store.query("SELECT status FROM deliveries WHERE id=?", (f"{fix.id}.oncall",))
    assert rows == [("dead",)]
    assert await store.replay(None) == 2
    (first,) = await claim(store, "oncall")
    assert first.event.id == critical.id, "the original first, alone: the thread's order holds"
    await store.mark_delivered(first.id, external_id="ts-critical", thread_root=False)
    (second,) = await claim(store, "oncall")
    assert (second.event.id, second.original_ref) == (fix.id, "ts-critical")


async def test_a_correction_follows_its_post_only_to_configured_channels(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    critical = make_event(**fact(T.RESULT_CRITICAL, "LAB:F1", severity=Severity.CRITICAL))
    await store.commit_message(make_entry(), routed(critical, channels=("removed", "chan")), dedup_window=DAY)
    for channel in ("removed", "chan"):
        (head,) = await claim(store, channel)
        await store.mark_delivered(head.id, external_id=f"ts-{channel}", thread_root=False)
    fix = make_event(**correction(T.RESULT_CORRECTED, "LAB:F1"))

    result = await store.commit_message(make_entry(), [(fix, [])], dedup_window=DAY, channels=("chan", "other"))

    assert result.delivery_ids == (f"{fix.id}.chan",)


async def test_the_claims_original_lookup_starts_from_the_subjects_events(store: SQLiteStore) -> None:
    event = ClinicalEvent(
        id="e",
        type=T.RESULT_CORRECTED,
        occurred_at=RECEIVED,
        source="urn:test",
        thread_key="T",
        dedup_key="d",
        subject=Subject(kind="result", key="K"),
        lifecycle=Lifecycle.CORRECT,
        links={"corrects": "K"},
    )
    found = sqlite_module._superseded(event, sqlite_module.supersedes_table())
    assert found is not None
    source, args = found.source("T")
    plan = await store.query(
        f"EXPLAIN QUERY PLAN SELECT d.external_id, d.thread_key FROM {source} AND d.channel=? AND d.status=?"
        f" AND d.event_seq < ? AND {sqlite_module._OWN_POST} ORDER BY d.event_seq DESC LIMIT 1",
        (*args, "chan", "delivered", 10),
    )
    details = " | ".join(str(row[3]) for row in plan)

    assert details.startswith("SEARCH e USING INDEX events_subject (subject_key=?)"), details
    assert "SEARCH d USING INDEX deliveries_event (event_id=?)" in details, details
    assert "SCAN" not in details, details


# --- review 2, finding 4b: a replay never brings back what a later correction or cancellation replaced ---

#: What reached "chan" in order (make_event overrides, and the external id its delivery recorded, or "dead"), then
#: which of the dead ones a replay still sends (their indexes in that list); the others are superseded.
STALE_CASES = [
    pytest.param(
        [
            (fact(T.RESULT_FINAL, "LAB:F1"), "ts-final"),
            (correction(T.RESULT_CORRECTED, "LAB:F1", severity=Severity.CRITICAL), "dead"),
            (correction(T.RESULT_CORRECTED, "LAB:F1"), "ts-final"),
        ],
        [],
        id="a-correction-a-later-correction-edited-over-is-not-sent",
    ),
    pytest.param(
        [
            (fact(T.RESULT_FINAL, "LAB:F1"), "ts-final"),
            (correction(T.RESULT_CORRECTED, "LAB:F1"), "dead"),
            (cancellation(T.RESULT_RETRACTED, "LAB:F1"), "ts-final"),
        ],
        [],
        id="a-correction-of-a-withdrawn-result-does-not-unstrike-it",
    ),
    pytest.param(
        [
            (fact(T.RESULT_CRITICAL, "LAB:F1", severity=Severity.CRITICAL), "dead"),
            (cancellation(T.RESULT_RETRACTED, "LAB:F1"), "ts-withdrawn"),
        ],
        [],
        id="a-withdrawn-result-is-not-posted",
    ),
    pytest.param(
        [
            (fact(T.RESULT_PRELIMINARY, "LAB:F1"), "dead"),
            (fact(T.RESULT_FINAL, "LAB:F1"), "ts-final"),
            (correction(T.RESULT_CORRECTED, "LAB:F1"), "ts-final"),
        ],
        [],
        id="a-report-a-later-correction-replaced-is-not-posted",
    ),
    pytest.param(
        [
            (fact(T.ENCOUNTER_ADMITTED, VISIT), "dead"),
            (cancellation(T.ENCOUNTER_CANCELLED, VISIT, link="encounter.admitted,encounter.arrived"), "ts-a11"),
        ],
        [],
        id="a-cancelled-admission-is-not-posted",
    ),
    pytest.param(
        [
            (fact(T.RESULT_FINAL, "LAB:F1"), "ts-final"),
            (correction(T.RESULT_CORRECTED, "LAB:F1"), "dead"),
            (fact(T.RESULT_FINAL, "LAB:F2"), "ts-other"),
            (correction(T.RESULT_CORRECTED, "LAB:F2"), "ts-other"),
        ],
        [1],
        id="a-later-correction-of-another-result-changes-nothing",
    ),
    pytest.param(
        [
            (fact(T.ENCOUNTER_ADMITTED, VISIT), "ts-admit"),
            (fact(T.ENCOUNTER_TRANSFERRED, VISIT), "ts-transfer"),
            (cancellation(T.ENCOUNTER_CANCELLED, VISIT, link="encounter.transferred"), "dead"),
            (cancellation(T.ENCOUNTER_CANCELLED, VISIT, link="encounter.admitted,encounter.arrived"), "ts-admit"),
        ],
        [2],
        id="an-A12-is-not-superseded-by-an-A11",
    ),
    pytest.param(
        [
            (fact(T.RESULT_FINAL, "LAB:F1"), "dead"),
            ({**cancellation(T.RESULT_RETRACTED, "LAB:F1"), "patient": OTHER_PATIENT}, "ts-other-patient"),
        ],
        [0],
        id="another-patients-withdrawal-of-the-same-key-changes-nothing",
    ),
]


@pytest.mark.parametrize(("shown", "sent"), STALE_CASES)
async def test_a_replay_does_not_send_what_a_later_correction_or_cancellation_replaced(
    store: SQLiteStore,
    make_entry: EntryFactory,
    make_event: EventFactory,
    shown: list[tuple[dict[str, Any], str]],
    sent: list[int],
) -> None:
    events = []
    for overrides, fate in shown:
        event = make_event(**overrides)
        events.append(event)
        await store.commit_message(make_entry(), routed(event), dedup_window=DAY)
        (head,) = await claim(store)
        if fate == "dead":
            await store.mark_dead(head.id, error="attempts exhausted: 503")
        else:
            await store.mark_delivered(head.id, external_id=fate, thread_root=False)
    dead = [i for i, (_, fate) in enumerate(shown) if fate == "dead"]

    assert await store.replay(None) == len(dead)
    claimed = await claim(store)

    assert [c.event.id for c in claimed] == [events[i].id for i in sent]
    for i in dead:
        status = (await state(store, f"{events[i].id}.chan"))[0]
        assert status == ("in_flight" if i in sent else "superseded")
    superseded = [i for i in dead if i not in sent]
    audit = await store.query("SELECT event_id FROM audit WHERE action = 'delivery.superseded' ORDER BY id")
    assert audit == [(events[i].id,) for i in superseded]
    assert await store.dead_letters() == [], "nothing left to replay"
    # Not a failure: a later claim hands nothing out and nothing comes back.
    assert await claim(store) == []


# --- review 2, finding 3: a withdrawal strikes every post of its subject the channel made ---


@pytest.mark.parametrize(
    ("shown", "then", "refs"),
    [
        pytest.param(
            [(fact(T.RESULT_PRELIMINARY, "LAB:F1"), "ts-prelim"), (fact(T.RESULT_FINAL, "LAB:F1"), "ts-final")],
            cancellation(T.RESULT_RETRACTED, "LAB:F1"),
            ("ts-final", "ts-prelim"),
            id="the-withdrawal-strikes-the-final-and-the-preliminary-post",
        ),
        pytest.param(
            [
                (fact(T.RESULT_PRELIMINARY, "LAB:F1"), "ts-prelim"),
                (fact(T.RESULT_FINAL, "LAB:F1"), "ts-final"),
                (correction(T.RESULT_CORRECTED, "LAB:F1"), "ts-final"),
            ],
            cancellation(T.RESULT_RETRACTED, "LAB:F1"),
            ("ts-final", "ts-prelim"),
            id="an-edit-is-no-post-of-its-own",
        ),
        pytest.param(
            [(fact(T.RESULT_PRELIMINARY, "LAB:F1"), "ts-prelim"), (fact(T.RESULT_FINAL, "LAB:F1"), "ts-final")],
            correction(T.RESULT_CORRECTED, "LAB:F1"),
            ("ts-final",),
            id="a-correction-edits-the-latest-only",
        ),
        pytest.param(
            [
                (fact(T.APPOINTMENT_BOOKED, "SCH:A1"), "ts-booked"),
                (cancellation(T.APPOINTMENT_CANCELLED, "SCH:A1"), "ts-booked"),
                (fact(T.APPOINTMENT_BOOKED, "SCH:A1"), "ts-rebooked"),
            ],
            cancellation(T.APPOINTMENT_CANCELLED, "SCH:A1"),
            ("ts-rebooked",),
            id="a-post-already-struck-is-left-as-it-was",
        ),
    ],
)
async def test_claim_hands_a_cancellation_every_post_of_its_subject(
    store: SQLiteStore,
    make_entry: EntryFactory,
    make_event: EventFactory,
    shown: list[tuple[dict[str, Any], str]],
    then: dict[str, Any],
    refs: tuple[str, ...],
) -> None:
    await show(store, make_entry, make_event, shown)
    await store.commit_message(make_entry(), routed(make_event(**then)), dedup_window=DAY)

    (claimed,) = await claim(store)

    assert (claimed.original_ref, claimed.original_refs) == (refs[0], refs)


# --- review 2, finding 7: a subject key finds the original in whichever thread of the patient it is ---


async def test_a_correction_in_another_thread_goes_in_the_thread_of_the_post_it_corrects(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    # The report came with its visit number; its correction without PV1 falls back to the patient's thread.
    final = make_event(**fact(T.RESULT_CRITICAL, "LAB:F1", thread_key="enc:V1"))
    await store.commit_message(make_entry(), routed(final, channels=("chan", "oncall")), dedup_window=DAY)
    for channel in ("chan", "oncall"):
        (head,) = await claim(store, channel)
        await store.mark_delivered(head.id, external_id=f"ts-{channel}", thread_root=True)
    fix = make_event(**correction(T.RESULT_CORRECTED, "LAB:F1", thread_key="pat:TESTHOSP:MRN-TEST-0001"))

    result = await store.commit_message(make_entry(), routed(fix), dedup_window=DAY)

    assert sorted(result.channels) == ["chan", "oncall"]
    threads = await store.query("SELECT channel, thread_key FROM deliveries WHERE event_id=? ORDER BY 1", (fix.id,))
    assert threads == [("chan", "enc:V1"), ("oncall", "enc:V1")]
    for channel in ("chan", "oncall"):
        (claimed,) = await claim(store, channel)
        assert (claimed.thread_ref, claimed.original_ref) == (f"ts-{channel}", f"ts-{channel}")
    patients = await store.query("SELECT DISTINCT patient FROM events")
    assert patients == [("TESTHOSP|MRN-TEST-0001",)]


async def test_rows_from_before_migration_7_have_no_patient_and_are_not_kept_from_their_corrections(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    final = make_event(**fact(T.RESULT_FINAL, "LAB:F1", thread_key="enc:V1"))
    await store.commit_message(make_entry(), routed(final), dedup_window=DAY)
    await deliver_in_order(store, ["ts-final"])
    await store.query("UPDATE events SET patient = NULL")  # as migration 7 leaves an old row
    fix = make_event(**{**correction(T.RESULT_CORRECTED, "LAB:F1", thread_key="pat:x"), "patient": OTHER_PATIENT})
    await store.commit_message(make_entry(), routed(fix), dedup_window=DAY)

    (claimed,) = await claim(store)

    assert (claimed.event.id, claimed.original_ref) == (fix.id, "ts-final")


# --- review 2, finding 5: a correction's alert is a delivery of its own that shadows the edited post ---


async def alerted_correction(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> tuple[ClinicalEvent, ClaimedDelivery]:
    """A normal final report delivered as ts-final, then its critical correction's edit, claimed (not recorded)."""
    await show(store, make_entry, make_event, [(fact(T.RESULT_FINAL, "LAB:F1"), "ts-final")])
    fix = make_event(**correction(T.RESULT_CORRECTED, "LAB:F1", severity=Severity.CRITICAL))
    await store.commit_message(make_entry(), routed(fix), dedup_window=DAY)
    (edit,) = await claim(store)
    assert edit.original_ref == "ts-final"
    return fix, edit


async def test_an_alerting_edit_creates_its_alert_delivery_with_its_outcome(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    fix, edit = await alerted_correction(store, make_entry, make_event)
    later = make_event(**fact(T.RESULT_FINAL, "LAB:F2"))
    await store.commit_message(make_entry(), routed(later), dedup_window=DAY)

    await store.mark_delivered(edit.id, external_id="ts-final", thread_root=False, alert=True)
    # Sent again after its lease ran out and recorded once more: still one alert.
    await store.mark_delivered(edit.id, external_id="ts-final", thread_root=False, alert=True)

    cols = "id, event_id, event_seq, channel, thread_key, status, attempts, external_id, shadow_of"
    (edit_row,) = await store.query(f"SELECT {cols} FROM deliveries WHERE id=?", (edit.id,))
    (alert_row,) = await store.query(f"SELECT {cols} FROM deliveries WHERE id=?", (f"{edit.id}.alert",))
    assert alert_row == (f"{edit.id}.alert", *edit_row[1:5], "pending", 0, None, "ts-final")
    assert edit_row[5:] == ("delivered", 1, "ts-final", None)
    # Next in the thread, before the later report: a new post of the correction, editing nothing.
    (alert,) = await claim(store)
    assert (alert.id, alert.event.id, alert.original_ref, alert.original_refs, alert.original_severity) == (
        f"{edit.id}.alert",
        fix.id,
        None,
        (),
        None,
    )
    await store.mark_delivered(alert.id, external_id="ts-alert", thread_root=False)
    (head,) = await claim(store)
    assert head.event.id == later.id


async def test_an_edit_recorded_without_alert_creates_no_alert_delivery(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    fix, edit = await alerted_correction(store, make_entry, make_event)

    await store.mark_delivered(edit.id, external_id="ts-final", thread_root=False)

    assert await store.query("SELECT id FROM deliveries WHERE event_id=?", (fix.id,)) == [(edit.id,)]
    assert await claim(store) == []


@pytest.mark.parametrize(
    "then",
    [
        pytest.param(correction(T.RESULT_CORRECTED, "LAB:F1"), id="a-later-correction-edits-post-and-alert"),
        pytest.param(cancellation(T.RESULT_RETRACTED, "LAB:F1"), id="a-withdrawal-strikes-post-and-alert"),
    ],
)
async def test_what_follows_finds_the_alert_shadowing_its_post(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory, then: dict[str, Any]
) -> None:
    _, edit = await alerted_correction(store, make_entry, make_event)
    await store.mark_delivered(edit.id, external_id="ts-final", thread_root=False, alert=True)
    await deliver_in_order(store, ["ts-alert"])
    event = make_event(**then)
    await store.commit_message(make_entry(), routed(event), dedup_window=DAY)

    (claimed,) = await claim(store)

    # The post first (the alert is never the post a correction edits), then the alert; the post shows critical.
    assert claimed.event.id == event.id
    assert (claimed.original_ref, claimed.original_refs, claimed.original_severity) == (
        "ts-final",
        ("ts-final", "ts-alert"),
        Severity.CRITICAL,
    )


async def test_an_alert_not_sent_before_a_later_correction_reached_its_post_is_superseded(
    store: SQLiteStore, make_entry: EntryFactory, make_event: EventFactory
) -> None:
    fix, edit = await alerted_correction(store, make_entry, make_event)
    await store.mark_delivered(edit.id, external_id="ts-final", thread_root=False, alert=True)
    (alert,) = await claim(store)
    await store.mark_dead(alert.id, error="msg_too_long")
    again = make_event(**correction(T.RESULT_CORRECTED, "LAB:F1"))
    await store.commit_message(make_entry(), routed(again), dedup_window=DAY)
    (second,) = await claim(store)
    assert (second.event.id, second.original_refs) == (again.id, ("ts-final",)), "an alert never sent shadows nothing"
    await store.mark_delivered(second.id, external_id="ts-final", thread_root=False)

    assert await store.replay([alert.id]) == 1
    assert await claim(store) == []

    assert await state(store, alert.id) == ("superseded", 0)
    audit = await store.query("SELECT action, event_id, detail FROM audit WHERE action='delivery.superseded'")
    assert audit == [("delivery.superseded", fix.id, again.id)]
