"""Slack through the real bridge: threads, edits, rate limits and errors, with only Slack's Web API mocked.

Messages arrive over MLLP on a real socket, are journalled in a real SQLite file and are
delivered by the real channel worker through the real ``SlackAdapter``; respx answers for
``https://slack.com/api`` at the httpx client, passing every other request through. Every name,
number and identifier in the messages is synthetic.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from adapters.outbound.slack import SlackAdapter

from .conftest import Bridge
from .support import Call, FakeSlack, eventually, fake_slack, send
from .support import segment as _segment

TOKEN = "xoxb-test-token"
#: Real channel IDs are 9+ characters; the config rejects the shorter "C0TEST" as not an ID.
CHANNEL_ID = "C0TEST001"

ALPHA = ("MRN0001", "Testpatient^Alpha")
BETA = ("MRN0002", "Testpatient^Beta")


# --- synthetic HL7 --------------------------------------------------------------------------------

_control_ids = itertools.count(1)
#: MSH-9.3 message structure per trigger (v2.5 Appendix A): A11 shares A09's.
_ADT_STRUCTURE = {"A01": "ADT_A01", "A11": "ADT_A09"}


def _head(message_type: str, when: str, patient: tuple[str, str], visit: str, unit: str) -> list[str]:
    mrn, name = patient
    return [
        f"MSH|^~\\&|TESTEHR|HOSP|EHRBRIDGE|HOSP|{when}||{message_type}|SLK{next(_control_ids):05d}|P|2.5",
        _segment("PID", {1: "1", 3: f"{mrn}^^^HOSP^MR", 5: name, 7: "19700101", 8: "F"}),
        # PV1-3 point of care^room^bed^facility, PV1-7 attending, PV1-19 visit number (the thread).
        _segment("PV1", {1: "1", 2: "I", 3: f"{unit}^101^A^HOSP", 7: "1234^Doctor^Test", 19: visit}),
    ]


def adt(trigger: str, visit: str, *, patient: tuple[str, str] = ALPHA, unit: str = "ICU", when: str) -> bytes:
    """An ADT message for ``visit``; ``when`` (EVN-2) tells an admission from a later re-admission."""
    lines = _head(f"ADT^{trigger}^{_ADT_STRUCTURE[trigger]}", when, patient, visit, unit)
    lines.insert(1, _segment("EVN", {1: trigger, 2: when}))
    return ("\r".join(lines) + "\r").encode()


def oru(
    visit: str,
    filler: str,
    test: str,
    value: str,
    *,
    flag: str = "N",
    status: str = "F",
    patient: tuple[str, str] = ALPHA,
    when: str,
) -> bytes:
    """An ORU^R01 with one OBR (OBR-3 filler number ``filler``) and one OBX with OBX-8 ``flag``, OBX-11 ``status``."""
    code = f"{test.upper()[:3]}^{test}"
    lines = _head("ORU^R01^ORU_R01", when, patient, visit, "ICU")
    lines += [
        _segment("OBR", {1: "1", 2: f"P{filler}", 3: filler, 4: code, 7: when, 22: when, 25: status}),
        _segment("OBX", {1: "1", 2: "NM", 3: code, 5: value, 6: "mmol/L", 7: "3.5-5.1", 8: flag, 11: status}),
    ]
    return ("\r".join(lines) + "\r").encode()


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    yield from fake_slack()


@pytest.fixture
async def bridge(slack: FakeSlack, make_bridge: Any, monkeypatch: pytest.MonkeyPatch) -> Bridge:
    # Slack's one-message-per-second tier would add a second per post, and in the 429 test it
    # would impose the 1 s gap by itself, hiding whether Retry-After is honoured; pacing is not
    # what these tests are about, so it is lifted. (``slack`` comes first: the bridge stops
    # before the mock does.)
    monkeypatch.setattr(SlackAdapter, "rate_per_sec", 200.0)
    built: Bridge = await make_bridge(
        channels={"slack": {"type": "slack", "token": TOKEN, "channel": CHANNEL_ID}},
        routes=[{"name": "everything", "channels": ["slack"]}],
    )
    return built


# Needles: the start of each post's text in a "limited" channel (templates/en.yaml wording: initials and the
# MRN's last 4 only).
ADMITTED_ALPHA = "Admitted: A.T. (…"
ADMITTED_BETA = "Admitted: B.T. (…"
POTASSIUM = "Final result: Potassium · A.T. (…"
TROPONIN = "CRITICAL result: Troponin · A.T. (…"
SODIUM = "Final result: Sodium · B.T. (…"

#: Long enough for a retry storm to show (several max backoffs and poll intervals), short for the suite.
SETTLE = 0.5


def ratelimited(retry_after: str) -> httpx.Response:
    return httpx.Response(429, headers={"Retry-After": retry_after}, json={"ok": False, "error": "ratelimited"})


def kinds(calls: list[Call], *needles: str) -> list[str]:
    """For each call about one of ``needles``, that needle: the order Slack saw them in."""
    return [next(n for n in needles if n in c.text) for c in calls if any(n in c.text for n in needles)]


async def test_events_of_an_encounter_thread_under_its_first_post(bridge: Bridge, slack: FakeSlack) -> None:
    await send(
        bridge,
        adt("A01", "V1", when="20260101100000"),
        oru("V1", "F100", "Potassium", "4.1", when="20260101110000"),
        oru("V1", "F101", "Troponin", "9.9", flag="HH", when="20260101111000"),
        adt("A01", "V2", patient=BETA, unit="CCU", when="20260101100500"),
        oru("V2", "F200", "Sodium", "140", patient=BETA, when="20260101112000"),
    )
    await eventually(lambda: len(slack.posted()) >= 5, "five posts")

    root, final, critical = slack.one_post(ADMITTED_ALPHA), slack.one_post(POTASSIUM), slack.one_post(TROPONIN)
    other_root, other_result = slack.one_post(ADMITTED_BETA), slack.one_post(SODIUM)
    assert "thread_ts" not in root.body
    assert root.ts is not None
    assert final.body["thread_ts"] == root.ts
    assert critical.body["thread_ts"] == root.ts
    # A critical reply is broadcast: hidden in a thread it would be a missed critical.
    assert critical.body.get("reply_broadcast") is True
    assert "reply_broadcast" not in final.body
    assert "thread_ts" not in other_root.body
    assert other_root.ts not in (None, root.ts)
    assert other_result.body["thread_ts"] == other_root.ts
    assert all(c.method == "chat.postMessage" for c in slack.calls)
    assert {c.body["channel"] for c in slack.calls} == {CHANNEL_ID}
    assert {c.authorization for c in slack.calls} == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize("admitted_first", [True, False], ids=["result-is-a-reply", "result-is-the-thread-root"])
async def test_corrected_result_edits_the_original_result_post(
    bridge: Bridge, slack: FakeSlack, admitted_first: bool
) -> None:
    admission = [adt("A01", "V1", when="20260101100000")] if admitted_first else []
    await send(bridge, *admission, oru("V1", "F100", "Potassium", "4.1", when="20260101110000"))
    await eventually(lambda: len(slack.posted()) == len(admission) + 1, "the result post")
    await send(bridge, oru("V1", "F100", "Potassium", "4.3", status="C", when="20260101113000"))
    await eventually(lambda: any(c.method == "chat.update" for c in slack.calls), "chat.update")

    result = slack.one_post(POTASSIUM)
    (update,) = (c for c in slack.calls if c.method == "chat.update")
    assert update.ok
    assert update.body["channel"] == CHANNEL_ID
    assert update.body["ts"] == result.ts
    if admitted_first:
        assert update.body["ts"] != slack.one_post(ADMITTED_ALPHA).ts
    # The title says it is a correction; the label is not repeated before it ("Corrected: Corrected result").
    assert update.text.startswith("Corrected result: ")
    assert "4.3" in update.text
    assert len(slack.calls) == len(admission) + 2, "the correction must edit, not post anew"


async def test_cancelled_admission_strikes_through_the_admission_post(bridge: Bridge, slack: FakeSlack) -> None:
    await send(bridge, adt("A01", "V1", when="20260101100000"))
    await eventually(lambda: len(slack.posted()) == 1, "the admission post")
    await send(bridge, adt("A11", "V1", when="20260101103000"))
    await eventually(lambda: any(c.method == "chat.update" for c in slack.calls), "chat.update")

    admitted = slack.one_post(ADMITTED_ALPHA)
    (update,) = (c for c in slack.calls if c.method == "chat.update")
    assert update.body["channel"] == CHANNEL_ID
    assert update.body["ts"] == admitted.ts
    # The title says "cancelled": the label is not put before it again.
    struck = update.text
    assert struck.startswith("~Admission/visit cancelled: A.T. (…") and struck.endswith("~")
    assert "~" not in struck[1:-1]
    assert len(slack.calls) == 2


async def test_rate_limited_post_is_retried_once_after_retry_after_and_keeps_thread_order(
    bridge: Bridge, slack: FakeSlack
) -> None:
    slack.answer_first(ADMITTED_ALPHA, ratelimited("1"))
    await send(
        bridge,
        adt("A01", "V1", when="20260101100000"),
        oru("V1", "F100", "Potassium", "4.1", when="20260101110000"),
        oru("V1", "F101", "Troponin", "9.9", flag="HH", when="20260101111000"),
    )
    await eventually(lambda: len(slack.posted()) >= 3, "three posts")
    await asyncio.sleep(SETTLE)

    refused, accepted = slack.about(ADMITTED_ALPHA)
    assert not refused.ok and accepted.ok
    assert accepted.at - refused.at >= 1.0, "Retry-After: 1 must be honoured"
    assert accepted.body == refused.body
    texts = [c.text for c in slack.posted()]
    assert sorted(texts) == sorted(set(texts)), "a text was posted twice"
    assert kinds(slack.calls, ADMITTED_ALPHA, POTASSIUM, TROPONIN) == [
        ADMITTED_ALPHA,
        ADMITTED_ALPHA,
        POTASSIUM,
        TROPONIN,
    ]
    assert slack.one_post(POTASSIUM).body["thread_ts"] == accepted.ts
    assert slack.one_post(TROPONIN).body["thread_ts"] == accepted.ts
    assert len(slack.calls) == 4


async def test_channel_not_found_is_sent_once_then_dead_lettered(bridge: Bridge, slack: FakeSlack) -> None:
    slack.answer_first(ADMITTED_ALPHA, httpx.Response(200, json={"ok": False, "error": "channel_not_found"}))
    await send(bridge, adt("A01", "V1", when="20260101100000"))

    async def dead() -> bool:
        return bool(await bridge.runtime.store.dead_letters())

    await eventually(dead, "a dead letter")
    await asyncio.sleep(SETTLE)

    assert len(slack.calls) == 1
    (letter,) = await bridge.runtime.store.dead_letters()
    assert letter.channel == "slack"
    assert letter.event_type == "encounter.admitted"
    assert letter.attempts == 1
    assert "channel_not_found" in letter.last_error
    response = await bridge.client.get("/api/dlq")
    assert response.status_code == 200
    assert [(i["id"], i["channel"]) for i in response.json()["items"]] == [(letter.id, "slack")]


async def test_thread_keeps_its_order_through_retries_while_other_threads_proceed(
    bridge: Bridge, slack: FakeSlack
) -> None:
    # Retry-After on the first 500 holds the failing thread for a second, so the other
    # encounter's messages are certainly committed while it waits; what is asserted is order.
    slack.answer_first(
        ADMITTED_ALPHA,
        httpx.Response(500, headers={"Retry-After": "1"}, text="internal error"),
        httpx.Response(500, text="internal error"),
    )
    await send(bridge, adt("A01", "V1", when="20260101100000"))
    await eventually(lambda: len(slack.calls) >= 1, "the first attempt")
    await send(
        bridge,
        oru("V1", "F100", "Potassium", "4.1", when="20260101110000"),
        oru("V1", "F101", "Troponin", "9.9", flag="HH", when="20260101111000"),
        adt("A01", "V2", patient=BETA, unit="CCU", when="20260101100500"),
        oru("V2", "F200", "Sodium", "140", patient=BETA, when="20260101112000"),
    )
    await eventually(lambda: len(slack.posted()) >= 5, "five posts")

    v1 = [c for c in slack.calls if any(n in c.text for n in (ADMITTED_ALPHA, POTASSIUM, TROPONIN))]
    assert kinds(v1, ADMITTED_ALPHA, POTASSIUM, TROPONIN) == [ADMITTED_ALPHA] * 3 + [POTASSIUM, TROPONIN]
    assert [c.ok for c in v1] == [False, False, True, True, True]
    root = v1[2]
    assert v1[3].body["thread_ts"] == root.ts
    assert v1[4].body["thread_ts"] == root.ts
    order = slack.calls.index
    other_root, other_result = slack.one_post(ADMITTED_BETA), slack.one_post(SODIUM)
    assert order(other_root) < order(root), "the other encounter waited for this one's retries"
    assert order(other_result) < order(root), "the other encounter waited for this one's retries"
    assert other_result.body["thread_ts"] == other_root.ts


async def test_withdrawn_result_strikes_through_the_original_result_post(bridge: Bridge, slack: FakeSlack) -> None:
    # OBX-11 W: "post original as wrong" (oru.yaml): the earlier post is struck, not answered.
    await send(
        bridge,
        adt("A01", "V1", when="20260101100000"),
        oru("V1", "F100", "Potassium", "4.1", when="20260101110000"),
    )
    await eventually(lambda: len(slack.posted()) == 2, "the result post")
    await send(bridge, oru("V1", "F100", "Potassium", "4.1", status="W", when="20260101112000"))
    await eventually(lambda: len(slack.calls) >= 3, "the withdrawal")

    withdrawal = slack.calls[2]
    assert (withdrawal.method, withdrawal.body.get("ts")) == ("chat.update", slack.one_post(POTASSIUM).ts)
    assert withdrawal.text.startswith("Cancelled: ~Result withdrawn") and withdrawal.text.endswith("~")


async def test_post_accepted_by_slack_but_timed_out_is_not_posted_again(bridge: Bridge, slack: FakeSlack) -> None:
    # Slack has no idempotency key: the retry finds the first post by the delivery id in its metadata.
    slack.answer_first(ADMITTED_ALPHA, httpx.ReadTimeout("accepted, but the answer was lost"))
    await send(bridge, adt("A01", "V1", when="20260101100000"))

    async def delivered() -> bool:
        rows = await bridge.runtime.store.query("SELECT status FROM deliveries")
        return rows == [("delivered",)]

    await eventually(delivered, "the delivery recorded as delivered")
    await asyncio.sleep(SETTLE)

    assert len([m for m in slack.messages if ADMITTED_ALPHA in m["text"]]) == 1
    (external_id,) = (await bridge.runtime.store.query("SELECT external_id FROM deliveries"))[0]
    assert external_id == slack.messages[0]["ts"]
