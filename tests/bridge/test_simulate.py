"""simulate: the example config and messages through the real intake, routing, dedup, PHI reduction and
rendering, with a temporary store and nothing sent.

Titles and summaries come from the templates, whose wording has its own snapshot tests; here the
assertions are on structure (what is posted where, threads, edits, drops and their reasons) and on
what a PHI level must never show.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import respx
from typer.testing import CliRunner

from bridge.channels import adapter_class, adapter_names
from bridge.cli import app
from bridge.config import Settings, load_config
from bridge.simulate import ChannelView, Posted, Simulation, format_simulation, simulate

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "simulate"
MESSAGES = EXAMPLE / "messages"

#: What the example messages carry about their patients: names, MRNs, birth dates, visit numbers.
CANARIES = {
    "Alpha": ("Testpatient", "Alpha", "MRN100001", "19600101", "1960-01-01", "V1001"),
    "Beta": ("Testpatient", "Beta", "MRN100002", "19751231", "1975-12-31", "V1002"),
    "Gamma": ("Testpatient", "Gamma", "MRN100003", "19880615", "1988-06-15"),
}
ALL_CANARIES = {c for group in CANARIES.values() for c in group}


@contextlib.contextmanager
def refusing_to_send(mp: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail on any adapter ``send``, any HTTP request through httpx, or any socket connect."""

    def refuse(what: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"simulate must not send, but called {what}")

        return fail

    for name in adapter_names():
        mp.setattr(adapter_class(name), "send", refuse(f"{name}.send"))
    mp.setattr(socket.socket, "connect", refuse("socket.connect"))
    mp.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    with respx.mock(assert_all_mocked=True, assert_all_called=False):
        yield


@pytest.fixture
def nothing_sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with refusing_to_send(monkeypatch):
        yield


def example_settings() -> Settings:
    return load_config(EXAMPLE / "config.yaml", env={})


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Simulation:
    """The example, simulated once for the module, from an empty working directory."""
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp, refusing_to_send(mp):
        mp.chdir(cwd)
        result = asyncio.run(simulate(example_settings(), [MESSAGES]))
    # The config's store (the default ./data/bridge.db) was never touched: the store was a temporary one.
    assert list(cwd.iterdir()) == []
    return result


def channel(result: Simulation, name: str) -> ChannelView:
    return next(c for c in result.channels if c.name == name)


def shown(post: Posted) -> str:
    """Everything the channel would see of a post."""
    return "\n".join([post.title, post.summary, *(f"{k}: {v}" for k, v in post.facts), post.payload])


def test_every_message_gets_its_ack_and_outcome(example: Simulation) -> None:
    assert [(m.source, m.message_type, m.ack, m.outcome) for m in example.messages] == [
        ("01-admit-icu.hl7#1", "ADT^A01", "AA", "1 event"),
        ("02-admit-ward.hl7#1", "ADT^A01", "AA", "1 event"),
        ("03-potassium-critical.hl7#1", "ORU^R01", "AA", "1 event"),
        ("04-potassium-corrected.hl7#1", "ORU^R01", "AA", "1 event"),
        ("05-cancel-admit-ward.hl7#1", "ADT^A11", "AA", "1 event"),
        (
            "06-resend-critical.hl7#1",
            "ORU^R01",
            "AA",
            "duplicate message: same sender, control ID and content as 03-potassium-critical.hl7#1",
        ),
        ("07-resend-critical-new-id.hl7#1", "ORU^R01", "AA", "1 event (1 duplicate)"),
        ("08-book-cardiology.hl7#1", "SIU^S12", "AA", "1 event"),
        ("09-update-icu.hl7#1", "ADT^A08", "AA", "1 event"),
    ]
    assert [(c.name, c.type, c.phi, c.locale) for c in example.channels] == [
        ("icu-slack", "slack", "full", "en"),
        ("ward-board", "webhook", "none", "de"),
        ("inbox", "inbox", "limited", "en"),
    ]


