"""The command line: check-config, map, dlq; and the example config loads through the real loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from bridge.cli import app
from bridge.config import load_config
from bridge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_ENV = {
    "ADT_HTTP_TOKEN": "example-token",
    "SLACK_BOT_TOKEN": "xoxb-example-token",
    "LAB_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "EHR_BRIDGE_ADMIN_TOKEN": "example-admin-token",
    "FHIR_SUBSCRIPTION_TOKEN": "example-fhir-token",
}

runner = CliRunner()


def test_example_config_loads_through_the_real_loader() -> None:
    settings = load_config(REPO / "config.example.yaml", env=EXAMPLE_ENV)
    assert [x.name for x in settings.listeners] == ["adt-main", "lab"]
    assert set(settings.channels) == {"inbox", "icu-slack", "lab-webhook"}
    assert "xoxb-example-token" not in repr(settings)
    assert "example-token" not in repr(settings)
    assert "example-admin-token" not in repr(settings)
    assert "example-fhir-token" not in repr(settings)
    assert [s.name for s in settings.fhir.subscriptions] == ["encounters", "lab-classic"]


def test_example_config_without_its_secrets_names_the_missing_variable() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "config.example.yaml", env={})
    assert "EHR_BRIDGE_ADMIN_TOKEN" in str(err.value)
    assert err.value.path == "http.admin_token"


def test_check_config_accepts_the_example(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(key, value)
    result = runner.invoke(app, ["check-config", str(REPO / "config.example.yaml")])
    assert result.exit_code == 0, result.output
    assert "3 channel(s)" in result.output


def test_check_config_names_the_yaml_path_of_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - name: r\n    channels: [nowhere]\n")
    result = runner.invoke(app, ["check-config", str(bad)])
    assert result.exit_code == 2
    assert "routes[0].channels[0]" in result.output


def test_map_prints_events_as_json_without_side_effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    msg = tmp_path / "adt.hl7"
    msg.write_bytes(
        b"MSH|^~\\&|APP|HOSP|EHRBRIDGE|HOSP|20261122120000||ADT^A01|M1|P|2.5\r"
        b"PID|1||MRN1^^^HOSP^MR||Testpatient^Alpha||19700101|F\r"
        b"PV1|1|I|ICU^1^1^HOSP\r"
    )
    result = runner.invoke(app, ["map", str(msg)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [e["type"] for e in out[0]["events"]] == ["encounter.admitted"]
    assert not (tmp_path / "data").exists()


def test_dlq_list_and_replay_on_an_empty_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "no dead letters" in runner.invoke(app, ["dlq", "list"]).output
    result = runner.invoke(app, ["dlq", "replay", "--all"])
    assert result.exit_code == 0 and "replayed 0" in result.output
    assert runner.invoke(app, ["dlq", "replay"]).exit_code == 2


def test_send_to_a_closed_port_fails_cleanly(tmp_path: Path) -> None:
    msg = tmp_path / "adt.hl7"
    msg.write_bytes(b"MSH|^~\\&|APP|HOSP|||20261122||ADT^A01|M1|P|2.5\r")
    result = runner.invoke(app, ["send", "--port", "1", "--timeout", "2", str(msg)])
    assert result.exit_code == 1
    assert "send failed" in result.output
    assert "Traceback" not in result.output


def test_unframe_strips_mllp_block_characters() -> None:
    from bridge.cli import _unframe

    framed = b"\x0bMSH|^~\\&|A\rPID|1\r\x1c\r\x0bMSH|^~\\&|B\r\x1c\r"
    assert _unframe(framed) == b"MSH|^~\\&|A\rPID|1\r\rMSH|^~\\&|B\r\r"


# --- map: folders, --table, --summary --------------------------------------------------------------

ADMIT = (
    b"MSH|^~\\&|ADT|HOSP|EHRBRIDGE|HOSP|20261122080000||ADT^A01|ADT1|P|2.5.1\r"
    b"EVN|A01|20261122080000\r"
    b"PID|1||MRN1001^^^HOSP^MR||Testpatient^Alpha||19700101|F\r"
    b"PV1|1|I|ICU^12^1^HOSP||||||||||||||||V1001^^^HOSP^VN\r"
)
# A batch (FHS/BHS ... BTS/FTS) of two messages with LF line ends, as files from an interface engine come.
BATCH = (
    b"FHS|^~\\&|ADT|HOSP\n"
    b"BHS|^~\\&|ADT|HOSP\n"
    b"MSH|^~\\&|ADT|HOSP|EHRBRIDGE|HOSP|20261122090000||ADT^A02|ADT2|P|2.5.1\n"
    b"PID|1||MRN1002^^^HOSP^MR||Testpatient^Beta||19800101|M\n"
    b"PV1|1|I|4E^07^2^HOSP|||ICU^03^1^HOSP|||||||||||||V1002^^^HOSP^VN\n"
    b"MSH|^~\\&|ADT|HOSP|EHRBRIDGE|HOSP|20261122100000||ADT^A03|ADT3|P|2.5.1\n"
    b"PID|1||MRN1002^^^HOSP^MR||Testpatient^Beta||19800101|M\n"
    b"PV1|1|I|4E^07^2^HOSP||||||||||||||||V1002^^^HOSP^VN\n"
    b"BTS|2\n"
    b"FTS|1\n"
)
BILLING = b"MSH|^~\\&|FIN|HOSP|EHRBRIDGE|HOSP|20261122||BAR^P01|FIN1|P|2.4\rPID|1||MRN1003^^^HOSP^MR\r"
UNKNOWN_TRIGGER = b"MSH|^~\\&|ADT|HOSP|EHRBRIDGE|HOSP|20261122||ADT^Z99|ADT4|P|2.5\rPID|1||MRN1004^^^HOSP^MR\r"
NO_CONTROL_ID = b"MSH|^~\\&|ADT|HOSP|EHRBRIDGE|HOSP|20261122||ADT^A01||P|2.5\rPID|1||MRN1005^^^HOSP^MR\r"
# A site's own message type, mapped by the site file below: the first has an order control no rule
# takes, the second no ORC at all.
SITE_MESSAGES = (
    b"MSH|^~\\&|ORD|HOSP|EHRBRIDGE|HOSP|20261122||ZZZ^Z01|ORD1|P|2.5\rPID|1||MRN1006^^^HOSP^MR\rORC|XX|P1\r"
    b"MSH|^~\\&|ORD|HOSP|EHRBRIDGE|HOSP|20261122||ZZZ^Z01|ORD2|P|2.5\rPID|1||MRN1006^^^HOSP^MR\r"
)
SITE_MAPPING = """\
match:
  - message: ZZZ
    triggers: [Z01]
