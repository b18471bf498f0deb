"""Real parts for end-to-end tests: a local webhook sink (a real HTTP server) and corpus lookup."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus"
HL7_CORPUS = CORPUS / "hl7v2"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # synthetic test key, base64 of 24 bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def well_formed_corpus_files() -> list[Path]:
    """Every corpus HL7 file except the fuzz inputs and files that hold no message."""
    files = []
    for path in sorted(HL7_CORPUS.rglob("*")):
        if not path.is_file() or "bad-inputs" in path.parts or path.suffix not in (".hl7", ".txt"):
            continue
        if b"MSH" not in path.read_bytes():
            continue
        files.append(path)
    return files


def bad_input_files() -> list[Path]:
    return sorted(p for p in (HL7_CORPUS / "nhapi" / "bad-inputs").iterdir() if p.is_file())


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class WebhookSink:
    """A real HTTP server on 127.0.0.1 that records every POST; ``statuses`` scripts the answers."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            status = self.statuses.pop(0) if self.statuses else 204
            if 200 <= status < 300:
                self.received.append(Received(dict(request.headers), body, time.time()))
        return Response(status_code=status)

    def start(self) -> WebhookSink:
        self.port = self.port or free_port()
        app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("webhook sink did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        with self._lock:
            return list(self.received)

    async def await_count(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            await asyncio.sleep(0.02)
        with self._lock:
            return list(self.received)


def sink() -> Iterator[WebhookSink]:
    s = WebhookSink().start()
    try:
        yield s
    finally:
        s.stop()


class BridgeProcess:
    """A real ``python -m bridge serve`` subprocess; its stdout and stderr go to files in ``workdir``."""

    def __init__(self, config: Path | None, workdir: Path, http_port: int = 8080) -> None:
        self.config = config
        self.workdir = workdir
        self.http_port = http_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self, timeout: float = 20.0) -> BridgeProcess:
        import httpx

        self.runs += 1
        args = [sys.executable, "-m", "bridge", "serve"]
        if self.config is not None:
            args += ["--config", str(self.config)]
        out = open(self.workdir / f"stdout.{self.runs}.log", "wb")  # noqa: SIM115 - closed with the process
        err = open(self.workdir / f"stderr.{self.runs}.log", "wb")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if k != "EHR_BRIDGE_CONFIG"}
        self.proc = subprocess.Popen(args, cwd=self.workdir, stdout=out, stderr=err, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited with {self.proc.returncode}: {self.output()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.http_port}/readyz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("bridge did not become ready")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return "".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(self.workdir.glob("std*.log")))