def test_icu_slack_threads_the_visit_and_the_correction_edits_the_critical_post(example: Simulation) -> None:
    icu = channel(example, "icu-slack")
    seen = [(p.ref, p.source, p.event_type, p.severity, p.lifecycle, p.thread_ref, p.original_ref) for p in icu.posts]
    assert seen == [
        ("post-1", "01-admit-icu.hl7#1", "encounter.admitted", "notice", "new", None, None),
        ("post-2", "03-potassium-critical.hl7#1", "result.critical", "critical", "new", "post-1", None),
        ("post-3", "04-potassium-corrected.hl7#1", "result.corrected", "notice", "correct", "post-1", "post-2"),
    ]
    admit, critical, corrected = (json.loads(p.payload) for p in icu.posts)
    assert admit["method"] == "chat.postMessage" and "thread_ts" not in admit["body"]
    assert admit["body"]["channel"] == "C0ICU0001"
    assert admit["body"]["metadata"]["event_payload"] == {"delivery_id": "msg-1-1.icu-slack"}
    # A critical reply is broadcast to the channel, not hidden in the thread.
    assert critical["body"]["thread_ts"] == "post-1" and critical["body"]["reply_broadcast"] is True
    assert corrected["method"] == "chat.update" and corrected["body"]["ts"] == "post-2"
    # Full PHI: the care team's channel sees who it is.
    assert "Testpatient" in shown(icu.posts[0])
    assert icu.posts[0].occurred_at == "2026-11-22T08:00:00+00:00"


def test_icu_slack_says_why_each_other_event_does_not_reach_it(example: Simulation) -> None:
    critical = "03-potassium-critical.hl7#1"
    assert [(d.source, d.what, d.reason) for d in channel(example, "icu-slack").dropped] == [
        ("02-admit-ward.hl7#1", "encounter.admitted", "route icu: unit 4E not in ICU"),
        ("05-cancel-admit-ward.hl7#1", "encounter.cancelled", "route icu: unit 4E not in ICU"),
        (
            "06-resend-critical.hl7#1",
            "ORU^R01",
            f"duplicate message: same sender, control ID and content as {critical}",
        ),
        (
            "07-resend-critical-new-id.hl7#1",
            "result.critical",
            f"duplicate event: the same result.critical as from {critical}",
        ),
        (
            "08-book-cardiology.hl7#1",
            "appointment.booked",
            "route icu: severity info below notice; unit CARD not in ICU",
        ),
        ("09-update-icu.hl7#1", "encounter.updated", "no route matched (route icu: severity info below notice)"),
    ]


def test_ward_board_at_phi_none_gets_its_ward_without_any_identifier(example: Simulation) -> None:
    ward = channel(example, "ward-board")
    assert [(p.source, p.event_type, p.lifecycle, p.thread_ref, p.original_ref) for p in ward.posts] == [
        ("02-admit-ward.hl7#1", "encounter.admitted", "new", None, None),
        ("05-cancel-admit-ward.hl7#1", "encounter.cancelled", "cancel", None, None),
    ]
    admit, cancel = (json.loads(p.payload) for p in ward.posts)
    assert admit["webhook_id"] == "msg-2-1.ward-board"
    assert admit["body"]["type"] == "org.ehr-bridge.encounter.admitted"
    assert admit["body"]["data"]["encounter"]["location"]["unit"] == "4E"
    # The webhook receiver strikes the admission itself: the link names what the cancellation cancels.
    assert cancel["body"]["data"]["lifecycle"] == "cancel"
    assert cancel["body"]["data"]["links"] == {"cancels": "encounter.admitted,encounter.arrived"}
    assert cancel["body"]["data"]["patient"] == {
        "birth_date": None,
        "family": None,
        "given": None,
        "identifiers": [],
        "mrn": None,
        "sex": None,
    }
    for post in ward.posts:
        for canary in ALL_CANARIES:
            assert canary not in shown(post), canary
    assert [(d.source, d.reason) for d in ward.dropped][-1] == (
        "09-update-icu.hl7#1",
        "no route matched (route ward-4e: severity info below notice; unit ICU not in 4E)",
    )


