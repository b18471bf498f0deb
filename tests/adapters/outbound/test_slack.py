"""Slack Web API adapter: pure rendering and the mapping of Slack answers (adapters/outbound/slack.py)."""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pydantic
import pytest
import respx
from structlog.testing import capture_logs

from adapters.outbound import slack as slack_module
from adapters.outbound.slack import SlackAdapter, SlackCall, SlackConfig
from bridge.channels import AdapterContext, OutboundAdapter, Post
from bridge.errors import Permanent, Retryable
from bridge.events import (
    ClinicalEvent,
    Encounter,
    EventType,
    Identifier,
    Lifecycle,
    Location,
    Patient,
    Severity,
)

TOKEN = "xoxb-0000000000-1111111111-SyntheticTestTokenValue"
BASE = "https://slack.test/api"
CHANNEL = "C0SYNTH01"
#: Built once: loading the CA bundle for every test's client is most of the suite's time.
TLS = ssl.create_default_context()


def _event(
    *,
    lifecycle: Lifecycle = Lifecycle.NEW,
    severity: Severity = Severity.CRITICAL,
    type_: EventType = EventType.RESULT_CRITICAL,
) -> ClinicalEvent:
    return ClinicalEvent(
        id="evt-0001",
        type=type_,
        severity=severity,
        occurred_at=datetime(2025, 3, 4, 12, 0, tzinfo=UTC),
        source="urn:ehr-bridge:test",
        patient=Patient(
            mrn=Identifier(value="MRN0001", authority="HOSP"),
            family="Testpatient",
            given="Alpha",
            birth_date="1970-01-01",
            sex="F",
        ),
        encounter=Encounter(visit_number="V0001", location=Location(facility="HOSP", unit="ICU", bed="3")),
        thread_key="HOSP|V0001",
        dedup_key="HOSP|LAB|0001",
        lifecycle=lifecycle,
    )


def _post(
    *,
    lifecycle: Lifecycle = Lifecycle.NEW,
    severity: Severity = Severity.CRITICAL,
    title: str = "Critical result",
    summary: str = "Potassium 6.9 mmol/L (HH)",
    facts: tuple[tuple[str, str], ...] = (("Patient", "A. T."), ("Location", "ICU/3")),
    thread_ref: str | None = None,
    original_ref: str | None = None,
    delivery_id: str = "dlv-0001",
    label: str | None = None,
) -> Post:
    return Post(
        delivery_id=delivery_id,
        channel="icu-slack",
        event=_event(lifecycle=lifecycle, severity=severity),
        title=title,
        summary=summary,
        facts=facts,
        thread_ref=thread_ref,
        original_ref=original_ref,
        label=label,
    )


def _config(**overrides: Any) -> SlackConfig:
    values: dict[str, Any] = {"type": "slack", "token": TOKEN, "channel": CHANNEL, "base_url": BASE}
    values.update(overrides)
    return SlackConfig.model_validate(values)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=TLS) as shared:
        yield shared


@pytest.fixture
def adapter(client: httpx.AsyncClient) -> SlackAdapter:
    return SlackAdapter(_config(), AdapterContext(name="icu-slack", http=client, store=None))


def _block_texts(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks, ensure_ascii=False)


# --- render (pure) ---------------------------------------------------------------------------------


def test_new_event_renders_post_message_snapshot(adapter: SlackAdapter) -> None:
    assert adapter.render(_post()) == SlackCall(
        "chat.postMessage",
        {
            "channel": CHANNEL,
            "text": "Critical result: Potassium 6.9 mmol/L (HH)",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": "Critical result"}},
                {"type": "section", "text": {"type": "mrkdwn", "text": "Potassium 6.9 mmol/L (HH)"}},
                {
                    "type": "section",
                    "fields": [
                        {"type": "mrkdwn", "text": "*Patient*\nA. T."},
                        {"type": "mrkdwn", "text": "*Location*\nICU/3"},
                    ],
                },
                {
                    "type": "context",
                    "elements": [{"type": "mrkdwn", "text": ":rotating_light: *critical* · `result.critical`"}],
                },
            ],
            "unfurl_links": False,
            "unfurl_media": False,
            "metadata": {"event_type": "ehr_bridge_delivery", "event_payload": {"delivery_id": "dlv-0001"}},
        },
    )


def test_render_is_deterministic(adapter: SlackAdapter) -> None:
    post = _post(thread_ref="1700000000.000100")
    assert adapter.render(post) == adapter.render(post)


