"""Benchmark: HL7 v2 ingest over MLLP (send to ACK, durably committed) and end to end to a webhook sink.

DESIGN §6 asks for ingest messages/s against the raw MLLP echo ceiling measured in the
same run, the ACK latency on one connection, and the p99 from MLLP receipt to the sink.
One run, on loopback, prints:

* ``echo``: :class:`MLLPServer` with a handler that answers a fixed ACK at once. Same
  listener code as the bridge, so the ratio isolates intake, mapping, routing and commit.
* ``bridge``: the real :class:`Runtime` (SQLite in a temp dir, ``synchronous=FULL``,
  bundled mappings, every event routed to the built-in inbox with its console line off,
  so deliveries run in the same process as they do out of the box). Each message is a
  synthetic ADT^A01 or an ORU^R01 with a critical OBX, with a unique control ID and
  patient so that neither the message nor the event is a duplicate.
* ``end to end``: a second runtime whose route goes to a webhook channel aimed at a real
  local :class:`WebhookSink`; one connection sends at a steady rate, and the latency runs
  from the send (on loopback, the MLLP receipt) to the sink's receipt of the matching
  event. The webhook adapter declares a rate limit, so the first run stays under it; a
  second run lifts the limiter (bench only) to show what the pipeline itself adds.
* SQLite commits against messages taken, to show group commit at work.

Senders behave like real ones: each connection sends its next message only after the
ACK of the previous one. The load generator and the sink run in processes of their own
so their CPU does not share the measured event loop or its GIL. Message counts are
fixed, so the run is bounded (under a minute). Nothing is asserted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from adapters.inbound.mllp import MLLPServer, MLLPSettings, frame
from bridge.config import Settings, parse_config
from bridge.logs import configure as configure_logs
from bridge.runtime import Runtime
from bridge.store.sqlite import SQLiteStore

CONNECTIONS = 8
#: Untimed messages per connection before each measurement (connection set-up, first-use costs).
WARMUP = 20
ECHO_ONE = 3000
ECHO_EACH = 1000
#: The ceiling is the best of this many echo runs: noise from neighbours only ever lowers it.
ECHO_RUNS = 3
BRIDGE_ONE = 1000
BRIDGE_EACH = 300
STEADY_WARMUP = 5
#: The end-to-end run: this many messages per second for this long, to a webhook channel.
STEADY_SECONDS = 5.0
STEADY_RATE = 100.0
#: Upper bound on waiting for the outbox to empty (or the sink to see everything) after a phase.
DRAIN_TIMEOUT = 20.0

_HOST = "127.0.0.1"
_END = b"\x1c\r"
_ECHO_ACK = b"MSH|^~\\&|EHRBRIDGE|HOSP|BENCH|HOSP|20260101120000||ACK^A01^ACK|ECHO1|P|2.5.1\rMSA|AA|ECHO\r"
# Standard Webhooks wants 24 to 64 key bytes; this one exists only for the run's local sink.
_SECRET = "whsec_" + base64.b64encode(b"ehr-bridge-bench-ingest!").decode()


# --- synthetic traffic (built in the load generator; names are invented, every patient is new) ---


def _message(control_id: str, n: int) -> bytes:
    """An ADT^A01 for even ``n``, an ORU^R01 with a critical potassium for odd ``n``."""
    mrn = f"M{control_id}"
    if n % 2 == 0:
        return (
            f"MSH|^~\\&|BENCH|HOSP|EHRBRIDGE|HOSP|20260101120000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r"
            "EVN|A01|20260101120000\r"
            f"PID|1||{mrn}^^^HOSP^MR||Benchpatient^Alpha||19700101|F\r"
            f"PV1|1|I|ICU^1^1^HOSP||||1234^Physician^Test|||||||||||V{control_id}\r"
        ).encode()
    return (
        f"MSH|^~\\&|BENCH|HOSP|EHRBRIDGE|HOSP|20260101120000||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r"
        f"PID|1||{mrn}^^^HOSP^MR||Benchpatient^Beta||19700101|M\r"
        f"PV1|1|I|ICU^1^1^HOSP|||||||||||||||V{control_id}\r"
        f"OBR|1||F{control_id}|2823-3^Potassium^LN|||20260101110000||||||||||||||||F\r"
        "OBX|1|NM|2823-3^Potassium^LN||6.9|mmol/L|3.5-5.1|HH|||F\r"
    ).encode()


def _messages(tag: str, connection: int, count: int) -> list[tuple[str, bytes]]:
    # MSH-10 is at most 20 characters in v2.5; tag + 2 + 6 stays well under.
    ids = [f"{tag}{connection:02d}{i:06d}" for i in range(count)]
    return [(cid, frame(_message(cid, i))) for i, cid in enumerate(ids)]


# --- load generator process ---


@dataclass(frozen=True, slots=True)
class ClosedLoop:
    """``connections`` senders, each with one message in flight, ``count`` timed messages each."""

    port: int
    tag: str
    connections: int
    count: int
    warmup: int = WARMUP


@dataclass(frozen=True, slots=True)
class Steady:
    """One sender at ``rate`` messages/s (or slower, if an ACK takes longer than the interval)."""

    port: int
    tag: str
    rate: float
    count: int
    warmup: int = STEADY_WARMUP


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What the load generator saw; ``seconds`` spans the timed messages of every connection."""

    seconds: float
    messages: int
    #: Seconds from write to complete ACK frame, per timed message.
    latencies: list[float]
    #: ACKs whose MSA-1 was not AA.
    not_accepted: int
    #: Timed control ID and the wall-clock time it was written (steady runs only).
    sent_at: list[tuple[str, float]]


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, block: bytes) -> tuple[float, bool]:
    started = time.perf_counter()
    writer.write(block)
    ack = await reader.readuntil(_END)
    return time.perf_counter() - started, b"MSA|AA" in ack


