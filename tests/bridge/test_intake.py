"""Intake: ACK only after commit, duplicates re-ACKed without new events, unrouted and unmapped still AA."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bridge.config import Settings, parse_config
from bridge.errors import StoreError
from bridge.hl7 import AckCode
from bridge.intake import Intake, RawMessage
from bridge.mapping import Mapper, MappingOptions
from bridge.routing import Router
from bridge.store import CommitResult, JournalEntry, NewDelivery
from bridge.store.sqlite import SQLiteStore

ADT = (
    b"MSH|^~\\&|APP|HOSP|EHRBRIDGE|HOSP|20261122120000||ADT^A01|{cid}|P|2.5\r"
    b"EVN|A01|20261122120000\r"
    b"PID|1||MRN1^^^HOSP^MR||Testpatient^Alpha||19700101|F\r"
    b"PV1|1|I|ICU^1^1^HOSP|||||||||||||||||V1\r"
)


def adt(cid: str) -> bytes:
    return ADT.replace(b"{cid}", cid.encode())


class GatedStore(SQLiteStore):
    """A real store whose commit waits for a gate, or fails on demand."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def commit_message(
        self,
        entry: JournalEntry,
        events: list[tuple[Any, list[NewDelivery]]],
        *,
        dedup_window: float,
        channels: Any = None,
    ) -> CommitResult:
        await self.gate.wait()
        if self.fail:
            raise StoreError("disk full")
        return await super().commit_message(entry, events, dedup_window=dedup_window, channels=channels)


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    return parse_config({"store": {"path": str(tmp_path / "b.db")}, **overrides}, env={})


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = GatedStore(tmp_path / "b.db")
    await s.open()
    yield s
    await s.close()


def intake_for(cfg: Settings, store: SQLiteStore, woken: list[set[str]] | None = None) -> Intake:
    return Intake(
        cfg,
        store,
        Mapper.load(MappingOptions()),
        Router.from_config(cfg.routes),
        on_commit=lambda channels: woken.append(set(channels)) if woken is not None else None,
    )


async def test_ack_waits_for_the_commit(tmp_path: Path, store: GatedStore) -> None:
    intake = intake_for(settings(tmp_path), store)
    store.gate.clear()
    pending = asyncio.create_task(intake.accept(RawMessage("default", adt("C1"), "mllp")))
    await asyncio.sleep(0.05)
    assert not pending.done()
    store.gate.set()
    receipt = await pending
    assert receipt.code is AckCode.AA
    rows = await store.query("SELECT status FROM journal WHERE control_id='C1'")
    assert rows == [("accepted",)]


async def test_store_failure_answers_ar_and_commits_nothing(tmp_path: Path, store: GatedStore) -> None:
    intake = intake_for(settings(tmp_path), store)
    store.fail = True
    receipt = await intake.accept(RawMessage("default", adt("C2"), "mllp"))
    assert receipt.code is AckCode.AR
    assert b"|207" in receipt.ack or b"^207" in receipt.ack
    assert await store.query("SELECT count(*) FROM events") == [(0,)]


async def test_duplicate_control_id_is_acked_but_not_reposted(tmp_path: Path, store: GatedStore) -> None:
    woken: list[set[str]] = []
    intake = intake_for(settings(tmp_path), store, woken)
    first = await intake.accept(RawMessage("default", adt("C3"), "mllp"))
    second = await intake.accept(RawMessage("default", adt("C3"), "http"))
    assert first.code is AckCode.AA and second.code is AckCode.AA
    assert b"|C3" in second.ack
    assert await store.query("SELECT status FROM journal ORDER BY received_at") == [("accepted",), ("duplicate",)]
    assert await store.query("SELECT count(*) FROM events") == [(1,)]
    assert await store.query("SELECT count(*) FROM deliveries") == [(1,)]
    assert woken == [{"inbox"}]


async def test_same_control_id_from_another_sender_is_not_a_duplicate(tmp_path: Path, store: GatedStore) -> None:
    intake = intake_for(settings(tmp_path), store)
    await intake.accept(RawMessage("default", adt("C4"), "mllp"))
    other = adt("C4").replace(b"|APP|HOSP|", b"|OTHERAPP|HOSP|", 1)
    await intake.accept(RawMessage("default", other, "mllp"))
    assert await store.query("SELECT count(*) FROM journal WHERE status='accepted'") == [(2,)]


async def test_event_without_a_route_is_journaled_unrouted_and_still_acked_aa(
    tmp_path: Path, store: GatedStore
) -> None:
    cfg = settings(tmp_path, routes=[{"name": "only-results", "match": {"types": ["result.*"]}, "channels": ["inbox"]}])
    receipt = await intake_for(cfg, store).accept(RawMessage("default", adt("C5"), "mllp"))
    assert receipt.code is AckCode.AA
    assert await store.query("SELECT status FROM events") == [("unrouted",)]
    assert await store.query("SELECT count(*) FROM deliveries") == [(0,)]


