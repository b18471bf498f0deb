"""Every rendered template, in every locale and at every PHI level, against reviewed snapshots; and the canaries.

One synthetic event per event type and lifecycle of the catalogue (``mappings/catalogue.yaml``), carrying
everything its type may carry, is worded at ``none``, ``limited`` and ``full`` in each bundled locale. The
text is compared with ``snapshots/compose/<locale>-<level>.txt``, which a reviewer reads in the diff.
After a deliberate change of wording, regenerate them with::

    UPDATE_SNAPSHOTS=1 .venv/bin/pytest -q tests/bridge/test_compose_snapshots.py

A missing or different snapshot fails (with the diff) unless ``UPDATE_SNAPSHOTS=1``.

The canary tests put distinctive strings in every identifying field and prove that ``none`` shows none of
them (nor the MRN's last 4, nor the year of birth), in the wording or in the reduced event, and that
``limited`` shows only initials and last 4. Every name and number here is invented.
"""

from __future__ import annotations

import difflib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from bridge.catalogue import EventSpec, Stage, catalogue, validate_event
from bridge.channels import PhiLevel
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
    Subject,
)
from bridge.mapping import layer, mappings_dir

SNAPSHOTS = Path(__file__).parent / "snapshots" / "compose"
UPDATE = os.environ.get("UPDATE_SNAPSHOTS") == "1"
LOCALES = ("en", "de")
#: The deployment's time zone in the snapshots: times read "10:25 CET" for 09:25 UTC.
ZONE = ZoneInfo("Europe/Berlin")


def patient(family: str, given: str, mrn: str, other: str, birth_date: str) -> Patient:
    return Patient(
        mrn=Identifier(value=mrn, authority="TESTHOSP", type="MR"),
        identifiers=(Identifier(value=other, authority="LAB", type="PI"), Identifier(value=mrn, authority="TESTHOSP")),
        family=family,
        given=given,
        birth_date=birth_date,
        sex="F",
    )


def encounter(visit: str, attending: str) -> Encounter:
    return Encounter(
        visit_number=visit,
        patient_class="I",
        location=Location(facility="TESTHOSP", unit="4E", room="12", bed="B"),
        prior_location=Location(facility="TESTHOSP", unit="ED", room="3"),
        attending=Person(id="D1234", family=attending, given="Test", prefix="Dr"),
        admitted_at="2024-01-14T08:00:00+00:00",
    )


def subject(kind: str, key: str, *, value: str = "6.8", detail: str | None = None) -> Subject:
    """The subject of each kind, with every field the kind uses; ``detail`` replaces each kind's own."""
    subjects = {
        "patient": Subject(kind="patient", key=key),
        "encounter": Subject(kind="encounter", key=key),
        "result": Subject(
            kind="result",
            key=key,
            code="BMP",
            text="Basic metabolic panel",
            status="F",
            observations=(
                Observation(code="K", text="Potassium", value=value, units="mmol/L", flags=("HH",), critical=True),
                Observation(code="NA", text="Sodium", value="128", units="mmol/L", flags=("L",)),
                Observation(code="CL", text="Chloride", value="101", units="mmol/L", flags=("N",)),
            ),
        ),
        "order": Subject(
            kind="order", key=key, code="CBC", text="Blood count", status="IP", detail=detail or "urgent, fasting"
        ),
        "medication": Subject(
            kind="medication",
            key=key,
            code="MET50",
            text="Metoprolol tartrate",
            detail=detail or "50 mg PO twice daily",
        ),
        "appointment": Subject(
            kind="appointment",
            key=key,
            code="FU",
            text="Cardiology follow-up",
            status="Booked",
            start="2024-01-20T09:30:00",
            end="2024-01-20T10:00:00",
            detail=detail or "bring the medication list",
        ),
        "document": Subject(
            kind="document",
            key=key,
            code="DS",
            text="Discharge summary",
            status="AU",
            detail=detail or "Cardiology discharge letter",
        ),
        "subscription": Subject(kind="subscription", key=key, text="icu-feed"),
    }
    return subjects[kind]


