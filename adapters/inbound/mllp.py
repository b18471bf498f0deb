"""MLLP (Release 1) transport for HL7 v2: frame and unframe bytes on TCP/TLS, serve and send.

This module owns the wire only. It cuts a byte stream into ``<SB> payload <EB><CR>`` blocks
(REFERENCE §1.1), hands each payload to a :class:`FrameHandler` and frames whatever the handler
answers. What a payload means and which ACK it deserves is decided by the core's intake; nothing
here parses HL7 or looks inside a payload, so nothing here can log message content.

Pieces:

- :func:`frame` and :class:`FrameDecoder`: pure framing, shared by the server and the client.
- :class:`MLLPServer`: an asyncio listener that handles each connection's frames strictly in
  order, one at a time, because senders keep one message in flight and expect ACKs in order
  (REFERENCE §1.4).
- :class:`MLLPClient`: a sender that waits for one whole ACK frame per message, under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from ssl import SSLContext
from types import TracebackType
from typing import Protocol, Self

import structlog

from bridge.config import ListenerConfig
from bridge.errors import ConfigError, FramingError

__all__ = [
    "HEAD_BYTES",
    "Frame",
    "FrameDecoder",
    "FrameEvent",
    "FrameHandler",
    "Junk",
    "MLLPClient",
    "MLLPServer",
    "MLLPSettings",
    "Oversize",
    "frame",
    "serve_listener",
    "tls_context",
]

log = structlog.get_logger(__name__)

_SB = b"\x0b"
_EB = 0x1C
_CR = 0x0D
_EB_BYTE = b"\x1c"
_END = b"\x1c\x0d"

#: How much of an oversize frame is kept, so the intake can still recover MSH for a precise NAK.
HEAD_BYTES = 4096

_READ_SIZE = 65536
#: How long :meth:`MLLPServer.stop` lets in-flight frames finish their ACK.
_STOP_GRACE = 5.0
#: How long a polite close may wait for the peer (a TLS close_notify round trip) before giving up.
_CLOSE_GRACE = 1.0


def frame(payload: bytes) -> bytes:
    """Wrap ``payload`` in an MLLP block.

    Raises :class:`FramingError` if the payload holds a start block or an end block: such a
    payload cannot be framed unambiguously. The usual cause is a file that is already framed.
    """
    if _SB in payload or _END in payload:
        raise FramingError("payload contains MLLP block characters (already framed?)")
    return _SB + payload + _END


@dataclass(frozen=True, slots=True)
class Frame:
    """A complete block; ``payload`` is what sat between SB and EB CR."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Junk:
    """``nbytes`` bytes that belong to no frame.

    ``interrupted`` is true when they were a frame cut short by a new start block: a sender
    that times out and resends starts over without ending the block it was writing.
    """

    nbytes: int
    interrupted: bool = False


@dataclass(frozen=True, slots=True)
class Oversize:
    """A complete block whose payload of ``size`` bytes exceeded the limit; ``head`` is its start."""

    head: bytes
    size: int


FrameEvent = Frame | Junk | Oversize