async def test_unmapped_message_type_is_acked_aa_and_journaled_unmapped(tmp_path: Path, store: GatedStore) -> None:
    msg = b"MSH|^~\\&|APP|HOSP|EHRBRIDGE|HOSP|20261122120000||BAR^P01|C6|P|2.4\rPID|1||MRN1\r"
    receipt = await intake_for(settings(tmp_path), store).accept(RawMessage("default", msg, "mllp"))
    assert receipt.code is AckCode.AA
    assert await store.query("SELECT status FROM journal") == [("unmapped",)]


async def test_enhanced_mode_answers_ca(tmp_path: Path, store: GatedStore) -> None:
    msg = adt("C7").replace(b"|P|2.5\r", b"|P|2.5|||AL|NE\r", 1)
    receipt = await intake_for(settings(tmp_path), store).accept(RawMessage("default", msg, "mllp"))
    assert receipt.code is AckCode.CA


async def test_batch_payload_answers_one_ack_per_message(tmp_path: Path, store: GatedStore) -> None:
    batch = b"FHS|^~\\&\rBHS|^~\\&\r" + adt("B1") + adt("B2") + b"BTS|2\rFTS|1\r"
    receipt = await intake_for(settings(tmp_path), store).accept(RawMessage("default", batch, "mllp"))
    assert receipt.control_ids == ("B1", "B2")
    assert receipt.ack.count(b"MSA|AA|") == 2


async def test_rejection_is_journaled_with_its_reason(tmp_path: Path, store: GatedStore) -> None:
    receipt = await intake_for(settings(tmp_path), store).accept(RawMessage("default", b"not hl7", "mllp"))
    assert receipt.code is AckCode.AE
    rows = await store.query("SELECT status, ack_code, raw FROM journal")
    assert rows[0][0] == "rejected" and rows[0][1] == "AE" and rows[0][2] == b"not hl7"


async def test_internal_error_answers_ar_resend_later_and_journals_the_message(
    tmp_path: Path, store: GatedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    intake = intake_for(settings(tmp_path), store)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Testpatient^Alpha in a message that must never be logged")

    monkeypatch.setattr(intake.mapper, "map_hl7", broken)
    receipt = await intake.accept(RawMessage("default", adt("C8"), "mllp"))
    assert receipt.code is AckCode.AR and receipt.transient
    rows = await store.query("SELECT status, error FROM journal")
    assert rows[0][0] == "rejected"
    assert "RuntimeError" in rows[0][1] and "Testpatient" not in rows[0][1]


async def test_store_failure_is_transient(tmp_path: Path, store: GatedStore) -> None:
    store.fail = True
    receipt = await intake_for(settings(tmp_path), store).accept(RawMessage("default", adt("C9"), "http"))
    assert receipt.transient and receipt.code is AckCode.AR


async def test_strict_validation_over_its_budget_answers_ae_207_without_blocking_the_loop(
    tmp_path: Path, store: GatedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import bridge.intake

    monkeypatch.setattr(bridge.intake, "_STRICT_BUDGET", 0.05)
    monkeypatch.setattr(bridge.intake, "validate_strict", lambda message: time.sleep(0.5))
    cfg = settings(tmp_path, listeners=[{"name": "default", "validation": "strict"}])
    intake = intake_for(cfg, store)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    receipt = await intake.accept(RawMessage("default", adt("C10"), "mllp"))
    task.cancel()
    assert receipt.code is AckCode.AE
    assert b"207" in receipt.ack
    assert ticks >= 2  # the event loop kept running while hl7apy worked


async def test_ack_encoding_is_the_inbound_charset(tmp_path: Path, store: GatedStore) -> None:
    latin = adt("C11").replace(b"|P|2.5\r", b"|P|2.5||||||8859/1\r", 1)
    receipt = await intake_for(settings(tmp_path), store).accept(RawMessage("default", latin, "mllp"))
    assert receipt.code is AckCode.AA
    assert receipt.encoding in ("iso8859-1", "iso-8859-1", "latin-1", "latin_1")


async def test_reused_control_id_with_other_content_is_a_new_message(tmp_path: Path, store: GatedStore) -> None:
    intake = intake_for(settings(tmp_path), store)
    await intake.accept(RawMessage("default", adt("R1"), "mllp"))
    other = adt("R1").replace(b"Testpatient^Alpha", b"Testpatient^Beta").replace(b"|V1\r", b"|V2\r")
    receipt = await intake.accept(RawMessage("default", other, "mllp"))
    assert receipt.code is AckCode.AA
    assert await store.query("SELECT status FROM journal ORDER BY received_at") == [("accepted",), ("accepted",)]
    assert await store.query("SELECT count(*) FROM events") == [(2,)]
