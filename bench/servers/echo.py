"""The raw MLLP echo ceiling: an asyncio Protocol that answers every complete frame with one fixed ACK.

No parsing, no storage: what is left is the loopback, the event loop and the framing,
so every other server is measured as a fraction of it.
"""

from __future__ import annotations

import asyncio
import json
from typing import cast

from bench.servers.runner import bind, run_loop

_END = b"\x1c\r"
_ACK = b"\x0bMSH|^~\\&|ECHO|BENCH|SENDER|BENCH|20260101120000||ACK|ECHO1|P|2.5.1\rMSA|AA|ECHO1\r\x1c\r"


class _Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self._tail = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        # Only the end blocks matter; keep one byte in case EB and CR arrive in two reads.
        buf = self._tail + data
        frames = buf.count(_END)
        self._tail = buf[-1:]
        if frames and self._transport is not None:
            self._transport.write(_ACK * frames)


async def _main() -> None:
    sock = bind()
    server = await asyncio.get_running_loop().create_server(_Echo, sock=sock)
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    run_loop(_main())
