"""Conformance over a real socket: every corpus message gets an ACK, every fuzz input a NAK or a clean close."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from adapters.inbound.mllp import MLLPClient
from bridge.hl7 import split_messages

from .support import bad_input_files, well_formed_corpus_files


def _field(segment: bytes, number: int) -> bytes:
    """MSH-n read naively from the bytes, independent of the reader under test."""
    fields = segment.split(segment[3:4])
    return fields[number - 1] if len(fields) >= number else b""


def _msa2(ack: bytes) -> bytes:
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA"):
            return _field(segment, 3)  # "MSA", MSA-1, MSA-2
    raise AssertionError("ACK without MSA segment")


async def test_every_corpus_message_is_acked_with_its_control_id(corpus: Path, make_bridge: Any) -> None:
    bridge = await make_bridge()
    mismatches: list[str] = []
    sent = 0
    async with MLLPClient("127.0.0.1", bridge.mllp_port, timeout=10) as client:
        for path in well_formed_corpus_files():
            for n, payload in enumerate(split_messages(path.read_bytes()), start=1):
                msh = payload.split(b"\r", 1)[0]
                control_id = _field(msh, 10).split(msh[4:5])[0]
                ack = await client.send(payload)
                sent += 1
                if _msa2(ack) != control_id:
                    mismatches.append(f"{path.relative_to(corpus)}#{n}")
    assert sent > 200
    assert mismatches == []


def _raw_frame(payload: bytes) -> bytes:
    # Fuzz inputs may contain framing bytes themselves: frame them by hand, as a confused sender would.
    return b"\x0b" + payload + b"\x1c\x0d"


async def _answer_or_close(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        buf = b""
        while b"\x1c\x0d" not in buf:
            chunk = await reader.read(65536)
            if not chunk:
                return buf  # clean close
            buf += chunk
        return buf
    finally:
        writer.close()


async def test_fuzz_inputs_get_a_nak_or_a_clean_close_and_the_listener_keeps_serving(
    corpus: Path, make_bridge: Any
) -> None:
    bridge = await make_bridge()
    good = split_messages((corpus / "hapi-hl7v2" / "ADT_A01.txt").read_bytes())[0]
    accepted: list[str] = []
    for path in bad_input_files():
        answer = await asyncio.wait_for(_answer_or_close(bridge.mllp_port, _raw_frame(path.read_bytes())), timeout=2)
        for segment in answer.strip(b"\x0b\x1c\r").split(b"\r"):
            if segment.startswith(b"MSA") and _field(segment, 2) in (b"AA", b"CA"):
                accepted.append(path.name)
        async with MLLPClient("127.0.0.1", bridge.mllp_port, timeout=2) as client:
            ack = await client.send(good)
        assert b"MSA|AA|" in ack, f"listener stopped answering after {path.name}"
    assert accepted == []