def links(stage: Stage, subject_key: str, identities: tuple[str, str]) -> dict[str, str]:
    """The links a stage of the catalogue carries: a cancellation of types names the first two it may strike."""
    out: dict[str, str] = {}
    for link in stage.links:
        if link.refers_to == "types":
            out[link.name] = ",".join(t.value for t in stage.supersedes[:2])
        elif link.refers_to == "subject":
            out[link.name] = subject_key
        else:
            out[link.name] = identities[0] if link.name == "replaces" else identities[1]
    return out


def narrowed(spec: EventSpec, pat: Patient, enc: Encounter, subj: Subject) -> dict[str, Any]:
    """Patient, encounter and subject cut to the fields the catalogue says the type carries."""
    fields = set(spec.fields)
    enc_fields = {f.split(".", 1)[1] for f in fields if f.startswith("encounter.")}
    subj_fields = {f.split(".", 1)[1] for f in fields if f.startswith("subject.")} | {"kind"}
    return {
        "patient": pat if "patient" in fields else Patient(),
        "encounter": Encounter(**{k: v for k, v in enc if k in enc_fields}),
        "subject": Subject(**{k: v for k, v in subj if k in subj_fields}),
    }


def build(
    spec: EventSpec,
    stage: Stage,
    pat: Patient,
    enc: Encounter,
    *,
    key: str,
    identities: tuple[str, str],
    value: str = "6.8",
    detail: str | None = None,
) -> ClinicalEvent:
    subj = subject(spec.subject_kinds[0], key, value=value, detail=detail)
    event = ClinicalEvent(
        id=f"evt-{spec.type.value}-{stage.lifecycle.value}",
        type=spec.type,
        severity=spec.severity,
        occurred_at=datetime(2024, 1, 15, 9, 25, tzinfo=UTC),
        source="urn:ehr-bridge:test",
        thread_key=f"enc:TESTHOSP:{enc.visit_number}",
        dedup_key=f"{spec.type.value}:{key}",
        lifecycle=stage.lifecycle,
        links=links(stage, key, identities),
        **narrowed(spec, pat, enc, subj),
    )
    validate_event(event)  # the synthetic event is one the catalogue allows
    return event


def cases() -> list[tuple[EventSpec, Stage]]:
    """Every type and lifecycle of the catalogue, in its order."""
    return [(spec, stage) for spec in catalogue().types.values() for stage in spec.stages]


_VARIANT_KEYS = {Lifecycle.CANCEL: "cancelled", Lifecycle.CORRECT: "corrected", Lifecycle.UPDATE: "updated"}


def worded_statuses(locale: str, spec: EventSpec, stage: Stage, kind: str | None = None) -> list[str]:
    """The first status of each ``by_status`` item of the wording ``spec`` at ``stage`` uses (bundled file)."""
    doc = bundled(locale)
    entry = doc["events"].get(spec.type.value, {})
    if kind is not None:
        entry = layer(entry, doc["channels"][kind]["events"].get(spec.type.value, {}))
    wording = entry.get(_VARIANT_KEYS.get(stage.lifecycle, ""), entry)
    return [item["status"][0] for item in wording.get("by_status", ())]


def with_status(event: ClinicalEvent, status: str | None) -> ClinicalEvent:
    """``event`` whose subject has ``status`` (None: no status)."""
    assert event.subject is not None
    return event.model_copy(update={"subject": event.subject.model_copy(update={"status": status})})


def worded(event: ClinicalEvent, statuses: list[str]) -> list[tuple[str | None, ClinicalEvent]]:
    """``event`` as it is, or, when its wording words statuses apart: without a status (the default
    wording), then with the first status of each ``by_status`` item."""
    if not statuses:
        return [(None, event)]
    return [(status or "none", with_status(event, status)) for status in (None, *statuses)]


def worded_cases(locale: str) -> list[tuple[EventSpec, Stage, ClinicalEvent]]:
    """Every type and lifecycle with its canaries, once per subject status its wording words apart."""
    return [
        (spec, stage, event)
        for spec, stage in cases()
        for _, event in worded(canary(spec, stage), worded_statuses(locale, spec, stage))
    ]


