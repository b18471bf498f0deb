"""Mapping of HTTP outcomes to Retryable / Permanent (adapters/outbound/http.py)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import respx

from adapters.outbound.http import MAX_RETRY_AFTER, parse_retry_after, raise_for_delivery, request
from bridge.errors import Permanent, Retryable
from bridge.http import delivery_client

NOW = datetime(2025, 3, 4, 12, 0, 0, tzinfo=UTC)
URL = "https://receiver.example/hook"
#: Built once: loading the CA bundle for every test's client is most of the suite's time.
TLS = ssl.create_default_context()


def _http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("99999", MAX_RETRY_AFTER),
        (_http_date(NOW + timedelta(seconds=30)), 30.0),
        (_http_date(NOW - timedelta(minutes=5)), 0.0),
        (_http_date(NOW + timedelta(days=3)), MAX_RETRY_AFTER),
        ("Tue, 04 Mar 2025 12:01:00 -0000", 60.0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
    ],
)
def test_parse_retry_after_reads_seconds_and_http_dates_and_caps_them(
    value: str | None, expected: float | None
) -> None:
    assert parse_retry_after(value, NOW) == expected


def _response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status,
        headers=headers,
        request=httpx.Request("POST", URL, content=b'{"patient":"Testpatient^Alpha"}'),
    )


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_delivered(status: int) -> None:
    raise_for_delivery(_response(status), now=NOW)


@pytest.mark.parametrize(
    ("status", "retry_after", "defer"),
    [
        (429, "7", 7.0),
        (502, None, None),
        (503, "120", 120.0),
        (504, _http_date(NOW + timedelta(seconds=45)), 45.0),
        (500, None, None),
        (501, None, None),
        (408, None, None),
    ],
)
def test_throttling_server_errors_and_timeouts_are_retryable_with_retry_after(
    status: int, retry_after: str | None, defer: float | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    with pytest.raises(Retryable) as caught:
        raise_for_delivery(_response(status, headers), now=NOW)
    assert caught.value.defer == defer
    assert str(status) in str(caught.value)


@pytest.mark.parametrize(
    ("status", "disable"),
    [(410, True), (400, False), (401, False), (403, False), (404, False), (413, False), (422, False)],
)
def test_client_errors_are_permanent_and_only_410_disables_the_channel(status: int, disable: bool) -> None:
    with pytest.raises(Permanent) as caught:
        raise_for_delivery(_response(status), now=NOW)
    assert caught.value.disable_channel is disable
    assert str(status) in str(caught.value)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_permanent_failures(status: int) -> None:
    with pytest.raises(Permanent) as caught:
        raise_for_delivery(_response(status, {"Location": "http://169.254.169.254/"}), now=NOW)
    assert caught.value.disable_channel is False


def test_error_message_never_contains_the_request_body_or_url() -> None:
    with pytest.raises(Permanent) as caught:
        raise_for_delivery(_response(400), now=NOW)
    assert "Testpatient" not in str(caught.value)
    assert "receiver.example" not in str(caught.value)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=TLS) as shared:
        yield shared


async def _send(client: httpx.AsyncClient, url: str = URL) -> httpx.Response:
    return await request(client, "POST", url, content=b"{}", headers={"X-Test": "1"}, timeout=5.0)


async def test_request_returns_any_status_without_judging_it(
    respx_mock: respx.MockRouter, client: httpx.AsyncClient
) -> None:
    respx_mock.post(URL).respond(404)
    response = await _send(client)
    assert response.status_code == 404
    assert respx_mock.calls.last.request.headers["X-Test"] == "1"


async def test_request_does_not_follow_redirects_even_if_the_client_would(
    respx_mock: respx.MockRouter,
) -> None:
    respx_mock.post(URL).respond(307, headers={"Location": "http://internal.example/"})
    internal = respx_mock.post("http://internal.example/").respond(200)
    async with httpx.AsyncClient(verify=TLS, follow_redirects=True) as following:
        response = await _send(following)
    assert response.status_code == 307
    assert not internal.called


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.PoolTimeout("pool timed out"),
        httpx.ConnectError("connection refused"),
        httpx.RemoteProtocolError("server disconnected"),
        httpx.ReadError("connection reset"),
    ],
)
async def test_transport_failures_are_retryable(
    respx_mock: respx.MockRouter, client: httpx.AsyncClient, exc: Exception
) -> None:
    respx_mock.post(URL).mock(side_effect=exc)
    with pytest.raises(Retryable) as caught:
        await _send(client)
    assert caught.value.__cause__ is exc
    assert caught.value.defer is None


@pytest.mark.parametrize("url", ["ftp://receiver.example/hook", "receiver.example/hook"])
async def test_unusable_url_is_permanent(client: httpx.AsyncClient, url: str) -> None:
    with pytest.raises(Permanent):
        await _send(client, url)


# --- the same contract over the channels' client (bridge.http.delivery_client), against a real loopback server ---


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[tuple[str, bytes, str]]]]:
    from aiohttp import web

    seen: list[tuple[str, bytes, str]] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append((request.path, await request.read(), request.headers.get("X-Test", "")))
        if request.path == "/moved":
            return web.Response(status=307, headers={"Location": "/hook"})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/moved", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_delivery_client_posts_and_never_follows_redirects(
    receiver: tuple[str, list[tuple[str, bytes, str]]],
) -> None:
    base, seen = receiver
    async with delivery_client() as client:
        assert (await _send(client, f"{base}/hook")).status_code == 204
        assert (await _send(client, f"{base}/moved")).status_code == 307
    assert seen == [("/hook", b"{}", "1"), ("/moved", b"{}", "1")]


async def test_delivery_client_maps_a_refused_connection_to_retryable_and_a_bad_url_to_permanent() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with delivery_client() as client:
        with pytest.raises(Retryable):
            await _send(client, f"http://127.0.0.1:{port}/hook")
        for url in ("ftp://receiver.example/hook", "receiver.example/hook"):
            with pytest.raises(Permanent):
                await _send(client, url)