def test_inbox_at_phi_limited_gets_encounters_and_appointments_without_names_or_mrns(example: Simulation) -> None:
    inbox = channel(example, "inbox")
    assert [(p.ref, p.source, p.event_type, p.thread_ref, p.original_ref) for p in inbox.posts] == [
        ("post-1", "01-admit-icu.hl7#1", "encounter.admitted", None, None),
        ("post-2", "02-admit-ward.hl7#1", "encounter.admitted", None, None),
        ("post-3", "05-cancel-admit-ward.hl7#1", "encounter.cancelled", None, None),
        ("post-4", "08-book-cardiology.hl7#1", "appointment.booked", None, None),
    ]
    for post in inbox.posts:
        text = shown(post)
        for canary in ("Testpatient", "Alpha", "Beta", "Gamma", "MRN10000", "1960-01-01", "V1001", "V1002"):
            assert canary not in text, canary
    assert json.loads(inbox.posts[3].payload)["type"] == "appointment.booked"
    assert [(d.source, d.reason) for d in inbox.dropped] == [
        ("03-potassium-critical.hl7#1", "route bed-management: type result.critical not in encounter.*"),
        ("04-potassium-corrected.hl7#1", "route bed-management: type result.corrected not in encounter.*"),
        (
            "06-resend-critical.hl7#1",
            "duplicate message: same sender, control ID and content as 03-potassium-critical.hl7#1",
        ),
        (
            "07-resend-critical-new-id.hl7#1",
            "duplicate event: the same result.critical as from 03-potassium-critical.hl7#1",
        ),
        ("09-update-icu.hl7#1", "no route matched (route bed-management: severity info below notice)"),
    ]


async def test_output_is_the_same_on_every_run(example: Simulation, nothing_sent: None) -> None:
    again = await simulate(example_settings(), [MESSAGES])
    assert format_simulation(again, payload=True) == format_simulation(example, payload=True)


async def test_unreadable_unmapped_and_fhir_inputs_are_dropped_with_their_reason(
    tmp_path: Path, nothing_sent: None
) -> None:
    (tmp_path / "a-billing.hl7").write_bytes(b"MSH|^~\\&|FIN|HOSP|||20261122||BAR^P01|FIN1|P|2.4\rPID|1||M1\r")
    (tmp_path / "b-notes.txt").write_bytes(b"call the ward about bed 12\n")
    (tmp_path / "c-encounter.json").write_text(json.dumps({"resourceType": "Encounter", "id": "e1"}))
    result = await simulate(example_settings(), [tmp_path])
    views = [(m.source, m.message_type, m.ack, m.outcome) for m in result.messages]
    assert views[0] == ("a-billing.hl7#1", "BAR^P01", "AA", "not mapped: no mapping file for BAR messages")
    assert views[1][:2] == ("b-notes.txt#1", "")
    assert views[1][2] in ("AE", "AR") and views[1][3].startswith("rejected: 100 ")
    assert views[2] == (
        "c-encounter.json#1",
        "Encounter",
        "",
        "not simulated: simulate reads HL7 v2 (use `ehr-bridge map` for FHIR)",
    )
    for view in result.channels:
        assert view.posts == ()
        assert [d.source for d in view.dropped] == ["a-billing.hl7#1", "b-notes.txt#1", "c-encounter.json#1"]


