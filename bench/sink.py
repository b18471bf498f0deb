"""The end-to-end sink: a real HTTP server on loopback that the bridge's webhook channel posts to.

``POST /hook`` answers 204 and keeps the receipt time and the body; ``GET /receipts``
answers every receipt so far as ``[[control_id, unix_seconds], ...]`` (the control ID of
the event's origin, which pairs a post with the message that caused it) and forgets them.
The server is a bare ASGI app on uvicorn (httptools, uvloop), so the sink costs little
next to what it measures. Run as ``python -m bench.sink``; it prints ``{"port": N}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

from bench.servers.runner import LOOP, bind

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Sink:
    """The ASGI app; bodies are decoded only when the receipts are asked for, off the measured path."""

    def __init__(self) -> None:
        self._received: list[tuple[float, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "POST":
            body = b""
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            self._received.append((time.time(), body))
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        taken, self._received = self._received, []
        receipts = [(_origin_control_id(body), at) for at, body in taken]
        payload = json.dumps(receipts).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _origin_control_id(body: bytes) -> str:
    try:
        return str(json.loads(body)["data"]["origin"]["control_id"])
    except (ValueError, KeyError, TypeError):
        return ""


def main() -> None:
    sock = bind()
    config = uvicorn.Config(
        Sink(), log_config=None, access_log=False, lifespan="off", loop=LOOP, http="httptools", workers=1
    )
    server = uvicorn.Server(config)
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
