"""Standard Webhooks adapter: signing, idempotency key, status mapping (adapters/outbound/webhook.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pydantic
import pytest
import respx
from structlog.testing import capture_logs

from adapters.outbound.webhook import (
    WebhookAdapter,
    WebhookConfig,
    WebhookRequest,
    sign,
    verify_signature,
)
from bridge.channels import AdapterContext, OutboundAdapter, Post
from bridge.errors import Permanent, Retryable
from bridge.events import ClinicalEvent, EventType, Identifier, Lifecycle, Patient, Severity

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
URL = "https://receiver.test/hooks/ehr"
NOW = 1_741_089_600
#: Built once: loading the CA bundle for every test's client is most of the suite's time.
TLS = ssl.create_default_context()
#: The runtime hands channels a client on an aiohttp transport (bridge/http.py); respx mocks at the httpx client,
#: so these tests hold on either transport.
pytestmark = pytest.mark.respx(using="httpx", assert_all_called=False)


def _post(delivery_id: str = "dlv-0001") -> Post:
    event = ClinicalEvent(
        id="evt-0001",
        type=EventType.RESULT_CORRECTED,
        severity=Severity.WARNING,
        occurred_at=datetime(2025, 3, 4, 12, 0, tzinfo=UTC),
        source="urn:ehr-bridge:test",
        patient=Patient(mrn=Identifier(value="MRN0001", authority="HOSP"), family="Testpatient", given="Alpha"),
        thread_key="HOSP|V0001",
        dedup_key="HOSP|LAB|0001",
        lifecycle=Lifecycle.CORRECT,
        links={"corrects": "evt-0000"},
    )
    return Post(
        delivery_id=delivery_id,
        channel="partner-hook",
        event=event,
        title="Result corrected",
        summary="Potassium 5.1 mmol/L",
    )


def _config(**overrides: Any) -> WebhookConfig:
    values: dict[str, Any] = {"type": "webhook", "url": URL, "secret": SECRET}
    values.update(overrides)
    return WebhookConfig.model_validate(values)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=TLS) as shared:
        yield shared


def _adapter(client: httpx.AsyncClient, **overrides: Any) -> WebhookAdapter:
    context = AdapterContext(name="partner-hook", http=client, store=None)
    return WebhookAdapter(_config(**overrides), context, clock=lambda: NOW + 0.75)


@pytest.fixture
def adapter(client: httpx.AsyncClient) -> WebhookAdapter:
    return _adapter(client)


def _by_hand(webhook_id: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(KEY, webhook_id.encode() + b"." + timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(digest.digest()).decode()


# --- render (pure) ---------------------------------------------------------------------------------


def test_body_is_the_cloudevent_as_compact_sorted_json(adapter: WebhookAdapter) -> None:
    post = _post()
    payload = adapter.render(post)
    assert json.loads(payload.body) == post.event.to_cloudevent()
    assert (
        payload.body
        == json.dumps(post.event.to_cloudevent(), separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    )
    assert payload == adapter.render(post)


def test_webhook_id_is_the_delivery_id(adapter: WebhookAdapter) -> None:
    assert adapter.render(_post("dlv-42")) == WebhookRequest(webhook_id="dlv-42", body=adapter.render(_post()).body)


# --- send ------------------------------------------------------------------------------------------


async def test_signature_matches_an_independent_hmac(adapter: WebhookAdapter, respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).respond(204)
    result = await adapter.send(adapter.render(_post()))
    assert result.external_id is None
    sent = route.calls.last.request
    assert sent.headers["webhook-id"] == "dlv-0001"
    assert sent.headers["webhook-timestamp"] == str(NOW)
    assert sent.headers["webhook-signature"] == _by_hand("dlv-0001", str(NOW), sent.content)
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.content == adapter.render(_post()).body


async def test_retries_carry_the_same_webhook_id_and_body(
    client: httpx.AsyncClient, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(URL).mock(side_effect=[httpx.Response(503), httpx.Response(200)])
    times = iter([NOW, NOW + 60])
    adapter = WebhookAdapter(
        _config(), AdapterContext(name="partner-hook", http=client, store=None), clock=lambda: next(times)
    )
    payload = adapter.render(_post())
    with pytest.raises(Retryable):
        await adapter.send(payload)
    await adapter.send(payload)
    first, second = (call.request for call in route.calls)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "dlv-0001"
    assert first.content == second.content
    assert (first.headers["webhook-timestamp"], second.headers["webhook-timestamp"]) == (
        str(NOW),
        str(NOW + 60),
    )
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]


async def test_sent_request_passes_our_own_verification(adapter: WebhookAdapter, respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).respond(200)
    await adapter.send(adapter.render(_post()))
    sent = route.calls.last.request
    assert verify_signature(SECRET, sent.headers, sent.content, now=NOW + 10)


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_2xx_is_success(adapter: WebhookAdapter, respx_mock: respx.MockRouter, status: int) -> None:
    respx_mock.post(URL).respond(status)
    assert (await adapter.send(adapter.render(_post()))).external_id is None


async def test_410_disables_the_channel_and_logs_endpoint_gone(
    adapter: WebhookAdapter, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(URL).respond(410)
    with capture_logs() as logs, pytest.raises(Permanent) as caught:
        await adapter.send(adapter.render(_post()))
    assert caught.value.disable_channel is True
    assert [entry["event"] for entry in logs] == ["webhook.endpoint_gone"]
    assert logs[0]["channel"] == "partner-hook"


@pytest.mark.parametrize("status", [429, 502, 504])
async def test_throttling_is_retryable_after_retry_after(
    adapter: WebhookAdapter, respx_mock: respx.MockRouter, status: int
) -> None:
    respx_mock.post(URL).respond(status, headers={"Retry-After": "30"})
    with pytest.raises(Retryable) as caught:
        await adapter.send(adapter.render(_post()))
    assert caught.value.defer == 30


async def test_redirect_is_a_permanent_failure_and_not_followed(
    adapter: WebhookAdapter, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(URL).respond(301, headers={"Location": "https://elsewhere.test/"})
    elsewhere = respx_mock.post("https://elsewhere.test/").respond(200)
    with pytest.raises(Permanent) as caught:
        await adapter.send(adapter.render(_post()))
    assert caught.value.disable_channel is False
    assert not elsewhere.called


async def test_400_is_permanent_without_disabling(adapter: WebhookAdapter, respx_mock: respx.MockRouter) -> None:
    respx_mock.post(URL).respond(400)
    with pytest.raises(Permanent) as caught:
        await adapter.send(adapter.render(_post()))
    assert caught.value.disable_channel is False


async def test_timeout_is_retryable(adapter: WebhookAdapter, respx_mock: respx.MockRouter) -> None:
    respx_mock.post(URL).mock(side_effect=httpx.ConnectTimeout("timed out"))
    with pytest.raises(Retryable):
        await adapter.send(adapter.render(_post()))


async def test_extra_headers_are_sent(client: httpx.AsyncClient, respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).respond(200)
    adapter = _adapter(client, headers={"Authorization": "Bearer partner-api-key"})
    await adapter.send(adapter.render(_post()))
    assert route.calls.last.request.headers["Authorization"] == "Bearer partner-api-key"


async def test_aclose_leaves_the_shared_client_open(adapter: WebhookAdapter, client: httpx.AsyncClient) -> None:
    await adapter.aclose()
    assert not client.is_closed


# --- verify_signature ------------------------------------------------------------------------------


def _headers(body: bytes, *, timestamp: int = NOW, signature: str | None = None) -> dict[str, str]:
    return {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": signature if signature is not None else sign(KEY, "msg_1", timestamp, body),
    }


def test_verify_accepts_a_valid_signature_in_any_header_case() -> None:
    body = b'{"a":1}'
    assert verify_signature(SECRET, _headers(body), body, now=NOW)
    assert verify_signature(pydantic.SecretStr(SECRET), _headers(body), body, now=NOW + 299)


def test_verify_accepts_any_matching_entry_during_key_rotation() -> None:
    body = b'{"a":1}'
    other = sign(bytes(32), "msg_1", NOW, body)
    listed = f"v1a,ZWQyNTUxOQ== {other} {sign(KEY, 'msg_1', NOW, body)}"
    assert verify_signature(SECRET, _headers(body, signature=listed), body, now=NOW)


@pytest.mark.parametrize(
    ("case", "now"),
    [("tampered_body", NOW), ("stale", NOW + 301), ("future", NOW - 301), ("wrong_key", NOW)],
)
def test_verify_rejects_tampering_replay_and_wrong_keys(case: str, now: int) -> None:
    body = b'{"a":1}'
    headers = _headers(body)
    if case == "wrong_key":
        headers["Webhook-Signature"] = sign(bytes(32), "msg_1", NOW, body)
    received = b'{"a":2}' if case == "tampered_body" else body
    assert not verify_signature(SECRET, headers, received, now=now)


@pytest.mark.parametrize("missing", ["Webhook-Id", "Webhook-Timestamp", "Webhook-Signature"])
def test_verify_rejects_missing_headers(missing: str) -> None:
    body = b"{}"
    headers = _headers(body)
    del headers[missing]
    assert not verify_signature(SECRET, headers, body, now=NOW)


def test_verify_rejects_a_non_numeric_timestamp_and_a_malformed_secret() -> None:
    body = b"{}"
    headers = _headers(body)
    assert not verify_signature("not-a-secret", headers, body, now=NOW)
    headers["Webhook-Timestamp"] = "1e9"
    assert not verify_signature(SECRET, headers, body, now=NOW)


# --- config and secrets ----------------------------------------------------------------------------


def test_adapter_satisfies_the_outbound_contract(adapter: WebhookAdapter) -> None:
    assert isinstance(adapter, OutboundAdapter)
    assert WebhookAdapter.config_model is WebhookConfig
    assert (WebhookAdapter.max_text, WebhookAdapter.rate_per_sec) == (20_000, 0.0)
    assert not WebhookAdapter.supports_threads and not WebhookAdapter.supports_update
    assert _config().timeout == 15.0


def test_secret_and_header_values_never_appear_in_repr_or_str(client: httpx.AsyncClient) -> None:
    adapter = _adapter(client, headers={"X-Api-Key": "partner-api-key"})
    config = _config(headers={"X-Api-Key": "partner-api-key"})
    for shown in (repr(config), str(config), repr(adapter), str(adapter), config.model_dump_json()):
        assert SECRET not in shown
        assert SECRET.removeprefix("whsec_") not in shown
        assert "partner-api-key" not in shown


@pytest.mark.parametrize(
    "secret",
    [
        base64.b64encode(KEY).decode(),
        "whsec_not*base64!",
        "whsec_" + base64.b64encode(bytes(16)).decode(),
        "whsec_" + base64.b64encode(bytes(65)).decode(),
        "whsec_",
    ],
)
def test_bad_secret_format_is_a_config_error(secret: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        _config(secret=secret)


@pytest.mark.parametrize(
    "overrides",
    [
        {"url": "ftp://receiver.test/"},
        {"url": "/relative/path"},
        {"url": "https://user:password@receiver.test/"},
        {"headers": {"webhook-signature": "v1,forged"}},
        {"headers": {"Content-Type": "text/plain"}},
        {"headers": {"Bad Name": "x"}},
        {"headers": {"X-Split": "a\r\nInjected: 1"}},
        {"timeout": 0},
        {"type": "slack"},
    ],
)
def test_invalid_config_is_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        _config(**overrides)
