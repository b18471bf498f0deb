"""ACK and NAK building (bridge/hl7/ack.py), cross-checked with python-hl7 where it can read the result."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import hl7
import pytest

from bridge.errors import HL7Error, ParseError, ValidationError
from bridge.hl7 import ack as ack_module
from bridge.hl7.ack import AckCode, ack_code, build_ack, build_nak_from_bytes, new_control_id
from bridge.hl7.reader import Message, parse

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
OWN_ID = "01HXACKCONTROLID0001"


def _inbound(version: bytes = b"2.5.1", ack_types: bytes = b"", charset: bytes = b"") -> Message:
    msh_tail = (b"|||" + ack_types if ack_types else b"") + (b"||" + charset if charset else b"")
    return parse(
        b"MSH|^~\\&|SENDAPP^1.2.3^ISO|SENDFAC^9.9^ISO|RECVAPP|RECVFAC|20240102030405||ADT^A01^ADT_A01|"
        b"IN-42|P|" + version + msh_tail + b"\rPID|1||MRN1^^^HOSP^MR\r"
    )


def _fields(ack: bytes, segment: str) -> list[str]:
    line = next(s for s in ack.decode("latin-1").split("\r") if s.startswith(segment))
    fields = line.split("|")
    if segment == "MSH":
        fields.insert(1, "|")
    return fields


def test_accept_ack_swaps_sender_and_receiver_and_answers_the_control_id() -> None:
    ack = build_ack(_inbound(), "accept", control_id=OWN_ID, now=NOW)
    msh = _fields(ack, "MSH")
    assert msh[3:7] == ["RECVAPP", "RECVFAC", "SENDAPP^1.2.3^ISO", "SENDFAC^9.9^ISO"]
    assert msh[7] == "20240506070809+0000"
    assert msh[9] == "ACK^A01^ACK"
    assert msh[10] == OWN_ID
    assert msh[11:13] == ["P", "2.5.1"]
    assert msh[15:17] == ["NE", "NE"]
    assert _fields(ack, "MSA") == ["MSA", "AA", "IN-42"]
    assert b"ERR" not in ack


def test_ack_segments_end_with_cr_only() -> None:
    ack = build_ack(_inbound(), "error", control_id=OWN_ID, now=NOW, error=ParseError("bad", code=102))
    assert ack.endswith(b"\r")
    assert b"\n" not in ack
    assert [s[:3] for s in ack.split(b"\r")[:-1]] == [b"MSH", b"MSA", b"ERR"]


def test_timestamp_keeps_the_offset_of_now() -> None:
    local = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=-5)))
    assert _fields(build_ack(_inbound(), "accept", control_id=OWN_ID, now=local), "MSH")[7] == "20240506070809-0500"


@pytest.mark.parametrize(
    ("outcome", "enhanced", "code"),
    [
        ("accept", False, AckCode.AA),
        ("error", False, AckCode.AE),
        ("reject", False, AckCode.AR),
        ("accept", True, AckCode.CA),
        ("error", True, AckCode.CE),
        ("reject", True, AckCode.CR),
    ],
)
def test_ack_code_follows_outcome_and_mode(outcome: ack_module.Outcome, enhanced: bool, code: AckCode) -> None:
    assert ack_code(outcome, enhanced) is code
    inbound = _inbound(ack_types=b"AL|NE" if enhanced else b"")
    ack = build_ack(inbound, outcome, control_id=OWN_ID, now=NOW)
    assert _fields(ack, "MSA")[1] == code.value


def test_err_segment_for_v2_5_uses_err_2_err_3_err_4() -> None:
    error = ValidationError("MSH-9 type not supported", code=200, location=("MSH", 1, 9))
    ack = build_ack(_inbound(b"2.5"), "reject", control_id=OWN_ID, now=NOW, error=error)
    err = _fields(ack, "ERR")
    assert err[1] == ""
    assert err[2] == "MSH^1^9"
    assert err[3] == "200^Unsupported message type^HL70357"
    assert err[4] == "E"
    assert err[8] == "MSH-9 type not supported"
    assert _fields(ack, "MSA")[3] == "MSH-9 type not supported"


def test_err_segment_before_v2_5_uses_err_1() -> None:
    error = ParseError("bad charset", code=103, location=("MSH", 1, 18))
    ack = build_ack(_inbound(b"2.3"), "error", control_id=OWN_ID, now=NOW, error=error)
    assert _fields(ack, "ERR") == ["ERR", "MSH^1^18^103&Table value not found&HL70357"]


@pytest.mark.parametrize(
    ("version", "modern"),
    [
        (b"2.5", True),
        (b"2.5.1", True),
        (b"2.10", True),
        (b"2.8.10000000000000000000000000000000000000000000000000", True),
        (b"2.4", False),
        (b"2.3.1", False),
        (b"00", False),
        (b"", True),
        (b"junk", True),
    ],
)
def test_err_form_compares_versions_numerically(version: bytes, modern: bool) -> None:
    error = HL7Error("x", code=207, location=("PID", 2, 3))
    ack = build_ack(_inbound(version), "error", control_id=OWN_ID, now=NOW, error=error)
    err = _fields(ack, "ERR")
    if modern:
        assert err[2:5] == ["PID^2^3", "207^Application internal error^HL70357", "E"]
    else:
        assert err[1] == "PID^2^3^207&Application internal error&HL70357"


def test_segment_level_location_has_no_field_component() -> None:
    error = ValidationError("PV1 missing", code=100, location=("PV1", 1, 0))
    ack = build_ack(_inbound(b"2.5"), "error", control_id=OWN_ID, now=NOW, error=error)
    assert _fields(ack, "ERR")[2] == "PV1^1"


def test_error_text_is_escaped_and_control_characters_removed() -> None:
    error = ParseError("bad | field ^ here\x1c\r\nnext", code=102, location=("MSH", 1, 2))
    ack = build_ack(_inbound(), "error", control_id=OWN_ID, now=NOW, error=error)
    assert _fields(ack, "MSA")[3] == "bad \\F\\ field \\S\\ here next"
    assert b"\x1c" not in ack


def test_charset_is_copied_and_used_to_encode() -> None:
    inbound = parse(
        b"MSH|^~\\&|A|Caf\xe9|C|D|20240101||ADT^A01|C1|P|2.5||||||8859/1\rPID|1\r",
    )
    ack = build_ack(inbound, "accept", control_id=OWN_ID, now=NOW)
    assert _fields(ack, "MSH")[18] == "8859/1"
    assert _fields(ack, "MSH")[5] == "A"
    assert b"Caf\xe9" in ack
    assert parse(ack).receiving_facility == "Café"


def test_ack_uses_the_inbound_delimiters() -> None:
    inbound = parse(b"MSH^~|\\&^SEND^FAC^RECV^RFAC^20240101^^ADT~A24^C-7^T^2.4\rPID^1\r")
    ack = build_ack(inbound, "accept", control_id=OWN_ID, now=NOW)
    assert ack.startswith(b"MSH^~|\\&^RECV^RFAC^SEND^FAC^")
    reparsed = parse(ack)
    assert reparsed.get("MSA-2") == "C-7"
    assert reparsed.get("MSH-9") == "ACK~A24~ACK"


def test_python_hl7_reads_the_ack() -> None:
    error = ValidationError("PID-3 missing", code=101, location=("PID", 1, 3))
    ack = build_ack(_inbound(b"2.5"), "error", control_id=OWN_ID, now=NOW, error=error)
    message = hl7.parse(ack.decode("ascii"))
    assert str(message["MSA.F2"]) == "IN-42"
    assert str(message["MSA.F1"]) == "AE"
    assert str(message["MSH.F10"]) == OWN_ID
    assert str(message["ERR.F3.R1.C1"]) == "101"


# --- NAKs from unparsable bytes -------------------------------------------------------------------------


def test_nak_salvages_msh_when_only_the_charset_failed() -> None:
    data = b"MSH|^~\\&|SEND|FAC|RECV|RFAC|20240101||ORU^R01|SALV-1|P|2.5||||||KLINGON\rOBX|1\r"
    with pytest.raises(ParseError) as caught:
        parse(data)
    nak = build_nak_from_bytes(data, "error", control_id=OWN_ID, now=NOW, error=caught.value)
    msh = _fields(nak, "MSH")
    assert msh[3:7] == ["RECV", "RFAC", "SEND", "FAC"]
    assert msh[9:13] == ["ACK^R01^ACK", OWN_ID, "P", "2.5"]
    assert _fields(nak, "MSA")[:3] == ["MSA", "AE", "SALV-1"]
    assert _fields(nak, "ERR")[2:4] == ["MSH^1^18", "103^Table value not found^HL70357"]
    assert str(hl7.parse(nak.decode("latin-1"))["MSA.F2"]) == "SALV-1"


def test_nak_in_enhanced_mode_when_salvaged_msh_15_is_set() -> None:
    data = b"MSH|^~\\&|S|F|R|RF|2024||ADT^A01|E-1|P|2.5|||AL|NE||0\r"
    nak = build_nak_from_bytes(data, "reject", control_id=OWN_ID, now=NOW, error=ParseError("x", code=103))
    assert _fields(nak, "MSA")[1:3] == ["CR", "E-1"]
    assert _fields(nak, "MSH")[15:17] == ["NE", "NE"]


def test_nak_with_untrustworthy_encoding_characters_escapes_salvaged_values() -> None:
    data = b"MSH|0000|S^X|F|||||ADT^A40|C\\9|P|2.8\r"
    nak = build_nak_from_bytes(data, "error", control_id=OWN_ID, now=NOW, error=ParseError("x", code=102))
    msh = _fields(nak, "MSH")
    assert msh[2] == "^~\\&"
    assert msh[5] == "S\\S\\X"
    assert msh[9] == "ACK^A40^ACK"
    assert _fields(nak, "MSA")[2] == "C\\E\\9"


@pytest.mark.parametrize("data", [b"", b"hello world", b"\x00\x01\x02", b"MSHH0\r", b"PID|1||X\r"])
def test_generic_nak_when_nothing_can_be_salvaged(data: bytes) -> None:
    nak = build_nak_from_bytes(data, "reject", control_id=OWN_ID, now=NOW, error=ParseError("no MSH"))
    assert nak.startswith(b"MSH|^~\\&|")
    msh = _fields(nak, "MSH")
    assert msh[9:13] == ["ACK^^ACK", OWN_ID, "P", "2.5"]
    assert _fields(nak, "MSA")[:3] == ["MSA", "AR", ""]
    assert _fields(nak, "ERR")[3] == "100^Segment sequence error^HL70357"
    assert str(hl7.parse(nak.decode("ascii"))["MSA.F1"]) == "AR"


def test_nak_never_carries_frame_control_bytes() -> None:
    data = b"MSH|^~\\&|S\x1c|F\x0b|R|RF|2024||ADT^A01|C\x1c1|P|2.5\r\x1c"
    nak = build_nak_from_bytes(data, "error", control_id=OWN_ID, now=NOW, error=ParseError("x"))
    assert not re.search(rb"[\x00-\x0c\x0e-\x1f]", nak)
    assert _fields(nak, "MSA")[2] == "C1"


# --- control ids --------------------------------------------------------------------------------------


def test_new_control_ids_are_unique_short_and_delimiter_free() -> None:
    ids = {new_control_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[0-9A-Z]{20}", i) for i in ids)


def test_new_control_ids_sort_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([1_700_000_000_000_000_000, 1_700_000_000_001_000_000, 1_800_000_000_000_000_000])
    monkeypatch.setattr("bridge.hl7.ack.time_ns", lambda: next(clock))
    first, second, third = new_control_id(), new_control_id(), new_control_id()
    assert first < second < third


def test_new_control_id_spells_time_then_random_bits_in_crockford_base32(monkeypatch: pytest.MonkeyPatch) -> None:
    # 48 bits of milliseconds, then the top 52 of 7 random bytes, most significant digit first.
    monkeypatch.setattr("bridge.hl7.ack.time_ns", lambda: 1_700_000_000_000_000_000)
    monkeypatch.setattr("bridge.hl7.ack.os.urandom", lambda n: bytes(range(1, n + 1)))
    assert new_control_id() == "065WZSB8000G40R40M30"
