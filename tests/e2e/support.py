"""Real parts for end-to-end tests: a local webhook sink (a real HTTP server), corpus lookup, synthetic
HL7 sent over MLLP, and Slack's Web API as respx answers it (the fake Slack of the Slack and lifecycle tests)."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

import httpx
import pytest
import respx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.inbound.mllp import MLLPClient

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


# --- synthetic HL7 over MLLP, and Slack's Web API as respx answers it -------------------------------

SLACK_API = "https://slack.com/api"
#: Upper bound of every wait for the bridge to act; waits end as soon as the condition holds.
WAIT = 5.0


def segment(name: str, fields: dict[int, str]) -> str:
    """An HL7 segment (not MSH) with the given fields, 1-based; the others empty."""
    values = [""] * (max(fields) + 1)
    values[0] = name
    for index, value in fields.items():
        values[index] = value
    return "|".join(values)


class HasMLLP(Protocol):
    """A started bridge with an MLLP listener (tests/e2e/conftest.py's Bridge)."""

    @property
    def mllp_port(self) -> int: ...


async def send(bridge: HasMLLP, *messages: bytes) -> None:
    """Send each message over MLLP and require an AA: the message is committed when this returns."""
    async with MLLPClient("127.0.0.1", bridge.mllp_port, timeout=WAIT) as client:
        for message in messages:
            ack = await client.send(message)
            assert b"MSA|AA|" in ack, ack.split(b"\r")[-2:]


@dataclass(frozen=True, slots=True)
class Call:
    """One request the bridge made to Slack and what it was answered."""

    method: str
    body: dict[str, Any]
    authorization: str
    at: float
    ok: bool
    ts: str | None

    @property
    def text(self) -> str:
        return str(self.body.get("text", ""))


@dataclass
class FakeSlack:
    """Answers ``chat.postMessage`` with a fresh ``ts`` and ``chat.update`` with the edited ``ts``.

    :meth:`answer_first` scripts failures: the first calls whose text contains a needle get the
    scripted responses, later ones succeed.
    """

    calls: list[Call] = field(default_factory=list)
    #: Every message Slack holds, with its metadata, as conversations.history returns them.
    messages: list[dict[str, Any]] = field(default_factory=list)
    _scripts: list[tuple[str, list[httpx.Response | Exception]]] = field(default_factory=list)
    _serial: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def answer_first(self, needle: str, *responses: httpx.Response | Exception) -> None:
        """An exception scripts "Slack accepted the post, then the connection failed"."""
        self._scripts.append((needle, list(responses)))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        method = request.url.path.rsplit("/", 1)[-1]
        if method.startswith("conversations."):
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            thread = form.get("ts")
            found = [m for m in self.messages if thread is None or thread in (m["ts"], m.get("thread_ts"))]
            return httpx.Response(200, json={"ok": True, "messages": found})
        body: dict[str, Any] = json.loads(request.content)
        scripted = self._scripted(str(body.get("text", "")))
        if isinstance(scripted, Exception):
            self._success(method, body)  # Slack posted it; the answer never arrives
            raise scripted
        response = scripted or self._success(method, body)
        answer = json.loads(response.content) if response.status_code == 200 else {}
        self.calls.append(
            Call(
                method=method,
                body=body,
                authorization=request.headers.get("Authorization", ""),
                at=time.monotonic(),
                ok=answer.get("ok") is True,
                ts=answer.get("ts"),
            )
        )
        return response

    def _scripted(self, text: str) -> httpx.Response | Exception | None:
        for needle, queue in self._scripts:
            if needle in text and queue:
                return queue.pop(0)
        return None

    def _success(self, method: str, body: dict[str, Any]) -> httpx.Response:
        if method == "chat.update":
            return httpx.Response(200, json={"ok": True, "channel": body["channel"], "ts": body["ts"]})
        ts = f"1700000000.{next(self._serial):06d}"
        message: dict[str, Any] = {"type": "message", "text": body["text"], "ts": ts}
        if "thread_ts" in body:
            message["thread_ts"] = body["thread_ts"]
        self.messages.append({**message, "metadata": body.get("metadata")})
        return httpx.Response(200, json={"ok": True, "channel": body["channel"], "ts": ts, "message": message})

    def posted(self) -> list[Call]:
        """Successful ``chat.postMessage`` calls, in the order Slack received them."""
        return [c for c in self.calls if c.method == "chat.postMessage" and c.ok]

    def about(self, needle: str) -> list[Call]:
        """Every call whose text contains ``needle``, answered or not."""
        return [c for c in self.calls if needle in c.text]

    def one_post(self, needle: str) -> Call:
        found = [c for c in self.posted() if needle in c.text]
        assert len(found) == 1, f"{len(found)} successful posts contain {needle!r}"
        return found[0]


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


def fake_slack() -> Iterator[FakeSlack]:
    """A FakeSlack answering https://slack.com/api through respx while the generator is open (a fixture body)."""
    fake = FakeSlack()
    # The bridge's channels send on an aiohttp transport (bridge/http.py), so respx mocks at the httpx client
    # rather than httpcore; every other request (the tests' own ASGI client) passes through to its transport.
    with respx.mock(using="httpx", assert_all_called=False) as router:
        for method in ("chat.postMessage", "chat.update", "conversations.history", "conversations.replies"):
            router.post(f"{SLACK_API}/{method}").mock(side_effect=fake)
        router.route().pass_through()
        yield fake