async def _open(port: int, warm: list[tuple[str, bytes]]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(_HOST, port)
    for _, block in warm:
        await _exchange(reader, writer, block)
    return reader, writer


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


async def _closed_loop(job: ClosedLoop) -> LoadResult:
    plans = [_messages(job.tag, c, job.warmup + job.count) for c in range(job.connections)]
    streams = await asyncio.gather(*(_open(job.port, plan[: job.warmup]) for plan in plans))

    async def sender(
        stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], plan: list[tuple[str, bytes]]
    ) -> list[tuple[float, bool]]:
        reader, writer = stream
        return [await _exchange(reader, writer, block) for _, block in plan[job.warmup :]]

    started = time.perf_counter()
    per_connection = await asyncio.gather(*(sender(s, p) for s, p in zip(streams, plans, strict=True)))
    seconds = time.perf_counter() - started
    await asyncio.gather(*(_close(writer) for _, writer in streams))
    outcomes = [o for conn in per_connection for o in conn]
    return LoadResult(seconds, len(outcomes), [s for s, _ in outcomes], sum(not ok for _, ok in outcomes), [])


async def _steady(job: Steady) -> LoadResult:
    plan = _messages(job.tag, 0, job.warmup + job.count)
    reader, writer = await asyncio.open_connection(_HOST, job.port)
    interval = 1.0 / job.rate
    latencies: list[float] = []
    sent_at: list[tuple[str, float]] = []
    not_accepted = 0
    # The warm-up keeps the pace too: a burst would queue deliveries ahead of the measured ones.
    started = due = time.perf_counter()
    for n, (control_id, block) in enumerate(plan):
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        if n == job.warmup:
            started = time.perf_counter()
        sent = time.time()
        latency, ok = await _exchange(reader, writer, block)
        due += interval
        if n >= job.warmup:
            sent_at.append((control_id, sent))
            latencies.append(latency)
            not_accepted += not ok
    seconds = time.perf_counter() - started
    await _close(writer)
    return LoadResult(seconds, len(latencies), latencies, not_accepted, sent_at)


def _generator_main(conn: Connection) -> None:
    """Child process: run each job it is sent, answer its LoadResult; stop on None."""
    while (job := conn.recv()) is not None:
        conn.send(asyncio.run(_closed_loop(job) if isinstance(job, ClosedLoop) else _steady(job)))


# --- webhook sink process ---


def _sink_main(conn: Connection) -> None:
    """Child process: a real WebhookSink; sends its URL, then answers each request with its receipts so far."""
    from tests.e2e.support import WebhookSink

    sink = WebhookSink().start()
    conn.send(sink.url)
    try:
        while conn.recv() is not None:
            # Waiting for zero receipts returns at once with a copy taken under the sink's lock.
            received = sink.wait_for(0)
            # Only the origin's control ID leaves the sink: it pairs a receipt with its send.
            conn.send([(json.loads(r.body)["data"]["origin"]["control_id"], r.at) for r in received])
    finally:
        sink.stop()


