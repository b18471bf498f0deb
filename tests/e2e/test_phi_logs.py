"""No PHI in logs: a canary patient name, sent through every path, appears nowhere in the bridge's output."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
import yaml

from adapters.inbound.mllp import MLLPClient

from .support import SECRET, BridgeProcess, WebhookSink, free_port

pytestmark = pytest.mark.slow

CANARY_FAMILY = "Zqxcanaryfamily"
CANARY_GIVEN = "Vwkcanarygiven"


def message(control_id: str, *, trigger: str = "A01", extra: str = "") -> bytes:
    return (
        f"MSH|^~\\&|CANARY|HOSP|EHRBRIDGE|HOSP|20261122120000||ADT^{trigger}|{control_id}|P|2.5\r"
        f"EVN|{trigger}|20261122120000\r"
        f"PID|1||MRN77^^^HOSP^MR||{CANARY_FAMILY}^{CANARY_GIVEN}||19700101|F\r"
        f"PV1|1|I|ICU^1^1^HOSP||||1234^Physician^Test|||||||||||V77\r{extra}"
    ).encode()


def oru(control_id: str) -> bytes:
    return (
        f"MSH|^~\\&|CANARY|HOSP|EHRBRIDGE|HOSP|20261122120000||ORU^R01|{control_id}|P|2.5\r"
        f"PID|1||MRN77^^^HOSP^MR||{CANARY_FAMILY}^{CANARY_GIVEN}||19700101|F\r"
        f"PV1|1|I|ICU^1^1^HOSP|||||||||||||||V77\r"
        f"OBR|1||F77|2823-3^Potassium^LN|||20261122110000||||||||||||||||F\r"
        f"OBX|1|NM|2823-3^Potassium^LN||6.9|mmol/L|3.5-5.1|HH|||F\r"
        f"NTE|1||{CANARY_FAMILY} called back\r"
    ).encode()


async def test_canary_name_never_appears_in_log_output(tmp_path: Path, webhook_sink: WebhookSink) -> None:
    mllp_port, http_port = free_port(), free_port()
    webhook_sink.statuses = [500, 429]  # exercise the retry logging too
    config = {
        "store": {"path": str(tmp_path / "bridge.db")},
        "http": {"host": "127.0.0.1", "port": http_port},
        "listeners": [
            {"name": "default", "host": "127.0.0.1", "port": mllp_port},
            {"name": "strict", "port": None, "validation": "strict"},
        ],
        "routes": [{"name": "all", "channels": ["inbox", "hook"]}],
        "channels": {
            "inbox": {"type": "inbox"},
            "hook": {"type": "webhook", "url": webhook_sink.url, "secret": SECRET, "phi": "full"},
        },
        "delivery": {"poll_interval": 0.05, "initial_backoff": 0.05, "max_backoff": 0.2},
        "logging": {"level": "debug"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    bridge = BridgeProcess(path, tmp_path, http_port).start()
    try:
        async with MLLPClient("127.0.0.1", mllp_port, timeout=5) as client:
            assert b"MSA|AA" in await client.send(message("C1"))
            assert b"MSA|AA" in await client.send(message("C1"))  # duplicate
            assert b"MSA|AA" in await client.send(oru("C2"))  # critical result
            assert b"MSA|AA" in await client.send(message("C3", trigger="A03"))
            await client.send(message("", extra=f"ZZZ|{CANARY_FAMILY}\r"))  # NAK: no control id
            await client.send(b"MSH|0000|" + CANARY_FAMILY.encode())  # unparsable
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:
            hl7 = {"Content-Type": "application/hl7-v2; charset=utf-8"}
            await http.post("/hl7/default", content=message("C4"), headers=hl7)
            await http.post("/hl7/strict", content=message("C5", extra="ZZZ|x\r"), headers=hl7)
            await http.post("/hl7/default", content=message("C6"), headers={"Content-Type": "application/json"})
        # C1 admitted, C2 critical result, C3 discharged; C4 repeats C1's clinical fact and is suppressed.
        assert len(await webhook_sink.await_count(3, timeout=15)) == 3
    finally:
        bridge.stop()

    # Stored error texts and the audit trail are read by operators like logs: identifiers only there too.
    with sqlite3.connect(tmp_path / "bridge.db") as db:
        stored = [
            *db.execute("SELECT error FROM journal"),
            *db.execute("SELECT last_error FROM deliveries"),
            *db.execute("SELECT action || detail FROM audit"),
        ]
    assert any(row[0].startswith(("100 ", "101 ")) for row in stored)  # the rejections were recorded
    assert [row for row in stored if CANARY_FAMILY in row[0] or CANARY_GIVEN in row[0]] == []

    output = bridge.output()
    assert "intake.accepted" in output  # the logs were captured at all
    assert "delivery.retry" in output
    assert CANARY_FAMILY not in output
    assert CANARY_GIVEN not in output
    assert CANARY_FAMILY.lower() not in output.lower()
