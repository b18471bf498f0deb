"""The runtime wires config to workers; the app reports health and readiness."""

from __future__ import annotations

from pathlib import Path

import httpx
from httpx_aiohttp import AiohttpTransport

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


def test_workers_word_in_their_channels_locale_and_kind(tmp_path: Path) -> None:
    default = settings(tmp_path).dispatcher.workers["hook"]
    german = settings(tmp_path, locale="de").dispatcher.workers["hook"]
    assert (default.locale, default.kind) == ("en", "webhook")
    assert (german.locale, german.kind) == ("de", "webhook")


async def test_readyz_is_503_until_started_then_200(tmp_path: Path) -> None:
    runtime = settings(tmp_path)
    app = create_app(runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        before = await client.get("/readyz")
        assert before.status_code == 503 and "runtime not started" in before.json()["problems"]
        await runtime.start()
        try:
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["disabled_channels"] == {}
            assert "ehr_bridge_messages_total" in (await client.get("/metrics")).text
            await runtime.store.disable_channel("hook", reason="410 Gone")
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["disabled_channels"] == {"hook": "410 Gone"}
            assert 'ehr_bridge_channel_disabled{channel="hook"} 1.0' in (await client.get("/metrics")).text
        finally:
            await runtime.stop()


async def test_admin_token_guards_phi_pages_but_not_probes_or_hl7(tmp_path: Path) -> None:
    runtime = Runtime(
        parse_config(
            {
                "store": {"path": str(tmp_path / "b.db")},
                "http": {"admin_token": "adm1n-t0ken"},
                "listeners": [{"name": "default", "port": None}],
            },
            env={},
        )
    )
    await runtime.start()
    app = create_app(runtime)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as client:
            for path in ("/inbox", "/api/inbox", "/api/dlq", "/metrics", "/docs", "/openapi.json"):
                denied = await client.get(path)
                assert denied.status_code == 401, path
                assert denied.headers["www-authenticate"].startswith("Basic")
            assert (await client.get("/api/inbox", headers={"Authorization": "Bearer adm1n-t0ken"})).status_code == 200
            assert (await client.get("/inbox", auth=("nurse", "adm1n-t0ken"))).status_code == 200
            assert (await client.get("/inbox", auth=("nurse", "wrong"))).status_code == 401
            assert (await client.get("/inbox", headers={"Authorization": "Basic !!notbase64"})).status_code == 401
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            hl7 = await client.post(
                "/hl7/default",
                content=b"MSH|^~\\&|A|H|||20261122||ADT^A01|T1|P|2.5\r",
                headers={"Content-Type": "application/hl7-v2"},
            )
            assert hl7.status_code == 200
    finally:
        await runtime.stop()


def test_embedded_defaults_bind_loopback_only(tmp_path: Path) -> None:
    defaults = parse_config({}, env={})
    assert defaults.http.host == "127.0.0.1"
    assert [x.host for x in defaults.listeners] == ["127.0.0.1"]
    assert defaults.http.admin_token is None


def test_docker_config_requires_the_admin_token() -> None:
    import pytest

    from bridge.config import load_config
    from bridge.errors import ConfigError

    docker = Path(__file__).resolve().parents[2] / "docker" / "config.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(docker, env={})
    assert err.value.path == "http.admin_token"
    settings = load_config(docker, env={"EHR_BRIDGE_ADMIN_TOKEN": "x" * 32})
    assert settings.http.host == "0.0.0.0" and "x" * 32 not in repr(settings)


async def test_healthz_fails_when_the_store_writer_is_gone(tmp_path: Path) -> None:
    runtime = settings(tmp_path)
    app = create_app(runtime)
    await runtime.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as client:
            assert (await client.get("/healthz")).status_code == 200
            writer = runtime.store._writer
            assert writer is not None
            writer.jobs.put(None)  # the writer thread ends, as if it had died
            writer.join(5)
            assert (await client.get("/healthz")).status_code == 503
    finally:
        runtime.store._writer = None  # already stopped
        await runtime.stop()


def _two_hooks(tmp_path: Path) -> Runtime:
    hook = {"type": "webhook", "url": "http://127.0.0.1:9/hook", "secret": SECRET}
    return Runtime(
        parse_config(
            {
                "store": {"path": str(tmp_path / "b.db")},
                "routes": [{"name": "all", "channels": ["a", "b"]}],
                "channels": {"a": hook, "b": hook},
            },
            env={},
        )
    )


async def test_each_channel_delivers_through_its_own_client_closed_at_stop(tmp_path: Path) -> None:
    runtime = _two_hooks(tmp_path)
    clients = runtime.channel_http
    assert set(clients) == {"a", "b"} and clients["a"] is not clients["b"]
    for name, client in clients.items():
        assert isinstance(client._transport, AiohttpTransport)
        assert client is not runtime.http
        assert runtime.adapters[name]._http is client  # type: ignore[attr-defined]
    await runtime.start(listeners=False)
    await runtime.stop()
    assert all(client.is_closed for client in clients.values())
    assert runtime.http.is_closed