def test_cli_prints_the_per_channel_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nothing_sent: None) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["simulate", "--config", str(EXAMPLE / "config.yaml"), "--payload", str(MESSAGES)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Channel icu-slack (slack, PHI full, locale en)\n  Posted: 3\n" in out
    assert "Channel ward-board (webhook, PHI none, locale de)\n  Posted: 2\n" in out
    assert "Channel inbox (inbox, PHI limited, locale en)\n  Posted: 4\n" in out
    assert "      edits post-2\n" in out
    assert out.count("      payload: {") == 9
    assert not (tmp_path / "data").exists()


def structure(text: str) -> list[str]:
    """The lines that do not come from the templates (titles, summaries and facts are indented six)."""
    return [line for line in text.splitlines() if not line.startswith(" " * 6)]


def test_readme_shows_the_output_of_the_example(example: Simulation) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## See what each channel would receive", 1)[1]
    command = "ehr-bridge simulate --config examples/simulate/config.yaml examples/simulate/messages"
    assert command in section
    pasted = section.split("```text\n", 1)[1].split("```", 1)[0]
    assert structure(pasted) == structure(format_simulation(example))


# --- the worker's bookkeeping, pseudonyms keyed per run, odd times (review #4 findings 20, 21, 17) ----------

ONE_SLACK = """
routes:
  - name: all
    channels: [icu]
channels:
  icu:
    type: slack
    token: xoxb-example-not-a-real-token
    channel: C0ICU0001
    phi: full
"""
PATIENT = "PID|1||MRN1^^^HOSP^MR||Testpatient^Alpha||19800101|F\rPV1|1|I|4E^12^1^HOSP||||||||||||||||V1^^^HOSP"


def lab_result(control_id: str, sent: str, status: str, value: str, flag: str) -> bytes:
    return (
        f"MSH|^~\\&|LIS|LAB|CPOE|HOSP|{sent}||ORU^R01|{control_id}|P|2.5\r{PATIENT}\rORC|RE|ORD1^CPOE\r"
        f"OBR|1|ORD1^CPOE||K^Potassium|||20240301103000||||||||||||||{sent}|||{status}\r"
        f"OBX|1|NM|K^Potassium||{value}|mmol/L|3.5-5|{flag}|||{status}\r"
    ).encode()


def one_slack(tmp_path: Path) -> Settings:
    config = tmp_path / "config.yaml"
    config.write_text(ONE_SLACK)
    return load_config(config, env={})


def mine(pattern: str, text: str) -> list[str]:
    """The distinct matches of ``pattern`` in ``text``, in order of first appearance."""
    return list(dict.fromkeys(re.findall(pattern, text)))


def test_pseudonyms_show_as_labels_in_order_of_appearance(example: Simulation) -> None:
    text = format_simulation(example, payload=True)
    labels = mine(r"\bk:[0-9a-f]+\b", text)
    assert labels == [f"k:{n}" for n in range(1, len(labels) + 1)]
    assert len(labels) >= 2  # the ward board's thread and dedup keys at PHI none
    # The webhook payload at PHI none carries a label, never a digest.
    ward = json.loads(channel(example, "ward-board").posts[0].payload)
    assert ward["body"]["data"]["thread_key"] in labels


async def test_pseudonyms_are_keyed_with_a_new_random_key_each_run(
    monkeypatch: pytest.MonkeyPatch, nothing_sent: None
) -> None:
    # Without the labels the raw pseudonyms show: an unkeyed SHA-256 would be the same every run
    # (and reversed by hashing every visit number); keyed with a random key they never are.
    monkeypatch.setattr("bridge.simulate._labeller", lambda: lambda text: text)
    runs = [format_simulation(await simulate(example_settings(), [MESSAGES]), payload=True) for _ in range(2)]
    digests = [mine(r"\bk:[0-9a-f]{32}\b", text) for text in runs]
    assert digests[0] and digests[1]
    assert set(digests[0]).isdisjoint(digests[1])


async def test_an_edit_is_recorded_under_the_id_of_the_post_it_edits_as_the_worker_records_it(
    monkeypatch: pytest.MonkeyPatch, nothing_sent: None
) -> None:
    from bridge.store.sqlite import SQLiteStore

    recorded: list[tuple[str, str | None, bool]] = []
    mark = SQLiteStore.mark_delivered

    async def spy(
        self: SQLiteStore, delivery_id: str, *, external_id: str | None, thread_root: bool, alert: bool = False
    ) -> None:
        recorded.append((delivery_id.rpartition(".")[2], external_id, thread_root))
        await mark(self, delivery_id, external_id=external_id, thread_root=thread_root, alert=alert)

    monkeypatch.setattr(SQLiteStore, "mark_delivered", spy)
    result = await simulate(example_settings(), [MESSAGES])
    # icu-slack: the admission roots the thread, the critical replies in it, the correction edits the
    # critical post and keeps its id (Slack's chat.update answers with the same ts).
    assert [(ext, root) for chan, ext, root in recorded if chan == "icu-slack"] == [
        ("post-1", True),
        ("post-2", False),
        ("post-2", False),
    ]
    assert [p.ref for p in channel(result, "icu-slack").posts] == ["post-1", "post-2", "post-3"]


def test_the_bookkeeping_simulate_shares_with_the_worker(make_event: Any) -> None:
    from bridge.channels import Post, SendResult
    from bridge.delivery import recorded_send
    from bridge.events import Lifecycle

    def post(lifecycle: Lifecycle, thread_ref: str | None, original_ref: str | None) -> Post:
        event = make_event(lifecycle=lifecycle)
        return Post("d1", "icu", event, "t", "s", thread_ref=thread_ref, original_ref=original_ref)

    sent = SendResult(external_id="ts-new")
    cases = [
        (post(Lifecycle.NEW, None, None), True, ("ts-new", True)),  # the first post of its thread
        (post(Lifecycle.NEW, "ts-root", None), True, ("ts-new", False)),  # a reply
        (post(Lifecycle.NEW, None, None), False, ("ts-new", False)),  # the adapter does not thread
        (post(Lifecycle.CORRECT, "ts-root", "ts-old"), True, ("ts-old", False)),  # an edit keeps the post's id
        (post(Lifecycle.CANCEL, None, "ts-old"), True, ("ts-old", False)),  # so does a strike
        (post(Lifecycle.CORRECT, None, None), True, ("ts-new", True)),  # nothing to edit: a new post
        (post(Lifecycle.UPDATE, "ts-root", "ts-old"), True, ("ts-new", False)),  # an update replies, never edits
    ]
    for p, threads, expected in cases:
        assert recorded_send(p, sent, threads=threads) == expected


async def test_a_correction_that_turns_critical_edits_the_post_and_alerts_in_its_thread(
    tmp_path: Path, nothing_sent: None
) -> None:
    (tmp_path / "1.hl7").write_bytes(lab_result("c1", "20240301110000", "F", "4.0", "N"))
    (tmp_path / "2.hl7").write_bytes(lab_result("c2", "20240301120000", "C", "6.9", "HH"))
    result = await simulate(one_slack(tmp_path), [tmp_path])
    posts = channel(result, "icu").posts
    assert [(p.ref, p.event_type, p.severity, p.thread_ref, p.original_ref) for p in posts] == [
        ("post-1", "result.final", "notice", None, None),
        ("post-2", "result.corrected", "critical", "post-1", "post-1"),  # the edit
        ("post-3", "result.corrected", "critical", "post-1", None),  # the alert: a reply in the thread
    ]
    assert [json.loads(p.payload)["method"] for p in posts] == ["chat.postMessage", "chat.update", "chat.postMessage"]


async def test_an_event_time_without_a_utc_equivalent_does_not_stop_the_simulation(
    tmp_path: Path, nothing_sent: None
) -> None:
    # /tmp/rev/sim4: EVN-2 at year 9999 and -1400 made compose raise OverflowError.
    admit = f"MSH|^~\\&|ADT|HOSP|X|Y|20240301100000||ADT^A01|c1|P|2.5\rEVN|A01|99991231235959-1400\r{PATIENT}\r"
    (tmp_path / "01.hl7").write_bytes(admit.encode())
    result = await simulate(one_slack(tmp_path), [tmp_path])
    (post,) = channel(result, "icu").posts
    assert post.occurred_at == "2024-03-01T10:00:00+00:00"  # MSH-7, the next source of the event time
    assert ("Time", "2024-03-01 10:00 UTC") in post.facts
