"""MLLP framing, server and client, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from adapters.inbound.mllp import (
    HEAD_BYTES,
    Frame,
    FrameDecoder,
    FrameEvent,
    Junk,
    MLLPClient,
    MLLPServer,
    MLLPSettings,
    Oversize,
    frame,
)
from bridge.errors import ConfigError, FramingError

SB, EB, CR = b"\x0b", b"\x1c", b"\r"

# Every bound wait in these tests is a guard against hanging, never a measurement.
GUARD = 5.0


def _msg(control_id: str, body: bytes = b"") -> bytes:
    return (
        b"MSH|^~\\&|SND|FAC|RCV|FAC|20240101120000||ADT^A01|"
        + control_id.encode()
        + b"|P|2.5\rPID|1||12345^^^HOSP^MR||DOE^JANE\r"
        + body
    )


def _control_id(payload: bytes) -> bytes:
    return payload.split(b"\r", 1)[0].split(b"|")[9]


# --------------------------------------------------------------------------- decoder


def _coalesce(events: list[FrameEvent]) -> list[FrameEvent]:
    """Merge runs of plain junk: how junk is counted across reads depends on where they split."""
    merged: list[FrameEvent] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, Junk) and not event.interrupted and isinstance(last, Junk) and not last.interrupted:
            merged[-1] = Junk(last.nbytes + event.nbytes)
        else:
            merged.append(event)
    return merged


def _feed_chunks(stream: bytes, size: int, limit: int) -> list[FrameEvent]:
    decoder = FrameDecoder(limit)
    events: list[FrameEvent] = []
    for i in range(0, len(stream), size):
        events += decoder.feed(stream[i : i + size])
    return _coalesce(events)


BIG = b"X" * 40
PARTIAL = b"MSH|^~\\&|half a mess"

DECODER_CASES: list[tuple[str, bytes, int, list[FrameEvent]]] = [
    ("one frame", frame(b"A|1"), 64, [Frame(b"A|1")]),
    (
        "several frames",
        frame(b"A|1") + frame(b"B|2") + frame(b"C|3"),
        64,
        [Frame(b"A|1"), Frame(b"B|2"), Frame(b"C|3")],
    ),
    (
        "junk before and between",
        b"xx" + frame(b"A|1") + b"\r\n" + frame(b"B|2"),
        64,
        [Junk(2), Frame(b"A|1"), Junk(2), Frame(b"B|2")],
    ),
    ("junk after the last frame", frame(b"A|1") + b"\n", 64, [Frame(b"A|1"), Junk(1)]),
    ("only junk", b"GET / HTTP/1.1\r\n", 64, [Junk(16)]),
    ("EB without CR is payload", SB + b"a" + EB + b"b" + EB + CR, 64, [Frame(b"a\x1cb")]),
    ("empty frame", SB + EB + CR, 64, [Frame(b"")]),
    ("release 2 commit ack block", SB + b"\x06" + EB + CR, 64, [Frame(b"\x06")]),
    (
        "start block restarts an unfinished frame",
        SB + PARTIAL + frame(b"A|1"),
        64,
        [Junk(1 + len(PARTIAL), interrupted=True), Frame(b"A|1")],
    ),
    (
        "start block right after a lone EB restarts",
        SB + b"ab" + EB + frame(b"A|1"),
        64,
        [Junk(4, interrupted=True), Frame(b"A|1")],
    ),
    ("frame exactly at the limit", frame(b"Y" * 16), 16, [Frame(b"Y" * 16)]),
    ("one byte over the limit", frame(b"Y" * 17), 16, [Oversize(b"Y" * 17, 17)]),
    (
        "oversize then a good frame",
        frame(BIG) + frame(b"A|1"),
        16,
        [Oversize(BIG, len(BIG)), Frame(b"A|1")],
    ),
]

SPLITS = {"whole": 1 << 20, "byte by byte": 1, "pairs": 2, "sevens": 7}


@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
@pytest.mark.parametrize(
    ("stream", "limit", "expected"),
    [case[1:] for case in DECODER_CASES],
    ids=[case[0] for case in DECODER_CASES],
)
def test_decoder_events_do_not_depend_on_how_reads_split_the_stream(
    stream: bytes, limit: int, expected: list[FrameEvent], split: int
) -> None:
    assert _feed_chunks(stream, split, limit) == expected


@pytest.mark.parametrize(
    ("stream", "limit", "expected"),
    [case[1:] for case in DECODER_CASES],
    ids=[case[0] for case in DECODER_CASES],
)
def test_decoder_events_survive_a_split_at_every_position(
    stream: bytes, limit: int, expected: list[FrameEvent]
) -> None:
    for cut in range(1, len(stream)):
        decoder = FrameDecoder(limit)
        events = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert _coalesce(events) == expected, f"split at {cut}"


def test_oversize_frame_reports_its_size_and_first_4096_bytes() -> None:
    # 102,400 bytes of a pattern that differs across the 4096 boundary, so the head is checkable.
    payload = bytes(range(32, 128)) * 1066 + b"tail"
    decoder = FrameDecoder(1024)
    events: list[FrameEvent] = []
    stream = frame(payload) + frame(b"A|1")
    for i in range(0, len(stream), 1000):
        events += decoder.feed(stream[i : i + 1000])
    assert events == [Oversize(payload[:HEAD_BYTES], len(payload)), Frame(b"A|1")]


def test_pending_bytes_counts_an_unfinished_frame_and_clears_at_its_end() -> None:
    decoder = FrameDecoder(64)
    assert decoder.feed(b"junk" + SB + b"abc" + EB) == [Junk(4)]
    assert decoder.pending_bytes == 5
    assert decoder.feed(CR) == [Frame(b"abc")]
    assert decoder.pending_bytes == 0


def test_decoder_rejects_a_limit_below_one_byte() -> None:
    with pytest.raises(ConfigError):
        FrameDecoder(0)


@pytest.mark.parametrize("payload", [frame(b"A|1"), b"A" + EB + CR + b"B"], ids=["framed", "end block"])
def test_frame_refuses_a_payload_holding_block_characters(payload: bytes) -> None:
    with pytest.raises(FramingError):
        frame(payload)


# --------------------------------------------------------------------------- server fixtures


class FakeIntake:
    """Answers ``<prefix>-for-<control id>``; BOOM raises, QUIET answers nothing, HOLD waits for a gate."""

    def __init__(self, prefix: bytes = b"MSH|ACK") -> None:
        self.prefix = prefix
        self.payloads: list[bytes] = []
        self.oversize: list[tuple[bytes, int]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate = asyncio.Event()
        self.held = asyncio.Event()

    async def on_frame(self, payload: bytes, peer: str) -> bytes | None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            # Yield so that concurrent handling, if the server allowed it, would overlap here.
            await asyncio.sleep(0)
            control_id = _control_id(payload)
            if control_id.startswith(b"BOOM"):
                raise RuntimeError("DOE^JANE boom")
            if control_id.startswith(b"HOLD"):
                self.held.set()
                await self.gate.wait()
            self.payloads.append(payload)
            if control_id.startswith(b"QUIET"):
                return None
            return self.prefix + b"-for-" + control_id
        finally:
            self.in_flight -= 1

    async def on_oversize(self, head: bytes, size: int, peer: str) -> bytes | None:
        self.oversize.append((head, size))
        return b"MSH|NAK-" + str(size).encode()


Serve = Callable[..., Awaitable[MLLPServer]]


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[MutableMapping[str, Any]]]:
    """Whatever reaches the event loop's exception handler; every server test expects nothing."""
    loop = asyncio.get_running_loop()
    errors: list[MutableMapping[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(None)


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with capture_logs() as captured:
        yield captured


@pytest.fixture
async def serve(loop_errors: list[MutableMapping[str, Any]]) -> AsyncIterator[Serve]:
    servers: list[MLLPServer] = []

    async def start(handler: FakeIntake | None = None, **overrides: Any) -> MLLPServer:
        settings = MLLPSettings(**{"name": "test", "host": "127.0.0.1", "port": 0, **overrides})
        server = MLLPServer(settings, handler or FakeIntake())
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()
    assert loop_errors == []


async def _connect(server: MLLPServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def _read_frames(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    decoder = FrameDecoder(1 << 20)
    frames: list[bytes] = []
    async with asyncio.timeout(GUARD):
        while len(frames) < count:
            data = await reader.read(65536)
            assert data, f"connection closed after {len(frames)} of {count} frames"
            frames += [e.payload for e in decoder.feed(data) if isinstance(e, Frame)]
    return frames


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(GUARD):
        return await reader.read()


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(GUARD):
        while not condition():
            await asyncio.sleep(0.01)


def _events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def _assert_no_content(logs: list[MutableMapping[str, Any]]) -> None:
    assert not any("DOE" in repr(entry) or "MSH|" in repr(entry) for entry in logs)


# --------------------------------------------------------------------------- server


async def test_hundred_messages_on_one_connection_are_acked_in_order(serve: Serve) -> None:
    server = await serve()
    async with MLLPClient("127.0.0.1", server.port, timeout=GUARD) as client:
        acks = [await client.send(_msg(f"C{i}")) for i in range(100)]
    assert acks == [b"MSH|ACK-for-C%d" % i for i in range(100)]


async def test_frames_written_at_once_are_handled_one_at_a_time_in_order(serve: Serve) -> None:
    intake = FakeIntake()
    server = await serve(intake)
    reader, writer = await _connect(server)
    writer.write(b"".join(frame(_msg(f"P{i}")) for i in range(50)))
    acks = await _read_frames(reader, 50)
    writer.close()
    assert acks == [b"MSH|ACK-for-P%d" % i for i in range(50)]
    assert intake.max_in_flight == 1


async def test_two_listeners_serve_their_own_handler_under_their_own_name(
    serve: Serve, logs: list[MutableMapping[str, Any]]
) -> None:
    adt = await serve(FakeIntake(b"MSH|ADT"), name="adt")
    lab = await serve(FakeIntake(b"MSH|LAB"), name="lab")
    assert adt.port != lab.port
    async with MLLPClient("127.0.0.1", adt.port) as a, MLLPClient("127.0.0.1", lab.port) as b:
        assert await a.send(_msg("1")) == b"MSH|ADT-for-1"
        assert await b.send(_msg("2")) == b"MSH|LAB-for-2"
    opened = {entry["listener"] for entry in _events(logs, "mllp.connection_opened")}
    assert opened == {"adt", "lab"}


async def test_connections_beyond_the_limit_are_closed_at_once(
    serve: Serve, logs: list[MutableMapping[str, Any]]
) -> None:
    server = await serve(max_connections=2)
    first = MLLPClient("127.0.0.1", server.port)
    second = MLLPClient("127.0.0.1", server.port)
    for client in (first, second):
        await client.connect()
        await client.send(_msg("warm"))
    reader, writer = await _connect(server)
    assert await _read_to_eof(reader) == b""
    writer.close()
    assert server.connections == 2
    assert [e["outcome"] for e in _events(logs, "mllp.connection_refused")] == ["max_connections"]
    await first.close()
    await _until(lambda: server.connections == 1)
    async with MLLPClient("127.0.0.1", server.port) as third:
        assert await third.send(_msg("after")) == b"MSH|ACK-for-after"
    await second.close()


async def test_idle_connection_is_closed_after_the_idle_timeout(
    serve: Serve, logs: list[MutableMapping[str, Any]]
) -> None:
    server = await serve(idle_timeout=0.2)
    reader, writer = await _connect(server)
    assert await _read_to_eof(reader) == b""
    writer.close()
    await _until(lambda: server.connections == 0)
    assert len(_events(logs, "mllp.idle_timeout")) == 1


async def test_reset_mid_frame_does_not_disturb_another_connection(
    serve: Serve, logs: list[MutableMapping[str, Any]]
) -> None:
    server = await serve()
    async with MLLPClient("127.0.0.1", server.port) as healthy:
        assert await healthy.send(_msg("before")) == b"MSH|ACK-for-before"
        _, writer = await _connect(server)
        writer.write(SB + _msg("cut")[:20])
        await writer.drain()
        await _until(lambda: server.connections == 2)
        # SO_LINGER 0 makes close() send RST instead of FIN: the peer vanished mid-frame.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        await _until(lambda: server.connections == 1)
        assert await healthy.send(_msg("after")) == b"MSH|ACK-for-after"
    closed = [e["outcome"] for e in _events(logs, "mllp.connection_closed")]
    assert closed[0] in {"connection_lost", "incomplete_frame"}


async def test_incomplete_frame_at_eof_is_logged_and_only_that_connection_closes(
    serve: Serve, logs: list[MutableMapping[str, Any]]
) -> None:
    server = await serve()
    reader, writer = await _connect(server)
    writer.write(SB + _msg("cut"))
    writer.write_eof()
    assert await _read_to_eof(reader) == b""
    writer.close()
    await _until(lambda: server.connections == 0)
    [incomplete] = _events(logs, "mllp.incomplete_frame")
    assert incomplete["frame_bytes"] == 1 + len(_msg("cut"))
    _assert_no_content(logs)


async def test_handler_exception_closes_only_that_connection_without_an_ack(
    serve: Serve, logs: list[MutableMapping[str, Any]]
) -> None:
    server = await serve()
    async with MLLPClient("127.0.0.1", server.port) as healthy:
        reader, writer = await _connect(server)
        writer.write(frame(_msg("BOOM1")) + frame(_msg("NEXT")))
        assert await _read_to_eof(reader) == b""
        writer.close()
        assert await healthy.send(_msg("fine")) == b"MSH|ACK-for-fine"
    [failed] = _events(logs, "mllp.handler_failed")
    assert failed["exc_type"] == "RuntimeError"
    _assert_no_content(logs)


async def test_oversize_frame_gets_the_nak_and_the_next_frame_is_still_answered(
    serve: Serve, logs: list[MutableMapping[str, Any]]
) -> None:
    intake = FakeIntake()
    server = await serve(intake, max_frame_bytes=1024)
    big = _msg("BIG", b"OBX|1|ED|PDF||" + b"A" * 5000 + b"\r")
    reader, writer = await _connect(server)
    writer.write(frame(big) + frame(_msg("small")))
    assert await _read_frames(reader, 2) == [b"MSH|NAK-%d" % len(big), b"MSH|ACK-for-small"]
    writer.close()
    assert intake.oversize == [(big[:HEAD_BYTES], len(big))]
    assert [e["frame_bytes"] for e in _events(logs, "mllp.oversize")] == [len(big)]
    _assert_no_content(logs)


async def test_junk_outside_frames_is_logged_by_count_and_the_connection_kept(
    serve: Serve, logs: list[MutableMapping[str, Any]]
) -> None:
    server = await serve()
    reader, writer = await _connect(server)
    writer.write(b"DOE^JANE" + frame(_msg("1")) + b"\n")
    writer.write(SB + b"MSH|partial" + frame(_msg("2")))
    assert await _read_frames(reader, 2) == [b"MSH|ACK-for-1", b"MSH|ACK-for-2"]
    writer.close()
    junk = [(e["junk_bytes"], e["outcome"]) for e in _events(logs, "mllp.junk")]
    assert junk == [(8, "outside_frame"), (1, "outside_frame"), (12, "frame_interrupted")]
    _assert_no_content(logs)


async def test_handler_answering_none_sends_nothing_and_keeps_the_connection(serve: Serve) -> None:
    intake = FakeIntake()
    server = await serve(intake)
    reader, writer = await _connect(server)
    writer.write(frame(_msg("QUIET1")) + frame(_msg("2")))
    assert await _read_frames(reader, 1) == [b"MSH|ACK-for-2"]
    writer.close()
    assert [_control_id(p) for p in intake.payloads] == [b"QUIET1", b"2"]


async def test_stop_lets_the_frame_in_flight_finish_its_ack_then_closes(serve: Serve) -> None:
    intake = FakeIntake()
    server = await serve(intake)
    idle_reader, idle_writer = await _connect(server)
    busy_reader, busy_writer = await _connect(server)
    busy_writer.write(frame(_msg("HOLD1")) + frame(_msg("unsent")))
    async with asyncio.timeout(GUARD):
        await intake.held.wait()
    stopping = asyncio.create_task(server.stop())
    assert await _read_to_eof(idle_reader) == b""
    intake.gate.set()
    assert await _read_to_eof(busy_reader) == frame(b"MSH|ACK-for-HOLD1")
    async with asyncio.timeout(GUARD):
        await stopping
    assert server.connections == 0
    assert [_control_id(p) for p in intake.payloads] == [b"HOLD1"]
    with pytest.raises(OSError):
        await _connect(server)
    idle_writer.close()
    busy_writer.close()


async def test_start_on_a_port_in_use_raises_config_error(serve: Serve) -> None:
    server = await serve()
    with pytest.raises(ConfigError):
        await serve(port=server.port)


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = (
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
        " -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
    )
    subprocess.run(
        [*command.split(), "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_listener_answers_a_tls_sender_and_drops_a_plain_one(
    serve: Serve, tls_cert: tuple[Path, Path]
) -> None:
    cert, key = tls_cert
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    server = await serve(ssl=server_ctx)
    async with MLLPClient("127.0.0.1", server.port, ssl=client_ctx) as client:
        assert await client.send(_msg("tls")) == b"MSH|ACK-for-tls"
        reader, writer = await _connect(server)
        writer.write(frame(_msg("plain")))
        assert await _read_to_eof(reader) == b""
        writer.close()
        assert await client.send(_msg("still")) == b"MSH|ACK-for-still"


# --------------------------------------------------------------------------- client


async def _raw_server(
    respond: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A fake peer: resets and the loop's shutdown cancelling it are expected, not failures.
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await respond(reader, writer)
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _port(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    await asyncio.sleep(GUARD)


async def _dribbling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # One byte of an ACK that never ends, often enough to defeat any per-read timeout.
    await reader.read(65536)
    writer.write(SB)
    for _ in range(int(GUARD / 0.05)):
        writer.write(b"A")
        await writer.drain()
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("respond", [_silent, _dribbling], ids=["silent", "dribbling"])
async def test_client_send_gives_up_at_its_deadline(
    respond: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> None:
    server = await _raw_server(respond)
    client = MLLPClient("127.0.0.1", _port(server), timeout=0.3)
    await client.connect()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(GUARD):
            await client.send(_msg("1"))
    assert not client.connected
    server.close()


async def test_client_reassembles_an_ack_split_across_many_writes() -> None:
    ack = b"MSH|^~\\&|RCV|FAC|SND|FAC|20240101||ACK^A01^ACK|X|P|2.5\rMSA|AA|1\r" + b"NTE|" * 3000

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        block = frame(ack)
        for i in range(0, len(block), 997):
            writer.write(block[i : i + 997])
            await writer.drain()
            await asyncio.sleep(0.001)
        await reader.read()

    server = await _raw_server(trickle)
    async with MLLPClient("127.0.0.1", _port(server)) as client:
        assert await client.send(_msg("1")) == ack
    server.close()


async def test_client_raises_connection_error_when_the_peer_closes_before_replying() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)

    server = await _raw_server(hang_up)
    client = MLLPClient("127.0.0.1", _port(server), timeout=GUARD)
    await client.connect()
    with pytest.raises(ConnectionError):
        await client.send(_msg("1"))
    assert not client.connected
    server.close()


async def test_client_raises_framing_error_for_a_reply_over_its_limit() -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(frame(b"MSH|" + b"Z" * 500))
        await reader.read()

    server = await _raw_server(flood)
    client = MLLPClient("127.0.0.1", _port(server), max_frame_bytes=100)
    await client.connect()
    with pytest.raises(FramingError):
        await client.send(_msg("1"))
    server.close()


async def test_client_connect_to_a_closed_port_raises_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionError):
        await MLLPClient("127.0.0.1", port).connect()


async def test_client_send_before_connect_raises_connection_error() -> None:
    with pytest.raises(ConnectionError):
        await MLLPClient("127.0.0.1", 1).send(_msg("1"))
