"""Fixtures for end-to-end tests: a real in-process bridge (MLLP on a real socket, real SQLite, real HTTP app)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.app import create_app
from bridge.config import Settings, parse_config
from bridge.runtime import Runtime

from .support import HL7_CORPUS, WebhookSink, sink


@pytest.fixture
def corpus() -> Path:
    if not HL7_CORPUS.is_dir():
        pytest.skip("shared corpus not present beside the repository")
    return HL7_CORPUS


@pytest.fixture
def webhook_sink() -> Iterator[WebhookSink]:
    yield from sink()


def bridge_settings(tmp_path: Path, **overrides: Any) -> Settings:
    data: dict[str, Any] = {
        "store": {"path": str(tmp_path / "bridge.db")},
        "listeners": [{"name": "default", "host": "127.0.0.1", "port": 0}],
        "delivery": {"poll_interval": 0.05, "initial_backoff": 0.05, "max_backoff": 0.2},
        "logging": {"format": "json"},
    }
    data.update(overrides)
    return parse_config(data, env={})


class Bridge:
    """A started runtime plus an HTTP client bound to its app."""

    def __init__(self, runtime: Runtime, client: httpx.AsyncClient) -> None:
        self.runtime = runtime
        self.client = client

    @property
    def mllp_port(self) -> int:
        return self.runtime.mllp_port("default")


@pytest.fixture
async def make_bridge(tmp_path: Path) -> AsyncIterator[Any]:
    started: list[Bridge] = []

    async def make(**overrides: Any) -> Bridge:
        runtime = Runtime(bridge_settings(tmp_path, **overrides))
        await runtime.start()
        app = create_app(runtime)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge")
        bridge = Bridge(runtime, client)
        started.append(bridge)
        return bridge

    yield make
    for bridge in started:
        await bridge.client.aclose()
        await bridge.runtime.stop()
