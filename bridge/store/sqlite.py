"""The embedded SQLite store: WAL, ``synchronous=FULL``, one writer thread that group-commits.

Every write is a job queued to a single writer thread. The writer takes all
jobs waiting in the queue, runs each in its own savepoint inside one
transaction, commits once and only then resolves the callers' futures. While
one commit's fsync is under way the next batch accumulates, so concurrent
messages share fsyncs (DESIGN.md §5: 6.4k commits/s row by row against 74k
rows/s in batches). A failing job rolls back to its savepoint alone.

A caller that gives up (its task cancelled) cancels its job if the writer has
not started it yet, and the job is skipped; once started, the job runs to the
end and its result is dropped. Whatever goes wrong in a batch fails that
batch's callers with :class:`StoreError`; the writer itself keeps serving,
since every later write would otherwise wait forever.

Reads that need no write (the inbox feed, dead letters) use a separate
connection; WAL lets them run beside the writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sized
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import structlog

from bridge.catalogue import catalogue
from bridge.errors import StoreError
from bridge.events import ClinicalEvent, EventType, Lifecycle, Severity, link_types
from bridge.store import (
    ClaimedDelivery,
    CommitResult,
    DeliveryRow,
    DeliveryStatus,
    EventStatus,
    JournalEntry,
    MessageStatus,
    NewDelivery,
    SubscriptionProgress,
    SubscriptionState,
)

__all__ = ["MIGRATIONS", "SQLiteStore", "supersedes_table"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Per event type and lifecycle that corrects or cancels, the types of post it may edit or strike.
Supersedes = Mapping[tuple[EventType, Lifecycle], tuple[str, ...]]

#: Schema migrations; ``PRAGMA user_version`` holds how many have run.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE journal (
        id TEXT PRIMARY KEY,
        received_at REAL NOT NULL,
        listener TEXT NOT NULL,
        transport TEXT NOT NULL,
        peer TEXT NOT NULL DEFAULT '',
        control_id TEXT NOT NULL DEFAULT '',
        sending_application TEXT NOT NULL DEFAULT '',
        sending_facility TEXT NOT NULL DEFAULT '',
        message_type TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        ack_code TEXT NOT NULL DEFAULT '',
        error TEXT NOT NULL DEFAULT '',
        raw BLOB NOT NULL
    );
    CREATE INDEX journal_dedup ON journal (control_id, sending_application, sending_facility, received_at);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        message_id TEXT NOT NULL REFERENCES journal(id),
        type TEXT NOT NULL,
        severity TEXT NOT NULL,
        lifecycle TEXT NOT NULL,
        thread_key TEXT NOT NULL,
        dedup_key TEXT NOT NULL,
        subject_key TEXT,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX events_dedup ON events (dedup_key, created_at);
    CREATE INDEX events_subject ON events (subject_key);
    CREATE TABLE deliveries (
        id TEXT PRIMARY KEY,
        event_id TEXT NOT NULL REFERENCES events(id),
        event_seq INTEGER NOT NULL,
        channel TEXT NOT NULL,
        thread_key TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        external_id TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX deliveries_due ON deliveries (channel, status, next_attempt_at);
    CREATE INDEX deliveries_thread ON deliveries (channel, thread_key, event_seq);
    CREATE INDEX deliveries_event ON deliveries (event_id);
    CREATE TABLE threads (
        thread_key TEXT NOT NULL,
        channel TEXT NOT NULL,
        external_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (thread_key, channel)
    );
    CREATE TABLE channel_state (
        channel TEXT PRIMARY KEY,
        disabled_at REAL NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE inbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        item TEXT NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        action TEXT NOT NULL,
        channel TEXT NOT NULL DEFAULT '',
        event_id TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT ''
    );
    """,
    # 2: deployment secrets generated on first start (the key that pseudonymises thread keys for channels).
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    """,
    # 3: the body digest that tells a resend from a reused control id, and indexes the claim walks in
    # event order without sorting (queue) and probes per thread by status (thread_open).
    """
    ALTER TABLE journal ADD COLUMN body_digest TEXT NOT NULL DEFAULT '';
    DROP INDEX journal_dedup;
    CREATE INDEX journal_dedup ON journal
        (control_id, sending_application, sending_facility, received_at, status, body_digest);
    DROP INDEX deliveries_due;
    CREATE INDEX deliveries_queue ON deliveries (channel, status, event_seq);
    DROP INDEX deliveries_thread;
    CREATE INDEX deliveries_thread_open ON deliveries (channel, thread_key, status, event_seq);
    """,
    # 4: FHIR subscriptions (state, last event number) and the last version of each resource seen.
    """
    CREATE TABLE subscriptions (
        name TEXT PRIMARY KEY,
        status TEXT NOT NULL DEFAULT 'requested',
        last_event_number INTEGER NOT NULL DEFAULT 0,
        last_seen_at REAL,
        watermark TEXT,
        error TEXT NOT NULL DEFAULT '',
        stale_since REAL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE fhir_resources (
        key TEXT PRIMARY KEY,
        version_id TEXT NOT NULL,
        body TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 5: what a correction or cancellation supersedes is looked up among posts of its subject's kind
    # (NULL in rows from before: any kind), and per thread across channels at commit (it follows the
    # post to every channel that holds it): the thread index leads with the thread key; the claim's
    # probe fixes thread and channel alike, so it serves the claim as before.
    """
    ALTER TABLE events ADD COLUMN subject_kind TEXT;
    DROP INDEX deliveries_thread_open;
    CREATE INDEX deliveries_thread ON deliveries (thread_key, channel, status, event_seq);
    """,
    # 6: the post a delivery was claimed to edit or strike (its external id; '' to post anew; NULL
    # in rows claimed before): a delivered row whose external id is not that one made a post of
    # its own, which later corrections and cancellations may edit or strike in their turn.
    """
    ALTER TABLE deliveries ADD COLUMN original_ref TEXT;
    """,
    # 7: the patient of each event (its MRN, "authority|value"): a link by subject key is looked up
    # across the patient's threads, never another patient's (a key two patients share). NULL in rows
    # from before and for events without an MRN: not compared.
    """
    ALTER TABLE events ADD COLUMN patient TEXT;
    """,
    # 8: the alert of a correction that edited a post and turned it more severe is a delivery of its
    # own (``<delivery id>.alert``), a new post in the thread that shadows the edited post (its
    # external id): later corrections and cancellations change it along with that post.
    """
    ALTER TABLE deliveries ADD COLUMN shadow_of TEXT;
    CREATE INDEX deliveries_shadow ON deliveries (shadow_of) WHERE shadow_of IS NOT NULL;
    """,
)

_OPEN = (DeliveryStatus.PENDING.value, DeliveryStatus.IN_FLIGHT.value)

#: Due deliveries of a channel, only the oldest open one per thread key (DESIGN.md §2.4; a dead
#: delivery is not open, so it blocks nothing). Walks deliveries_queue in event order and stops at
#: the LIMIT: no sort of the whole backlog, no event bodies read.
_CLAIM_SQL = (
    "SELECT d.id, d.event_id, d.attempts, d.thread_key, d.event_seq, d.shadow_of FROM deliveries d"
    " WHERE d.channel = ? AND d.status = ? AND d.next_attempt_at <= ?"
    " AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.channel = d.channel"
    "   AND p.thread_key = d.thread_key AND p.status IN (?, ?) AND p.event_seq < d.event_seq)"
    " ORDER BY d.event_seq LIMIT ?"
)


@dataclass(slots=True)
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    #: Resolved on its own event loop, by one callback per batch (see ``_Writer._resolve``).
    future: asyncio.Future[Any]
    #: Both under ``_Writer.claim``: the writer took the job, or its caller gave up before the writer did.
    started: bool = False
    cancelled: bool = False


#: ``PRAGMA synchronous`` values the store accepts (WAL mode).
SYNCHRONOUS_MODES = ("FULL", "NORMAL")


def _connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    if synchronous not in SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, not {synchronous!r}")
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: each commit is fsynced before the ACK leaves. NORMAL (in WAL) fsyncs only at checkpoints:
    # after a power loss or OS crash the last ACKed messages can be gone (a process crash loses nothing).
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class _Writer(threading.Thread):
    """The one thread that writes. Batches every queued job into one transaction."""

    max_batch = 512

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        super().__init__(name="ehr-bridge-sqlite-writer", daemon=True)
        self.path = path
        self.synchronous = synchronous
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        #: Decides, for a job, between its caller's cancellation and the writer's start (whichever comes first).
        self.claim = threading.Lock()
        self.ready = concurrent.futures.Future[None]()
        self.commits = 0

    def run(self) -> None:
        try:
            conn = _connect(self.path, self.synchronous)
            _migrate(conn)
        except Exception as exc:  # boundary: report to the opener, not the thread's excepthook
            self.ready.set_exception(StoreError(f"cannot open SQLite store: {exc}"))
            return
        self.ready.set_result(None)
        stopping = False
        while not stopping:
            first = self.jobs.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            try:
                self._run_batch(conn, batch)
            except BaseException as exc:  # boundary: the writer must outlive any batch, or every later write hangs
                self._fail_batch(conn, batch, exc)
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        outcomes: list[_Outcome] = []
        with self.claim:
            # A job whose caller was cancelled while it waited: nobody awaits it, so it must not run.
            # Every other job is started from here on: a later cancellation only drops its result.
            runnable = [job for job in batch if not job.cancelled]
            for job in runnable:
                job.started = True
        if not runnable:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in runnable:
                conn.execute("SAVEPOINT job")
                try:
                    result = job.fn(conn)
                except Exception as exc:  # one job's failure must not undo the others
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    if isinstance(exc, sqlite3.Error):
                        # Callers (intake's AR answer) rely on StoreError for "not committed".
                        failed = StoreError(f"write failed: {type(exc).__name__}: {exc}")
                        failed.__cause__ = exc
                        exc = failed
                    outcomes.append((job, None, exc))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((job, result, None))
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.rollback()
            log.error("store.commit_failed", error=type(exc).__name__, jobs=len(batch))
            failure = StoreError(f"commit failed: {exc}")
            _resolve([(job, None, failure) for job in runnable])
            return
        _resolve(outcomes)

    def _fail_batch(self, conn: sqlite3.Connection, batch: list[_Job], exc: BaseException) -> None:
        log.error("store.batch_failed", error=type(exc).__name__, jobs=len(batch))
        if conn.in_transaction:
            # The connection may be what failed; the batch is lost either way and its callers are told so.
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
        failure = StoreError(f"write failed: {type(exc).__name__}")
        failure.__cause__ = exc
        with self.claim:
            for job in batch:
                job.started = True
        _resolve([(job, None, failure) for job in batch if not job.cancelled])


#: A job, and its result or the error to raise in its caller.
_Outcome = tuple[_Job, Any, "BaseException | None"]


def _resolve(outcomes: list[_Outcome]) -> None:
    """Hand a committed (or failed) batch's outcomes to their callers: one wake-up per event loop, not per job.

    Called on the writer thread; the futures are set on their loop's thread, where a caller
    that was cancelled meanwhile has already marked its future done (its outcome is dropped).
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].future.get_loop(), []).append(outcome)
    for loop, settled in by_loop.items():
        # The loop is gone (its caller's process is shutting down): nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, settled)


def _settle(outcomes: list[_Outcome]) -> None:
    """Resolve each job's future unless it is already done (its caller gave up); on the future's loop."""
    for job, result, error in outcomes:
        future = job.future
        if future.done():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def _migrate(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise StoreError(f"database schema v{version} is newer than this ehr-bridge (v{len(MIGRATIONS)})")
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
        log.info("store.migrated", schema_version=number)


class SQLiteStore:
    """The embedded store. ``path`` may be ``:memory:``-free only: WAL needs a file.

    ``lease_seconds`` bounds how long a claimed delivery may stay in flight
    without an outcome recorded (the worker's store write failed); after that
    the next claim of its channel hands it out again. ``synchronous`` is the
    durability of a commit: ``FULL`` (default) survives power loss, ``NORMAL``
    survives a crash of the process only (see the README's performance section).
    """

    def __init__(self, path: Path | str, *, lease_seconds: float = 300.0, synchronous: str = "FULL") -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, not {lease_seconds}")
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, not {synchronous!r}")
        self.path = Path(path)
        self.lease_seconds = lease_seconds
        self.synchronous = synchronous
        self._writer: _Writer | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._supersedes: Supersedes = {}

    def __repr__(self) -> str:
        return f"SQLiteStore(path={str(self.path)!r})"

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # What corrections and cancellations supersede, from the catalogue: read here, once, not per claim.
        self._supersedes = await asyncio.to_thread(supersedes_table)
        writer = _Writer(self.path, self.synchronous)
        writer.start()
        await asyncio.wrap_future(writer.ready)
        self._writer = writer
        self._reader = await asyncio.to_thread(_connect, self.path)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.jobs.put(None)
            await asyncio.to_thread(self._writer.join, 10.0)
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def commits(self) -> int:
        """Transactions committed so far (group commit makes this lower than the writes)."""
        return self._writer.commits if self._writer else 0

    @property
    def healthy(self) -> bool:
        """The writer thread runs: every write goes through it (``/healthz``)."""
        return self._writer is not None and self._writer.is_alive()

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer is None:
            raise StoreError("store is not open")
        if not self._writer.is_alive():
            raise StoreError("store writer is not running")
        writer = self._writer
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        job = _Job(fn, future)
        writer.jobs.put(job)
        try:
            return await future
        except asyncio.CancelledError:
            # Not started yet: the writer will skip it. Started: it runs to the end; its result is dropped.
            with writer.claim:
                if not job.started:
                    job.cancelled = True
            raise

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        reader = self._reader
        if reader is None:
            raise StoreError("store is not open")

        def run() -> T:
            with self._read_lock:
                return fn(reader)

        return await asyncio.to_thread(run)

    async def secret(self, name: str) -> bytes:
        def run(conn: sqlite3.Connection) -> bytes:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (f"secret:{name}", os.urandom(32)))
            (value,) = conn.execute("SELECT value FROM meta WHERE key=?", (f"secret:{name}",)).fetchone()
            return bytes(value)

        return await self._write(run)

    async def ping(self) -> None:
        await self._write(lambda c: c.execute("SELECT count(*) FROM channel_state").fetchone())

    # -- intake ----------------------------------------------------------------------------

    async def journal(self, entry: JournalEntry) -> None:
        digest = _body_digest(entry.raw)
        await self._write(lambda c: _insert_journal(c, entry, digest))

    async def commit_message(
        self,
        entry: JournalEntry,
        events: list[tuple[ClinicalEvent, list[NewDelivery]]],
        *,
        dedup_window: float,
        progress: SubscriptionProgress | None = None,
        channels: Collection[str] | None = None,
    ) -> CommitResult:
        # Hashed here, not on the writer thread: the writer is the one serial stage of every commit.
        digest = _body_digest(entry.raw)
        supersedes = self._supersedes
        configured = frozenset(channels) if channels is not None else None

        def run(conn: sqlite3.Connection) -> CommitResult:
            since = entry.received_at - dedup_window
            reused = False
            if dedup_window > 0 and entry.control_id and entry.status is not MessageStatus.REJECTED:
                # A resend carries the same body (MSH-7 may be fresh); a sender whose counter reset
                # reuses the triple for another body. '' is a row journaled before digests: the
                # triple alone decides, as it did then.
                seen = conn.execute(
                    "SELECT body_digest IN ('', ?) FROM journal"
                    " WHERE control_id=? AND sending_application=? AND sending_facility=?"
                    " AND received_at >= ? AND status IN (?, ?) ORDER BY 1 DESC LIMIT 1",
                    (
                        digest,
                        entry.control_id,
                        entry.sending_application,
                        entry.sending_facility,
                        since,
                        MessageStatus.ACCEPTED.value,
                        MessageStatus.UNMAPPED.value,
                    ),
                ).fetchone()
                if seen and seen[0]:
                    _insert_journal(conn, replace(entry, status=MessageStatus.DUPLICATE), digest)
                    return CommitResult(duplicate=True)
                reused = seen is not None
            _insert_journal(conn, entry, digest)
            disabled = dict(conn.execute("SELECT channel, reason FROM channel_state").fetchall())
            created: list[str] = []
            woken: dict[str, None] = {}
            for event, routed in events:
                dup = (
                    dedup_window > 0
                    and conn.execute(
                        "SELECT 1 FROM events WHERE dedup_key=? AND created_at >= ? AND status != ? LIMIT 1",
                        (event.dedup_key, since, EventStatus.DUPLICATE.value),
                    ).fetchone()
                )
                deliveries = [] if dup else _following(conn, event, routed, supersedes, configured)
                if dup:
                    status = EventStatus.DUPLICATE
                elif deliveries:
                    status = EventStatus.ROUTED
                else:
                    status = EventStatus.UNROUTED
                cur = conn.execute(
                    "INSERT INTO events (id, message_id, type, severity, lifecycle, thread_key, dedup_key,"
                    " subject_key, subject_kind, patient, status, created_at, body) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        event.id,
                        entry.id,
                        event.type.value,
                        event.severity.value,
                        event.lifecycle.value,
                        event.thread_key,
                        event.dedup_key,
                        event.subject.key if event.subject else None,
                        event.subject.kind if event.subject else None,
                        _patient(event),
                        status.value,
                        entry.received_at,
                        event.model_dump_json(),
                    ),
                )
                seq = cur.lastrowid
                for d in deliveries:
                    delivery_id = f"{event.id}.{d.channel}"
                    reason = disabled.get(d.channel)
                    error = f"channel disabled: {reason}" if reason else d.dead
                    conn.execute(
                        "INSERT INTO deliveries (id, event_id, event_seq, channel, thread_key, status, attempts,"
                        " next_attempt_at, last_error, created_at, updated_at) VALUES (?,?,?,?,?,?,0,?,?,?,?)",
                        (
                            delivery_id,
                            event.id,
                            seq,
                            d.channel,
                            d.thread_key or event.thread_key,
                            (DeliveryStatus.DEAD if error else DeliveryStatus.PENDING).value,
                            max(d.not_before, entry.received_at),
                            error,
                            entry.received_at,
                            entry.received_at,
                        ),
                    )
                    created.append(delivery_id)
                    if not error:
                        woken[d.channel] = None
            if progress is not None:
                _write_progress(conn, progress, entry.received_at)
            return CommitResult(
                duplicate=False, delivery_ids=tuple(created), control_id_reused=reused, channels=tuple(woken)
            )

        return await self._write(run)

    # -- FHIR subscriptions ------------------------------------------------------------------

    async def subscription_state(self, name: str) -> SubscriptionState:
        def run(conn: sqlite3.Connection) -> SubscriptionState:
            row = conn.execute(
                "SELECT status, last_event_number, last_seen_at, watermark, error, stale_since"
                " FROM subscriptions WHERE name=?",
                (name,),
            ).fetchone()
            return SubscriptionState(name, *row) if row else SubscriptionState(name)

        return await self._read(run)

    async def record_subscription(self, name: str, **fields: Any) -> None:
        unknown = set(fields) - _SUBSCRIPTION_FIELDS
        if unknown:
            raise ValueError(f"unknown subscription fields: {sorted(unknown)}")

        def run(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute("INSERT OR IGNORE INTO subscriptions (name, updated_at) VALUES (?, ?)", (name, now))
            if fields:
                sets = ", ".join(f"{k}=?" for k in fields)
                conn.execute(
                    f"UPDATE subscriptions SET {sets}, updated_at=? WHERE name=?", (*fields.values(), now, name)
                )

        await self._write(run)

    async def snapshots(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        if not keys:
            return {}

        def run(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
            marks = ",".join("?" * len(keys))
            rows = conn.execute(f"SELECT key, body FROM fhir_resources WHERE key IN ({marks})", keys).fetchall()
            return {key: json.loads(body) for key, body in rows}

        return await self._read(run)

    # -- delivery --------------------------------------------------------------------------

    async def claim(self, channel: str, *, now: float, limit: int) -> list[ClaimedDelivery]:
        lease_expired = now - self.lease_seconds
        supersedes = self._supersedes

        def run(conn: sqlite3.Connection) -> list[ClaimedDelivery]:
            # A send whose outcome could not be recorded stays in flight and blocks its thread; past
            # the lease it goes again (at least once: the adapter's idempotency key is the delivery id).
            expired = conn.execute(
                "UPDATE deliveries SET status=?, updated_at=? WHERE channel=? AND status=? AND updated_at < ?",
                (DeliveryStatus.PENDING.value, now, channel, DeliveryStatus.IN_FLIGHT.value, lease_expired),
            ).rowcount
            if expired:
                log.warning("store.lease_expired", channel=channel, deliveries=expired)
            rows: list[tuple[str, str, int, str, int, str | None]] = conn.execute(
                _CLAIM_SQL, (channel, DeliveryStatus.PENDING.value, now, *_OPEN, limit)
            ).fetchall()
            if not rows:
                return []
            # Bodies and thread roots only for the rows taken: joining before the LIMIT read every due body.
            event_ids = [r[1] for r in rows]
            bodies: dict[str, str] = dict(
                conn.execute(f"SELECT id, body FROM events WHERE id IN ({_marks(event_ids)})", event_ids).fetchall()
            )
            thread_keys = sorted({r[3] for r in rows})
            roots: dict[str, str] = dict(
                conn.execute(
                    "SELECT thread_key, external_id FROM threads"
                    f" WHERE channel=? AND thread_key IN ({_marks(thread_keys)})",
                    (channel, *thread_keys),
                ).fetchall()
            )
            claimed: list[ClaimedDelivery] = []
            for delivery_id, event_id, attempts, thread_key, seq, shadow_of in rows:
                try:
                    event = ClinicalEvent.model_validate_json(bodies[event_id])
                except Exception as exc:  # boundary: one bad row must not stop the channel's other deliveries
                    _kill_undecodable(conn, channel, delivery_id, event_id, type(exc).__name__, now)
                    continue
                # An alert is a new post in the thread: it edits nothing. It is stale as the edit it
                # follows would be: once a later correction or cancellation reached the post it shadows.
                original = None if shadow_of else _original(conn, channel, event, seq, thread_key, supersedes)
                refs = original.refs if original else ()
                later = _later(conn, channel, event, seq, thread_key, (shadow_of,) if shadow_of else refs, supersedes)
                if later is not None:
                    # Sending it now (a replay) would bring back what a later event already replaced here.
                    conn.execute(
                        "UPDATE deliveries SET status=?, last_error=?, updated_at=? WHERE id=?",
                        (DeliveryStatus.SUPERSEDED.value, f"superseded by event {later}", now, delivery_id),
                    )
                    _insert_audit(conn, "delivery.superseded", channel=channel, event_id=event_id, detail=later)
                    log.info("store.delivery_superseded", channel=channel, delivery_id=delivery_id, by=later)
                    continue
                claimed.append(
                    ClaimedDelivery(
                        id=delivery_id,
                        channel=channel,
                        attempts=attempts + 1,
                        event=event,
                        thread_ref=roots.get(thread_key),
                        original_ref=refs[0] if refs else None,
                        original_severity=original.severity if original else None,
                        original_refs=refs,
                    )
                )
            if claimed:
                # Each with the post it is to edit or strike ('' none): what tells, once it is
                # delivered, a post of its own from an edit (see _OWN_POST).
                conn.executemany(
                    "UPDATE deliveries SET status=?, attempts=attempts+1, updated_at=?, original_ref=? WHERE id=?",
                    [(DeliveryStatus.IN_FLIGHT.value, now, c.original_ref or "", c.id) for c in claimed],
                )
            return claimed

        return await self._write(run)

    async def mark_delivered(
        self,
        delivery_id: str,
        *,
        external_id: str | None,
        thread_root: bool,
        audit_detail: str | None = None,
        alert: bool = False,
    ) -> None:
        def run(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute(
                "UPDATE deliveries SET status=?, external_id=?, last_error='', updated_at=? WHERE id=?",
                (DeliveryStatus.DELIVERED.value, external_id, now, delivery_id),
            )
            if alert and external_id:
                # Same event, channel, thread and place in its order (event_seq): claimed next in the
                # thread, before anything later. OR IGNORE: an edit sent again (its lease ran out
                # unrecorded) does not make a second alert.
                conn.execute(
                    "INSERT OR IGNORE INTO deliveries (id, event_id, event_seq, channel, thread_key, status,"
                    " attempts, next_attempt_at, last_error, created_at, updated_at, shadow_of)"
                    " SELECT id || '.alert', event_id, event_seq, channel, thread_key, ?, 0, ?, '', ?, ?, ?"
                    " FROM deliveries WHERE id=?",
                    (DeliveryStatus.PENDING.value, now, now, now, external_id, delivery_id),
                )
            if thread_root and external_id:
                conn.execute(
                    "INSERT OR IGNORE INTO threads (thread_key, channel, external_id, created_at)"
                    " SELECT thread_key, channel, ?, ? FROM deliveries WHERE id=?",
                    (external_id, now, delivery_id),
                )
            if audit_detail is not None:
                # In the outcome's transaction: one commit per delivery instead of two, and the
                # delivered mark never lands without its disclosure record.
                conn.execute(
                    "INSERT INTO audit (at, action, channel, event_id, detail)"
                    " SELECT ?, ?, channel, event_id, ? FROM deliveries WHERE id=?",
                    (now, "disclosed", audit_detail, delivery_id),
                )

        await self._write(run)

    async def mark_retry(self, delivery_id: str, *, next_attempt_at: float, error: str) -> None:
        # Only from in flight: a send under way when its channel was disabled must stay dead.
        await self._write(
            lambda c: c.execute(
                "UPDATE deliveries SET status=?, next_attempt_at=?, last_error=?, updated_at=? WHERE id=? AND status=?",
                (
                    DeliveryStatus.PENDING.value,
                    next_attempt_at,
                    error,
                    time.time(),
                    delivery_id,
                    DeliveryStatus.IN_FLIGHT.value,
                ),
            )
        )

    async def mark_dead(self, delivery_id: str, *, error: str) -> None:
        await self._write(
            lambda c: c.execute(
                "UPDATE deliveries SET status=?, last_error=?, updated_at=? WHERE id=?",
                (DeliveryStatus.DEAD.value, error, time.time(), delivery_id),
            )
        )

    async def disable_channel(self, channel: str, *, reason: str) -> int:
        def run(conn: sqlite3.Connection) -> int:
            now = time.time()
            conn.execute(
                "INSERT OR REPLACE INTO channel_state (channel, disabled_at, reason) VALUES (?,?,?)",
                (channel, now, reason),
            )
            cur = conn.execute(
                "UPDATE deliveries SET status=?, last_error=?, updated_at=? WHERE channel=? AND status IN (?, ?)",
                (DeliveryStatus.DEAD.value, f"channel disabled: {reason}", now, channel, *_OPEN),
            )
            _insert_audit(conn, "channel.disabled", channel=channel, detail=reason)
            return cur.rowcount

        return await self._write(run)

    async def disabled_channels(self) -> dict[str, str]:
        return await self._read(lambda c: dict(c.execute("SELECT channel, reason FROM channel_state").fetchall()))

    async def reclaim_in_flight(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE deliveries SET status=?, updated_at=? WHERE status=?",
                (DeliveryStatus.PENDING.value, time.time(), DeliveryStatus.IN_FLIGHT.value),
            )
            return cur.rowcount

        return await self._write(run)

    async def dead_letters(self, *, limit: int = 100) -> list[DeliveryRow]:
        def run(conn: sqlite3.Connection) -> list[DeliveryRow]:
            rows = conn.execute(
                "SELECT d.id, d.event_id, d.channel, e.type, d.status, d.attempts, d.last_error, d.updated_at"
                " FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.status = ?"
                " ORDER BY d.updated_at DESC LIMIT ?",
                (DeliveryStatus.DEAD.value, limit),
            ).fetchall()
            return [DeliveryRow(r[0], r[1], r[2], r[3], DeliveryStatus(r[4]), r[5], r[6], r[7]) for r in rows]

        return await self._read(run)

    async def replay(self, delivery_ids: list[str] | None) -> int:
        def run(conn: sqlite3.Connection) -> int:
            now = time.time()
            if delivery_ids is None:
                where, args = "status = ?", [DeliveryStatus.DEAD.value]
            else:
                marks = ",".join("?" * len(delivery_ids))
                where, args = f"status = ? AND id IN ({marks})", [DeliveryStatus.DEAD.value, *delivery_ids]
            channels = [r[0] for r in conn.execute(f"SELECT DISTINCT channel FROM deliveries WHERE {where}", args)]
            cur = conn.execute(
                f"UPDATE deliveries SET status=?, attempts=0, next_attempt_at=?, updated_at=? WHERE {where}",
                [DeliveryStatus.PENDING.value, now, now, *args],
            )
            for channel in channels:
                conn.execute("DELETE FROM channel_state WHERE channel=?", (channel,))
                _insert_audit(conn, "dlq.replayed", channel=channel)
            return cur.rowcount

        return await self._write(run)

    # -- inbox and audit -------------------------------------------------------------------

    async def inbox_append(self, delivery_id: str, item: dict[str, Any]) -> int:
        def run(conn: sqlite3.Connection) -> int:
            conn.execute(
                "INSERT OR IGNORE INTO inbox (delivery_id, created_at, item) VALUES (?,?,?)",
                (delivery_id, time.time(), json.dumps(item, separators=(",", ":"), default=str)),
            )
            (feed_id,) = conn.execute("SELECT id FROM inbox WHERE delivery_id=?", (delivery_id,)).fetchone()
            return int(feed_id)

        return await self._write(run)

    async def inbox_items(self, *, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            if after:
                rows = conn.execute(
                    "SELECT id, created_at, item FROM inbox WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT id, created_at, item FROM inbox ORDER BY id DESC LIMIT ?", (limit,)
                ).fetchall()[::-1]
            return [{"id": r[0], "received_at": r[1], **json.loads(r[2])} for r in rows]

        return await self._read(run)

    async def audit(self, action: str, *, channel: str = "", event_id: str = "", detail: str = "") -> None:
        await self._write(lambda c: _insert_audit(c, action, channel=channel, event_id=event_id, detail=detail))

    # -- inspection (tests, CLI) -----------------------------------------------------------

    async def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read-only SQL for the CLI and tests."""
        return await self._read(lambda c: c.execute(sql, args).fetchall())


def _body_digest(raw: bytes) -> str:
    """SHA-256 (hex) of the message after its MSH segment, segment terminators normalised to CR.

    MSH is left out because a resend may carry a fresh MSH-7; the first segment
    ends at the first CR or LF. Terminators are normalised because the same
    message resent over another transport may come with LF or CRLF.
    """
    cr, lf = raw.find(b"\r"), raw.find(b"\n")
    if lf < 0:
        # CR only, as MLLP senders write it: nothing to normalise, no copies of the message.
        return hashlib.sha256(raw[cr if cr >= 0 else len(raw) :].strip(b"\r")).hexdigest()
    end = min(lf, cr) if cr >= 0 else lf
    body = raw[end:].replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r")
    return hashlib.sha256(body).hexdigest()


def _insert_journal(conn: sqlite3.Connection, e: JournalEntry, digest: str) -> None:
    conn.execute(
        "INSERT INTO journal (id, received_at, listener, transport, peer, control_id, sending_application,"
        " sending_facility, message_type, status, ack_code, error, raw, body_digest)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            e.id,
            e.received_at,
            e.listener,
            e.transport,
            e.peer,
            e.control_id,
            e.sending_application,
            e.sending_facility,
            e.message_type,
            e.status.value,
            e.ack_code,
            e.error,
            e.raw,
            digest,
        ),
    )


def _marks(values: Sized) -> str:
    """Placeholders for ``IN (...)`` with one parameter per value."""
    return ",".join("?" * len(values))


def _kill_undecodable(
    conn: sqlite3.Connection, channel: str, delivery_id: str, event_id: str, error_type: str, now: float
) -> None:
    """Dead-letter a delivery whose stored event no longer validates (a schema change, a damaged row).

    The message names the exception type only: validation errors quote the input, which is PHI.
    """
    error = f"undecodable event body ({error_type})"
    conn.execute(
        "UPDATE deliveries SET status=?, last_error=?, updated_at=? WHERE id=?",
        (DeliveryStatus.DEAD.value, error, now, delivery_id),
    )
    _insert_audit(conn, "delivery.dead", channel=channel, event_id=event_id, detail=error)
    log.error("store.event_undecodable", channel=channel, delivery_id=delivery_id, error=error_type)


_SUBSCRIPTION_FIELDS = frozenset({"status", "last_seen_at", "error", "stale_since"})


def _write_progress(conn: sqlite3.Connection, progress: SubscriptionProgress, now: float) -> None:
    conn.execute(
        "INSERT INTO subscriptions (name, last_event_number, watermark, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(name) DO UPDATE SET"
        " last_event_number = max(last_event_number, excluded.last_event_number),"
        " watermark = coalesce(excluded.watermark, watermark), updated_at = excluded.updated_at",
        (progress.subscription, progress.last_event_number or 0, progress.watermark, now),
    )
    conn.executemany(
        "INSERT INTO fhir_resources (key, version_id, body, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(key) DO UPDATE SET version_id=excluded.version_id, body=excluded.body,"
        " updated_at=excluded.updated_at",
        [(key, version, body, now) for key, version, body in progress.snapshots],
    )


def _insert_audit(
    conn: sqlite3.Connection, action: str, *, channel: str = "", event_id: str = "", detail: str = ""
) -> None:
    conn.execute(
        "INSERT INTO audit (at, action, channel, event_id, detail) VALUES (?,?,?,?,?)",
        (time.time(), action, channel, event_id, detail),
    )


#: The link that names what a lifecycle edits (correct) or strikes (cancel).
_TARGET_LINK = {Lifecycle.CORRECT: "corrects", Lifecycle.CANCEL: "cancels"}


@functools.cache
def supersedes_table() -> dict[tuple[EventType, Lifecycle], tuple[str, ...]]:
    """For each type and lifecycle that corrects or cancels: the types of post it may edit or strike.

    From the catalogue's ``supersedes`` (``mappings/catalogue.yaml``), read once per process: the
    store looks posts up by these types and never reads YAML while it resolves.
    """
    return {
        (spec.type, stage.lifecycle): tuple(t.value for t in stage.supersedes)
        for spec in catalogue().types.values()
        for stage in spec.stages
        if stage.supersedes
    }


def _superseded(event: ClinicalEvent, supersedes: Supersedes) -> _Superseded | None:
    """The condition on ``events e`` of the events whose posts ``event`` corrects or cancels; None if none.

    ``links.corrects`` and ``links.cancels`` name either event types, comma-separated (an A11
    strikes ``encounter.admitted`` or ``encounter.arrived`` of the thread, whichever was posted),
    or a subject key (a withdrawn result); a value not made of event types only is a subject key,
    commas and all. Either way only events of the types the catalogue says this type and lifecycle
    supersedes qualify (a result correction never edits an order's post, even when a result without
    filler number falls back to the order's placer number as its key), and no update (a reply that
    adds to a post: the return from leave is not the leave). Events of another subject kind do not
    qualify either (a pharmacy order's change never edits a lab order of the same number); an event
    that has no subject, or was stored before subject kinds were, matches any kind.

    Which of their deliveries made a post of the channel's own, rather than edited another, is
    :data:`_OWN_POST`'s part (the claim's); which channel holds one, :func:`_holders`'.
    """
    link = _TARGET_LINK.get(event.lifecycle)
    target = event.links.get(link) if link else None
    allowed = supersedes.get((event.type, event.lifecycle), ())
    if not target or not allowed:
        return None
    named = link_types(target)
    subject = event.subject
    key: str | None
    if named is not None:
        types = [t for t in dict.fromkeys(named) if t in allowed]
        # A visit's events share the thread; other subjects (a patient's registration) also share the key.
        key = subject.key if subject is not None and subject.kind != "encounter" else None
    else:
        types, key = list(allowed), target
    if not types:
        return None
    sql = f"e.lifecycle != ? AND e.type IN ({_marks(types)})"
    args: list[Any] = [Lifecycle.UPDATE.value, *types]
    if subject is not None:
        sql += " AND (e.subject_kind = ? OR e.subject_kind IS NULL)"
        args.append(subject.kind)
    return _Superseded(sql, args, key, tuple(types), _patient(event))


def _patient(event: ClinicalEvent) -> str | None:
    """The patient an event is about, as stored (``events.patient``): its MRN "authority|value"; None without one."""
    mrn = event.patient.mrn
    return f"{mrn.authority or ''}|{mrn.value}" if mrn is not None else None


def _same_patient(a: ClinicalEvent, b: ClinicalEvent) -> bool:
    """False only when both events have an MRN and they differ (as the store's guard compares them)."""
    first, second = _patient(a), _patient(b)
    return first is None or second is None or first == second


@dataclass(frozen=True, slots=True)
class _Superseded:
    """Which events' posts a correction or cancellation supersedes: a condition on ``events e``, and their key."""

    where: str
    args: list[Any]
    #: Their subject key, if the link names one (or names types of a subject other than the visit).
    key: str | None
    #: The event types the condition admits.
    types: tuple[str, ...] = ()
    #: The superseding event's patient (:func:`_patient`): a subject key is looked up among that patient's events.
    patient: str | None = None

    def source(self, thread_key: str) -> tuple[str, list[Any]]:
        """``FROM`` and ``WHERE`` (without the word) over ``events e`` and ``deliveries d``, with their arguments.

        With a subject key, the subject's posts in any thread (an original with its visit number,
        its correction without a PV1 falls back to the patient's thread), of the same patient
        when both events name one (a key two patients share never reaches the other's post). The
        walk starts from the subject's events (events_subject), then their deliveries
        (deliveries_event): a handful of rows, however long the thread. CROSS JOIN keeps that
        order (SQLite never reorders it) and INDEXED BY the index (deliveries_thread matches more
        of the caller's terms, but per subject event it would walk the channel's whole thread).
        Without a key (a link naming event types: the visit's), the deliveries of ``thread_key``
        (deliveries_thread).
        """
        if self.key is None:
            return (
                f"deliveries d JOIN events e ON e.id = d.event_id WHERE d.thread_key = ? AND {self.where}",
                [thread_key, *self.args],
            )
        return (
            "events e CROSS JOIN deliveries d INDEXED BY deliveries_event ON d.event_id = e.id"
            f" WHERE e.subject_key = ? AND (e.patient IS NULL OR ? IS NULL OR e.patient = ?) AND {self.where}",
            [self.key, self.patient, self.patient, *self.args],
        )


#: A delivered row that made a post of its own in its channel: not an edit or strike of another
#: post, which is recorded under that post's id (``original_ref``, set at claim, says which post
#: the delivery was to change; '' none). So a correction posted anew, its original never having
#: reached the channel, is that channel's post of the subject, to be corrected or withdrawn in
#: its turn. Rows claimed before ``original_ref`` was recorded: the posts of new events, as then.
#: An alert (``shadow_of``) is not: it shadows the post it alerts to, and goes along with that one.
_OWN_POST = (
    "d.external_id IS NOT NULL AND d.shadow_of IS NULL AND CASE WHEN d.original_ref IS NULL"
    " THEN e.lifecycle = 'new' ELSE d.external_id != d.original_ref END"
)


@dataclass(frozen=True, slots=True)
class _Original:
    """The posts a correction or cancellation changes in a channel, and the severity the latest shows."""

    #: External ids, latest first: one for a correction; every own post of the subject for a cancellation;
    #: then the alerts that shadow them (latest first).
    refs: tuple[str, ...]
    severity: Severity


def _original(
    conn: sqlite3.Connection,
    channel: str,
    event: ClinicalEvent,
    seq: int,
    thread_key: str,
    supersedes: Supersedes,
) -> _Original | None:
    """The posts a correction or cancellation refers to in this channel, and what the latest of them shows.

    A correction edits the latest post the channel made itself (:data:`_OWN_POST`) among the
    deliveries of the events :func:`_superseded` admits (by subject key in any thread of the
    patient; by event types in the delivery's thread, ``thread_key``): after a preliminary and a
    final report it edits the final one's post; a re-admission after an A11 is struck, not the
    first admission. A cancellation strikes every such post (the preliminary critical post as
    well as the final one), the latest first, except older ones already struck by a cancellation
    (a re-booking cancelled again leaves the first cancellation's post as it was). The severity is
    that of the latest event recorded against the latest post (its own, or an earlier
    correction's that edited it).

    After those posts come the delivered alerts that shadow them (``shadow_of``: a correction
    that edited a post and made it more severe alerted in the thread with a post of its own).
    An alert is never the post a correction edits first, but goes along with it: a withdrawal
    strikes it as well as the post (no "Corrected ... 6.9 critical" left standing), and a later
    correction edits it to the new content as well, so every post of the subject shows the
    current value, under the correction's label (an alert left showing a value corrected since
    would contradict the post it alerted to; the new correction alerts anew if it is more severe).
    """
    found = _superseded(event, supersedes)
    if found is None:
        return None
    source, args = found.source(thread_key)
    only_latest = "" if event.lifecycle is Lifecycle.CANCEL else " LIMIT 1"
    rows = conn.execute(
        f"SELECT d.external_id, d.thread_key FROM {source} AND d.channel=? AND d.status=? AND d.event_seq < ?"
        f" AND {_OWN_POST} ORDER BY d.event_seq DESC{only_latest}",
        (*args, channel, DeliveryStatus.DELIVERED.value, seq),
    ).fetchall()
    refs: list[str] = []
    severity: Severity | None = None
    # Each post once, latest first, with its thread (an edit is recorded in the thread of the post it edits).
    for external_id, post_thread in dict((str(r[0]), str(r[1])) for r in rows).items():
        # An edit is recorded under the id of the post it edited (Slack's chat.update answers with its ts).
        shown = conn.execute(
            "SELECT e.severity, e.lifecycle FROM deliveries d JOIN events e ON e.id = d.event_id"
            " WHERE d.thread_key=? AND d.channel=? AND d.status=? AND d.event_seq < ? AND d.external_id = ?"
            " ORDER BY d.event_seq DESC LIMIT 1",
            (post_thread, channel, DeliveryStatus.DELIVERED.value, seq, external_id),
        ).fetchone()
        if severity is None:
            severity = Severity(shown[0])
        elif shown[1] == Lifecycle.CANCEL.value:
            continue
        refs.append(external_id)
    if severity is None:
        return None
    shadows = conn.execute(
        f"SELECT d.external_id FROM deliveries d WHERE d.shadow_of IN ({_marks(refs)}) AND d.channel=?"
        " AND d.status=? AND d.event_seq < ? AND d.external_id IS NOT NULL ORDER BY d.event_seq DESC",
        (*refs, channel, DeliveryStatus.DELIVERED.value, seq),
    ).fetchall()
    refs.extend(dict.fromkeys(str(r[0]) for r in shadows if str(r[0]) not in refs))
    return _Original(tuple(refs), severity)


def _later(
    conn: sqlite3.Connection,
    channel: str,
    event: ClinicalEvent,
    seq: int,
    thread_key: str,
    refs: tuple[str, ...],
    supersedes: Supersedes,
) -> str | None:
    """The id of a later correction or cancellation already delivered in this channel that makes this delivery stale.

    A delivery is claimed in its thread's order, so a later event of its subject can be
    delivered first only when this one was dead meanwhile (a replay, or a correction that lost
    its original's thread): sent now, it would put back what that later event replaced.

    - A correction or cancellation is stale once a later one was delivered against one of its
      posts (``refs``), or against the same subject: the same target key (of the same patient),
      or, for links naming event types, some of the same types in the same thread. Correction
      C1 dead, C2 delivered: replaying C1 would put C1's value back on the post.
    - A post of its own (lifecycle new) is stale once a later correction or cancellation that
      supersedes it was delivered: replaying a withdrawn result or a cancelled admission would
      show it as current; replaying a report a later correction already replaced would show the
      old value beside the new one.

    - An alert (a correction's, ``shadow_of``: its ``refs`` are the post it shadows) is stale as
      its correction would be: once a later correction or cancellation reached that post (the
      alert, dead, then replayed), it would alert to a value the post no longer shows.

    Updates are never stale: they reply, and replace nothing.
    """
    if event.lifecycle is Lifecycle.UPDATE:
        return None
    changes = (Lifecycle.CORRECT.value, Lifecycle.CANCEL.value)
    scope = " AND d.channel=? AND d.status=? AND d.event_seq > ? AND e.lifecycle IN (?, ?)"
    scoped = (channel, DeliveryStatus.DELIVERED.value, seq, *changes)
    rows = conn.execute(
        "SELECT e.id, e.body, d.thread_key, d.external_id FROM deliveries d JOIN events e ON e.id = d.event_id"
        f" WHERE d.thread_key=?{scope}",
        (thread_key, *scoped),
    ).fetchall()
    # A visit's events name what they cancel by type, in the thread: its key (the visit number) links nothing.
    if event.subject is not None and event.subject.key and event.subject.kind != "encounter":
        rows += conn.execute(
            "SELECT e.id, e.body, d.thread_key, d.external_id FROM events e"
            f" CROSS JOIN deliveries d INDEXED BY deliveries_event ON d.event_id = e.id WHERE e.subject_key=?{scope}",
            (event.subject.key, *scoped),
        ).fetchall()
    if not rows:
        return None
    own = _superseded(event, supersedes)
    for later_id, body, later_thread, external_id in rows:
        try:
            later = ClinicalEvent.model_validate_json(body)
        except Exception:  # boundary: an undecodable later row decides nothing (its own claim dead-letters it)
            continue
        found = _superseded(later, supersedes)
        if found is None or not _same_patient(event, later):
            continue
        if found.key is None and later_thread != thread_key:
            continue
        if event.lifecycle is Lifecycle.NEW:
            sql = f"SELECT 1 FROM events e WHERE e.id = ? AND {found.where}"
            args: list[Any] = [event.id, *found.args]
            if found.key is not None:
                sql += " AND e.subject_key = ?"
                args.append(found.key)
            if conn.execute(sql, args).fetchone():
                return str(later_id)
        elif external_id in refs or (
            own is not None
            and own.key == found.key
            and (own.key is not None or (later_thread == thread_key and set(own.types) & set(found.types)))
        ):
            return str(later_id)
    return None


#: Why a follow-up is created dead: its channel's post of the subject is dead too.
_ORIGINAL_DEAD = "original dead-lettered: replay it first (dlq replay sends both in order)"


def _following(
    conn: sqlite3.Connection,
    event: ClinicalEvent,
    routed: list[NewDelivery],
    supersedes: Supersedes,
    configured: Collection[str] | None = None,
) -> list[NewDelivery]:
    """The routed deliveries, then one to each other channel holding a post ``event`` corrects or cancels.

    ``configured``: the channels of the running config (None: any); a channel removed from it
    gets no follow-up, which nobody would ever send. A channel whose posts of the subject are all
    dead gets its follow-up dead too: ``dlq replay`` then sends the original and, after it in
    thread order, the correction, instead of the stale original alone.

    In a channel holding a post, routed or followed, the delivery goes in the thread of that post
    (the event's own thread may be another: a correction without the visit number of its original
    falls back to the patient's thread), so it is claimed after it and replies under its root.
    """
    held = _holders(conn, event, supersedes)
    threads = {channel: thread for channel, _, thread in held}
    channels = {d.channel for d in routed}
    return [
        *(replace(d, thread_key=threads[d.channel]) if d.channel in threads else d for d in routed),
        *(
            NewDelivery(channel, dead="" if alive else _ORIGINAL_DEAD, thread_key=thread)
            for channel, alive, thread in held
            if channel not in channels and (configured is None or channel in configured)
        ),
    ]


def _holders(conn: sqlite3.Connection, event: ClinicalEvent, supersedes: Supersedes) -> list[tuple[str, bool, str]]:
    """Channels holding a post that ``event`` corrects or cancels, each with whether any of it is alive and its thread.

    A correction or cancellation must reach the post it supersedes whatever the routes say (a
    channel routed only critical results must see the critical value withdrawn). A post still
    pending counts: a channel that is slow or retrying would otherwise post the critical value
    later and never hear of its correction; by the time the correction is claimed there, the
    claim's thread order has settled the original (delivered: edited; dead: posted anew). A dead
    one counts too (not alive): replayed, it would show the value this event supersedes.

    Any delivery of a superseded event counts, an edit as much as a post (a channel that got a
    correction holds the subject's post either way). The thread is that of the latest of them.

    Updates (a reply: the return from leave, a no-show, a completed order) do not follow: they
    add to what a post says instead of making it wrong, they name no post (the catalogue gives
    them nothing they supersede), and a channel routed, say, critical results only would get
    every order completion of its patients. A site that wants them routes their types.
    """
    found = _superseded(event, supersedes)
    if found is None:
        return []
    source, args = found.source(event.thread_key)
    rows = conn.execute(
        f"SELECT d.channel, d.status != ?, d.thread_key FROM {source} AND d.status IN (?, ?, ?, ?)"
        " ORDER BY d.event_seq",
        (
            DeliveryStatus.DEAD.value,
            *args,
            DeliveryStatus.DELIVERED.value,
            *_OPEN,
            DeliveryStatus.DEAD.value,
        ),
    ).fetchall()
    holders: dict[str, tuple[bool, str]] = {}
    for channel, alive, thread in rows:
        before = holders.get(channel)
        holders[channel] = (bool(alive) or (before is not None and before[0]), str(thread))
    return [(channel, alive, thread) for channel, (alive, thread) in sorted(holders.items())]
