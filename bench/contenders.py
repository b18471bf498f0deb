"""Who is measured: the bridge (fsync on and off), the echo ceiling, and the servers a user would pick instead.

Each :class:`Contender` knows how to start its server, or says in one line why it
cannot run here (a package or runtime absent), so a run measures everything it can
and skips the rest with that line.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from bench.process import ServerSpec, free_port

__all__ = ["CONTENDERS", "MEDPLUM_DIR", "Contender", "bridge_config", "install_medplum"]

BENCH = Path(__file__).resolve().parent
MEDPLUM_DIR = BENCH / "medplum"
#: Standard Webhooks wants 24 to 64 key bytes; this key exists only for the run's local sink.
SECRET = "whsec_" + base64.b64encode(b"ehr-bridge-bench-sink-key").decode()
#: Channel of the bridge under test: results of severity warning and above go to the sink (~11% of the mix).
ROUTE = {"name": "abnormal-results", "match": {"types": ["result.*"], "min_severity": "warning"}, "channels": ["sink"]}

Kind = Literal["ceiling", "bridge", "baseline"]


@dataclass(frozen=True, slots=True)
class Contender:
    key: str
    label: str
    #: A column heading's worth of ``label``.
    short: str
    kind: Kind
    #: The server closes each connection after one ACK, so every message needs a connection of its own.
    reconnect: bool = False
    #: ``FULL`` or ``NORMAL`` for the bridge.
    synchronous: str = ""
    #: For a bridge: another source tree of ehr-bridge to run instead of this one (a before/after baseline).
    source: str = ""

    def unavailable(self) -> str | None:
        """Why this contender cannot run here, or None if it can (Medplum also needs its node_modules)."""
        if self.key == "python-hl7" and importlib.util.find_spec("hl7") is None:
            return "python-hl7 is not installed (pip install -e '.[bench]')"
        if self.key == "hl7apy" and importlib.util.find_spec("hl7apy") is None:
            return "hl7apy is not installed"
        if self.key == "medplum":
            if shutil.which("node") is None:
                return "node is not on PATH"
            if not (MEDPLUM_DIR / "node_modules" / "@medplum" / "hl7").is_dir():
                return "@medplum/hl7 is not installed in bench/medplum (make bench installs it with npm ci)"
        return None

    def spec(self, workdir: Path, sink_url: str) -> ServerSpec:
        python = sys.executable
        if self.kind == "bridge":
            port, http_port = free_port(), free_port()
            config = workdir / f"{self.key}.yaml"
            config.write_text(
                yaml.safe_dump(bridge_config(workdir / f"{self.key}.db", port, http_port, sink_url, self))
            )
            return ServerSpec(
                self.key,
                (python, "-m", "bridge", "serve", "--config", str(config)),
                cwd=workdir,
                port=port,
                ready_url=f"http://127.0.0.1:{http_port}/readyz",
                env={"PYTHONPATH": self.source} if self.source else {},
            )
        if self.key == "medplum":
            node = shutil.which("node") or "node"
            return ServerSpec(self.key, (node, str(MEDPLUM_DIR / "server.mjs")), cwd=MEDPLUM_DIR)
        module = {
            "echo": "bench.servers.echo",
            "python-hl7": "bench.servers.python_hl7",
            "hl7apy": "bench.servers.hl7apy_mllp",
        }
        return ServerSpec(self.key, (python, "-m", module[self.key]), cwd=BENCH.parent)


def bridge_config(db: Path, port: int, http_port: int, sink_url: str, contender: Contender) -> dict[str, Any]:
    """The bridge as a site would run it, on loopback: one listener, abnormal results to a signed webhook.

    Logging is at ``warning``: the baselines log nothing per message, and at ``info``
    the bridge writes one JSON line per message (see docs/performance.md).
    """
    return {
        "store": {"path": str(db), "synchronous": contender.synchronous},
        "http": {"host": "127.0.0.1", "port": http_port},
        "listeners": [{"name": "bench", "host": "127.0.0.1", "port": port}],
        "routes": [ROUTE],
        "channels": {"sink": {"type": "webhook", "url": sink_url, "secret": SECRET}},
        "logging": {"level": "warning", "format": "json"},
    }


def install_medplum() -> str | None:
    """``npm ci`` into bench/medplum; None on success, else why it failed (one line)."""
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not on PATH"
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=MEDPLUM_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        return f"npm ci failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


CONTENDERS: tuple[Contender, ...] = (
    Contender("echo", "echo ceiling (asyncio Protocol)", "echo", "ceiling"),
    Contender("bridge-full", "bridge, synchronous=FULL", "bridge FULL", "bridge", synchronous="FULL"),
    Contender("bridge-normal", "bridge, synchronous=NORMAL", "bridge NORMAL", "bridge", synchronous="NORMAL"),
    Contender("python-hl7", "python-hl7 start_hl7_server", "python-hl7", "baseline"),
    Contender("hl7apy", "hl7apy MLLPServer (1 msg/conn)", "hl7apy", "baseline", reconnect=True),
    Contender("medplum", "Medplum Hl7Server (node)", "Medplum", "baseline"),
)

#: ``EHR_BRIDGE_BENCH_BASELINE=<a copy of an earlier source tree>`` adds that bridge (FULL) to the run, so a
#: change is measured against the code before it in the same run: ``--only bridge-full,bridge-base``.
if baseline := os.environ.get("EHR_BRIDGE_BENCH_BASELINE", ""):
    CONTENDERS = (
        *CONTENDERS,
        Contender(
            "bridge-base",
            "bridge before, synchronous=FULL",
            "bridge before",
            "bridge",
            synchronous="FULL",
            source=str(Path(baseline).resolve()),
        ),
    )