for_each:
  segment: ORC
rules:
  - when: {ORC-1: [NW]}
    type: order.placed
    severity: info
thread_key: "msg:{MSH-10}"
dedup_key: "{type}:{thread_key}:{digest}"
"""


def feed(tmp_path: Path) -> tuple[Path, Path]:
    """A folder of good, unmapped and broken files, and a config that adds the site mapping."""
    root = tmp_path / "feed"
    files = {
        "adt/admit.hl7": ADMIT,
        "adt/batch.hl7": BATCH,
        "other/billing.hl7": BILLING,
        "other/unknown-trigger.hl7": UNKNOWN_TRIGGER,
        "site/zzz.hl7": SITE_MESSAGES,
        "broken/notes.txt": b"call the ward about bed 12\n",
        "broken/no-control-id.hl7": NO_CONTROL_ID,
        "broken/empty.hl7": b"",
        ".hidden/ignored.hl7": ADMIT,
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "zzz.yaml").write_text(SITE_MAPPING)
    config = tmp_path / "config.yaml"
    config.write_text(f"mapping:\n  extra_paths: [{tmp_path / 'site' / 'zzz.yaml'}]\n")
    return root, config


def test_map_summary_counts_types_and_says_why_each_message_did_not_map(tmp_path: Path) -> None:
    from bridge.simulate import Mappings

    root, config = feed(tmp_path)
    result = runner.invoke(app, ["map", "--summary", "--config", str(config), str(root)])
    assert result.exit_code == 0, result.output
    families = Mappings(load_config(config).mapping).families
    assert "ZZZ" in families and "ADT" in families and "BAR" not in families
    assert result.stdout == (
        "Files: 8; messages and resources: 10; events: 3\n"
        "\n"
        f"Mapped: 3 of 6 well-formed HL7 v2 messages of the catalogue's families ({', '.join(families)}): 50.0%\n"
        "\n"
        "Well-formed messages and resources by type:\n"
        "  ADT^A01      1\n"
        "  ADT^A02      1\n"
        "  ADT^A03      1\n"
        "  ADT^Z99      1\n"
        "  BAR^P01      1\n"
        "  ZZZ^Z01      2\n"
        "\n"
        "Events by type:\n"
        "  encounter.admitted         1\n"
        "  encounter.discharged       1\n"
        "  encounter.transferred      1\n"
        "\n"
        "Not mapped: 7\n"
        "  unreadable (3):\n"
        "    broken/empty.hl7: empty file\n"
        "    broken/no-control-id.hl7#1  ADT^A01: header rejected: 101 MSH-10 message control ID is empty\n"
        "    broken/notes.txt#1: not HL7 v2: 100 message does not start with an MSH segment\n"
        "  no mapping file (2):\n"
        "    other/billing.hl7#1  BAR^P01: no mapping file for BAR messages\n"
        "    other/unknown-trigger.hl7#1  ADT^Z99: no mapping file takes ADT^Z99\n"
        "  no rule fits (1):\n"
        "    site/zzz.hl7#1  ZZZ^Z01: zzz.yaml: no rule fits (ORC-1=XX)\n"
        "  nothing to map (1):\n"
        "    site/zzz.hl7#2  ZZZ^Z01: zzz.yaml: no ORC segment (it makes one event per ORC)\n"
    )


def test_map_summary_groups_the_messages_of_one_file_that_fail_alike(tmp_path: Path) -> None:
    many = tmp_path / "billing.hl7"
    many.write_bytes(BILLING * 3 + ADMIT + BILLING)
    result = runner.invoke(app, ["map", "--summary", str(many)])
    assert result.exit_code == 0
    assert f"    {many}#1-3,5  BAR^P01: no mapping file for BAR messages\n" in result.stdout


def test_map_table_has_one_row_per_event_and_no_patient_identifiers_by_default(tmp_path: Path) -> None:
    root, _ = feed(tmp_path)
    result = runner.invoke(app, ["map", "--table", str(root / "adt")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["FILE", "TYPE", "EVENT", "SEVERITY", "LIFECYCLE", "THREAD", "SUBJECT", "LOCATION"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        ("admit.hl7#1", "ADT^A01", "encounter.admitted", "notice", "new"),
        ("batch.hl7#1", "ADT^A02", "encounter.transferred", "notice", "new"),
        ("batch.hl7#2", "ADT^A03", "encounter.discharged", "notice", "new"),
    ]
    assert all(r[5].startswith("k:") for r in rows), "thread keys are pseudonyms below full"
    assert rows[0][-1] == "HOSP/ICU/12/1"
    for secret in ("Testpatient", "Alpha", "MRN100", "V100", "1970", "1980"):
        assert secret not in result.stdout


@pytest.mark.parametrize(
    ("phi", "present", "absent"),
    [
        ("full", ["enc:HOSP:V1001", "HOSP/ICU/12/1"], ["Testpatient", "MRN1001"]),
        ("none", ["HOSP/ICU"], ["V1001", "Testpatient", "Alpha", "MRN1001"]),
    ],
)
def test_map_table_shows_identifiers_only_as_phi_allows(
    tmp_path: Path, phi: str, present: list[str], absent: list[str]
) -> None:
    msg = tmp_path / "admit.hl7"
    msg.write_bytes(ADMIT)
    result = runner.invoke(app, ["map", "--table", "--phi", phi, str(msg)])
    assert result.exit_code == 0, result.output
    for text in present:
        assert text in result.stdout
    for text in absent:
        assert text not in result.stdout


def test_map_table_lists_messages_without_events_after_the_rows(tmp_path: Path) -> None:
    root, config = feed(tmp_path)
    result = runner.invoke(app, ["map", "--table", "--config", str(config), str(root / "other")])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-3:] == [
        "No events (2):",
        "  billing.hl7#1  BAR^P01: no mapping file for BAR messages",
        "  unknown-trigger.hl7#1  ADT^Z99: no mapping file takes ADT^Z99",
    ]


def test_map_json_walks_folders_and_gives_the_reason_of_an_empty_event_list(tmp_path: Path) -> None:
    root, config = feed(tmp_path)
    notes = root / "broken" / "notes.txt"
    result = runner.invoke(app, ["map", "--config", str(config), str(root / "other"), str(notes)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out == [
        {
            "file": str(root / "other" / "billing.hl7"),
            "message": 1,
            "type": "BAR^P01",
            "events": [],
            "reason": "no mapping file for BAR messages",
        },
        {
            "file": str(root / "other" / "unknown-trigger.hl7"),
            "message": 1,
            "type": "ADT^Z99",
            "events": [],
            "reason": "no mapping file takes ADT^Z99",
        },
        {
            "file": str(root / "broken" / "notes.txt"),
            "message": 1,
            "type": "",
            "error": "not HL7 v2: 100 message does not start with an MSH segment",
        },
    ]


def test_map_of_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["map", "--summary", str(tmp_path / "nowhere")])
    assert result.exit_code == 2


def test_map_with_a_broken_site_mapping_names_the_file_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("match: nope\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"mapping:\n  extra_paths: [{tmp_path / 'broken.yaml'}]\n")
    msg = tmp_path / "admit.hl7"
    msg.write_bytes(ADMIT)
    result = runner.invoke(app, ["map", "--summary", "--config", str(config), str(msg)])
    assert result.exit_code == 2
    assert "mapping error: " in result.output and "broken.yaml" in result.output


def test_map_reads_fhir_resources_and_bundles(tmp_path: Path) -> None:
    encounter = {
        "resourceType": "Encounter",
        "id": "enc-1",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2026-11-22T08:00:00Z"},
    }
    (tmp_path / "encounter.json").write_text(json.dumps(encounter))
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Basic"}}]}
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    (tmp_path / "broken.json").write_text("{not json")
    result = runner.invoke(app, ["map", "--summary", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "  FHIR Basic          1\n" in result.stdout
    assert "  FHIR Encounter      1\n" in result.stdout
    assert "    bundle.json#1  Basic: no mapping file for Basic\n" in result.stdout
    assert "    broken.json: not HL7 v2, and not valid JSON\n" in result.stdout
    assert "Mapped: 1 of 1 FHIR resources of the catalogue's types (" in result.stdout


CORPUS = REPO.parent / "shared" / "corpus" / "hl7v2"


@pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not checked out")
def test_corpus_maps_at_least_95_percent_of_the_catalogue_families() -> None:
    """Acceptance: `map --summary ../shared/corpus/hl7v2` maps >= 95% of well-formed messages of mapped families."""
    from datetime import UTC, datetime

    from bridge.simulate import Mappings, Outcome, Summary, survey

    mappings = Mappings(load_config(None).mapping)
    summary = Summary.of(survey([CORPUS], mappings, received_at=datetime(2026, 1, 1, tzinfo=UTC)), mappings)
    missed = [f"{r.label} {r.message_type}: {r.reason}" for r in summary.unmapped if r.catalogued]
    share = summary.share()
    assert share is not None and share >= 95.0, "\n".join(missed)
    assert all(r.outcome is not Outcome.MAPPED for r in summary.unmapped)
    result = runner.invoke(app, ["map", "--summary", str(CORPUS)])
    assert result.exit_code == 0
    assert f": {share:.1f}%\n" in result.stdout


# --- check-config loads what serve would (review #4 finding 18); map keys its pseudonyms (21) --------------


def check(tmp_path: Path, config: str) -> Result:
    path = tmp_path / "config.yaml"
    path.write_text(config, encoding="utf-8")
    return runner.invoke(app, ["check-config", str(path)])


def site_folder(tmp_path: Path, files: dict[str, str]) -> Path:
    site = tmp_path / "site"
    for name, text in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text, encoding="utf-8")
    return site


@pytest.mark.parametrize(
    ("files", "place", "message"),
    [
        pytest.param(
            {"adt-site.yaml": "extends: adt.yaml\nrules_first:\n  - {type: encounter.updatedd, severity: info}\n"},
            "adt-site.yaml:$.rules_first[0].type",
            "mapping error: ",
            id="unknown-event-type-in-rules-first",
        ),
        pytest.param(
            {"oru.yaml": 'extends: oru.yaml\nthread_key: "{nope}"\n'},
            "oru.yaml:$.thread_key[0]",
            "mapping error: ",
            id="unknown-placeholder-in-an-overlay",
        ),
        pytest.param(
            {
                "fhir/observation-site.yaml": "extends: observation.yaml\nrules_first:\n"
                "  - {when: \"status == 'final'\", type: result.final, severity: notice}\n"
            },
            "observation-site.yaml:$.rules_first[0].when",
            "mapping error: ",
            id="fhir-file-without-subscriptions",
        ),
        pytest.param(
            {"templates/en.yaml": 'events:\n  result.critical:\n    title: "KRIT {patient_name}"\n'},
            "en.yaml:$.events['result.critical'].title",
            "template error: ",
            id="unknown-template-placeholder",
        ),
    ],
)
def test_check_config_loads_the_mapping_and_template_files_and_names_the_place_of_an_error(
    tmp_path: Path, files: dict[str, str], place: str, message: str
) -> None:
    site = site_folder(tmp_path, files)
    result = check(tmp_path, f"mapping:\n  extra_paths: [{site}]\n")
    assert result.exit_code == 2, result.output
    assert result.output.startswith(message)
    assert place in result.output
    assert "ok:" not in result.output


def test_check_config_names_a_missing_extra_path_by_its_index(tmp_path: Path) -> None:
    result = check(tmp_path, f"mapping:\n  extra_paths: [{tmp_path}, {tmp_path / 'nonexistent'}]\n")
    assert result.exit_code == 2
    assert "config error: mapping.extra_paths[1]: no such file or folder" in result.output


def test_check_config_says_what_it_loaded(tmp_path: Path) -> None:
    site = site_folder(tmp_path, {"templates/fr.yaml": (REPO / "mappings/templates/en.yaml").read_text("utf-8")})
    result = check(tmp_path, f"mapping:\n  extra_paths: [{site}]\ntemplates:\n  timezone: Europe/Berlin\n")
    assert result.exit_code == 0, result.output
    assert "HL7 v2 and " in result.output and "FHIR file(s); templates: de, en, fr" in result.output
    assert "times shown in Europe/Berlin" in result.output


def test_map_keys_pseudonyms_with_a_new_key_each_run(tmp_path: Path) -> None:
    import hashlib

    msg = tmp_path / "admit.hl7"
    msg.write_bytes(ADMIT)
    runs = [json.loads(runner.invoke(app, ["map", "--phi", "none", str(msg)]).stdout) for _ in range(2)]
    keys = [r[0]["events"][0]["thread_key"] for r in runs]
    assert all(k.startswith("k:") for k in keys)
    assert keys[0] != keys[1]
    unkeyed = "k:" + hashlib.sha256(b"enc:HOSP:V1001").hexdigest()[:32]
    assert unkeyed not in keys
    table = runner.invoke(app, ["map", "--table", "--phi", "none", str(msg)]).stdout
    assert unkeyed[:14] not in table