@pytest.mark.parametrize(
    ("severity", "broadcast"),
    [(Severity.CRITICAL, True), (Severity.NOTICE, None), (Severity.WARNING, None)],
)
def test_thread_ref_becomes_thread_ts_and_only_critical_replies_are_broadcast(
    adapter: SlackAdapter, severity: Severity, broadcast: bool | None
) -> None:
    call = adapter.render(_post(severity=severity, thread_ref="1700000000.000100"))
    assert call.method == "chat.postMessage"
    assert call.body["thread_ts"] == "1700000000.000100"
    assert call.body.get("reply_broadcast") is broadcast


def test_without_thread_ref_the_post_is_top_level(adapter: SlackAdapter) -> None:
    body = adapter.render(_post()).body
    assert "thread_ts" not in body
    assert "reply_broadcast" not in body


def test_correction_updates_the_original_post_and_says_corrected(adapter: SlackAdapter) -> None:
    call = adapter.render(
        _post(
            lifecycle=Lifecycle.CORRECT,
            thread_ref="1700000000.000100",
            original_ref="1700000000.000200",
            label="Corrected",
        )
    )
    assert call.method == "chat.update"
    assert set(call.body) == {"channel", "ts", "text", "blocks"}
    assert call.body["channel"] == CHANNEL
    assert call.body["ts"] == "1700000000.000200"
    assert call.body["text"] == "Corrected: Critical result: Potassium 6.9 mmol/L (HH)"
    assert call.body["blocks"][1] == {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": ":pencil2: *Corrected*"}],
    }


