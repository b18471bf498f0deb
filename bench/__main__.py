"""Run every benchmark module listed in ``MODULES``, or only those named on the command line.

``python -m bench`` runs them all; ``python -m bench hl7_reader`` runs one. Figures
are printed, never asserted: timings belong here, not in the test suite.
"""

from __future__ import annotations

import importlib
import sys

MODULES = ("hl7_reader", "ingest")


def main(argv: list[str]) -> int:
    unknown = [name for name in argv if name not in MODULES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(MODULES)}", file=sys.stderr)
        return 2
    for name in argv or MODULES:
        module = importlib.import_module(f"bench.{name}")
        module.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