class FrameDecoder:
    """Incremental MLLP unframing: feed it whatever a read returned, get the events it completes.

    A read can hold part of a frame or several frames (REFERENCE §1.1), so state carries over
    between calls, including an end block whose CR has not arrived yet. No more than
    ``max(max_frame_bytes, HEAD_BYTES)`` bytes of one frame are ever held.
    """

    __slots__ = ("_buf", "_eb_pending", "_in_frame", "_max", "_over", "_size")

    def __init__(self, max_frame_bytes: int) -> None:
        if max_frame_bytes < 1:
            raise ConfigError("must be at least 1", path="max_frame_bytes")
        self._max = max_frame_bytes
        self._buf = bytearray()
        self._in_frame = False
        # Payload bytes seen in the current frame, including those discarded past the limit.
        self._size = 0
        self._over = False
        # The last chunk ended on EB: it ends the frame only if the next byte is CR.
        self._eb_pending = False

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished frame (SB included); 0 between frames."""
        if not self._in_frame:
            return 0
        return 1 + self._size + self._eb_pending

    def feed(self, data: bytes) -> list[FrameEvent]:
        """Consume ``data`` and return the frames, junk and oversize blocks it completes, in order."""
        events: list[FrameEvent] = []
        view = memoryview(data)
        pos = 0
        stop = len(data)
        while pos < stop:
            if not self._in_frame:
                start = data.find(_SB, pos)
                if start < 0:
                    events.append(Junk(stop - pos))
                    break
                if start > pos:
                    events.append(Junk(start - pos))
                self._begin()
                pos = start + 1
                continue
            if self._eb_pending:
                self._eb_pending = False
                if data[pos] == _CR:
                    events.append(self._finish())
                    pos += 1
                    continue
                self._append(memoryview(_EB_BYTE), 0, 1)
            end = data.find(_END, pos)
            restart = data.find(_SB, pos, end if end >= 0 else stop)
            if restart >= 0:
                self._append(view, pos, restart)
                events.append(Junk(1 + self._size, interrupted=True))
                self._begin()
                pos = restart + 1
            elif end >= 0:
                if self._size == 0 and end - pos <= self._max:
                    # The common case, a whole frame inside one read: slice it, skip the buffer.
                    events.append(Frame(data[pos:end]))
                    self._in_frame = False
                else:
                    self._append(view, pos, end)
                    events.append(self._finish())
                pos = end + 2
            else:
                if data[stop - 1] == _EB:
                    self._append(view, pos, stop - 1)
                    self._eb_pending = True
                else:
                    self._append(view, pos, stop)
                pos = stop
        return events

    def _begin(self) -> None:
        self._in_frame = True
        self._size = 0
        self._over = False
        self._eb_pending = False
        self._buf = bytearray()

    def _append(self, data: memoryview, start: int, stop: int) -> None:
        size = self._size + stop - start
        if not self._over and size <= self._max:
            self._buf += data[start:stop]
        else:
            # Past the limit only the head is worth keeping: the rest is counted and dropped
            # until the end block, so a huge frame costs no memory and the stream stays in step.
            self._over = True
            room = HEAD_BYTES - len(self._buf)
            if room > 0:
                self._buf += data[start : min(stop, start + room)]
            elif room < 0:
                del self._buf[HEAD_BYTES:]
        self._size = size

    def _finish(self) -> FrameEvent:
        self._in_frame = False
        body = bytes(self._buf)
        # A fresh buffer rather than clear(): a 1 MB frame should not pin 1 MB per idle connection.
        self._buf = bytearray()
        if self._over:
            return Oversize(body, self._size)
        return Frame(body)


class FrameHandler(Protocol):
    """What the server calls for each block; implemented by the core's intake."""

    async def on_frame(self, payload: bytes, peer: str) -> bytes | None:
        """Accept one payload; return the ACK payload (unframed ER7) to send back, or None."""
        ...

    async def on_oversize(self, head: bytes, size: int, peer: str) -> bytes | None:
        """A frame of ``size`` bytes was over the limit; ``head`` is its start. Return a NAK or None."""
        ...


@dataclass(frozen=True, slots=True)
class MLLPSettings:
    """One MLLP listener. ``name`` identifies it in logs."""

    name: str
    host: str = "0.0.0.0"
    port: int = 2575
    max_frame_bytes: int = 1_048_576
    #: Seconds without a byte from the peer (or without the peer taking our ACK) before closing.
    idle_timeout: float = 300.0
    #: Connections beyond this are closed as soon as they are accepted.
    max_connections: int = 100
    #: TLS (REFERENCE §1.7); require client certificates on the context for mutual TLS.
    ssl: SSLContext | None = None


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


class MLLPServer:
    """An MLLP listener: many connections, many messages per connection, one frame at a time each."""

    def __init__(self, settings: MLLPSettings, handler: FrameHandler) -> None:
        self._settings = settings
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._stopping = False
        self._port = settings.port

    @property
    def port(self) -> int:
        """The bound port once started (the real one when the settings ask for port 0)."""
        return self._port

    @property
    def connections(self) -> int:
        """Connections currently being served."""
        return len(self._connections)

    @property
    def settings(self) -> MLLPSettings:
        return self._settings

    @property
    def stopping(self) -> bool:
        """True from the moment :meth:`stop` is called until the next :meth:`start`."""
        return self._stopping

    async def start(self) -> None:
        """Bind and start accepting. Raises :class:`ConfigError` if the address cannot be bound."""
        if self._server is not None:
            return
        s = self._settings
        self._stopping = False
        try:
            self._server = await asyncio.start_server(self._accept, s.host, s.port, ssl=s.ssl)
        except OSError as exc:
            raise ConfigError(f"listener {s.name!r} cannot bind {s.host}:{s.port}: {exc}") from exc
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("mllp.listening", listener=s.name, host=s.host, port=self._port, tls=s.ssl is not None)

    async def stop(self) -> None:
        """Stop accepting, let frames in flight finish their ACK (up to 5 s), close every connection."""
        server = self._server
        if server is None:
            return
        self._stopping = True
        server.close()
        for conn in list(self._connections):
            if not conn.busy:
                conn.task.cancel()
        tasks = {conn.task for conn in self._connections}
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=_STOP_GRACE)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        await server.wait_closed()
        self._server = None
        log.info("mllp.stopped", listener=self._settings.name, port=self._port)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, not a coroutine: start_server would wrap a coroutine in a task of its
        # own whose cancellation (at stop) reaches the loop's exception handler on Python 3.11.
        peer = _peer_name(writer)
        s = self._settings
        if self._stopping or len(self._connections) >= s.max_connections:
            log.warning(
                "mllp.connection_refused",
                listener=s.name,
                peer=peer,
                connections=len(self._connections),
                outcome="stopping" if self._stopping else "max_connections",
            )
            writer.close()
            return
        conn = _Connection(self, self._handler, reader, writer, peer)
        self._connections.add(conn)
        conn.task.add_done_callback(lambda _: self._connections.discard(conn))


