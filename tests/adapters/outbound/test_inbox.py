"""The built-in inbox adapter: the feed item keeps the channel's wording; the console line, a log, shows PHI none only.

Events are synthetic and worded by the real templates at the channel's level, as delivery does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from adapters.outbound.inbox import InboxAdapter, InboxConfig
from bridge.channels import AdapterContext, PhiLevel, Post
from bridge.compose import Templates, compose, redact
from bridge.events import (
    ClinicalEvent,
    Encounter,
    EventType,
    Identifier,
    Lifecycle,
    Location,
    Observation,
    Patient,
    Person,
    Severity,
    Subject,
)

FAMILY, GIVEN, MRN = "Zzcanaryfamily", "Zzcanarygiven", "MRN-CANARY-98765"
VALUE, DETAIL, ATTENDING = "Zzcanaryvalue", "Zzcanarydetail", "Zzcanarydoctor"


class FeedStore:
    """The store's inbox feed: items by id, as ``inbox_append`` keeps them."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    async def inbox_append(self, delivery_id: str, item: dict[str, Any]) -> int:
        self.items.append(item)
        return len(self.items)


def canary_event(
    event_type: EventType = EventType.RESULT_CRITICAL, lifecycle: Lifecycle = Lifecycle.NEW
) -> ClinicalEvent:
    return ClinicalEvent(
        id="evt-1",
        type=event_type,
        severity=Severity.CRITICAL,
        occurred_at=datetime(2024, 1, 15, 9, 25, tzinfo=UTC),
        source="urn:ehr-bridge:test",
        patient=Patient(
            mrn=Identifier(value=MRN, authority="TESTHOSP", type="MR"), family=FAMILY, given=GIVEN, sex="F"
        ),
        encounter=Encounter(
            visit_number="VN-CANARY-1",
            patient_class="I",
            location=Location(facility="TESTHOSP", unit="4E", room="12", bed="B"),
            attending=Person(id="D1", family=ATTENDING),
        ),
        subject=Subject(
            kind="result",
            key="TESTHOSP:F100",
            code="BMP",
            text="Basic metabolic panel",
            status="F",
            detail=DETAIL,
            observations=(
                Observation(code="K", text="Potassium", value=VALUE, units="mmol/L", flags=("HH",), critical=True),
            ),
        ),
        thread_key=f"pat:TESTHOSP:{MRN}",
        dedup_key="result.critical:TESTHOSP:F100",
        lifecycle=lifecycle,
        links={"corrects": "TESTHOSP:F100"} if lifecycle is Lifecycle.CORRECT else {},
    )


def post_for(event: ClinicalEvent, level: PhiLevel) -> Post:
    """The post delivery makes for a channel at ``level``."""
    templates = Templates.load()
    title, summary, facts = compose(event, level, templates)
    return Post(
        delivery_id="dlv-1",
        channel="inbox",
        event=redact(event, level),
        title=title,
        summary=summary,
        facts=facts,
        label=templates.label(event.lifecycle),
    )


async def send(level: PhiLevel, event: ClinicalEvent, *, console: bool = True) -> tuple[FeedStore, dict[str, Any]]:
    store = FeedStore()
    async with httpx.AsyncClient() as http:
        adapter = InboxAdapter(
            InboxConfig(type="inbox", phi=level, console=console), AdapterContext(name="inbox", http=http, store=store)
        )
        payload = adapter.render(post_for(event, level))
        result = await adapter.send(payload)
    assert result.external_id == "1"
    return store, payload


@pytest.mark.parametrize("level", [PhiLevel.LIMITED, PhiLevel.NONE])
@pytest.mark.parametrize("lifecycle", [Lifecycle.NEW, Lifecycle.CORRECT])
async def test_the_console_line_shows_phi_none_content_whatever_the_channels_level(
    capsys: pytest.CaptureFixture[str], level: PhiLevel, lifecycle: Lifecycle
) -> None:
    event_type = EventType.RESULT_CRITICAL if lifecycle is Lifecycle.NEW else EventType.RESULT_CORRECTED
    await send(level, canary_event(event_type, lifecycle))
    line = capsys.readouterr().out
    assert line == f"[inbox #1] CRITICAL {event_type.value:<32} TESTHOSP/4E/12/B\n"
    # Nothing of the patient, not even initials or the MRN's last 4; no values, no free text.
    for secret in (FAMILY, GIVEN, MRN, "8765", "Z.Z.", "Z. Z.", VALUE, DETAIL, ATTENDING, "CANARY"):
        assert secret not in line, secret


async def test_the_feed_keeps_the_wording_at_the_channels_level(capsys: pytest.CaptureFixture[str]) -> None:
    store, payload = await send(PhiLevel.LIMITED, canary_event())
    # The feed (page, /api/inbox) is the channel: initials and the MRN's last 4, as limited allows.
    assert store.items == [payload]
    assert "Z.Z. (…8765)" in payload["title"] and VALUE in payload["text"]
    assert FAMILY not in str(payload) and MRN not in str(payload)
    assert "Z.Z." not in capsys.readouterr().out


async def test_without_console_nothing_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    store, _ = await send(PhiLevel.LIMITED, canary_event(), console=False)
    assert len(store.items) == 1
    assert capsys.readouterr().out == ""


def test_full_phi_with_the_console_on_is_refused() -> None:
    with pytest.raises(ValueError, match="console"):
        InboxConfig(type="inbox", phi=PhiLevel.FULL, console=True)
