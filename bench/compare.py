"""``python -m bench.compare``: this bridge against an earlier copy of it, phase by phase, in one run.

Set ``EHR_BRIDGE_BENCH_BASELINE`` to a copy of the source tree before a change (its ``bridge``,
``adapters`` and ``mappings``). Both bridges (``synchronous=FULL``) run side by side; each round
runs every phase on one and then the other, alternating which goes first, so the neighbours on a
shared machine weigh on both alike. Prints the median of the rounds [min-max] and after/before.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.contenders import CONTENDERS
from bench.harness import PHASES, _event_loop_runner, _phase_figures, _Sink
from bench.load import Job, run_job
from bench.mix import load_workloads
from bench.process import ServerProcess, ServerSpec

FIGURES = ("msg_s", "p50_ms", "p99_ms", "cpu_s_per_1k")
KEYS = ("bridge-base", "bridge-full")


async def _rounds(
    servers: dict[str, ServerProcess], sink: _Sink, phases: list[str], rounds: int, seconds: float
) -> dict[str, dict[str, list[dict[str, float]]]]:
    workloads = load_workloads()
    out: dict[str, dict[str, list[dict[str, float]]]] = {}
    names = [p[0] for p in PHASES]
    for r in range(rounds):
        for phase, workload, connections in PHASES:
            if phase not in phases:
                continue
            order = KEYS if r % 2 == 0 else KEYS[::-1]
            for key in order:
                server = servers[key]
                job = Job(
                    port=server.port,
                    workload=workloads[workload],
                    # Unique per phase, round and bridge: the duplicate check spans each bridge's database.
                    tag=f"{'AOL'[names.index(phase)]}{r:02d}{KEYS.index(key)}",
                    connections=connections or 8,
                    seconds=seconds,
                    warmup=20,
                )
                load = await run_job(job, server_cpu=server.cpu_seconds)
                out.setdefault(phase, {}).setdefault(key, []).append(_phase_figures(load))
                await sink.settle()
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each phase")
    parser.add_argument("--phases", default=",".join(p[0] for p in PHASES))
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = parser.parse_args(argv)
    contenders = {c.key: c for c in CONTENDERS}
    if "bridge-base" not in contenders:
        print("set EHR_BRIDGE_BENCH_BASELINE to a copy of the source tree to compare against", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ehr-bridge-compare-") as tmp:
        workdir = Path(tmp)
        sink_server = ServerProcess(ServerSpec("sink", (sys.executable, "-m", "bench.sink")), workdir).start()
        sink = _Sink(sink_server, 0.3)
        servers: dict[str, ServerProcess] = {}
        try:
            for key in KEYS:
                servers[key] = ServerProcess(contenders[key].spec(workdir, sink.url), workdir).start()
            runs = _event_loop_runner()(_rounds(servers, sink, args.phases.split(","), args.rounds, args.seconds))
        finally:
            for server in servers.values():
                server.stop()
            sink_server.stop()
    result: dict[str, Any] = {}
    print(f"after (this tree) vs before ({contenders['bridge-base'].source}): median of {args.rounds} rounds [min-max]")
    for phase, by in runs.items():
        for figure in FIGURES:
            before = [r[figure] for r in by["bridge-base"]]
            after = [r[figure] for r in by["bridge-full"]]
            b, a = statistics.median(before), statistics.median(after)
            result[f"{phase}.{figure}"] = {"before": before, "after": after, "ratio": a / b if b else None}
            print(
                f"  {phase:<11} {figure:<13} before {b:9.3f} [{min(before):.3f}-{max(before):.3f}]"
                f"  after {a:9.3f} [{min(after):.3f}-{max(after):.3f}]  after/before {a / b:.2f}x"
            )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
