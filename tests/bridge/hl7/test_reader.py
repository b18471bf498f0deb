"""The lazy ER7 reader (bridge/hl7/reader.py): delimiters, line endings, charsets, escapes, access."""

from __future__ import annotations

import random

import pytest

import bridge.hl7
from bridge.errors import ParseError
from bridge.hl7.reader import Delimiters, escape, parse, parse_path, read_delimiters, split_messages, unescape

STANDARD = Delimiters("|", "^", "~", "\\", "&", None)

ADT = (
    b"MSH|^~\\&|SENDAPP^1.2.3^ISO|SENDFAC|RECVAPP|RECVFAC|20240102030405||ADT^A01^ADT_A01|CTRL-1|P|2.5.1\r"
    b"EVN|A01|20240102030405\r"
    b"PID|1||MRN1^^^HOSP^MR~NHS9^^^NHS&2.16.840&ISO^NH||DOE^JANE^Q||19800101|F\r"
    b"PV1|1|I|4E^136^B^CommunityHospital\r"
    b"OBX|1|NM|GLU^Glucose||5.2|mmol/L||N|||F\r"
    b"OBX|2|NM|K^Potassium||7.1|mmol/L||HH|||C\r"
)


def _with_msh18(value: bytes, body: bytes = b"PID|1||X\r") -> bytes:
    return b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|C1|P|2.5||||||" + value + b"\r" + body


# --- delimiters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msh", "expected"),
    [
        (b"MSH|^~\\&|A", STANDARD),
        (b"MSH|^~\\&#|A", Delimiters("|", "^", "~", "\\", "&", "#")),
        (b"MSH^~|\\&^A", Delimiters("^", "~", "|", "\\", "&", None)),
        # v2.1 senders sometimes send three encoding characters: no subcomponent separator.
        (b"MSH|^~}|A", Delimiters("|", "^", "~", "}", "", None)),
    ],
)
def test_delimiters_are_read_from_msh_1_and_msh_2(msh: bytes, expected: Delimiters) -> None:
    assert parse(msh + b"\r").delimiters == expected
    assert read_delimiters(msh + b"\r") == expected


def test_truncation_character_is_data_and_escapes_as_p() -> None:
    message = parse(b"MSH|^~\\&#|A|B|C|D|20240101||ADT^A01|C1|P|2.7\rNTE|1||cut here#\\P\\\r")
    assert message.get("MSH-2") == "^~\\&#"
    assert message.get("NTE-3") == "cut here##"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"", 1),
        (b"PID|1||X\r", 1),
        (b"MSH", 1),
        (b"MSHH0\r", 1),
        (b"MSH0^~\\&0A\r", 1),
        (b"MSH||A|B\r", 2),
        (b"MSH|^^\\&|A\r", 2),
        (b"MSH|^~\\A|B\r", 2),
        (b"MSH|^~\\&#!|A\r", 2),
        (b"MSH|^~\\\n|0|0\r", 2),
        (b"MSH|^~\\&\r", 2),
        (b"MSH|\xfe~\\&|A\r", 2),
    ],
)
def test_unusable_msh_is_a_structure_error_located_at_msh_1_or_2(data: bytes, field: int) -> None:
    with pytest.raises(ParseError) as caught:
        parse(data)
    assert caught.value.location == ("MSH", 1, field)
    assert caught.value.code == 100


# --- line endings, BOM -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        ADT,
        ADT.replace(b"\r", b"\n"),
        ADT.replace(b"\r", b"\r\n"),
        b"\xef\xbb\xbf" + ADT.replace(b"\r", b"\r\n"),
        b"\r\n" + ADT.replace(b"\r", b"\n") + b"\n\n  \n",
    ],
    ids=["CR", "LF", "CRLF", "BOM+CRLF", "padded-LF"],
)
def test_line_endings_and_bom_give_the_same_segments(data: bytes) -> None:
    message = parse(data)
    assert [s.name for s in message.segments] == ["MSH", "EVN", "PID", "PV1", "OBX", "OBX"]
    assert message.control_id == "CTRL-1"
    assert message.get("PV1-3.4") == "CommunityHospital"
    assert message.raw == data


