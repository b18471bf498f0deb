"""The load generator: an asyncio MLLP client with N connections, each with one message in flight.

Senders behave like real ones: a connection writes its next message only after the
ACK of the previous one (REFERENCE §1.4). A :class:`Job` runs for a fixed duration or
a fixed count, closed loop (as fast as the ACKs come back) or paced at a total rate
spread evenly over the connections. ``reconnect`` opens a connection per message, for
servers that answer one message and hang up (hl7apy's ``MLLPServer``).

The client is a bare :class:`asyncio.Protocol` (no StreamReader) so that its own cost
per message stays small next to the fastest server it measures, the echo ceiling.
Only control IDs and times are kept, never message content.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import cast

from bench.mix import Template, Workload

__all__ = ["Job", "LoadResult", "Progress", "probe_persistent", "run_job"]

HOST = "127.0.0.1"
_END = b"\x1c\r"
#: A connection whose ACK is this late is given up (counted in ``failures``).
ACK_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Job:
    """What to send: ``seconds`` of timed traffic, or ``count`` timed messages in all."""

    port: int
    workload: Workload
    #: Prefix of every control ID this job sends; unique per phase and run (2 to 4 characters).
    tag: str
    connections: int = 1
    seconds: float | None = None
    count: int | None = None
    #: Total messages per second over all connections; None sends as fast as ACKs return.
    rate: float | None = None
    #: Untimed messages per connection before the clock starts.
    warmup: int = 20
    #: Open a connection for every message (and count the connect in its latency).
    reconnect: bool = False
    #: Keep each timed control ID and the wall-clock time it was written (end-to-end runs).
    keep_sent_at: bool = False


@dataclass(slots=True)
class Progress:
    """Timed ACKs so far; polled by whoever samples the server during a long run."""

    done: int = 0


@dataclass(slots=True)
class LoadResult:
    """What the senders saw. ``seconds`` runs from the common start to the last timed ACK."""

    seconds: float
    messages: int
    #: Seconds from write (or connect, with ``reconnect``) to the complete ACK frame, per timed message.
    latencies: list[float]
    #: ACKs whose MSA-1 was neither AA nor CA, counted by "MSA-1 MSH-9" (e.g. ``AE ORU^R01``).
    refused: dict[str, int]
    #: Sends that got no ACK at all (connection closed or refused, or no answer within ACK_TIMEOUT).
    failures: int
    #: CPU seconds the load generator itself used while timing.
    client_cpu: float
    #: CPU seconds the server used while timing (from the ``server_cpu`` probe), or NaN without one.
    server_cpu: float = float("nan")
    sent_at: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def not_accepted(self) -> int:
        return sum(self.refused.values())


class _Client(asyncio.Protocol):
    """One MLLP connection; :meth:`exchange` writes a frame and waits for one whole ACK frame."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buf = bytearray()
        self._waiter: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None
        self.waiting_since = 0.0
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        end = self._buf.find(_END)
        if end >= 0:
            ack = bytes(self._buf[: end + 2])
            del self._buf[: end + 2]
            self.waiting_since = 0.0
            waiter.set_result(ack)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("connection closed before the ACK"))

    def exchange(self, block: bytes) -> asyncio.Future[bytes]:
        assert self.transport is not None
        if self.lost:
            raise ConnectionError("connection already closed")
        self._waiter = waiter = self._loop.create_future()
        self.waiting_since = time.perf_counter()
        self.transport.write(block)
        return waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _msa1(ack: bytes) -> str:
    """MSA-1 of the first ACK in ``ack`` (the segment, not the letters "MSA" somewhere in MSH)."""
    at = ack.find(b"\rMSA")
    return ack[at + 5 : at + 7].decode("ascii", "replace") if at >= 0 else "no MSA"


def _accepted(ack: bytes) -> bool:
    return _msa1(ack) in ("AA", "CA")


async def _connect(port: int) -> _Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: _Client(loop), HOST, port)
    return client


async def _one_shot(port: int, block: bytes) -> bytes:
    """Connect, send one frame, read its ACK, close: what a sender to hl7apy has to do."""
    client = await _connect(port)
    try:
        return await asyncio.wait_for(client.exchange(block), ACK_TIMEOUT)
    finally:
        client.close()


@dataclass(slots=True)
class _Tally:
    latencies: list[float] = field(default_factory=list)
    #: "MSA-1 MSH-9" of each ACK that was neither AA nor CA, counted.
    refused: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    last: float = 0.0


