"""Where the bridge's time goes under load: py-spy samples the bridge process while the load generator runs.

``python -m bench.profile [adt|oru|mix] [--seconds N]`` starts the sink and a bridge
(``synchronous=FULL``) exactly as ``make bench`` does, drives it closed loop over 8
connections, and samples it with ``py-spy record`` (needs ptrace: root, or
``kernel.yama.ptrace_scope=0``). It prints, per thread, the share of samples spent in
each function (self) and under each function (inclusive), and the share per area of
the code (our packages, sqlite3, structlog, pydantic, the event loop). The raw collapsed
stacks stay in ``bench/results/profile-<workload>.txt`` for a flame graph.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.contenders import CONTENDERS
from bench.load import Job, run_job
from bench.mix import load_workloads
from bench.process import ServerProcess, ServerSpec

RESULTS = Path(__file__).resolve().parent / "results"

#: (area, substring of a frame "function (file:line)") in the order they are tried.
AREAS = (
    ("store (bridge/store)", "bridge/store/"),
    ("mapping (bridge/mapping.py, assembly.py)", "bridge/mapping.py"),
    ("mapping (bridge/mapping.py, assembly.py)", "bridge/assembly.py"),
    ("HL7 reader and ACK (bridge/hl7)", "bridge/hl7/"),
    ("intake (bridge/intake.py)", "bridge/intake.py"),
    ("delivery (bridge/delivery.py, compose.py)", "bridge/delivery.py"),
    ("delivery (bridge/delivery.py, compose.py)", "bridge/compose.py"),
    ("webhook adapter + HTTP client", "adapters/outbound/"),
    ("webhook adapter + HTTP client", "aiohttp/"),
    ("webhook adapter + HTTP client", "httpx/"),
    ("MLLP framing (adapters/inbound)", "adapters/inbound/"),
    ("pydantic", "pydantic"),
    ("structlog / logging", "structlog/"),
    ("structlog / logging", "logging/"),
    ("metrics (prometheus_client)", "prometheus_client/"),
    ("sqlite3 module", "sqlite3/"),
    ("json", "json/"),
    ("event loop (asyncio, uvloop)", "asyncio/"),
    ("event loop (asyncio, uvloop)", "uvloop"),
)


def _area(stack: list[str]) -> str:
    # The innermost frame of ours decides, so time in a library called from our code is charged to the caller area
    # only when no library area matches first from the leaf.
    for frame in reversed(stack):
        for area, needle in AREAS:
            if needle in frame:
                return area
    return "other"


def summarise(raw: str, top: int = 25) -> str:
    """Self and inclusive shares per function, and shares per area, for each thread in py-spy's raw output."""
    threads: dict[str, Counter[tuple[str, ...]]] = {}
    for line in raw.splitlines():
        stack_text, _, samples = line.rpartition(" ")
        if not stack_text or not samples.isdigit():
            continue
        frames = stack_text.split(";")
        thread, stack = frames[0], tuple(frames[1:])
        threads.setdefault(thread, Counter())[stack] += int(samples)
    total = sum(sum(c.values()) for c in threads.values())
    out: list[str] = [f"{total} samples in all"]
    for thread, stacks in sorted(threads.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(stacks.values())
        out.append(f"\n== {thread}: {n} samples ({n / total * 100:.1f}% of all)")
        self_time: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        areas: Counter[str] = Counter()
        for stack, count in stacks.items():
            if stack:
                self_time[stack[-1]] += count
            for frame in set(stack):
                inclusive[frame] += count
            areas[_area(list(stack))] += count
        out.append("  by area (innermost matching frame):")
        out += [f"    {c / n * 100:5.1f}%  {a}" for a, c in areas.most_common()]
        out.append(f"  top {top} self:")
        out += [f"    {c / n * 100:5.1f}%  {f}" for f, c in self_time.most_common(top)]
        ours = Counter({f: c for f, c in inclusive.items() if "bridge/" in f or "adapters/" in f})
        out.append(f"  top {top} inclusive in bridge/ and adapters/ (per function and line):")
        out += [f"    {c / n * 100:5.1f}%  {f}" for f, c in ours.most_common(top)]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("workload", nargs="?", default="mix", choices=("adt", "oru", "mix"))
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--wall", action="store_true", help="sample every active thread, not only the one holding the GIL"
    )
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    workload = load_workloads()[args.workload]
    bridge = next(c for c in CONTENDERS if c.key == "bridge-full")
    RESULTS.mkdir(exist_ok=True)
    raw_path = RESULTS / f"profile-{args.workload}.txt"
    with tempfile.TemporaryDirectory(prefix="ehr-bridge-profile-") as tmp:
        workdir = Path(tmp)
        with ServerProcess(ServerSpec("sink", (sys.executable, "-m", "bench.sink")), workdir) as sink:
            url = f"http://127.0.0.1:{sink.port}/hook"
            with ServerProcess(bridge.spec(workdir, url), workdir) as server:
                # --gil: only the thread holding the GIL is sampled, i.e. where the one core Python can use goes.
                command = [py_spy, "record", "--pid", str(server.pid), "--format", "raw", "--threads", "--rate", "250"]
                command += ["--duration", str(int(args.seconds)), "--output", str(raw_path), "--nonblocking"]
                command += [] if args.wall else ["--gil"]
                record = subprocess.Popen(
                    command,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                job = Job(server.port, workload, "P0", connections=args.connections, seconds=args.seconds, warmup=20)
                load = asyncio.run(run_job(job, server_cpu=server.cpu_seconds))
                _, err = record.communicate(timeout=60)
                if record.returncode != 0:
                    print(f"py-spy failed: {err.strip()[-500:]}", file=sys.stderr)
                    return 1
    print(
        f"bridge (FULL), {args.workload}, {args.connections} connections, {'wall' if args.wall else 'GIL'} samples:"
        f" {load.rate:,.0f} msg/s,"
        f" {load.server_cpu / load.messages * 1000:.3f} CPU s per 1k messages ({load.messages:,} msgs)"
    )
    print(summarise(raw_path.read_text()))
    print(f"\nraw stacks: {raw_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