def rich(spec: EventSpec, stage: Stage) -> ClinicalEvent:
    return build(
        spec,
        stage,
        patient("Testpatient", "Alpha", "MRN4711", "OTHER99", "1980-05-21"),
        encounter("VIS0815", "Doctor"),
        key="TESTHOSP:F100",
        identities=("TESTHOSP|MRN0815", "TESTHOSP|MRN4711"),
    )


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates.load(timezone=ZONE)


# --- snapshots ------------------------------------------------------------------------------------


def rendered(templates: Templates, locale: str, level: PhiLevel) -> str:
    lines = [
        f"# Every event type and lifecycle, worded in locale {locale} at PHI level {level.value}.",
        "# Generated by tests/bridge/test_compose_snapshots.py from synthetic events; review changes in the diff.",
        "# Regenerate: UPDATE_SNAPSHOTS=1 .venv/bin/pytest -q tests/bridge/test_compose_snapshots.py",
    ]
    # The default wording of every type, then each channel kind's own (kind None: the default).
    kinds = [(None, None), *((kind, set(spec["events"])) for kind, spec in bundled(locale).get("channels", {}).items())]
    for kind, types in kinds:
        for spec, stage in cases():
            if types is not None and spec.type.value not in types:
                continue
            for status, event in worded(rich(spec, stage), worded_statuses(locale, spec, stage, kind)):
                title, summary, facts = compose(event, level, templates, locale=locale, kind=kind)
                label = templates.label(event.lifecycle, locale)
                head = f"== {spec.type.value} · {stage.lifecycle.value}"
                head += f" · status: {status}" if status else ""
                head += (f" · label: {label}" if label else "") + (f" · channel kind: {kind}" if kind else "")
                lines += ["", head, title, summary or "(no summary)", *(f"  {name}: {value}" for name, value in facts)]
    return "\n".join(lines) + "\n"


