"""One benchmark run: every contender on the same mix, repeated, summarised as medians with min-max.

The order of a run, so that noise from neighbours falls on every contender alike:

1. Start the sink and every contender that can run here (one process each).
2. ``runs`` times: for each contender in turn, ingest on ADT and on ORU over
   ``connections`` connections, then ACK latency on one connection with the mix.
3. For each bridge (fsync FULL and NORMAL): ``runs`` end-to-end runs at a steady rate,
   from the send to the sink's receipt of the webhook post.
4. The delivery path before and after (:mod:`bench.delivery`).
5. A long run on a fresh bridge (FULL), sampling its resident memory as messages go by.

Nothing here asserts a timing; :mod:`bench.report` compares figures with the targets.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import delivery
from bench.contenders import CONTENDERS, Contender, install_medplum
from bench.load import Job, LoadResult, Progress, probe_persistent, run_job
from bench.mix import Workload, load_workloads
from bench.process import ServerProcess, ServerSpec
from bench.servers.runner import LOOP
from bench.stats import quantile, spread

__all__ = ["PROFILES", "Profile", "run"]

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Profile:
    """How long each part of a run lasts. Phases run for ``seconds`` each, or ``count`` messages each."""

    name: str
    runs: int
    seconds: float | None
    count: int | None
    connections: int
    warmup: int
    #: Steady total rates of the end-to-end runs; the first is the target's (1,000 msg/s), the next one below
    #: saturation, to show what the pipeline adds when intake has room.
    e2e_rates: tuple[float, ...]
    e2e_seconds: float
    long_messages: int
    delivery_seconds: float
    #: Per-phase message count for a server that needs a connection per message (hl7apy), when counting.
    reconnect_count: int | None = None
    #: Untimed messages per connection for such a server (each costs a connect and a full hl7apy parse).
    reconnect_warmup: int = 1
    #: Run the long run on a bridge started for it; otherwise on the FULL bridge of the phases.
    fresh_long_run: bool = True
    #: After a bridge phase, wait until the sink has had no post for this long (the outbox is empty).
    settle_quiet: float = 0.3


PROFILES = {
    "full": Profile(
        "full",
        runs=3,
        seconds=4.0,
        count=None,
        connections=8,
        warmup=20,
        e2e_rates=(1000.0, 500.0),
        e2e_seconds=8.0,
        # 1M messages would take 15 minutes alone; 20k -> 200k spans the same tenfold as 100k -> 1M.
        long_messages=200_000,
        delivery_seconds=2.0,
    ),
    "quick": Profile(
        "quick",
        runs=3,
        # Short phases, so that make bench-quick on a fresh clone, venv and npm ci included, stays under 2 minutes.
        seconds=0.5,
        count=None,
        connections=8,
        warmup=10,
        e2e_rates=(1000.0, 500.0),
        e2e_seconds=0.9,
        long_messages=6_000,
        delivery_seconds=0.4,
        settle_quiet=0.2,
    ),
    # The test suite's smoke run: about 200 messages per contender, no figure worth reading.
    "smoke": Profile(
        "smoke",
        runs=1,
        seconds=None,
        count=48,
        connections=8,
        warmup=1,
        e2e_rates=(400.0,),
        e2e_seconds=0.15,
        long_messages=400,
        delivery_seconds=0.1,
        reconnect_count=8,
        reconnect_warmup=0,
        fresh_long_run=False,
        settle_quiet=0.15,
    ),
}

#: (figure key, workload, connections or 1) of the phases every contender runs each run.
PHASES = (("ingest_adt", "adt", None), ("ingest_oru", "oru", None), ("ack_1conn", "mix", 1))


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    node = ""
    if shutil.which("node"):
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "event_loop": LOOP,
        "node": node,
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _phase_figures(load: LoadResult) -> dict[str, float]:
    ms = [s * 1000 for s in load.latencies]
    enough = len(ms) >= 100
    return {
        "msg_s": load.rate,
        "p50_ms": quantile(ms, 0.50),
        "p99_ms": quantile(ms, 0.99) if enough else math.nan,
        "p999_ms": quantile(ms, 0.999) if len(ms) >= 1000 else math.nan,
        "cpu_s_per_1k": load.server_cpu / load.messages * 1000 if load.messages else math.nan,
        "messages": float(load.messages),
        "client_cpu_share": load.client_cpu / load.seconds if load.seconds else math.nan,
    }


class _Sink:
    """The sink process and the calls the harness makes to it."""

    def __init__(self, server: ServerProcess, quiet: float) -> None:
        self.server = server
        self.quiet = quiet
        self.url = f"http://127.0.0.1:{server.port}/hook"
        self._receipts = f"http://127.0.0.1:{server.port}/receipts"

    async def settle(self, limit: float = 30.0) -> list[tuple[str, float]]:
        """Collect receipts until none arrives for ``self.quiet`` seconds (the outbox is empty or stuck)."""
        collected: list[tuple[str, float]] = []
        started = last = time.monotonic()
        async with httpx.AsyncClient(timeout=10.0) as client:
            while time.monotonic() - started < limit:
                got = (await client.get(self._receipts)).json()
                if got:
                    collected += [(str(cid), float(at)) for cid, at in got]
                    last = time.monotonic()
                elif time.monotonic() - last >= self.quiet:
                    break
                await asyncio.sleep(0.05)
        return collected


@dataclass
class _Live:
    contender: Contender
    server: ServerProcess
    persistent: bool = True


class Harness:
    def __init__(
        self, profile: Profile, workdir: Path, only: set[str] | None, install: bool, log: Callable[[str], None]
    ):
        self.profile = profile
        self.workdir = workdir
        self.only = only
        self.install = install
        self.log = log
        self.workloads = load_workloads()
        self.skipped: dict[str, str] = {}
        self.live: dict[str, _Live] = {}
        self.phases: dict[str, dict[str, list[dict[str, float]]]] = {}
        self.refused: dict[str, dict[str, int]] = {}
        self.failures: dict[str, int] = {}

    def _tag(self, run: int, phase: str, contender: str) -> str:
        # Unique per contender, phase and run: the bridge's duplicate check spans its whole database.
        keys = [c.key for c in CONTENDERS]
        letter = "AOLEX"[["ingest_adt", "ingest_oru", "ack_1conn", "e2e", "long"].index(phase)]
        return f"{letter}{run}{keys.index(contender)}"

    def _job(self, live: _Live, run: int, phase: str, workload: Workload, connections: int) -> Job:
        p = self.profile
        count = p.count
        if live.contender.reconnect and p.reconnect_count is not None:
            count = p.reconnect_count
        if count is not None and connections == 1:
            count = max(1, count // 2)
        return Job(
            port=live.server.port,
            workload=workload,
            tag=self._tag(run, phase, live.contender.key),
            connections=connections,
            seconds=p.seconds,
            count=count,
            warmup=p.reconnect_warmup if live.contender.reconnect else p.warmup,
            reconnect=live.contender.reconnect,
        )

    def start(self, sink: _Sink) -> None:
        launching: list[tuple[Contender, ServerProcess]] = []
        for contender in CONTENDERS:
            if self.only is not None and contender.key not in self.only and contender.kind != "ceiling":
                continue
            reason = contender.unavailable()
            if reason is not None and contender.key == "medplum" and self.install and shutil.which("node"):
                self.log("installing @medplum/hl7 into bench/medplum (npm ci) ...")
                reason = install_medplum() or contender.unavailable()
            if reason is not None:
                self.skipped[contender.key] = reason
                self.log(f"skip {contender.label}: {reason}")
                continue
            launching.append((contender, ServerProcess(contender.spec(self.workdir, sink.url), self.workdir).launch()))
        # All start side by side; each is measured only once all are up and idle.
        for contender, server in launching:
            try:
                server.wait_ready()
            except RuntimeError as exc:
                self.skipped[contender.key] = f"did not start: {str(exc).splitlines()[0][:200]}"
                self.log(f"skip {contender.label}: {self.skipped[contender.key]}")
                continue
            self.live[contender.key] = _Live(contender, server)

    def stop(self) -> None:
        for live in self.live.values():
            live.server.stop()

    async def measure_phases(self, sink: _Sink) -> None:
        for key, live in self.live.items():
            live.persistent = await probe_persistent(live.server.port, self.workloads["adt"], f"Q{key[:2].upper()}")
        for run in range(1, self.profile.runs + 1):
            for key, live in self.live.items():
                for phase, workload, connections in PHASES:
                    job = self._job(live, run, phase, self.workloads[workload], connections or self.profile.connections)
                    load = await run_job(job, server_cpu=live.server.cpu_seconds)
                    figures = _phase_figures(load)
                    self.phases.setdefault(key, {}).setdefault(phase, []).append(figures)
                    for refusal, n in load.refused.items():
                        self.refused.setdefault(key, {})
                        self.refused[key][refusal] = self.refused[key].get(refusal, 0) + n
                    self.failures[key] = self.failures.get(key, 0) + load.failures
                    self.log(
                        f"run {run}/{self.profile.runs} {live.contender.label:<32} {phase:<10}"
                        f" {figures['msg_s']:>9,.0f} msg/s  p50 {figures['p50_ms']:7.2f} ms"
                        f"  ({load.messages} msgs"
                        f"{', ' + str(load.not_accepted) + ' not AA' if load.not_accepted else ''}"
                        f"{', ' + str(load.failures) + ' no ACK' if load.failures else ''})"
                    )
                    if live.contender.kind == "bridge":
                        await sink.settle()

    async def measure_e2e(self, sink: _Sink) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        p = self.profile
        for key, live in self.live.items():
            if live.contender.kind != "bridge":
                continue
            for index, rate in enumerate(p.e2e_rates):
                runs: list[dict[str, float]] = []
                for run in range(1, p.runs + 1):
                    runs.append(await self._e2e_run(sink, live, run, index, rate))
                entry: dict[str, Any] = {"contender": key, "target_msg_s": rate, "connections": p.connections}
                entry.update({name: spread([r[name] for r in runs]) for name in runs[0]})
                out.append(entry)
        return out

    async def _e2e_run(self, sink: _Sink, live: _Live, run: int, index: int, rate: float) -> dict[str, float]:
        p = self.profile
        await sink.settle()
        job = Job(
            port=live.server.port,
            workload=self.workloads["mix"],
            tag=f"{self._tag(run, 'e2e', live.contender.key)}{index}",
            connections=p.connections,
            seconds=p.e2e_seconds,
            rate=rate,
            warmup=2,
            keep_sent_at=True,
        )
        load = await run_job(job, server_cpu=live.server.cpu_seconds)
        receipts = await sink.settle()
        e2e = [(at - load.sent_at[cid]) * 1000 for cid, at in receipts if cid in load.sent_at]
        ack = [s * 1000 for s in load.latencies]
        figures = {
            "achieved_msg_s": load.rate,
            "posts": float(len(e2e)),
            "posts_per_message": len(e2e) / load.messages if load.messages else math.nan,
            "e2e_p50_ms": quantile(e2e, 0.50),
            # Below 100 posts a p99 is the largest one seen.
            "e2e_p99_ms": quantile(e2e, 0.99) if len(e2e) >= 100 else (max(e2e) if e2e else math.nan),
            "e2e_max_ms": max(e2e) if e2e else math.nan,
            "ack_p50_ms": quantile(ack, 0.50),
            "ack_p99_ms": quantile(ack, 0.99),
            "cpu_share": load.server_cpu / load.seconds if load.seconds else math.nan,
        }
        self.log(
            f"e2e {run}/{p.runs} {live.contender.label:<32} {rate:>6,.0f} -> {figures['achieved_msg_s']:>6,.0f} msg/s"
            f"  {len(e2e)} posts  e2e p50 {figures['e2e_p50_ms']:.1f} ms p99 {figures['e2e_p99_ms']:.1f} ms"
        )
        return figures

    async def measure_long(self, sink: _Sink) -> dict[str, Any] | None:
        """Resident memory of a fresh bridge (FULL) at tenths of a long run."""
        p = self.profile
        full = next(c for c in CONTENDERS if c.key == "bridge-full")
        if p.long_messages <= 0 or "bridge-full" not in self.live:
            return None
        if p.fresh_long_run:
            spec = full.spec(self.workdir, sink.url)
            server = ServerProcess(
                ServerSpec("bridge-long", spec.argv, spec.cwd, spec.port, spec.ready_url), self.workdir
            )
            try:
                server.start()
            except RuntimeError as exc:
                self.log(f"skip long run: the bridge did not start: {str(exc).splitlines()[0][:200]}")
                return None
        else:
            server = self.live["bridge-full"].server
        progress = Progress()
        points: list[dict[str, float]] = []
        checkpoints = [p.long_messages * k // 10 for k in range(1, 11)]

        async def sample() -> None:
            while checkpoints:
                if progress.done >= checkpoints[0]:
                    rss, peak = server.memory()
                    points.append({"messages": float(progress.done), "rss_mb": rss / MB, "peak_rss_mb": peak / MB})
                    checkpoints.pop(0)
                    continue
                await asyncio.sleep(0.02)

        job = Job(
            port=server.port,
            workload=self.workloads["mix"],
            tag=self._tag(0, "long", "bridge-full"),
            connections=p.connections,
            count=p.long_messages,
            warmup=p.warmup,
        )
        sampler = asyncio.create_task(sample())
        try:
            load = await run_job(job, progress=progress, server_cpu=server.cpu_seconds)
            await asyncio.wait_for(sampler, 5.0)
        finally:
            sampler.cancel()
            if p.fresh_long_run:
                server.stop()
        await sink.settle()
        first, last = points[0], points[-1]
        self.log(
            f"long run: {load.messages:,} msgs at {load.rate:,.0f} msg/s,"
            f" RSS {first['rss_mb']:.1f} -> {last['rss_mb']:.1f} MB"
        )
        return {
            "messages": load.messages,
            "msg_s": load.rate,
            "seconds": load.seconds,
            "points": points,
            "from_messages": first["messages"],
            "to_messages": last["messages"],
            "rss_growth_pct": (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"] * 100,
            "not_accepted": load.not_accepted,
        }

    async def measure_delivery(self, sink: _Sink) -> list[dict[str, Any]]:
        cells = await delivery.measure(sink.server.port, self.profile.delivery_seconds, self.profile.runs)
        rows = delivery.summarise(cells)
        for row in rows:
            self.log(
                f"delivery {row['client']:<42} {row['concurrency']:>2} in flight"
                f" {row['posts_per_s']['median']:>7,.0f} posts/s"
            )
        return rows

    def contenders_section(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for contender in CONTENDERS:
            if contender.key in self.skipped:
                out[contender.key] = {
                    "label": contender.label,
                    "short": contender.short,
                    "kind": contender.kind,
                    "status": "skipped",
                    "reason": self.skipped[contender.key],
                }
                continue
            live = self.live.get(contender.key)
            if live is None:
                continue
            _, peak = live.server.memory() if live.server.alive() else (0, 0)
            phases = self.phases.get(contender.key, {})
            figures: dict[str, Any] = {}
            for phase, _, _ in PHASES:
                runs = phases.get(phase, [])
                for name in ("msg_s", "p50_ms", "p99_ms", "p999_ms", "cpu_s_per_1k", "messages", "client_cpu_share"):
                    figures[f"{phase}.{name}"] = spread([r[name] for r in runs])
            out[contender.key] = {
                "label": contender.label,
                "short": contender.short,
                "kind": contender.kind,
                "status": "ran",
                "persistent_connection": live.persistent,
                "reconnect_per_message": contender.reconnect,
                "peak_rss_mb": peak / MB,
                "not_accepted": self.refused.get(contender.key, {}),
                "no_ack": self.failures.get(contender.key, 0),
                "figures": figures,
            }
        return out


def run(
    profile: Profile, *, only: set[str] | None = None, install: bool = False, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run every part of ``profile`` and return the results (see :mod:`bench.report` for the shape's use)."""
    started = time.monotonic()
    begun = datetime.now(UTC)
    info = machine()

    def stamped(line: str) -> None:
        log(f"[{time.monotonic() - started:6.1f} s] {line}")

    with tempfile.TemporaryDirectory(prefix="ehr-bridge-bench-") as tmp:
        workdir = Path(tmp)
        sink_server = ServerProcess(ServerSpec("sink", (sys.executable, "-m", "bench.sink")), workdir).start()
        sink = _Sink(sink_server, profile.settle_quiet)
        harness = Harness(profile, workdir, only, install, stamped)
        try:
            harness.start(sink)
            asyncio_run = _event_loop_runner()
            asyncio_run(harness.measure_phases(sink))
            e2e = asyncio_run(harness.measure_e2e(sink))
            contenders = harness.contenders_section()
            if profile.fresh_long_run:
                harness.stop()
            delivery_rows = asyncio_run(harness.measure_delivery(sink))
            long_run = asyncio_run(harness.measure_long(sink))
        finally:
            harness.stop()
            sink_server.stop()
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    workloads = harness.workloads
    return {
        "schema": 1,
        "profile": profile.name,
        "started_at": begun.isoformat(timespec="seconds"),
        "duration_seconds": round(time.monotonic() - started, 1),
        "machine": info,
        "settings": {
            "runs": profile.runs,
            "phase_seconds": profile.seconds,
            "phase_count": profile.count,
            "connections": profile.connections,
            "warmup_per_connection": profile.warmup,
            "e2e_rates": list(profile.e2e_rates),
            "e2e_seconds": profile.e2e_seconds,
            "long_messages": profile.long_messages,
        },
        "workloads": {
            name: {
                "source": w.source,
                "distinct_messages": len(w.templates),
                "mean_bytes": round(w.mean_bytes),
                "mean_obx": round(sum(t.obx for t in w.templates) / len(w.templates), 1),
            }
            for name, w in workloads.items()
        },
        "contenders": contenders,
        "e2e": e2e,
        "delivery": delivery_rows,
        "long_run": long_run,
    }


def _event_loop_runner() -> Callable[[Any], Any]:
    # The load generator runs on the same loop as the servers it measures (uvloop when installed).
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run
    return uvloop.run
