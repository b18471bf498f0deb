"""``python -m bench``: run the benchmark harness, print the table, write the results as JSON.

``make bench`` runs the full profile (under 15 minutes) and writes ``bench/results/latest.json``;
``make bench-quick`` runs the quick one (under 2 minutes) and writes ``bench/results/quick.json``.
Figures are printed and recorded, never asserted: timings belong here, not in the test suite.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from bench.contenders import CONTENDERS
from bench.harness import PROFILES, run
from bench.report import finish, render

RESULTS = Path(__file__).resolve().parent / "results"


def _clean(value: Any) -> Any:
    """NaN (a figure a run had too few samples for) becomes null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--quick", action="store_const", const="quick", dest="profile", help="same as --profile quick")
    parser.add_argument(
        "--only",
        help="comma-separated contenders to run besides the echo ceiling: "
        + ", ".join(c.key for c in CONTENDERS if c.kind != "ceiling"),
    )
    parser.add_argument("--install", action="store_true", help="npm ci the Medplum baseline if it is missing")
    parser.add_argument("--out", type=Path, help="where to write the JSON (default bench/results/<latest|quick>.json)")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    only = set(args.only.split(",")) if args.only else None
    out: Path = args.out or RESULTS / ("latest.json" if profile.name == "full" else f"{profile.name}.json")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results = run(profile, only=only, install=args.install, log=log)
    finish(results, " ".join(["python -m bench", *argv]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_clean(results), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    print(render(results))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