def bundled(locale: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((mappings_dir() / "templates" / f"{locale}.yaml").read_text(encoding="utf-8"))
    return doc


@pytest.mark.parametrize("level", list(PhiLevel), ids=lambda level: level.value)
@pytest.mark.parametrize("locale", LOCALES)
def test_every_template_matches_its_snapshot(templates: Templates, locale: str, level: PhiLevel) -> None:
    path = SNAPSHOTS / f"{locale}-{level.value}.txt"
    actual = rendered(templates, locale, level)
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    if not path.is_file():
        pytest.fail(f"no snapshot {path.name}: run with UPDATE_SNAPSHOTS=1 to create it, then review it")
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = difflib.unified_diff(
            expected.splitlines(),
            actual.splitlines(),
            f"{path.name} (snapshot)",
            f"{path.name} (rendered)",
            lineterm="",
        )
        pytest.fail(
            "rendered wording differs from the snapshot; if the change is meant, run with UPDATE_SNAPSHOTS=1\n"
            + "\n".join(diff),
            pytrace=False,
        )


def test_the_snapshots_cover_every_event_type_and_nothing_else() -> None:
    assert sorted(p.name for p in SNAPSHOTS.glob("*.txt")) == sorted(
        f"{locale}-{level.value}.txt" for locale in LOCALES for level in PhiLevel
    )
    text = (SNAPSHOTS / "en-full.txt").read_text(encoding="utf-8")
    assert [t.value for t in EventType if f"== {t.value} · " not in text] == []


@pytest.mark.parametrize("locale", LOCALES)
def test_every_lifecycle_of_the_catalogue_has_its_own_wording_and_no_placeholder_is_left(
    templates: Templates, locale: str
) -> None:
    for spec in catalogue().types.values():
        titles = set()
        for stage in spec.stages:
            title, summary, facts = compose(rich(spec, stage), PhiLevel.FULL, templates, locale=locale)
            titles.add(title)
            text = "\n".join([title, summary, *(f"{k}: {v}" for k, v in facts)])
            assert title and not any(c in text for c in "{}[]"), (spec.type.value, stage.lifecycle.value)
        # A type with two lifecycles (A21 leaves, A22 returns) says which one happened.
        assert len(titles) == len(spec.stages), spec.type.value


@pytest.mark.parametrize("locale", LOCALES)
def test_no_template_words_a_lifecycle_the_catalogue_does_not_give_its_type(locale: str) -> None:
    # Wording for a lifecycle no event of the type has would never be snapshot-tested, nor seen.
    variants = {"cancelled": Lifecycle.CANCEL, "corrected": Lifecycle.CORRECT, "updated": Lifecycle.UPDATE}
    doc = bundled(locale)
    entries = [doc["events"], *(spec["events"] for spec in doc.get("channels", {}).values())]
    for events in entries:
        for name, entry in events.items():
            stages = {stage.lifecycle for stage in catalogue().types[EventType(name)].stages}
            assert {variants[key] for key in entry if key in variants} <= stages, name


# --- canaries -------------------------------------------------------------------------------------

FAMILY, GIVEN = "Zzcanaryfamily", "Zzcanarygiven"
MRN, MRN_TAIL = "MRN-CANARY-98765", "8765"
PRIOR_MRN, PRIOR_TAIL = "MRN-CANARY-OLD-13579", "3579"
OTHER_ID, VISIT, BIRTH = "ID-CANARY-55555", "VN-CANARY-424242", "1911-11-11"
ATTENDING, VALUE, DETAIL = "Zzcanarydoctor", "Zzcanaryvalue", "Zzcanarydetail"


def canary(spec: EventSpec, stage: Stage) -> ClinicalEvent:
    return build(
        spec,
        stage,
        patient(FAMILY, GIVEN, MRN, OTHER_ID, BIRTH),
        encounter(VISIT, ATTENDING),
        key=f"TESTHOSP:{MRN}:{VISIT}",
        identities=(f"TESTHOSP|{PRIOR_MRN}", f"TESTHOSP|{MRN}"),
        value=VALUE,
        detail=DETAIL,
    )


def shown(event: ClinicalEvent, level: PhiLevel, templates: Templates, locale: str) -> str:
    """Everything a channel at ``level`` receives: the wording and the reduced event."""
    title, summary, facts = compose(event, level, templates, locale=locale)
    wording = "\n".join([title, summary, *(f"{k}: {v}" for k, v in facts)])
    return wording + "\n" + redact(event, level).model_dump_json()


IDENTIFYING = (FAMILY, GIVEN, MRN, PRIOR_MRN, OTHER_ID, "55555", VISIT, BIRTH, "1911", "CANARY")


@pytest.mark.parametrize("locale", LOCALES)
def test_none_leaks_no_name_mrn_identifier_visit_or_birth_date(templates: Templates, locale: str) -> None:
    for spec, stage, event in worded_cases(locale):
        text = shown(event, PhiLevel.NONE, templates, locale)
        for secret in (*IDENTIFYING, MRN_TAIL, PRIOR_TAIL, "Z.Z.", ATTENDING, VALUE, DETAIL):
            assert secret not in text, (spec.type.value, stage.lifecycle.value, secret)
        assert redact(event, PhiLevel.NONE).patient == Patient()


@pytest.mark.parametrize("locale", LOCALES)
def test_limited_shows_only_initials_and_the_last_4_of_the_mrn(templates: Templates, locale: str) -> None:
    for spec, stage, event in worded_cases(locale):
        text = shown(event, PhiLevel.LIMITED, templates, locale)
        for secret in (*IDENTIFYING, "5555"):
            assert secret not in text, (spec.type.value, stage.lifecycle.value, secret)
        if event.patient.mrn is not None:
            title = compose(event, PhiLevel.LIMITED, templates, locale=locale)[0]
            assert f"Z.Z. (…{MRN_TAIL})" in title, (spec.type.value, title)
            assert redact(event, PhiLevel.LIMITED).patient == Patient(
                mrn=Identifier(value=f"…{MRN_TAIL}", authority="TESTHOSP", type="MR"), given="Z", family="Z", sex="F"
            )


@pytest.mark.parametrize("locale", LOCALES)
def test_full_shows_the_canaries(templates: Templates, locale: str) -> None:
    # The canary tests above mean something only if the same events do carry the canaries.
    spec = catalogue().types[EventType.ENCOUNTER_ADMITTED]
    title, _, facts = compose(canary(spec, spec.stages[0]), PhiLevel.FULL, templates, locale=locale)
    text = title + str(facts)
    for secret in (FAMILY, GIVEN, MRN, VISIT, ATTENDING):
        assert secret in text