def test_line_feed_inside_text_is_kept_not_split_into_a_segment() -> None:
    data = b"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|C1|P|2.5\nNTE|1||first line\nsecond line\n\nthird|x\nOBX|1\n"
    message = parse(data)
    assert [s.name for s in message.segments] == ["MSH", "NTE", "OBX"]
    assert message.get("NTE-3") == "first line\nsecond line\n\nthird"
    assert message.get("NTE-4") == "x"


# --- character sets --------------------------------------------------------------------------------------


def test_latin_1_bytes_declared_8859_1_decode_as_latin_1() -> None:
    message = parse(_with_msh18(b"8859/1", "PID|1||X||M\xfcller^Jos\xe9\r".encode("latin-1")))
    assert message.encoding == "iso8859-1"
    assert message.get("PID-5") == "Müller^José"
    assert message.declared_charset == "8859/1"


def test_utf_8_bytes_without_msh_18_decode_as_utf_8() -> None:
    message = parse(_with_msh18(b"", "PID|1||X||Müller^José\r".encode()))
    assert message.encoding == "utf-8"
    assert message.get("PID-5.1") == "Müller"


def test_undeclared_latin_1_falls_back() -> None:
    data = _with_msh18(b"", "PID|1||X||M\xfcller\r".encode("latin-1"))
    assert parse(data).get("PID-5") == "Müller"
    assert parse(data).encoding == "iso8859-1"
    assert parse(data, fallback="cp1252").encoding == "cp1252"


@pytest.mark.parametrize("declared", [b"UNICODE UTF-8", b"ASCII"])
def test_declared_charset_that_does_not_decode_is_a_data_type_error(declared: bytes) -> None:
    with pytest.raises(ParseError) as caught:
        parse(_with_msh18(declared, b"PID|1||X||M\xfcller\r"))
    assert caught.value.code == 102
    assert caught.value.location == ("MSH", 1, 18)


@pytest.mark.parametrize("declared", [b"KLINGON", b"0", b"UNICODE UTF-16", b"CNS 11643-1992", b"base64"])
def test_unknown_or_unusable_charset_is_a_table_value_error(declared: bytes) -> None:
    with pytest.raises(ParseError) as caught:
        parse(_with_msh18(declared))
    assert caught.value.code == 103
    assert caught.value.location == ("MSH", 1, 18)


@pytest.mark.parametrize(
    ("declared", "codec"),
    [
        (b"ASCII", "ascii"),
        (b"8859/2", "iso8859-2"),
        (b"8859/15", "iso8859-15"),
        (b"ISO IR100", "iso8859-1"),
        (b"ISO_IR 192", "utf-8"),
        (b"UNICODE UTF-8", "utf-8"),
        (b"UNICODE", "utf-8"),
        (b"GB 18030-2000", "gb18030"),
        (b"BIG-5", "big5"),
        (b"KS X 1001", "euc_kr"),
        (b"ISO IR87", "iso2022_jp"),
        (b"UTF-8", "utf-8"),
        (b"8859/1~ISO IR87", "iso8859-1"),
    ],
)
def test_table_0211_names_map_to_codecs(declared: bytes, codec: str) -> None:
    assert parse(_with_msh18(declared)).encoding == codec


def test_charset_argument_overrides_msh_18() -> None:
    # HL7 over HTTP: MSH-18 "SHALL be ignored" in favour of the Content-Type charset.
    data = _with_msh18(b"8859/1", "PID|1||X||José\r".encode())
    assert parse(data, charset="utf-8").get("PID-5") == "José"
    with pytest.raises(ParseError) as caught:
        parse(data, charset="x-no-such-charset")
    assert caught.value.code == 103


# --- escapes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        ("a\\F\\b", "a|b"),
        ("a\\S\\b", "a^b"),
        ("XR CHEST PA\\T\\LAT", "XR CHEST PA&LAT"),
        ("a\\R\\b", "a~b"),
        ("C:\\E\\temp", "C:\\temp"),
        ("\\X41\\\\X4243\\", "ABC"),
        ("caf\\XC3A9\\", "café"),
        ("line1\\.br\\line2", "line1\nline2"),
        ("\\H\\bold\\N\\ text", "bold text"),
        ("keep \\Zlocal\\ code", "keep \\Zlocal\\ code"),
        ("\\C2842\\plain\\M2842\\", "plain"),
        ("odd \\X4\\ hex", "odd \\X4\\ hex"),
        ("dangling \\F", "dangling \\F"),
        ("no escapes", "no escapes"),
        ("\\P\\", "\\P\\"),
    ],
)
def test_escape_sequences_are_resolved(escaped: str, plain: str) -> None:
    assert unescape(escaped, STANDARD, "utf-8") == plain


