"""The runtime wires config to workers; the app reports health and readiness."""

from __future__ import annotations

from pathlib import Path

import httpx

from bridge.app import create_app
from bridge.config import parse_config
from bridge.runtime import Runtime

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def settings(tmp_path: Path, **hook: object) -> Runtime:
    return Runtime(
        parse_config(
            {
                "store": {"path": str(tmp_path / "b.db")},
                "listeners": [{"name": "default", "host": "127.0.0.1", "port": 0}],
                "routes": [{"name": "all", "channels": ["hook"]}],
                "channels": {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/hook", "secret": SECRET, **hook}},
            },
            env={},
        )
    )


def test_channel_rate_overrides_the_adapter_default(tmp_path: Path) -> None:
    assert settings(tmp_path).dispatcher.workers["hook"].limiter.interval == 0.0
    assert settings(tmp_path, rate_per_sec=4).dispatcher.workers["hook"].limiter.interval == 0.25


async def test_readyz_is_503_until_started_then_200(tmp_path: Path) -> None:
    runtime = settings(tmp_path)
    app = create_app(runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        before = await client.get("/readyz")
        assert before.status_code == 503 and "runtime not started" in before.json()["problems"]
        await runtime.start()
        try:
            assert (await client.get("/readyz")).status_code == 200
            assert "ehr_bridge_messages_total" in (await client.get("/metrics")).text
        finally:
            await runtime.stop()
