"""The reader and NAK builder against every HL7 v2 file of the shared corpus (skipped when it is absent).

MANIFEST.tsv's ``messages`` column counts the lines that start with ``MSH`` once the
file (BOM stripped) is cut at CR, LF and CRLF; ``test_manifest_counts_msh_lines``
pins that reading so the comparisons below mean what they claim.
"""

from __future__ import annotations

import csv
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge.errors import ParseError
from bridge.hl7.ack import build_ack, build_nak_from_bytes
from bridge.hl7.reader import parse, split_messages

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpus"
MANIFEST = CORPUS / "hl7v2" / "MANIFEST.tsv"
NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
LINE_BREAK = re.compile(rb"\r\n|\r|\n")

pytestmark = pytest.mark.skipif(not MANIFEST.is_file(), reason="shared/corpus is not present")


def _rows() -> list[dict[str, str]]:
    if not MANIFEST.is_file():
        return []
    with MANIFEST.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


ROWS = _rows()
GOOD = [r for r in ROWS if "/bad-inputs/" not in r["path"]]
BAD = [r for r in ROWS if "/bad-inputs/" in r["path"]]


def _lines(data: bytes) -> list[bytes]:
    return LINE_BREAK.split(data.removeprefix(b"\xef\xbb\xbf"))


def _naive_control_ids(data: bytes) -> list[str]:
    """MSH-10 of every MSH line, split on that line's own field separator (byte 4)."""
    ids = []
    for line in _lines(data):
        if line.startswith(b"MSH") and len(line) > 3:
            fields = line.split(line[3:4])
            ids.append(fields[9].decode("latin-1") if len(fields) > 9 else "")
    return ids


def test_manifest_counts_msh_lines() -> None:
    assert len(ROWS) > 100
    for row in ROWS:
        data = (CORPUS / row["path"]).read_bytes()
        assert int(row["messages"]) == sum(1 for line in _lines(data) if line.startswith(b"MSH")), row["path"]


@pytest.mark.parametrize("row", GOOD, ids=[r["path"].removeprefix("hl7v2/") for r in GOOD])
def test_corpus_file_splits_and_parses_like_a_naive_split(row: dict[str, str]) -> None:
    data = (CORPUS / row["path"]).read_bytes()
    messages = split_messages(data)
    if int(row["messages"]) == 0:
        # No MSH at all (empty file, uuencoded payloads): nothing to parse, or one chunk to NAK.
        assert messages in ([], [data])
        for chunk in messages:
            with pytest.raises(ParseError):
                parse(chunk)
        return
    assert len(messages) == int(row["messages"])
    parsed = [parse(m) for m in messages]
    assert [m.segments[0].get_rep(10) for m in parsed] == _naive_control_ids(data)
    if row["version"]:
        assert parsed[0].version == row["version"].split("^")[0]
    for message in parsed:
        ack = parse(build_ack(message, "accept", control_id="X1", now=NOW))
        assert ack.get("MSA-2") == message.control_id


@pytest.mark.parametrize("row", BAD, ids=[r["path"].rsplit("/", 1)[-1] for r in BAD])
def test_fuzz_input_parses_or_raises_parse_error_and_gets_a_nak(row: dict[str, str]) -> None:
    data = (CORPUS / row["path"]).read_bytes()
    for chunk in [data, *split_messages(data)]:
        error = ParseError("fuzz input")
        try:
            message = parse(chunk)
        except ParseError as caught:
            error = caught
        else:
            message.get("PID-3[1].1")
            assert build_ack(message, "error", control_id="X1", now=NOW, error=error).startswith(b"MSH")
        nak = build_nak_from_bytes(chunk, "error", control_id="X1", now=NOW, error=error)
        assert nak.startswith(b"MSH")
        assert b"\rMSA" in nak
        assert nak.endswith(b"\r")
