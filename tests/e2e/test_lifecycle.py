"""Event lifecycles end to end, where the post is what the channel sees (issue #4, acceptance 3).

Messages arrive over MLLP on a real socket, are mapped by the bundled mappings, journalled in a
real SQLite file and delivered by the real channel worker through the real ``SlackAdapter`` to the
fake Slack of tests/e2e/support.py. A correction edits the post it corrects, a cancellation strikes
the post it cancels, and a merge names both identities and lands in the survivor's thread. The
wording of the posts belongs to the templates and is not asserted here, only what they must show.
Every name and number is synthetic.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from adapters.outbound.slack import SlackAdapter
from bridge.events import ClinicalEvent

from .conftest import Bridge
from .support import Call, FakeSlack, eventually, fake_slack, segment, send

TOKEN = "xoxb-lifecycle-token"
CHANNEL_ID = "C0LIFE001"
#: The site's own assigning authority: its MR wins over another hospital's in a repeating PID-3.
SITE = "TESTHOSP"

#: A struck-through post: Slack's ~strike~ around text without further tildes.
STRUCK = re.compile(r"~[^~]+~")

_control_ids = itertools.count(1)


def message(message_type: str, when: str, version: str, *segments: str) -> bytes:
    head = (
        f"MSH|^~\\&|TESTEHR|TESTHOSP|EHRBRIDGE|TESTHOSP|{when}||{message_type}|LC{next(_control_ids):05d}|P|{version}"
    )
    return ("\r".join([head, *segments]) + "\r").encode()


def pid(mrn: str, name: str) -> str:
    # Another hospital's MR first: the site's MR is picked by mapping.mrn_authorities.
    return segment("PID", {1: "1", 3: f"5550{mrn[-3:]}^^^OTHERHOSP^MR~{mrn}^^^{SITE}^MR", 5: name, 7: "19800521"})


def pv1(visit: str) -> str:
    return segment("PV1", {1: "1", 2: "I", 3: "4E^412^B^TESTHOSP", 7: "9001^Doctor^Test", 19: f"{visit}^^^{SITE}^VN"})


def adt(trigger: str, when: str, *, mrn: str = "7000123", visit: str = "V-1001") -> bytes:
    return message(f"ADT^{trigger}", when, "2.5.1", f"EVN|{trigger}|{when}", pid(mrn, "Testpatient^Alpha"), pv1(visit))


def oru(value: str, status: str, when: str) -> bytes:
    """A potassium report, filler number F-100 of the lab LAB1, OBX-11 ``status``; high (H), so its value shows."""
    return message(
        "ORU^R01^ORU_R01",
        when,
        "2.6",
        pid("7000123", "Testpatient^Alpha"),
        pv1("V-1001"),
        segment("OBR", {1: "1", 2: "P-100^CPOE", 3: "F-100^LAB1", 4: "2823-3^Potassium^LN", 22: when, 25: status}),
        segment(
            "OBX", {1: "1", 2: "NM", 3: "2823-3^Potassium^LN", 5: value, 6: "mmol/L", 7: "3.5-5.1", 8: "H", 11: status}
        ),
        "ZLB|1|lab specific",
    )


def person(trigger: str, when: str, mrn: str, name: str, *extra: str) -> bytes:
    return message(f"ADT^{trigger}", when, "2.4", f"EVN|{trigger}|{when}", pid(mrn, name), *extra)


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    yield from fake_slack()


@pytest.fixture
async def bridge(slack: FakeSlack, make_bridge: Any, monkeypatch: pytest.MonkeyPatch) -> Bridge:
    # Pacing is not what these tests are about (see test_slack_flow.py); a full-PHI channel shows identifiers.
    monkeypatch.setattr(SlackAdapter, "rate_per_sec", 200.0)
    built: Bridge = await make_bridge(
        channels={"slack": {"type": "slack", "token": TOKEN, "channel": CHANNEL_ID, "phi": "full"}},
        routes=[{"name": "everything", "channels": ["slack"]}],
        mapping={"mrn_authorities": [SITE]},
    )
    return built


async def delivered_event(bridge: Bridge, call: Call) -> ClinicalEvent:
    """The event a Slack call delivered.

    A new post carries its delivery id in its metadata; an edit (chat.update) does not, and is the
    latest delivery recorded against the post it edited.
    """
    if call.method == "chat.postMessage":
        sql = "SELECT e.body FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.id = ?"
        args: tuple[str, ...] = (call.body["metadata"]["event_payload"]["delivery_id"],)
    else:
        sql = (
            "SELECT e.body FROM deliveries d JOIN events e ON e.id = d.event_id"
            " WHERE d.status = 'delivered' AND d.external_id = ? ORDER BY d.event_seq DESC LIMIT 1"
        )
        args = (call.body["ts"],)
    rows = await bridge.runtime.store.query(sql, args)
    assert len(rows) == 1
    return ClinicalEvent.model_validate_json(rows[0][0])


def updates(slack: FakeSlack) -> list[Call]:
    return [c for c in slack.calls if c.method == "chat.update"]


def shown(call: Call) -> str:
    """Everything a reader sees of a post: its text and the texts of its blocks (title, facts, ...)."""
    texts = [call.text]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    texts.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(call.body.get("blocks", []))
    return "\n".join(texts)


async def test_final_then_corrected_result_edits_the_same_post_each_time(bridge: Bridge, slack: FakeSlack) -> None:
    await send(bridge, adt("A01", "20260301080000"), oru("5.6", "F", "20260301090000"))
    await eventually(lambda: len(slack.posted()) == 2, "the admission and the result")
    admission, result = slack.posted()
    assert (await delivered_event(bridge, result)).type == "result.final"
    assert result.body["thread_ts"] == admission.ts
    assert "5.6" in shown(result)

    await send(bridge, oru("5.9", "C", "20260301093000"))
    await eventually(lambda: len(updates(slack)) == 1, "the first correction")
    await send(bridge, oru("6.2", "C", "20260301100000"))
    await eventually(lambda: len(updates(slack)) == 2, "the second correction")

    first, second = updates(slack)
    assert first.ok and second.ok
    # Both corrections edit the result's post, never the admission's, and post nothing new.
    assert first.body["ts"] == second.body["ts"] == result.ts != admission.ts
    assert {first.body["channel"], second.body["channel"]} == {CHANNEL_ID}
    assert "5.9" in shown(first) and "5.6" not in shown(first)
    assert "6.2" in shown(second) and "5.9" not in shown(second)
    assert len(slack.posted()) == 2
    corrected = await delivered_event(bridge, second)
    assert (corrected.type, corrected.lifecycle, corrected.links) == (
        "result.corrected",
        "correct",
        {"corrects": "LAB1:F-100"},
    )


async def test_cancelled_admission_strikes_the_admission_post_not_later_replies(
    bridge: Bridge, slack: FakeSlack
) -> None:
    await send(bridge, adt("A01", "20260301080000"), adt("A08", "20260301081500"))
    await eventually(lambda: len(slack.posted()) == 2, "the admission and the update")
    admission, update = slack.posted()
    assert "thread_ts" not in admission.body
    assert update.body["thread_ts"] == admission.ts
    assert not STRUCK.search(admission.text)

    await send(bridge, adt("A11", "20260301083000"))
    await eventually(lambda: len(updates(slack)) == 1, "chat.update of the admission")

    (struck,) = updates(slack)
    assert struck.ok
    assert (struck.body["channel"], struck.body["ts"]) == (CHANNEL_ID, admission.ts)
    assert STRUCK.search(struck.text), "the cancelled admission must read struck through"
    assert len(slack.posted()) == 2, "the cancellation strikes, it does not post anew"
    cancel = await delivered_event(bridge, struck)
    assert (cancel.type, cancel.lifecycle, cancel.links) == (
        "encounter.cancelled",
        "cancel",
        {"cancels": "encounter.admitted,encounter.arrived"},
    )


async def test_merge_names_both_identities_in_the_survivors_thread(bridge: Bridge, slack: FakeSlack) -> None:
    survivor, prior = "7000123", "7000999"
    await send(
        bridge,
        person("A28", "20260301080000", survivor, "Testpatient^Alpha"),
        person("A28", "20260301080500", prior, "Testpatient^Alfa"),
    )
    await eventually(lambda: len(slack.posted()) == 2, "both registrations")
    survivor_root, prior_root = slack.posted()
    assert "thread_ts" not in survivor_root.body and "thread_ts" not in prior_root.body

    # A40: the PID is the record that survives, MRG-1 (repeating like PID-3) the one merged into it.
    mrg = f"MRG|5550999^^^OTHERHOSP^MR~{prior}^^^{SITE}^MR"
    await send(bridge, person("A40", "20260301090000", survivor, "Testpatient^Alpha", "PD1|||Testclinic", mrg))
    await eventually(lambda: len(slack.posted()) == 3, "the merge post")

    merge = slack.posted()[2]
    assert merge.body["thread_ts"] == survivor_root.ts != prior_root.ts
    event = await delivered_event(bridge, merge)
    assert (event.type, event.lifecycle) == ("patient.merged", "new")
    assert event.links == {"replaces": f"{SITE}|{prior}", "replaced_by": f"{SITE}|{survivor}"}
    assert event.thread_key == f"pat:{SITE}:{survivor}"
    # A full-PHI channel sees both records.
    assert prior in shown(merge) and survivor in shown(merge)
    assert not updates(slack), "a merge strikes or edits nothing"


# --- which post a correction or withdrawal reaches, in which channels (issue #4 review, findings 1, 3, 4) ---

ONCALL_ID = "C0ONCALL01"


def potassium(value: str, flag: str, status: str, when: str) -> bytes:
    """The potassium report F-100 of LAB1 with one OBX: ``value``, abnormal flag ``flag``, OBX-11 ``status``."""
    return message(
        "ORU^R01^ORU_R01",
        when,
        "2.5.1",
        pid("7000123", "Testpatient^Alpha"),
        pv1("V-1001"),
        segment("OBR", {1: "1", 2: "P-100^CPOE", 3: "F-100^LAB1", 4: "2823-3^Potassium^LN", 22: when, 25: status}),
        segment(
            "OBX",
            {1: "1", 2: "NM", 3: "2823-3^Potassium^LN", 5: value, 6: "mmol/L", 7: "3.5-5.1", 8: flag, 11: status},
        ),
    )


def in_channel(calls: list[Call], channel: str) -> list[Call]:
    return [c for c in calls if c.body["channel"] == channel]


async def test_correction_and_withdrawal_reach_the_final_post_in_every_channel_that_has_it(
    slack: FakeSlack, make_bridge: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "oncall" is routed critical results only: the correction and the withdrawal match none of its
    # routes, yet they must reach its critical post, or the critical value stands there for good.
    monkeypatch.setattr(SlackAdapter, "rate_per_sec", 200.0)
    bridge: Bridge = await make_bridge(
        channels={
            "slack": {"type": "slack", "token": TOKEN, "channel": CHANNEL_ID, "phi": "full"},
            "oncall": {"type": "slack", "token": TOKEN, "channel": ONCALL_ID, "phi": "full"},
        },
        routes=[
            {"name": "everything", "channels": ["slack"]},
            {"name": "critical", "match": {"types": ["result.critical"]}, "channels": ["oncall"]},
        ],
        mapping={"mrn_authorities": [SITE]},
    )
    await send(
        bridge,
        adt("A01", "20260301080000"),
        potassium("5.4", "H", "P", "20260301090000"),
        potassium("6.9", "HH", "F", "20260301093000"),
    )
    await eventually(lambda: len(slack.posted()) == 4, "admission, preliminary and final in slack; final in oncall")
    admission, preliminary, final = in_channel(slack.posted(), CHANNEL_ID)
    (oncall_final,) = in_channel(slack.posted(), ONCALL_ID)
    assert [(await delivered_event(bridge, c)).type for c in (preliminary, final, oncall_final)] == [
        "result.preliminary",
        "result.critical",
        "result.critical",
    ]

    await send(bridge, potassium("4.9", "N", "C", "20260301100000"))
    await eventually(lambda: len(updates(slack)) == 2, "the correction in both channels")
    await send(bridge, potassium("4.9", "N", "W", "20260301103000"))
    await eventually(lambda: len(updates(slack)) == 5, "the withdrawal in both channels")

    for channel, post in ((CHANNEL_ID, final), (ONCALL_ID, oncall_final)):
        corrected, withdrawn, *older = in_channel(updates(slack), channel)
        assert corrected.ok and withdrawn.ok
        # The final report's post, not the preliminary one's, is corrected; the withdrawal strikes it first.
        assert corrected.body["ts"] == withdrawn.body["ts"] == post.ts != preliminary.ts
        assert "4.9" in shown(corrected) and "6.9" not in shown(corrected)
        assert STRUCK.search(withdrawn.text)
        # Review 2, finding 3: and every older post of the report the channel made, the preliminary one too.
        assert [(u.ok, u.body["ts"], bool(STRUCK.search(u.text))) for u in older] == (
            [(True, preliminary.ts, True)] if channel == CHANNEL_ID else []
        )
    # From critical to normal: edits only, nothing posted anew.
    assert len(slack.posted()) == 4
    assert admission.ts != final.ts


@pytest.mark.parametrize(
    ("before", "after", "alerts"),
    [
        pytest.param(("4.0", "N"), ("6.9", "HH"), True, id="normal-to-critical-edits-and-alerts"),
        pytest.param(("6.9", "HH"), ("4.9", "N"), False, id="critical-to-normal-only-edits"),
    ],
)
async def test_correction_to_a_critical_value_also_alerts_in_the_thread(
    bridge: Bridge, slack: FakeSlack, before: tuple[str, str], after: tuple[str, str], alerts: bool
) -> None:
    await send(bridge, adt("A01", "20260301080000"), potassium(*before, "F", "20260301090000"))
    await eventually(lambda: len(slack.posted()) == 2, "the admission and the result")
    admission, result = slack.posted()

    await send(bridge, potassium(*after, "C", "20260301100000"))
    await eventually(lambda: len(updates(slack)) == 1, "the edit")
    if alerts:
        await eventually(lambda: len(slack.posted()) == 3, "the alert")

    (edit,) = updates(slack)
    assert edit.body["ts"] == result.ts and after[0] in shown(edit)
    if not alerts:
        assert len(slack.posted()) == 2
        return
    alert = slack.posted()[2]
    # A reply in the visit's thread, shown in the channel too, sent after the edit.
    assert alert.body["thread_ts"] == admission.ts and alert.body["reply_broadcast"] is True
    assert after[0] in shown(alert) and alert.at > edit.at
    event = await delivered_event(bridge, alert)
    assert (event.type, event.severity) == ("result.corrected", "critical")
    # Two deliveries of the correction: the edit, recorded under the post it edited, and the alert,
    # made by the edit's outcome, recorded under its own id and shadowing that post.
    sql = "SELECT id, status, external_id, shadow_of FROM deliveries WHERE event_id=? ORDER BY id"
    await eventually(lambda: _delivered(bridge, f"{event.id}.slack.alert"), "the alert recorded")
    rows = await bridge.runtime.store.query(sql, (event.id,))
    assert rows == [
        (f"{event.id}.slack", "delivered", result.ts, None),
        (f"{event.id}.slack.alert", "delivered", alert.ts, result.ts),
    ]


async def test_alert_whose_answer_was_lost_is_not_posted_twice(bridge: Bridge, slack: FakeSlack) -> None:
    await send(bridge, adt("A01", "20260301080000"), potassium("4.0", "N", "F", "20260301090000"))
    await eventually(lambda: len(slack.posted()) == 2, "the admission and the result")
    # The edit and the alert read alike: the edit is answered, then Slack posts the alert and the answer is lost.
    edited = httpx.Response(200, json={"ok": True, "channel": CHANNEL_ID, "ts": slack.posted()[1].ts})
    slack.answer_first("6.9", edited, httpx.ReadTimeout("answer lost"))

    await send(bridge, potassium("6.9", "HH", "C", "20260301100000"))
    await eventually(lambda: len(updates(slack)) == 1, "the edit")

    alerts = [m for m in slack.messages if "6.9" in m["text"]]
    assert len(alerts) == 1
    delivery_id = alerts[0]["metadata"]["event_payload"]["delivery_id"]
    assert delivery_id.endswith(".slack.alert")
    await eventually(lambda: _delivered(bridge, delivery_id), "the alert recorded as delivered by its retry")
    alerts = [m for m in slack.messages if "6.9" in m["text"]]
    assert len(alerts) == 1, "the retry found the alert by its metadata and did not post it again"
    # The alert is retried alone: the edit, delivered, is not repeated.
    assert len(updates(slack)) == 1


async def test_a_withdrawal_after_an_alerted_correction_strikes_the_post_and_the_alert(
    bridge: Bridge, slack: FakeSlack
) -> None:
    await send(bridge, adt("A01", "20260301080000"), potassium("4.0", "N", "F", "20260301090000"))
    await eventually(lambda: len(slack.posted()) == 2, "the admission and the result")
    _, result = slack.posted()
    await send(bridge, potassium("6.9", "HH", "C", "20260301100000"))
    await eventually(lambda: len(slack.posted()) == 3 and len(updates(slack)) == 1, "the edit and the alert")
    alert = slack.posted()[2]
    assert "6.9" in shown(alert) and alert.body["reply_broadcast"] is True

    await send(bridge, potassium("6.9", "HH", "W", "20260301103000"))
    await eventually(lambda: len(updates(slack)) == 3, "the withdrawal strikes the result and the alert")

    _, *withdrawn = updates(slack)
    assert [(u.ok, u.body["ts"], bool(STRUCK.search(u.text))) for u in withdrawn] == [
        (True, result.ts, True),
        (True, alert.ts, True),
    ]
    # No "Corrected ... 6.9" left standing, and nothing posted anew.
    assert len(slack.posted()) == 3


async def _delivered(bridge: Bridge, delivery_id: str) -> bool:
    rows = await bridge.runtime.store.query("SELECT status FROM deliveries WHERE id=?", (delivery_id,))
    return rows == [("delivered",)]


# --- review 2: critical corrections route as critical results (1), own posts (2), lost originals (8) ---


async def two_channels(make_bridge: Any, monkeypatch: pytest.MonkeyPatch, oncall: dict[str, Any]) -> Bridge:
    """``slack`` gets everything; ``oncall`` what its route ``oncall`` matches."""
    monkeypatch.setattr(SlackAdapter, "rate_per_sec", 200.0)
    built: Bridge = await make_bridge(
        channels={
            "slack": {"type": "slack", "token": TOKEN, "channel": CHANNEL_ID, "phi": "full"},
            "oncall": {"type": "slack", "token": TOKEN, "channel": ONCALL_ID, "phi": "full"},
        },
        routes=[
            {"name": "everything", "channels": ["slack"]},
            {"name": "oncall", "match": oncall, "channels": ["oncall"]},
        ],
        mapping={"mrn_authorities": [SITE]},
    )
    return built


async def test_a_correction_to_a_critical_value_reaches_the_channel_routed_critical_results(
    slack: FakeSlack, make_bridge: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = await two_channels(make_bridge, monkeypatch, {"types": ["result.critical"]})
    await send(bridge, adt("A01", "20260301080000"), potassium("4.0", "N", "F", "20260301090000"))
    await eventually(lambda: len(slack.posted()) == 2, "admission and normal result in slack only")

    await send(bridge, potassium("6.9", "HH", "C", "20260301100000"))
    await eventually(lambda: len(in_channel(slack.posted(), ONCALL_ID)) == 1, "the critical correction in oncall")

    (oncall,) = in_channel(slack.posted(), ONCALL_ID)
    assert "6.9" in shown(oncall)
    event = await delivered_event(bridge, oncall)
    assert (event.type, event.severity) == ("result.corrected", "critical")


async def test_a_correction_posted_anew_is_corrected_and_withdrawn_later(
    slack: FakeSlack, make_bridge: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = await two_channels(make_bridge, monkeypatch, {"min_severity": "critical"})
    await send(bridge, adt("A01", "20260301080000"), potassium("4.0", "N", "F", "20260301090000"))
    await eventually(lambda: len(slack.posted()) == 2, "admission and normal result in slack only")
    await send(bridge, potassium("6.9", "HH", "C", "20260301100000"))
    await eventually(lambda: len(in_channel(slack.posted(), ONCALL_ID)) == 1, "the correction posted in oncall")
    (fresh,) = in_channel(slack.posted(), ONCALL_ID)

    await send(bridge, potassium("4.1", "N", "C", "20260301103000"))
    await eventually(lambda: len(in_channel(updates(slack), ONCALL_ID)) == 1, "the next correction edits it")
    await send(bridge, potassium("4.1", "N", "W", "20260301110000"))
    await eventually(lambda: len(in_channel(updates(slack), ONCALL_ID)) == 2, "the withdrawal strikes it")

    corrected, withdrawn = in_channel(updates(slack), ONCALL_ID)
    assert corrected.body["ts"] == withdrawn.body["ts"] == fresh.ts
    assert "4.1" in shown(corrected) and "6.9" not in shown(corrected)
    assert STRUCK.search(withdrawn.text)
    assert len(in_channel(slack.posted(), ONCALL_ID)) == 1


async def test_a_correction_of_a_deleted_post_is_posted_anew_and_later_ones_edit_that(
    bridge: Bridge, slack: FakeSlack
) -> None:
    await send(bridge, adt("A01", "20260301080000"), potassium("5.6", "H", "F", "20260301090000"))
    await eventually(lambda: len(slack.posted()) == 2, "the admission and the result")
    admission, result = slack.posted()
    # Retention deleted the result's post: Slack refuses to edit it.
    slack.answer_first("5.9", httpx.Response(200, json={"ok": False, "error": "message_not_found"}))

    await send(bridge, potassium("5.9", "H", "C", "20260301093000"))
    await eventually(lambda: len(slack.posted()) == 3, "the correction posted anew")
    anew = slack.posted()[2]
    assert anew.body["thread_ts"] == admission.ts and "5.9" in shown(anew)
    await send(bridge, potassium("6.0", "H", "C", "20260301100000"))
    await eventually(lambda: len([u for u in updates(slack) if u.ok]) == 1, "the next correction")

    (edit,) = [u for u in updates(slack) if u.ok]
    assert edit.body["ts"] == anew.ts != result.ts
    assert "6.0" in shown(edit)
    rows = await bridge.runtime.store.query("SELECT count(*) FROM deliveries WHERE status = 'dead'")
    assert rows == [(0,)]


# --- review 2: stale replays (4b), a correction without the visit number of its original (7) ---


def potassium_without_visit(value: str, flag: str, status: str, when: str) -> bytes:
    """``potassium`` without its PV1: the sender left the visit out, the event falls back to the patient's thread."""
    return b"\r".join(line for line in potassium(value, flag, status, when).split(b"\r") if not line.startswith(b"PV1"))


