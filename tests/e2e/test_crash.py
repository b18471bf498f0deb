"""Crash test: SIGKILL a real bridge under load, restart it, resend what was not ACKed.

Every ACKed message must reach the (real, local) webhook sink; a webhook-id
may arrive again after a crash (at-least-once) but never with other content;
and no message turns into two events.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from adapters.inbound.mllp import MLLPClient

from .support import SECRET, BridgeProcess, WebhookSink, free_port

pytestmark = pytest.mark.slow

CONNECTIONS = 4
PER_CONNECTION = 60


def adt(n: int) -> bytes:
    """A synthetic ADT^A01; every message its own control id and encounter."""
    return (
        f"MSH|^~\\&|CRASHTEST|HOSP|EHRBRIDGE|HOSP|20261122120000||ADT^A01^ADT_A01|CRASH{n:05d}|P|2.5\r"
        f"EVN|A01|20261122120000\r"
        f"PID|1||MRN{n:05d}^^^HOSP^MR||Testpatient^Crash||19700101|F\r"
        f"PV1|1|I|ICU^{n % 20}^1^HOSP||||1234^Doctor^Test|||||||||||V{n:05d}\r"
    ).encode()


def write_config(tmp_path: Path, sink: WebhookSink, mllp_port: int, http_port: int) -> Path:
    config = {
        "store": {"path": str(tmp_path / "bridge.db")},
        "http": {"host": "127.0.0.1", "port": http_port},
        "listeners": [{"name": "default", "host": "127.0.0.1", "port": mllp_port}],
        "routes": [{"name": "all", "channels": ["hook"]}],
        "channels": {"hook": {"type": "webhook", "url": sink.url, "secret": SECRET, "phi": "full"}},
        "delivery": {"poll_interval": 0.05, "initial_backoff": 0.05, "max_backoff": 0.5, "max_in_flight": 8},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _send_all(port: int, numbers: list[int], acked: set[int]) -> None:
    try:
        async with MLLPClient("127.0.0.1", port, timeout=5) as client:
            for n in numbers:
                ack = await client.send(adt(n))
                if b"MSA|AA|" in ack:
                    acked.add(n)
    except (OSError, TimeoutError, EOFError, ConnectionError):
        return  # the bridge was killed under us: what was not ACKed is resent later


async def test_sigkill_mid_stream_loses_nothing_and_doubles_nothing(tmp_path: Path, webhook_sink: WebhookSink) -> None:
    mllp_port, http_port = free_port(), free_port()
    bridge = BridgeProcess(write_config(tmp_path, webhook_sink, mllp_port, http_port), tmp_path, http_port)
    total = CONNECTIONS * PER_CONNECTION
    numbers = list(range(total))
    acked: set[int] = set()
    bridge.start()
    try:
        batches = [numbers[i::CONNECTIONS] for i in range(CONNECTIONS)]
        senders = [asyncio.create_task(_send_all(mllp_port, b, acked)) for b in batches]
        kill_after = random.randint(total // 4, total // 2)
        while len(acked) < kill_after:
            await asyncio.sleep(0.005)
        bridge.kill()
        await asyncio.gather(*senders)
        acked_before_kill = set(acked)
        assert 0 < len(acked_before_kill) < total, "the kill must land mid-stream"

        bridge.start()
        # The sender resends everything it has no ACK for; for a few ACKed ones it is unsure too.
        resend = [n for n in numbers if n not in acked] + random.sample(sorted(acked_before_kill), 5)
        await _send_all(mllp_port, resend, acked)
        assert acked == set(numbers)

        received = await webhook_sink.await_count(total, timeout=30)
    finally:
        bridge.stop()

    by_webhook_id: dict[str, set[bytes]] = defaultdict(set)
    events_by_control_id: dict[str, set[str]] = defaultdict(set)
    for r in received:
        by_webhook_id[r.headers["webhook-id"]].add(r.body)
        event = json.loads(r.body)["data"]
        events_by_control_id[event["origin"]["control_id"]].add(event["id"])

    assert {cid for cid in events_by_control_id} == {f"CRASH{n:05d}" for n in numbers}
    assert [w for w, bodies in by_webhook_id.items() if len(bodies) > 1] == []
    assert [c for c, ids in events_by_control_id.items() if len(ids) > 1] == []
