"""Server processes: start one, wait until it listens, read its CPU time and memory, stop it.

CPU and memory come from ``/proc/<pid>`` (Linux), so they are the server's alone: the
load generator and the sink run in other processes. Each process writes its output
to files in the run's work folder; nothing is read from them but the ready line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

__all__ = ["ServerProcess", "ServerSpec", "free_port"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """How to start one server.

    The process either prints ``{"port": N}`` as its first stdout line, or (``port``
    and ``ready_url`` set) listens on a port chosen beforehand and answers 200 on
    ``ready_url`` once it accepts messages.
    """

    name: str
    argv: tuple[str, ...]
    cwd: Path | None = None
    port: int | None = None
    ready_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)


class ServerProcess:
    """A started server; a context manager that always stops it."""

    def __init__(self, spec: ServerSpec, workdir: Path) -> None:
        self.spec = spec
        self._out = workdir / f"{spec.name}.stdout"
        self._err = workdir / f"{spec.name}.stderr"
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout: float = 60.0) -> Self:
        """Launch and wait until ready; raises RuntimeError (with the end of its stderr) if it never is."""
        return self.launch().wait_ready(timeout)

    def launch(self) -> Self:
        """Start the process without waiting, so several servers can start side by side."""
        with open(self._out, "wb") as out, open(self._err, "wb") as err:
            self._proc = subprocess.Popen(
                self.spec.argv,
                cwd=self.spec.cwd,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.spec.env},
            )
        return self

    def wait_ready(self, timeout: float = 60.0) -> Self:
        assert self._proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited with {self._proc.returncode}: {self.error_tail()}")
            if self._ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.spec.name} did not become ready within {timeout:.0f} s: {self.error_tail()}")

    def _ready(self) -> bool:
        if self.spec.ready_url is None:
            line = self._out.read_bytes().split(b"\n", 1)
            if len(line) < 2:
                return False
            self.port = int(json.loads(line[0])["port"])
            return True
        assert self.spec.port is not None
        try:
            ok = httpx.get(self.spec.ready_url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False
        self.port = self.spec.port
        return ok

    def error_tail(self, limit: int = 1500) -> str:
        try:
            return self._err.read_text(encoding="utf-8", errors="replace")[-limit:]
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the process (all its threads) so far."""
        with open(f"/proc/{self.pid}/stat", "rb") as f:
            stat = f.read()
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = stat[stat.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def memory(self) -> tuple[int, int]:
        """(resident, peak resident) bytes: VmRSS and VmHWM."""
        rss = peak = 0
        with open(f"/proc/{self.pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"VmHWM:"):
                    peak = int(line.split()[1]) * 1024
        return rss, peak

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