async def test_a_replayed_correction_does_not_overwrite_the_later_one(bridge: Bridge, slack: FakeSlack) -> None:
    await send(bridge, adt("A01", "20260301080000"), potassium("4.0", "N", "F", "20260301090000"))
    await eventually(lambda: len(slack.posted()) == 2, "the admission and the result")
    result = slack.posted()[1]
    # The 6.9 correction's edit lands; its alert is refused for good: the correction is dead.
    edited = httpx.Response(200, json={"ok": True, "channel": CHANNEL_ID, "ts": result.ts})
    slack.answer_first("6.9", edited, httpx.Response(200, json={"ok": False, "error": "msg_too_long"}))
    await send(bridge, potassium("6.9", "HH", "C", "20260301100000"))
    (dead,) = await _eventually_dead(bridge)
    await send(bridge, potassium("5.0", "N", "C", "20260301103000"))
    await eventually(lambda: any("5.0" in shown(u) for u in updates(slack)), "the later correction")
    before = len(slack.calls)

    assert await bridge.runtime.store.replay([dead]) == 1
    bridge.runtime.dispatcher.wake(["slack"])
    await eventually(lambda: _status(bridge, dead, "superseded"), "the replayed correction found stale")

    assert slack.calls[before:] == [], "nothing sent: the post keeps 5.0"
    last = [u for u in updates(slack) if u.body["ts"] == result.ts][-1]
    assert "5.0" in shown(last) and "6.9" not in shown(last)


