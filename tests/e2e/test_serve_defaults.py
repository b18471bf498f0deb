"""`ehr-bridge serve` with no config: embedded defaults, a corpus ADT gets AA, the event is on /api/inbox within 1 s."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .support import BridgeProcess

pytestmark = pytest.mark.slow


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def test_serve_without_config_acks_a_corpus_adt_and_shows_it_in_the_inbox(tmp_path: Path, corpus: Path) -> None:
    if not (_port_free(2575) and _port_free(8080)):
        pytest.skip("default ports 2575/8080 are taken on this machine")
    bridge = BridgeProcess(None, tmp_path, 8080).start()
    try:
        sent = subprocess.run(
            [sys.executable, "-m", "bridge", "send", str(corpus / "hapi-hl7v2" / "ADT_A01.txt")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        acked_at = time.monotonic()
        assert sent.returncode == 0, sent.stderr
        assert "MSA|AA|" in sent.stdout
        items: list[object] = []
        while time.monotonic() - acked_at < 1.0:
            items = httpx.get("http://127.0.0.1:8080/api/inbox", timeout=1).json()["items"]
            if items:
                break
            time.sleep(0.05)
        assert items, "event not on /api/inbox within 1 s of the ACK"
        assert items[0]["type"] == "encounter.admitted"  # type: ignore[index]
        assert (tmp_path / "data" / "bridge.db").exists()
        page = httpx.get("http://127.0.0.1:8080/inbox", timeout=1)
        assert page.status_code == 200 and "ehr-bridge inbox" in page.text
    finally:
        bridge.stop()
    assert "encounter.admitted" in bridge.output()  # the console line