class _Connection:
    """One accepted connection: read, unframe, hand each frame over, write its reply, in order."""

    __slots__ = (
        "_handler",
        "_log",
        "_reader",
        "_server",
        "_settings",
        "_writer",
        "busy",
        "frames",
        "peer",
        "task",
    )

    def __init__(
        self,
        server: MLLPServer,
        handler: FrameHandler,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> None:
        self._server = server
        self._settings = server.settings
        self._handler = handler
        self._reader = reader
        self._writer = writer
        self._log = log.bind(listener=self._settings.name, peer=peer)
        self.peer = peer
        #: True while a chunk's frames are being handled; stop() waits for those, not for reads.
        self.busy = False
        self.frames = 0
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        self._log.info("mllp.connection_opened", connections=self._server.connections)
        outcome = "failed"
        try:
            outcome = await self._run()
        except asyncio.CancelledError:
            outcome = "stopped"
            self._writer.close()
            raise
        except OSError as exc:
            # Reset, broken pipe, TLS failure: this connection is gone, the listener is not.
            outcome = "connection_lost"
            self._log.warning("mllp.connection_lost", exc_type=type(exc).__name__, frames=self.frames)
            self._writer.transport.abort()
        except Exception as exc:
            # The boundary: whatever went wrong costs this connection only and never reaches the
            # event loop's exception handler.
            self._log.error("mllp.connection_failed", exc_type=type(exc).__name__, frames=self.frames)
            self._writer.transport.abort()
        else:
            await self._close()
        finally:
            self._log.info("mllp.connection_closed", outcome=outcome, frames=self.frames)

    async def _run(self) -> str:
        decoder = FrameDecoder(self._settings.max_frame_bytes)
        idle = self._settings.idle_timeout
        while True:
            self.busy = False
            if self._server.stopping:
                return "stopped"
            try:
                async with asyncio.timeout(idle):
                    data = await self._reader.read(_READ_SIZE)
            except TimeoutError:
                self._log.warning("mllp.idle_timeout", waiting_for="data", idle_timeout=idle)
                return "idle_timeout"
            self.busy = True
            if not data:
                pending = decoder.pending_bytes
                if pending:
                    self._log.warning("mllp.incomplete_frame", frame_bytes=pending)
                    return "incomplete_frame"
                return "eof"
            for event in decoder.feed(data):
                outcome = await self._handle(event)
                if outcome is not None:
                    return outcome
                if self._server.stopping:
                    # The sender resends what we have not ACKed; nothing after this frame is taken.
                    return "stopped"

    async def _handle(self, event: FrameEvent) -> str | None:
        """Handle one decoder event; return an outcome to close the connection, None to go on."""
        if isinstance(event, Junk):
            self._log.warning(
                "mllp.junk",
                junk_bytes=event.nbytes,
                outcome="frame_interrupted" if event.interrupted else "outside_frame",
            )
            return None
        try:
            if isinstance(event, Frame):
                nbytes = len(event.payload)
                reply = await self._handler.on_frame(event.payload, self.peer)
            else:
                nbytes = event.size
                self._log.warning("mllp.oversize", frame_bytes=event.size, limit=self._settings.max_frame_bytes)
                reply = await self._handler.on_oversize(event.head, event.size, self.peer)
        except Exception as exc:
            # Whatever the handler did is uncommitted as far as we know: no ACK, close, and let
            # the sender resend (DESIGN §2, ack after commit).
            self._log.error("mllp.handler_failed", exc_type=type(exc).__name__, frame_bytes=nbytes)
            return "handler_failed"
        self.frames += 1
        if reply is None:
            self._log.debug("mllp.frame", frame_bytes=nbytes, outcome="no_reply")
            return None
        writer = self._writer
        writer.write(frame(reply))
        if not writer.transport.get_write_buffer_size():
            # The socket took the whole ACK, so drain() cannot wait (writing is paused only above the
            # high-water mark); it still raises if the connection is gone. No timer per ACK.
            await writer.drain()
            self._log.debug("mllp.frame", frame_bytes=nbytes, outcome="replied", reply_bytes=len(reply))
            return None
        try:
            async with asyncio.timeout(self._settings.idle_timeout):
                await writer.drain()
        except TimeoutError:
            self._log.warning("mllp.idle_timeout", waiting_for="ack_read", idle_timeout=self._settings.idle_timeout)
            return "idle_timeout"
        self._log.debug("mllp.frame", frame_bytes=nbytes, outcome="replied", reply_bytes=len(reply))
        return None

    async def _close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(_CLOSE_GRACE):
                await self._writer.wait_closed()


class MLLPClient:
    """An MLLP sender: one message in flight, each :meth:`send` returns the next frame received.

    Every wait (connect, and write-plus-ACK per message) is bounded by one deadline of
    ``timeout`` seconds, not a per-read timeout, so a peer that dribbles bytes cannot stall it
    (REFERENCE §1.4). The ACK is reassembled from however many reads it takes (python-hl7
    #17, #44). After any error the client is disconnected; :meth:`connect` again to resend.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        ssl: SSLContext | None = None,
        max_frame_bytes: int = 1_048_576,
    ) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout
        self._ssl = ssl
        self._max_frame_bytes = max_frame_bytes
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = FrameDecoder(max_frame_bytes)
        self._frames: deque[bytes] = deque()

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def connect(self) -> None:
        """Open the connection. Raises TimeoutError or ConnectionError."""
        if self._writer is not None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                self._reader, self._writer = await asyncio.open_connection(self._host, self._port, ssl=self._ssl)
        except TimeoutError:
            raise
        except OSError as exc:
            raise ConnectionError(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
        self._decoder = FrameDecoder(self._max_frame_bytes)
        self._frames.clear()

    async def send(self, payload: bytes) -> bytes:
        """Send one message and return the payload of the frame that answers it.

        Raises TimeoutError (no complete frame before the deadline), ConnectionError (not
        connected, refused, reset, or closed by the peer before answering) or FramingError
        (the payload cannot be framed, or the answer exceeds ``max_frame_bytes``).
        """
        block = frame(payload)
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            raise ConnectionError("not connected")
        try:
            async with asyncio.timeout(self._timeout):
                writer.write(block)
                await writer.drain()
                while not self._frames:
                    await self._read_into_queue(reader)
        except TimeoutError:
            self._abort()
            raise TimeoutError(f"no reply from {self._host}:{self._port} within {self._timeout} s") from None
        except ConnectionError:
            self._abort()
            raise
        except OSError as exc:
            self._abort()
            raise ConnectionError(f"connection to {self._host}:{self._port} failed: {exc}") from exc
        except FramingError:
            self._abort()
            raise
        return self._frames.popleft()

    async def _read_into_queue(self, reader: asyncio.StreamReader) -> None:
        data = await reader.read(_READ_SIZE)
        if not data:
            raise ConnectionError(f"{self._host}:{self._port} closed the connection before replying")
        for event in self._decoder.feed(data):
            if isinstance(event, Frame):
                self._frames.append(event.payload)
            elif isinstance(event, Oversize):
                raise FramingError(f"reply of {event.size} bytes exceeds {self._max_frame_bytes} bytes")
            else:
                log.warning("mllp.client_junk", peer=f"{self._host}:{self._port}", junk_bytes=event.nbytes)

    async def close(self) -> None:
        """Close the connection politely; a no-op when not connected."""
        writer = self._writer
        self._reader = self._writer = None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(_CLOSE_GRACE):
                await writer.wait_closed()

    def _abort(self) -> None:
        # After a timeout or a broken stream, a late reply would pair with the next message:
        # drop the connection so the caller starts clean.
        if self._writer is not None:
            self._writer.transport.abort()
        self._reader = self._writer = None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def tls_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """A server TLS context (1.2+); with ``client_ca`` the client must present a certificate (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        if client_ca is not None:
            context.load_verify_locations(client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS material: {exc}", path="listeners[].tls") from exc
    return context


def serve_listener(listener: ListenerConfig, handler: FrameHandler) -> MLLPServer:
    """The registry's ``mllp`` factory: an (unstarted) server for one configured listener."""
    tls = listener.tls
    settings = MLLPSettings(
        name=listener.name,
        host=listener.host,
        port=listener.port or 0,
        max_frame_bytes=listener.max_frame_bytes,
        idle_timeout=listener.idle_timeout,
        max_connections=listener.max_connections,
        ssl=tls_context(tls.cert, tls.key, tls.client_ca) if tls else None,
    )
    return MLLPServer(settings, handler)