async def _eventually_dead(bridge: Bridge) -> list[str]:
    found: list[str] = []

    async def dead() -> bool:
        found[:] = [r.id for r in await bridge.runtime.store.dead_letters()]
        return bool(found)

    await eventually(dead, "the correction dead-lettered")
    return found


async def _status(bridge: Bridge, delivery_id: str, status: str) -> bool:
    rows = await bridge.runtime.store.query("SELECT status FROM deliveries WHERE id=?", (delivery_id,))
    return rows == [(status,)]


async def test_a_correction_without_the_visit_number_edits_the_original_in_every_channel(
    slack: FakeSlack, make_bridge: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = await two_channels(make_bridge, monkeypatch, {"types": ["result.critical"]})
    await send(bridge, adt("A01", "20260301080000"), potassium("6.9", "HH", "F", "20260301090000"))
    await eventually(lambda: len(slack.posted()) == 3, "admission and result in slack, result in oncall")
    admission, result = in_channel(slack.posted(), CHANNEL_ID)
    (oncall,) = in_channel(slack.posted(), ONCALL_ID)

    await send(bridge, potassium_without_visit("4.9", "N", "C", "20260301100000"))
    await eventually(lambda: len(updates(slack)) == 2, "the correction in both channels")

    for channel, post in ((CHANNEL_ID, result), (ONCALL_ID, oncall)):
        (edit,) = in_channel(updates(slack), channel)
        assert edit.ok and edit.body["ts"] == post.ts
        assert "4.9" in shown(edit) and "6.9" not in shown(edit)
    assert len(slack.posted()) == 3, "edits only: nothing posted anew, no stray thread"
    corrected = await delivered_event(bridge, updates(slack)[0])
    assert corrected.thread_key.startswith("pat:"), "the correction itself is in the patient's thread"
    threads = await bridge.runtime.store.query(
        "SELECT DISTINCT d.thread_key FROM deliveries d WHERE d.event_id = ?", (corrected.id,)
    )
    assert threads == [((await delivered_event(bridge, result)).thread_key,)]
    assert admission.ts == result.body["thread_ts"]
