"""The per-channel delivery client: aiohttp transport, TLS verification, environment proxies (bridge/http.py)."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator

import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from bridge.http import delivery_client

PROXY = "http://proxy.test:3128"


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment without any ``*_proxy`` variable, whatever the machine running the tests sets."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
async def proxied(no_proxy_env: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    no_proxy_env.setenv("HTTPS_PROXY", PROXY)
    no_proxy_env.setenv("NO_PROXY", "internal.test,127.0.0.1,localhost")
    async with delivery_client() as client:
        yield client


def _transport(client: httpx.AsyncClient, url: str) -> httpx.AsyncBaseTransport:
    transport = client._transport_for_url(httpx.URL(url))
    assert isinstance(transport, httpx.AsyncBaseTransport)
    return transport


async def test_without_proxy_variables_every_url_goes_direct_on_the_aiohttp_transport(
    no_proxy_env: pytest.MonkeyPatch,
) -> None:
    async with delivery_client() as client, delivery_client() as other:
        assert client._mounts == {}
        transport, other_transport = client._transport, other._transport
        assert isinstance(transport, AiohttpTransport) and isinstance(other_transport, AiohttpTransport)
        assert transport.proxy is None and _transport(client, "https://receiver.test/hook") is transport
        # One verifying context serves every channel, and it verifies.
        assert transport.ssl_context is other_transport.ssl_context
        assert transport.ssl_context.verify_mode == ssl.CERT_REQUIRED


async def test_https_proxy_from_the_environment_is_mounted_as_an_aiohttp_transport(
    proxied: httpx.AsyncClient,
) -> None:
    transport = _transport(proxied, "https://receiver.test/hook")
    assert isinstance(transport, AiohttpTransport)
    assert transport.proxy is not None and transport.proxy.url == httpx.URL(PROXY)
    assert transport is not proxied._transport
    assert transport.ssl_context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    "url",
    [
        "https://internal.test/hook",  # NO_PROXY names the host
        "https://api.internal.test/hook",  # and, as httpx reads NO_PROXY, its subdomains
        "https://127.0.0.1:8443/hook",  # loopback is exempt only because NO_PROXY lists it
        "https://localhost/hook",
        "http://receiver.test/hook",  # HTTPS_PROXY covers https:// only
    ],
)
async def test_no_proxy_hosts_and_other_schemes_go_direct(proxied: httpx.AsyncClient, url: str) -> None:
    assert _transport(proxied, url) is proxied._transport


async def test_loopback_is_proxied_when_no_proxy_does_not_list_it(no_proxy_env: pytest.MonkeyPatch) -> None:
    # httpx has no implicit loopback exemption; NO_PROXY decides.
    no_proxy_env.setenv("HTTPS_PROXY", PROXY)
    async with delivery_client() as client:
        transport = _transport(client, "https://127.0.0.1:8443/hook")
        assert isinstance(transport, AiohttpTransport) and transport.proxy is not None


async def test_no_proxy_star_turns_proxies_off(no_proxy_env: pytest.MonkeyPatch) -> None:
    no_proxy_env.setenv("HTTPS_PROXY", PROXY)
    no_proxy_env.setenv("NO_PROXY", "*")
    async with delivery_client() as client:
        assert client._mounts == {}


async def test_a_request_is_sent_through_the_proxy(no_proxy_env: pytest.MonkeyPatch) -> None:
    from aiohttp import web

    seen: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        # A forward proxy receives the absolute URL of the target.
        seen.append(str(request.url))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{runner.addresses[0][1]}")
        async with delivery_client() as client:
            response = await client.post("http://receiver.test/hook", content=b"{}", timeout=5.0)
    finally:
        await runner.cleanup()
    assert response.status_code == 204
    assert seen == ["http://receiver.test/hook"]