def test_escape_round_trips_every_delimiter_and_line_break() -> None:
    text = "a|b^c~d\\e&f\rg\nh"
    escaped = escape(text, STANDARD)
    assert not set("|^~&\r\n") & set(escaped)
    assert unescape(escaped, STANDARD, "utf-8") == text


def test_escape_without_escape_character_blanks_delimiters() -> None:
    assert escape("a|b^c", Delimiters("|", "^", "~", "", "", None)) == "a b c"


def test_unescape_happens_after_splitting() -> None:
    message = parse(b"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|C1|P|2.5\rOBX|1|ST|X||a\\S\\b^c\\T\\d&e\r")
    assert message.get("OBX-5.1") == "a^b"
    assert message.get("OBX-5.2") == "c&d&e"
    assert message.get("OBX-5.2.1") == "c&d"
    assert message.get("OBX-5.2.2") == "e"


# --- access ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("MSH-1", "|"),
        ("MSH-2", "^~\\&"),
        ("MSH-3", "SENDAPP^1.2.3^ISO"),
        ("MSH-3.2", "1.2.3"),
        ("MSH-9", "ADT^A01^ADT_A01"),
        ("MSH-9.2", "A01"),
        ("MSH-10", "CTRL-1"),
        ("PID-3", "MRN1^^^HOSP^MR"),
        ("PID-3[1].1", "MRN1"),
        ("PID-3[2].1", "NHS9"),
        ("PID-3[2].4", "NHS&2.16.840&ISO"),
        ("PID-3[2].4.2", "2.16.840"),
        ("PID-3[3].1", ""),
        ("PID-3[1].9", ""),
        ("PID-3[1].1.2", ""),
        ("PID-5.2", "JANE"),
        ("PID-99", ""),
        ("OBX-5", "5.2"),
        ("NK1-2", ""),
    ],
)
def test_message_get_is_one_based_like_the_spec(path: str, value: str) -> None:
    assert parse(ADT).get(path) == value


def test_convenience_properties_read_msh() -> None:
    message = parse(ADT)
    assert (message.message_code, message.trigger, message.structure) == ("ADT", "A01", "ADT_A01")
    assert (message.version, message.processing_id, message.control_id) == ("2.5.1", "P", "CTRL-1")
    assert (message.sending_application, message.sending_facility) == ("SENDAPP", "SENDFAC")
    assert (message.receiving_application, message.receiving_facility) == ("RECVAPP", "RECVFAC")
    assert (message.accept_ack_type, message.application_ack_type, message.declared_charset) == ("", "", "")