class _Peer:
    """A child process and its pipe; calls block a worker thread, never the measured event loop."""

    def __init__(self, target: Callable[[Connection], None]) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process: BaseProcess = context.Process(target=target, args=(child,), daemon=True)
        self._process.start()
        child.close()

    async def call(self, request: object) -> Any:
        self._conn.send(request)
        return await asyncio.to_thread(self._conn.recv)

    async def receive(self) -> Any:
        return await asyncio.to_thread(self._conn.recv)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # A child that already died has closed its end; the join below still reaps it.
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        self._conn.close()


# --- the measured side ---


class _EchoHandler:
    """The ceiling: no parsing, no commit, the same ACK for every frame."""

    async def on_frame(self, payload: bytes, peer: str) -> bytes | None:
        return _ECHO_ACK

    async def on_oversize(self, head: bytes, size: int, peer: str) -> bytes | None:
        return None


@dataclass(frozen=True, slots=True)
class Phase:
    label: str
    load: LoadResult
    #: Store commits while the senders were sending; deliveries made meanwhile share them.
    commits: int = 0
    #: Messages the bridge took during the phase, warm-up included (what the commits served).
    taken: int = 0
    #: Deliveries completed while the senders were sending.
    delivered: int = 0
    #: Seconds from the last ACK until the outbox was empty.
    drain_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.load.messages / self.load.seconds


