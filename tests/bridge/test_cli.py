"""The command line: check-config, map, dlq; and the example config loads through the real loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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