async def run_job(
    job: Job, progress: Progress | None = None, server_cpu: Callable[[], float] | None = None
) -> LoadResult:
    """Run ``job`` to completion and return what the senders measured.

    ``server_cpu`` reads the server's CPU seconds; it is read when timing starts and ends.
    """
    progress = progress if progress is not None else Progress()
    streams = [
        job.workload.frames(f"{job.tag}{c:02d}", start=c * len(job.workload.templates) // job.connections)
        for c in range(job.connections)
    ]
    clients: list[_Client | None] = [None] * job.connections
    if not job.reconnect:
        clients = list(await asyncio.gather(*(_connect(job.port) for _ in range(job.connections))))
    watchdog = asyncio.create_task(_watch([c for c in clients if c is not None]))
    try:
        # Warm-up: first-use costs (connection set-up, caches, JIT in node) stay out of the figures.
        await asyncio.gather(*(_warm(job, clients[c], streams[c]) for c in range(job.connections)))
        quota = _quotas(job.count, job.connections)
        tallies = [_Tally() for _ in range(job.connections)]
        sent_at: dict[str, float] = {}
        server0 = server_cpu() if server_cpu is not None else math.nan
        cpu0 = os.times()
        started = time.perf_counter()
        deadline = started + job.seconds if job.seconds is not None else float("inf")
        await asyncio.gather(
            *(
                _send(job, c, clients[c], streams[c], tallies[c], quota[c], started, deadline, progress, sent_at)
                for c in range(job.connections)
            )
        )
        cpu1 = os.times()
        server1 = server_cpu() if server_cpu is not None else math.nan
    finally:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        for client in clients:
            if client is not None:
                client.close()
    last = max((t.last for t in tallies), default=started)
    latencies = [s for t in tallies for s in t.latencies]
    return LoadResult(
        seconds=max(last - started, 1e-9),
        messages=len(latencies),
        latencies=latencies,
        refused=_merge(t.refused for t in tallies),
        failures=sum(t.failures for t in tallies),
        client_cpu=(cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        server_cpu=server1 - server0,
        sent_at=sent_at,
    )


def _merge(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for count in counts:
        for key, n in count.items():
            merged[key] = merged.get(key, 0) + n
    return merged


def _quotas(count: int | None, connections: int) -> list[int | None]:
    if count is None:
        return [None] * connections
    return [count // connections + (1 if c < count % connections else 0) for c in range(connections)]


async def _watch(clients: list[_Client]) -> None:
    """Abort a connection whose ACK is overdue, so one stuck server cannot hang the run."""
    while True:
        await asyncio.sleep(0.5)
        now = time.perf_counter()
        for client in clients:
            if client.waiting_since and now - client.waiting_since > ACK_TIMEOUT and client.transport is not None:
                client.transport.abort()


async def _warm(job: Job, client: _Client | None, stream: Iterator[tuple[bytes, bytes, Template]]) -> None:
    for _ in range(job.warmup):
        _, block, _ = next(stream)
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            if client is None:
                await _one_shot(job.port, block)
            else:
                await client.exchange(block)


async def _send(
    job: Job,
    index: int,
    client: _Client | None,
    stream: Iterator[tuple[bytes, bytes, Template]],
    tally: _Tally,
    quota: int | None,
    started: float,
    deadline: float,
    progress: Progress,
    sent_at: dict[str, float],
) -> None:
    interval = job.connections / job.rate if job.rate else 0.0
    # Paced connections are staggered across one interval, so the total rate is smooth.
    due = started + interval * index / job.connections
    perf = time.perf_counter
    sent = 0
    while (quota is None or sent < quota) and perf() < deadline:
        token, block, template = next(stream)
        if interval:
            wait = due - perf()
            if wait > 0:
                await asyncio.sleep(wait)
            due += interval
        if job.keep_sent_at:
            sent_at[token.decode("ascii")] = time.time()
        t0 = perf()
        try:
            if client is None:
                ack = await _one_shot(job.port, block)
            else:
                ack = await client.exchange(block)
        except (ConnectionError, OSError, TimeoutError):
            tally.failures += 1
            if client is not None:
                return  # this connection is gone; the others carry on
            continue
        t1 = perf()
        sent += 1
        tally.latencies.append(t1 - t0)
        tally.last = t1
        progress.done += 1
        if not _accepted(ack):
            key = f"{_msa1(ack)} {template.message_type}"
            tally.refused[key] = tally.refused.get(key, 0) + 1


async def probe_persistent(port: int, workload: Workload, tag: str) -> bool:
    """True if the server ACKs a second message on the same connection, as MLLP senders expect."""
    stream = workload.frames(tag)
    client = await _connect(port)
    try:
        for _ in range(2):
            _, block, _ = next(stream)
            await asyncio.wait_for(client.exchange(block), 5.0)
        return True
    except (ConnectionError, OSError, TimeoutError):
        return False
    finally:
        client.close()
