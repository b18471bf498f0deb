"""What every Python server process shares: a loopback socket on a free port, and the event loop it runs on."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Coroutine
from typing import Any

__all__ = ["LOOP", "bind", "run_loop"]

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
    uvloop = None  # type: ignore[assignment]

#: The bridge runs on uvloop (uvicorn picks it when installed), so the Python baselines do too.
LOOP = "uvloop" if uvloop is not None else "asyncio"


def bind(host: str = "127.0.0.1") -> socket.socket:
    """A listening TCP socket on ``host`` and a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` until the process is told to stop."""
    with contextlib.suppress(KeyboardInterrupt):
        if uvloop is not None:
            uvloop.run(main)
        else:
            asyncio.run(main)