@pytest.mark.parametrize(
    ("msh_15_16", "enhanced"),
    [(b"", False), (b"|||AL|NE", True), (b"||||AL", True), (b"|||NE|NE", True), (b"||| | ", False)],
)
def test_enhanced_mode_follows_msh_15_and_16(msh_15_16: bytes, enhanced: bool) -> None:
    message = parse(b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|C1|P|2.5" + msh_15_16 + b"\r")
    assert message.enhanced_mode is enhanced


def test_segments_by_name_and_occurrence() -> None:
    message = parse(ADT)
    results = message.segments_named("OBX")
    assert [obx.get("8") for obx in results] == ["N", "HH"]
    second = message.segment("OBX", 2)
    assert second is not None
    assert second.get("OBX-11") == "C"
    assert message.segment("OBX", 3) is None
    assert message.segment("NK1") is None
    assert message.segments_named("NK1") == []


def test_segment_access_by_number_and_repetitions() -> None:
    pid = parse(ADT).segment("PID")
    assert pid is not None
    assert pid.repetitions(3) == ["MRN1^^^HOSP^MR", "NHS9^^^NHS&2.16.840&ISO^NH"]
    assert pid.repetitions(2) == []
    assert pid.repetitions(40) == []
    assert pid.get_rep(3, 2, 5) == "NH"
    assert pid.get_rep(3, 2, 4, 3) == "ISO"
    assert pid.get_rep(3, 1, 0, 2) == "MRN1^^^HOSP^MR"
    assert pid.get("3[2].1") == "NHS9"


@pytest.mark.parametrize("path", ["PID", "PID-0", "PID-3[0]", "pid-3", "PID-3.x", "PID-3..1", ""])
def test_malformed_paths_are_rejected(path: str) -> None:
    with pytest.raises(ValueError):
        parse(ADT).get(path)


def test_segment_path_must_name_that_segment() -> None:
    pid = parse(ADT).segment("PID")
    assert pid is not None
    with pytest.raises(ValueError):
        pid.get("OBX-5")


def test_parse_path_fills_defaults() -> None:
    assert parse_path("PID-3") == ("PID", 3, 1, 0, 0)
    assert parse_path("3[2].4.1") == (None, 3, 2, 4, 1)


def test_reprs_carry_no_patient_data() -> None:
    message = parse(ADT)
    assert "DOE" not in repr(message)
    assert "DOE" not in repr(message.segment("PID"))
    assert "CTRL-1" in repr(message)


# --- split_messages ---------------------------------------------------------------------------------------


def test_batch_envelope_is_dropped() -> None:
    data = (
        b"FHS|^~\\&|A\r\nBHS|^~\\&|A\r\n"
        b"MSH|^~\\&|A|B|C|D|1||ADT^A01|M1|P|2.5\r\nPID|1\r\n"
        b"MSH|^~\\&|A|B|C|D|1||ADT^A01|M2|P|2.5\r\nPID|2\r\n"
        b"BTS|2\r\nFTS|1\r\n"
    )
    messages = split_messages(data)
    assert [parse(m).control_id for m in messages] == ["M1", "M2"]
    assert all(m.endswith(b"\r") and b"\n" not in m for m in messages)
    assert messages[1] == b"MSH|^~\\&|A|B|C|D|1||ADT^A01|M2|P|2.5\rPID|2\r"


def test_bare_concatenation_splits_on_each_msh() -> None:
    one = b"MSH|^~\\&|A|B|C|D|1||ADT^A01|M1|P|2.5\rPID|1\r"
    two = b"MSH|^~\\&|A|B|C|D|1||ADT^A01|M2|P|2.5\rPID|2\r"
    assert split_messages(one + two) == [one, two]
    assert split_messages((one + b"\n" + two).replace(b"\r", b"\n")) == [one, two]


def test_lf_file_with_comments_keeps_message_count() -> None:
    data = (
        b"/* examples */\nMSH|^~\\&|A|B|C|D|1||ADT^A01|M1|P|2.5\nPID|1\n\n"
        b"// next\nMSH|^~\\&|A|B|C|D|1||ADT^A01|M2|P|2.5\n"
    )
    assert [parse(m).control_id for m in split_messages(data)] == ["M1", "M2"]


@pytest.mark.parametrize("data", [b"", b"   \r\n\n", b"\xef\xbb\xbf\n"])
def test_empty_input_has_no_messages(data: bytes) -> None:
    assert split_messages(data) == []


def test_input_without_msh_is_returned_whole_for_a_nak() -> None:
    assert split_messages(b"hello\nworld") == [b"hello\nworld"]


def test_garbage_before_the_first_msh_is_dropped() -> None:
    assert split_messages(b"\x00\x02junk MSH|^~\\&|A\rPID|1") == [b"MSH|^~\\&|A\rPID|1\r"]


# --- robustness -------------------------------------------------------------------------------------------


def test_mutated_messages_raise_only_parse_error() -> None:
    rng = random.Random(20240102)
    for _ in range(400):
        data = bytearray(ADT)
        for _ in range(rng.randint(1, 12)):
            action = rng.random()
            pos = rng.randrange(len(data))
            if action < 0.4:
                data[pos] = rng.randrange(256)
            elif action < 0.7:
                del data[pos : pos + rng.randint(1, 8)]
            else:
                data[pos:pos] = bytes(rng.choice(b"|^~\\&\r\n#MSH0") for _ in range(rng.randint(1, 4)))
        for chunk in [bytes(data), *split_messages(bytes(data))]:
            try:
                message = parse(chunk)
            except ParseError:
                continue
            for path in ("MSH-9.2", "MSH-10", "PID-3[2].4.2", "OBX-5", "MSH-18"):
                message.get(path)


def test_package_exports_are_sorted_and_complete() -> None:
    assert bridge.hl7.__all__ == sorted(bridge.hl7.__all__)
    assert all(hasattr(bridge.hl7, name) for name in bridge.hl7.__all__)