def _quantiles(values: list[float]) -> tuple[float, float]:
    """p50 and p99 (inclusive method: no extrapolation past the largest sample)."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


async def _count(store: SQLiteStore, where: str) -> int:
    ((count,),) = await store.query(f"SELECT COUNT(*) FROM deliveries WHERE {where}")
    return int(count)


async def _drain(store: SQLiteStore) -> float:
    """Wait until every delivery left the outbox; seconds waited (bounded by DRAIN_TIMEOUT)."""
    started = time.perf_counter()
    while time.perf_counter() - started < DRAIN_TIMEOUT:
        if not await _count(store, "status IN ('pending', 'in_flight')"):
            break
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


async def _best(label: str, generator: _Peer, job: ClosedLoop) -> Phase:
    loads: list[LoadResult] = [await generator.call(job) for _ in range(ECHO_RUNS)]
    return Phase(label, max(loads, key=lambda load: load.messages / load.seconds))


async def _bridge_phase(label: str, runtime: Runtime, generator: _Peer, job: ClosedLoop | Steady) -> Phase:
    store = runtime.store
    commits, delivered = store.commits, await _count(store, "status = 'delivered'")
    load: LoadResult = await generator.call(job)
    commits, delivered = store.commits - commits, await _count(store, "status = 'delivered'") - delivered
    senders = job.connections if isinstance(job, ClosedLoop) else 1
    taken = load.messages + job.warmup * senders
    return Phase(label, load, commits, taken, delivered, await _drain(store))


def _settings(workdir: Path, name: str, channel: dict[str, Any]) -> Settings:
    return parse_config(
        {
            "store": {"path": str(workdir / f"{name}.db")},
            "listeners": [{"name": "default", "host": _HOST, "port": 0}],
            "routes": [{"name": "everything", "channels": [name]}],
            "channels": {name: channel},
            "logging": {"level": "warning"},
        },
        env={},
    )


@dataclass(frozen=True, slots=True)
class Results:
    echo_one: Phase
    echo_many: Phase
    bridge_one: Phase
    bridge_many: Phase
    #: Steady runs to the webhook sink, each with its end-to-end seconds per message that arrived.
    steady: list[tuple[Phase, list[float]]]


async def _measure(generator: _Peer, sink: _Peer, workdir: Path) -> Results:
    # The sink's start-up (imports, uvicorn) would otherwise compete with the echo runs for the CPUs.
    url: str = await sink.receive()
    echo = MLLPServer(MLLPSettings(name="echo", host=_HOST, port=0), _EchoHandler())
    await echo.start()
    try:
        echo_one = await _best("echo 1 conn", generator, ClosedLoop(echo.port, "E", 1, ECHO_ONE))
        many = ClosedLoop(echo.port, "E", CONNECTIONS, ECHO_EACH)
        echo_many = await _best(f"echo {CONNECTIONS} conn", generator, many)
    finally:
        await echo.stop()

    # Ingest: the out-of-the-box channel, whose deliveries are store writes competing with intake.
    runtime = Runtime(_settings(workdir, "inbox", {"type": "inbox", "console": False}))
    await runtime.start()
    try:
        port = runtime.mllp_port("default")
        bridge_one = await _bridge_phase("bridge 1 conn", runtime, generator, ClosedLoop(port, "A", 1, BRIDGE_ONE))
        many = ClosedLoop(port, "B", CONNECTIONS, BRIDGE_EACH)
        bridge_many = await _bridge_phase(f"bridge {CONNECTIONS} conn", runtime, generator, many)
    finally:
        await runtime.stop()

    runtime = Runtime(_settings(workdir, "hook", {"type": "webhook", "url": url, "secret": _SECRET}))
    await runtime.start()
    steady: list[Phase] = []
    try:
        port = runtime.mllp_port("default")
        steady_load = Steady(port, "S", STEADY_RATE, int(STEADY_SECONDS * STEADY_RATE))
        steady.append(await _bridge_phase(f"{STEADY_RATE:.0f} msg/s steady", runtime, generator, steady_load))
    finally:
        await runtime.stop()
    arrived = dict(await sink.call("receipts"))
    return Results(
        echo_one,
        echo_many,
        bridge_one,
        bridge_many,
        [(p, [arrived[cid] - at for cid, at in p.load.sent_at if cid in arrived]) for p in steady],
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.2f} ms"


def _report(r: Results) -> None:
    print(
        "ingest: HL7 v2 over MLLP on loopback, SQLite commit (synchronous=FULL) before each ACK; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, sender and sink in processes of their own"
    )
    print("  throughput, each sender waits for its ACK        msg/s    vs echo")
    for phase, ceiling in (
        (r.echo_one, r.echo_one),
        (r.echo_many, r.echo_many),
        (r.bridge_one, r.echo_one),
        (r.bridge_many, r.echo_many),
    ):
        best = f"best of {ECHO_RUNS}, " if phase.label.startswith("echo") else ""
        nak = f", {phase.load.not_accepted} not AA" if phase.load.not_accepted else ""
        print(
            f"    {phase.label:<34} {phase.rate:>12,.0f} {phase.rate / ceiling.rate:>9.2f}x"
            f"   ({best}{phase.load.messages:,} msgs in {phase.load.seconds:.2f} s{nak})"
        )

    echo_p50, echo_p99 = _quantiles(r.echo_one.load.latencies)
    print("  ACK latency, 1 conn                         p50                      p99")
    for phase in (r.echo_one, r.bridge_one):
        p50, p99 = _quantiles(phase.load.latencies)
        print(f"    {phase.label:<34} {_ms(p50):>8} = {p50 / echo_p50:>5.1f}x {_ms(p99):>14} = {p99 / echo_p99:>5.1f}x")

    print("  end to end, send -> webhook sink, 1 conn    p50                      p99     send -> ACK p50 / p99")
    for phase, seconds in r.steady:
        arrived = f"{len(seconds)}/{phase.load.messages}"
        ack_p50, ack_p99 = _quantiles(phase.load.latencies)
        acks = f"{_ms(ack_p50)} / {_ms(ack_p99)}"
        if len(seconds) < 2:
            print(f"    {phase.label:<34} only {arrived} arrived{'':>30} {acks}")
            continue
        p50, p99 = _quantiles(seconds)
        print(
            f"    {phase.label:<34} {_ms(p50):>8} = {p50 / echo_p50:>5.0f}x {_ms(p99):>14} = {p99 / echo_p99:>5.0f}x"
            f"   {acks}" + ("" if len(seconds) == phase.load.messages else f"  (only {arrived} arrived)")
        )

    print("  SQLite commits while sending (delivery writes share them)               msgs/commit  outbox empty after")
    for phase, _ in ((r.bridge_one, None), (r.bridge_many, None), *r.steady):
        work = f"{phase.commits:,} for {phase.taken:,} msgs + {phase.delivered:,} deliveries"
        print(
            f"    {phase.label:<34} {work:<38} {phase.taken / max(phase.commits, 1):>6.2f}"
            f" {phase.drain_seconds:>12.2f} s"
        )


def run() -> None:
    """Measure and print; every ratio is against the echo server measured in this same run."""
    # The bench's own output is the table; the bridge's info lines would drown it.
    configure_logs(level="warning")
    with (
        _Peer(_generator_main) as generator,
        _Peer(_sink_main) as sink,
        tempfile.TemporaryDirectory(prefix="ehr-bridge-bench-") as workdir,
    ):
        results = asyncio.run(_measure(generator, sink, Path(workdir)))
    _report(results)