def test_cancellation_strikes_the_original_post_and_says_cancelled(adapter: SlackAdapter) -> None:
    call = adapter.render(
        _post(
            lifecycle=Lifecycle.CANCEL,
            title="Admitted",
            summary="ICU bed 3\nattending Dr Test",
            facts=(("Unit", "ICU"),),
            original_ref="1700000000.000200",
            label="Cancelled",
        )
    )
    assert call.method == "chat.update"
    assert call.body["ts"] == "1700000000.000200"
    assert call.body["text"] == "Cancelled: ~Admitted: ICU bed 3~\n~attending Dr Test~"
    assert call.body["blocks"][:4] == [
        {"type": "context", "elements": [{"type": "mrkdwn", "text": ":no_entry_sign: *Cancelled*"}]},
        {"type": "section", "text": {"type": "mrkdwn", "text": "~Admitted~"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "~ICU bed 3~\n~attending Dr Test~"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": "*Unit*\n~ICU~"}]},
    ]
    assert not any(block["type"] == "header" for block in call.body["blocks"])


@pytest.mark.parametrize(("lifecycle", "label"), [(Lifecycle.CORRECT, "Corrected"), (Lifecycle.CANCEL, "Cancelled")])
def test_correction_or_cancellation_without_original_is_a_new_reply_in_the_thread(
    adapter: SlackAdapter, lifecycle: Lifecycle, label: str
) -> None:
    call = adapter.render(_post(lifecycle=lifecycle, thread_ref="1700000000.000100", label=label))
    assert call.method == "chat.postMessage"
    assert call.body["thread_ts"] == "1700000000.000100"
    assert call.body["text"].startswith(f"{label}: ")
    assert "~" not in call.body["text"]
    assert f"*{label}*" in _block_texts(call.body["blocks"])


@pytest.mark.parametrize(
    ("lifecycle", "label", "icon"),
    [(Lifecycle.CORRECT, "Korrigiert", ":pencil2:"), (Lifecycle.CANCEL, "Storniert", ":no_entry_sign:")],
)
def test_the_label_is_the_posts_own_wording_so_a_german_channel_reads_german(
    adapter: SlackAdapter, lifecycle: Lifecycle, label: str, icon: str
) -> None:
    call = adapter.render(_post(lifecycle=lifecycle, original_ref="1700000000.000200", label=label))
    assert call.method == "chat.update"
    assert call.body["text"].startswith(f"{label}: ")
    assert _context_texts(call.body["blocks"])[0] == f"{icon} *{label}*"
    assert "Corrected" not in _block_texts(call.body["blocks"]) + call.body["text"]
    assert "Cancelled" not in _block_texts(call.body["blocks"]) + call.body["text"]


@pytest.mark.parametrize(
    ("lifecycle", "label", "title", "original_ref"),
    [
        (Lifecycle.CORRECT, "Corrected", "Corrected result: Potassium", "1700000000.000200"),
        (Lifecycle.CORRECT, "Corrected", "Corrected result: Potassium", None),
        (Lifecycle.CORRECT, "Korrigiert", "Befund korrigiert: Kalium", "1700000000.000200"),
        (Lifecycle.CANCEL, "Cancelled", "Order cancelled: Blood count", None),
    ],
)
def test_the_fallback_text_does_not_repeat_a_label_the_title_already_says(
    adapter: SlackAdapter, lifecycle: Lifecycle, label: str, title: str, original_ref: str | None
) -> None:
    call = adapter.render(
        _post(lifecycle=lifecycle, title=title, summary="as before", original_ref=original_ref, label=label)
    )
    text = call.body["text"].replace("~", "")
    assert text == f"{title}: as before"
    assert text.casefold().count(label.casefold()) == 1
    # The blocks carry the label all the same.
    assert _context_texts(call.body["blocks"])[0].endswith(f"*{label}*")


def test_the_fallback_text_leads_with_the_label_when_the_title_does_not_say_it(adapter: SlackAdapter) -> None:
    post = _post(
        lifecycle=Lifecycle.CORRECT,
        title="Appointment rescheduled: Cardiology",
        summary="moved",
        original_ref="1700000000.000200",
        label="Corrected",
    )
    assert adapter.render(post).body["text"] == "Corrected: Appointment rescheduled: Cardiology: moved"


def test_without_a_label_a_correction_still_edits_the_original_post(adapter: SlackAdapter) -> None:
    call = adapter.render(_post(lifecycle=Lifecycle.CORRECT, original_ref="1700000000.000200"))
    assert call.method == "chat.update"
    assert call.body["text"] == "Critical result: Potassium 6.9 mmol/L (HH)"
    assert len(_context_texts(call.body["blocks"])) == 1  # the severity line only


def test_a_label_is_escaped_like_any_text(adapter: SlackAdapter) -> None:
    call = adapter.render(_post(lifecycle=Lifecycle.CORRECT, original_ref="1700000000.000200", label="<!here> fixed"))
    assert call.body["text"].startswith("&lt;!here&gt; fixed: ")
    assert "<!here>" not in _block_texts(call.body["blocks"])


def test_a_label_on_a_new_post_is_not_shown(adapter: SlackAdapter) -> None:
    call = adapter.render(_post(label="Corrected"))
    assert call.body["text"] == "Critical result: Potassium 6.9 mmol/L (HH)"


def _context_texts(blocks: list[dict[str, Any]]) -> list[str]:
    return [block["elements"][0]["text"] for block in blocks if block["type"] == "context"]


def test_mrkdwn_control_characters_are_escaped_so_text_cannot_ping_the_channel(adapter: SlackAdapter) -> None:
    call = adapter.render(_post(summary="<!channel> K > 6 & rising", facts=(("<@U123>", "<http://x|y>"),)))
    rendered = call.body["text"] + _block_texts(call.body["blocks"])
    assert "<" not in rendered
    assert ">" not in rendered
    assert "&lt;!channel&gt; K &gt; 6 &amp; rising" in call.body["text"]


def test_long_summary_is_cut_to_the_section_limit_with_an_ellipsis(adapter: SlackAdapter) -> None:
    call = adapter.render(_post(summary="x" * 2990 + "&" * 20))
    section = call.body["blocks"][1]["text"]["text"]
    assert len(section) <= 3000
    # Cut between entities, never inside one ("&am…" would show as garbage).
    assert re.fullmatch(r"x{2990}(&amp;)*…", section)


def test_long_text_is_cut_to_max_text(adapter: SlackAdapter) -> None:
    call = adapter.render(_post(summary="y" * 50_000))
    assert len(call.body["text"]) == SlackAdapter.max_text
    assert call.body["text"].endswith("…")


def test_struck_long_summary_stays_within_the_section_limit(adapter: SlackAdapter) -> None:
    call = adapter.render(
        _post(lifecycle=Lifecycle.CANCEL, summary="z" * 5000, original_ref="1700000000.000200", label="Cancelled")
    )
    section = call.body["blocks"][2]["text"]["text"]
    assert len(section) <= 3000
    assert section.startswith("~") and section.endswith("…~")


def test_long_title_is_cut_to_the_header_limit(adapter: SlackAdapter) -> None:
    header = adapter.render(_post(title="T" * 400)).body["blocks"][0]
    assert header["type"] == "header"
    assert len(header["text"]["text"]) == 150


def test_many_facts_fit_in_fifty_blocks_ten_fields_each(adapter: SlackAdapter) -> None:
    facts = tuple((f"k{i}", f"v{i}") for i in range(1000))
    blocks = adapter.render(_post(facts=facts)).body["blocks"]
    assert len(blocks) == 50
    assert all(len(block.get("fields", ())) <= 10 for block in blocks)
    assert blocks[-1]["type"] == "context"
    assert blocks[-2]["fields"][-1] == {"type": "mrkdwn", "text": "…"}


def test_empty_summary_renders_no_empty_section(adapter: SlackAdapter) -> None:
    call = adapter.render(_post(summary="", facts=()))
    assert call.body["text"] == "Critical result"
    assert [block["type"] for block in call.body["blocks"]] == ["header", "context"]


def test_unfurl_follows_config(client: httpx.AsyncClient) -> None:
    adapter = SlackAdapter(_config(unfurl=True), AdapterContext(name="icu-slack", http=client, store=None))
    body = adapter.render(_post()).body
    assert body["unfurl_links"] is True
    assert body["unfurl_media"] is True


# --- send ------------------------------------------------------------------------------------------


async def test_post_message_sends_bearer_json_and_returns_ts(
    adapter: SlackAdapter, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(f"{BASE}/chat.postMessage").respond(
        200, json={"ok": True, "channel": CHANNEL, "ts": "1700000000.000300", "message": {}}
    )
    call = adapter.render(_post())
    result = await adapter.send(call)
    assert result.external_id == "1700000000.000300"
    sent = route.calls.last.request
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(sent.content) == call.body


async def test_update_returns_the_original_ts(adapter: SlackAdapter, respx_mock: respx.MockRouter) -> None:
    respx_mock.post(f"{BASE}/chat.update").respond(
        200, json={"ok": True, "channel": CHANNEL, "ts": "1700000000.000200"}
    )
    call = adapter.render(_post(lifecycle=Lifecycle.CORRECT, original_ref="1700000000.000200"))
    result = await adapter.send(call)
    assert (result.external_id, result.posted_anew) == ("1700000000.000200", False)


async def test_reply_in_a_living_thread_logs_nothing(adapter: SlackAdapter, respx_mock: respx.MockRouter) -> None:
    respx_mock.post(f"{BASE}/chat.postMessage").respond(
        200,
        json={"ok": True, "ts": "1700000000.000300", "message": {"thread_ts": "1700000000.000100"}},
    )
    with capture_logs() as logs:
        await adapter.send(adapter.render(_post(thread_ref="1700000000.000100")))
    assert logs == []


async def test_reply_to_a_deleted_parent_is_success_but_logs_thread_lost(
    adapter: SlackAdapter, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(f"{BASE}/chat.postMessage").respond(
        200, json={"ok": True, "ts": "1700000000.000300", "message": {"text": "x"}}
    )
    with capture_logs() as logs:
        result = await adapter.send(adapter.render(_post(thread_ref="1700000000.000100")))
    assert result.external_id == "1700000000.000300"
    assert [entry["event"] for entry in logs] == ["slack.thread_lost"]
    assert logs[0]["channel"] == "icu-slack"


async def test_http_429_is_retryable_after_retry_after(adapter: SlackAdapter, respx_mock: respx.MockRouter) -> None:
    respx_mock.post(f"{BASE}/chat.postMessage").respond(
        429, headers={"Retry-After": "7"}, json={"ok": False, "error": "ratelimited"}
    )
    with pytest.raises(Retryable) as caught:
        await adapter.send(adapter.render(_post()))
    assert caught.value.defer == 7


@pytest.mark.parametrize(
    ("error", "disable"),
    [
        ("channel_not_found", True),
        ("not_in_channel", True),
        ("is_archived", True),
        ("invalid_auth", True),
        ("token_revoked", True),
        ("account_inactive", True),
        ("missing_scope", True),
        ("not_authed", True),
        ("msg_too_long", False),
        ("no_text", False),
        ("invalid_blocks", False),
        ("message_not_found", False),
        ("cant_update_message", False),
        ("edit_window_closed", False),
        ("something_new_from_slack", False),
    ],
)
async def test_ok_false_errors_are_permanent_and_channel_errors_disable_the_channel(
    adapter: SlackAdapter, respx_mock: respx.MockRouter, error: str, disable: bool
) -> None:
    respx_mock.post(f"{BASE}/chat.postMessage").respond(200, json={"ok": False, "error": error})
    with pytest.raises(Permanent) as caught:
        await adapter.send(adapter.render(_post()))
    assert caught.value.disable_channel is disable
    assert error in str(caught.value)


@pytest.mark.parametrize(
    "error",
    [
        "ratelimited",
        "rate_limited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
    ],
)
async def test_ok_false_transient_errors_are_retryable(
    adapter: SlackAdapter, respx_mock: respx.MockRouter, error: str
) -> None:
    respx_mock.post(f"{BASE}/chat.postMessage").respond(
        200, headers={"Retry-After": "3"}, json={"ok": False, "error": error}
    )
    with pytest.raises(Retryable) as caught:
        await adapter.send(adapter.render(_post()))
    assert caught.value.defer == 3


async def test_error_code_from_slack_is_not_echoed_unless_it_looks_like_one(
    adapter: SlackAdapter, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(f"{BASE}/chat.postMessage").respond(200, json={"ok": False, "error": "Testpatient^Alpha MRN0001"})
    with pytest.raises(Permanent) as caught:
        await adapter.send(adapter.render(_post()))
    assert "Testpatient" not in str(caught.value)
    assert "unknown" in str(caught.value)


async def test_http_500_is_retryable(adapter: SlackAdapter, respx_mock: respx.MockRouter) -> None:
    respx_mock.post(f"{BASE}/chat.postMessage").respond(500)
    with pytest.raises(Retryable):
        await adapter.send(adapter.render(_post()))


async def test_timeout_is_retryable(adapter: SlackAdapter, respx_mock: respx.MockRouter) -> None:
    respx_mock.post(f"{BASE}/chat.postMessage").mock(side_effect=httpx.ReadTimeout("timed out"))
    with pytest.raises(Retryable):
        await adapter.send(adapter.render(_post()))


async def test_non_json_200_from_a_proxy_is_retryable(adapter: SlackAdapter, respx_mock: respx.MockRouter) -> None:
    respx_mock.post(f"{BASE}/chat.postMessage").respond(200, text="<html>proxy</html>")
    with pytest.raises(Retryable):
        await adapter.send(adapter.render(_post()))


async def test_ok_without_ts_is_success_without_external_id(
    adapter: SlackAdapter, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(f"{BASE}/chat.postMessage").respond(200, json={"ok": True})
    with capture_logs() as logs:
        result = await adapter.send(adapter.render(_post()))
    assert result.external_id is None
    assert [entry["event"] for entry in logs] == ["slack.ts_missing"]


async def test_aclose_leaves_the_shared_client_open(adapter: SlackAdapter, client: httpx.AsyncClient) -> None:
    await adapter.aclose()
    assert not client.is_closed


# --- no second post after an ambiguous failure ----------------------------------------------------

THREAD = "1700000000.000100"
EARLIER = "1700000000.000300"
OURS = {"event_type": "ehr_bridge_delivery", "event_payload": {"delivery_id": "dlv-0001"}}


class Clock:
    """The adapter's clock, set by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _clocked(client: httpx.AsyncClient, clock: Clock) -> SlackAdapter:
    return SlackAdapter(_config(), AdapterContext(name="icu-slack", http=client, store=None), clock=clock)


def _posted(ts: str = "1700000000.000900") -> httpx.Response:
    return httpx.Response(200, json={"ok": True, "channel": CHANNEL, "ts": ts, "message": {}})


def _messages(*messages: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"ok": True, "messages": list(messages), "has_more": False})


def _slack_error(error: str, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json={"ok": False, "error": error})


def _form(route: respx.Route, index: int = -1) -> dict[str, str]:
    return dict(parse_qsl(route.calls[index].request.content.decode()))


#: First answers after which Slack may have posted the message anyway.
AMBIGUOUS = [
    pytest.param(httpx.ReadTimeout("timed out"), id="read-timeout"),
    pytest.param(httpx.RemoteProtocolError("server disconnected"), id="connection-dropped"),
    pytest.param(httpx.Response(500, text="internal error"), id="http-500"),
    pytest.param(httpx.Response(503, text="unavailable"), id="http-503"),
    pytest.param(_slack_error("internal_error"), id="ok-false-internal-error"),
    pytest.param(_slack_error("fatal_error"), id="ok-false-fatal-error"),
    pytest.param(httpx.Response(200, text="<html>proxy</html>"), id="proxy-page"),
]

#: First answers that are Slack refusing the message: nothing was posted.
REFUSED = [
    pytest.param(
        httpx.Response(429, headers={"Retry-After": "1"}, json={"ok": False, "error": "ratelimited"}), id="429"
    ),
    pytest.param(_slack_error("ratelimited"), id="ok-false-ratelimited"),
    pytest.param(_slack_error("service_unavailable"), id="ok-false-service-unavailable"),
    pytest.param(_slack_error("request_timeout"), id="ok-false-request-timeout"),
]


@pytest.mark.parametrize(
    "post",
    [_post(), _post(thread_ref=THREAD), _post(lifecycle=Lifecycle.CORRECT, thread_ref=THREAD)],
    ids=["top-level", "reply", "correction-without-original"],
)
def test_every_post_message_carries_its_delivery_id_as_message_metadata(adapter: SlackAdapter, post: Post) -> None:
    call = adapter.render(post)
    assert call.method == "chat.postMessage"
    assert call.body["metadata"] == OURS


@pytest.mark.parametrize("first", AMBIGUOUS)
async def test_retry_after_an_ambiguous_failure_returns_the_earlier_post_instead_of_posting_again(
    client: httpx.AsyncClient, respx_mock: respx.MockRouter, first: Exception | httpx.Response
) -> None:
    adapter = _clocked(client, Clock(1_700_000_000.0))
    post_route = respx_mock.post(f"{BASE}/chat.postMessage").mock(side_effect=[first])
    history = respx_mock.post(f"{BASE}/conversations.history").mock(
        return_value=_messages(
            # Newest first, as Slack lists history: a duplicate from before this guard and the original.
            {"type": "message", "ts": "1700000000.000400", "metadata": OURS},
            {"type": "message", "ts": "1700000000.000350", "metadata": {"event_type": "other", "event_payload": {}}},
            {"type": "message", "ts": EARLIER, "metadata": OURS},
        )
    )
    call = adapter.render(_post())
    with pytest.raises(Retryable):
        await adapter.send(call)
    with capture_logs() as logs:
        result = await adapter.send(call)
    assert result.external_id == EARLIER
    assert post_route.call_count == 1
    assert history.call_count == 1
    assert history.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert _form(history) == {
        "channel": CHANNEL,
        "limit": "50",
        "include_all_metadata": "true",
        "oldest": "1699999700.000000",
        "latest": "1700000300.000000",
        "inclusive": "true",
    }
    assert [(e["event"], e["delivery_id"], e["ts"]) for e in logs] == [("slack.duplicate_avoided", "dlv-0001", EARLIER)]


@pytest.mark.respx(assert_all_called=False)
@pytest.mark.parametrize("first", REFUSED)
async def test_retry_after_slack_refused_the_post_posts_without_a_lookup(
    adapter: SlackAdapter, respx_mock: respx.MockRouter, first: httpx.Response
) -> None:
    post_route = respx_mock.post(f"{BASE}/chat.postMessage").mock(side_effect=[first, _posted()])
    history = respx_mock.post(f"{BASE}/conversations.history").mock(return_value=_messages())
    call = adapter.render(_post())
    with pytest.raises(Retryable):
        await adapter.send(call)
    assert (await adapter.send(call)).external_id == "1700000000.000900"
    assert post_route.call_count == 2
    assert history.call_count == 0


@pytest.mark.respx(assert_all_called=False)
async def test_first_attempt_posts_without_a_lookup(adapter: SlackAdapter, respx_mock: respx.MockRouter) -> None:
    respx_mock.post(f"{BASE}/chat.postMessage").mock(return_value=_posted())
    history = respx_mock.post(f"{BASE}/conversations.history").mock(return_value=_messages())
    assert (await adapter.send(adapter.render(_post()))).external_id == "1700000000.000900"
    assert history.call_count == 0


async def test_retry_posts_when_the_lookup_finds_no_earlier_post(
    adapter: SlackAdapter, respx_mock: respx.MockRouter
) -> None:
    post_route = respx_mock.post(f"{BASE}/chat.postMessage").mock(
        side_effect=[httpx.ReadTimeout("timed out"), _posted()]
    )
    history = respx_mock.post(f"{BASE}/conversations.history").mock(
        return_value=_messages(
            {"type": "message", "ts": "1700000000.000200"},
            {
                "type": "message",
                "ts": "1700000000.000250",
                "metadata": {"event_type": "ehr_bridge_delivery", "event_payload": {"delivery_id": "dlv-0002"}},
            },
        )
    )
    call = adapter.render(_post())
    with pytest.raises(Retryable):
        await adapter.send(call)
    assert (await adapter.send(call)).external_id == "1700000000.000900"
    assert post_route.call_count == 2
    assert history.call_count == 1
    assert json.loads(post_route.calls.last.request.content) == call.body


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (_slack_error("missing_scope"), "missing_scope"),
        (_slack_error("not_in_channel"), "not_in_channel"),
        (httpx.Response(429, headers={"Retry-After": "60"}, json={"ok": False, "error": "ratelimited"}), "http_429"),
        (httpx.ReadTimeout("timed out"), "ReadTimeout"),
        (httpx.Response(200, text="<html>proxy</html>"), "not_json"),
        (_slack_error("Testpatient^Alpha MRN0001"), "unknown"),
    ],
    ids=["missing-scope", "not-in-channel", "rate-limited", "timeout", "proxy-page", "content-in-error"],
)
async def test_failed_lookup_is_logged_by_code_and_the_post_goes_ahead(
    adapter: SlackAdapter, respx_mock: respx.MockRouter, answer: Exception | httpx.Response, code: str
) -> None:
    post_route = respx_mock.post(f"{BASE}/chat.postMessage").mock(
        side_effect=[httpx.ReadTimeout("timed out"), _posted()]
    )
    respx_mock.post(f"{BASE}/conversations.history").mock(side_effect=[answer])
    call = adapter.render(_post())
    with pytest.raises(Retryable):
        await adapter.send(call)
    with capture_logs() as logs:
        result = await adapter.send(call)
    assert result.external_id == "1700000000.000900"
    assert post_route.call_count == 2
    assert [(e["event"], e["method"], e["error"], e["channel"]) for e in logs] == [
        ("slack.dedup_lookup_failed", "conversations.history", code, "icu-slack")
    ]
    assert "Testpatient" not in repr(logs)


@pytest.mark.parametrize(
    ("second", "latest"),
    [(_slack_error("ratelimited", 429), "1000300.000000"), (httpx.Response(500), "2000300.000000")],
)
async def test_delivery_stays_unsettled_until_a_lookup_answers(
    client: httpx.AsyncClient, respx_mock: respx.MockRouter, second: httpx.Response, latest: str
) -> None:
    clock = Clock(1_000_000.0)
    adapter = _clocked(client, clock)
    respx_mock.post(f"{BASE}/chat.postMessage").mock(side_effect=[httpx.ReadTimeout("timed out"), second])
    history = respx_mock.post(f"{BASE}/conversations.history").mock(
        side_effect=[_slack_error("missing_scope"), _messages({"type": "message", "ts": EARLIER, "metadata": OURS})]
    )
    call = adapter.render(_post())
    with pytest.raises(Retryable):
        await adapter.send(call)
    clock.now = 2_000_000.0
    # The lookup fails, so the post goes ahead; its refusal does not prove the first attempt left nothing.
    with pytest.raises(Retryable):
        await adapter.send(call)
    clock.now = 3_000_000.0
    assert (await adapter.send(call)).external_id == EARLIER
    assert history.call_count == 2
    # The window spans every ambiguous attempt, widened by the clock-skew margin.
    assert (_form(history)["oldest"], _form(history)["latest"]) == ("999700.000000", latest)


@pytest.mark.respx(assert_all_called=False)
async def test_reply_is_looked_up_in_its_thread(adapter: SlackAdapter, respx_mock: respx.MockRouter) -> None:
    post_route = respx_mock.post(f"{BASE}/chat.postMessage").mock(side_effect=[httpx.ReadTimeout("timed out")])
    history = respx_mock.post(f"{BASE}/conversations.history").mock(return_value=_messages())
    replies = respx_mock.post(f"{BASE}/conversations.replies").mock(
        return_value=_messages(
            {"type": "message", "ts": THREAD, "thread_ts": THREAD, "reply_count": 1},
            {"type": "message", "ts": EARLIER, "thread_ts": THREAD, "metadata": OURS},
        )
    )
    call = adapter.render(_post(thread_ref=THREAD))
    with pytest.raises(Retryable):
        await adapter.send(call)
    assert (await adapter.send(call)).external_id == EARLIER
    assert post_route.call_count == 1
    assert history.call_count == 0
    form = _form(replies)
    assert (form["channel"], form["ts"], form["include_all_metadata"]) == (CHANNEL, THREAD, "true")


async def test_reply_whose_thread_is_gone_is_looked_up_in_the_channel_history(
    adapter: SlackAdapter, respx_mock: respx.MockRouter
) -> None:
    # slack-go #1571: a reply to a deleted parent was posted top-level, so it is in the history.
    respx_mock.post(f"{BASE}/chat.postMessage").mock(side_effect=[httpx.ReadTimeout("timed out")])
    respx_mock.post(f"{BASE}/conversations.replies").mock(return_value=_slack_error("thread_not_found"))
    history = respx_mock.post(f"{BASE}/conversations.history").mock(
        return_value=_messages({"type": "message", "ts": EARLIER, "metadata": OURS})
    )
    call = adapter.render(_post(thread_ref=THREAD))
    with pytest.raises(Retryable):
        await adapter.send(call)
    assert (await adapter.send(call)).external_id == EARLIER
    assert "ts" not in _form(history)


@pytest.mark.respx(assert_all_called=False)
async def test_update_after_a_timeout_is_repeated_without_a_lookup(
    adapter: SlackAdapter, respx_mock: respx.MockRouter
) -> None:
    update = respx_mock.post(f"{BASE}/chat.update").mock(
        side_effect=[httpx.ReadTimeout("timed out"), httpx.Response(200, json={"ok": True, "ts": EARLIER})]
    )
    history = respx_mock.post(f"{BASE}/conversations.history").mock(return_value=_messages())
    call = adapter.render(_post(lifecycle=Lifecycle.CORRECT, original_ref=EARLIER))
    with pytest.raises(Retryable):
        await adapter.send(call)
    assert (await adapter.send(call)).external_id == EARLIER
    assert update.call_count == 2
    assert history.call_count == 0


async def test_unsettled_deliveries_are_bounded_and_the_oldest_is_forgotten(
    adapter: SlackAdapter, respx_mock: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slack_module, "MAX_UNSETTLED", 2)
    timeout = httpx.ReadTimeout("timed out")
    respx_mock.post(f"{BASE}/chat.postMessage").mock(side_effect=[timeout, timeout, timeout, _posted(), _posted()])
    history = respx_mock.post(f"{BASE}/conversations.history").mock(return_value=_messages())
    calls = [adapter.render(_post(delivery_id=f"dlv-{n}")) for n in range(3)]
    for call in calls:
        with pytest.raises(Retryable):
            await adapter.send(call)
    await adapter.send(calls[0])
    assert history.call_count == 0
    await adapter.send(calls[2])
    assert history.call_count == 1


# --- config and secrets ----------------------------------------------------------------------------


def test_adapter_satisfies_the_outbound_contract(adapter: SlackAdapter) -> None:
    assert isinstance(adapter, OutboundAdapter)
    assert SlackAdapter.config_model is SlackConfig
    assert (SlackAdapter.max_text, SlackAdapter.rate_per_sec) == (40_000, 1.0)
    assert SlackAdapter.supports_threads and SlackAdapter.supports_update


def test_token_never_appears_in_repr_or_str(adapter: SlackAdapter) -> None:
    config = _config()
    for shown in (repr(config), str(config), repr(adapter), str(adapter), config.model_dump_json()):
        assert TOKEN not in shown
        assert "SyntheticTestTokenValue" not in shown


@pytest.mark.parametrize(
    "overrides",
    [
        {"token": "xoxp-user-token"},
        {"token": "not-a-token"},
        {"channel": "#icu"},
        {"channel": "icu"},
        {"base_url": "slack.com/api"},
        {"type": "webhook"},
        {"timeout": 0},
        {"unknown": 1},
    ],
)
def test_invalid_config_is_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        _config(**overrides)


def test_base_url_trailing_slash_is_dropped() -> None:
    assert _config(base_url="https://proxy.hosp.example/slack/api/").base_url == (
        "https://proxy.hosp.example/slack/api"
    )


# --- the post to edit is gone (review 2, finding 8) ------------------------------------------------


@pytest.mark.parametrize("error", ["message_not_found", "cant_update_message", "edit_window_closed"])
@pytest.mark.parametrize(("lifecycle", "label"), [(Lifecycle.CORRECT, "Corrected"), (Lifecycle.CANCEL, "Cancelled")])
async def test_an_update_of_a_post_that_is_gone_is_posted_anew_in_the_thread_under_its_label(
    adapter: SlackAdapter, respx_mock: respx.MockRouter, error: str, lifecycle: Lifecycle, label: str
) -> None:
    update = respx_mock.post(f"{BASE}/chat.update").mock(return_value=_slack_error(error))
    answer = {"ok": True, "channel": CHANNEL, "ts": "1700000000.000900", "message": {"thread_ts": THREAD}}
    post = respx_mock.post(f"{BASE}/chat.postMessage").mock(return_value=httpx.Response(200, json=answer))
    call = adapter.render(_post(lifecycle=lifecycle, thread_ref=THREAD, original_ref=EARLIER, label=label))

    with capture_logs() as logs:
        result = await adapter.send(call)

    assert (result.external_id, result.posted_anew) == ("1700000000.000900", True)
    assert update.call_count == 1 and post.call_count == 1
    sent = json.loads(post.calls.last.request.content)
    assert sent == adapter.render(_post(lifecycle=lifecycle, thread_ref=THREAD, label=label)).body
    assert sent["thread_ts"] == THREAD and "ts" not in sent
    assert sent["text"].startswith(f"{label}: ") and "~" not in sent["text"]
    assert sent["metadata"] == OURS
    assert [entry["event"] for entry in logs] == ["slack.api_error", "slack.original_gone"]


async def test_other_update_errors_still_fail_without_posting(
    adapter: SlackAdapter, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(f"{BASE}/chat.update").mock(return_value=_slack_error("msg_too_long"))
    post = respx_mock.post(f"{BASE}/chat.postMessage").mock(return_value=_posted())
    call = adapter.render(_post(lifecycle=Lifecycle.CORRECT, original_ref=EARLIER, label="Corrected"))

    with pytest.raises(Permanent, match="msg_too_long"):
        await adapter.send(call)
    assert post.call_count == 0
