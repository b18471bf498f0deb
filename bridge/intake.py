"""Intake: the one entry point for inbound HL7 v2, whatever the transport.

``accept`` reads the payload (lazily), recognises duplicates, maps and routes,
commits the journal row, the events and the outbox rows in one transaction,
and only then builds the ACK (DESIGN.md §2.1). Every failure becomes a NAK
with an ERR segment; nothing here raises to the transport.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import structlog

from bridge import metrics
from bridge.config import ListenerConfig, Settings
from bridge.errors import HL7Error, ParseError, StoreError, ValidationError
from bridge.hl7 import (
    AckCode,
    Message,
    build_ack,
    build_nak_from_bytes,
    new_control_id,
    parse,
    split_messages,
)
from bridge.hl7.header import REJECT_CODES, check_header
from bridge.hl7.validation import validate_strict
from bridge.mapping import Mapper
from bridge.routing import Router
from bridge.store import JournalEntry, MessageStatus, NewDelivery, Store, new_id

__all__ = ["Intake", "RawMessage", "Receipt"]

log = structlog.get_logger(__name__)

Outcome = Literal["accept", "error", "reject"]

# Worst first: a payload of several messages answers with its worst outcome.
_CODE_RANK = {
    AckCode.AR: 0,
    AckCode.CR: 0,
    AckCode.AE: 1,
    AckCode.CE: 1,
    AckCode.AA: 2,
    AckCode.CA: 2,
}


@dataclass(frozen=True, slots=True)
class RawMessage:
    """Bytes as a transport received them."""

    listener: str
    payload: bytes
    transport: str
    peer: str = ""
    #: Charset from the transport (HTTP Content-Type); overrides MSH-18 (HAPI HL7-over-HTTP §1.2).
    charset: str | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    """The answer to a RawMessage: the ACK bytes (one ACK per message, CR-terminated segments)."""

    ack: bytes
    code: AckCode
    control_ids: tuple[str, ...] = ()


class Intake:
    """Turns raw HL7 into committed events and an ACK."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        mapper: Mapper,
        router: Router,
        *,
        on_commit: Callable[[Iterable[str]], None] = lambda channels: None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.mapper = mapper
        self.router = router
        self.on_commit = on_commit

    def listener(self, name: str) -> ListenerConfig:
        found = self.settings.listener(name)
        if found is None:
            raise KeyError(name)
        return found

    async def accept(self, raw: RawMessage) -> Receipt:
        """Accept every message in ``raw.payload`` (one, a batch or a concatenation)."""
        started = time.perf_counter()
        parts = split_messages(raw.payload)
        if not parts:
            receipt = await self.reject(raw, ParseError("empty message: no MSH segment", location=("MSH", 1, 1)))
        else:
            acks: list[bytes] = []
            codes: list[AckCode] = []
            ids: list[str] = []
            for part in parts:
                ack, code, control_id = await self._accept_one(raw, part)
                acks.append(ack)
                codes.append(code)
                ids.append(control_id)
            receipt = Receipt(b"".join(acks), min(codes, key=_CODE_RANK.__getitem__), tuple(ids))
        metrics.ACK_SECONDS.labels(raw.listener).observe(time.perf_counter() - started)
        return receipt

    async def reject(self, raw: RawMessage, error: HL7Error, *, outcome: Outcome = "error") -> Receipt:
        """Journal ``raw`` as rejected and answer with the best NAK its bytes allow."""
        now = datetime.now(UTC)
        ack = build_nak_from_bytes(
            raw.payload,
            "reject" if outcome == "reject" else "error",
            control_id=new_control_id(),
            now=now,
            error=error,
        )
        code = _msa1(ack)
        await self._journal_rejection(raw, raw.payload, error, code, message=None)
        return Receipt(ack, code)

    async def _accept_one(self, raw: RawMessage, payload: bytes) -> tuple[bytes, AckCode, str]:
        cfg = self.listener(raw.listener)
        now = datetime.now(UTC)
        try:
            message = parse(payload, charset=raw.charset, fallback=cfg.charset_fallback)
        except ParseError as exc:
            ack = build_nak_from_bytes(payload, "error", control_id=new_control_id(), now=now, error=exc)
            code = _msa1(ack)
            await self._journal_rejection(raw, payload, exc, code, message=None)
            return ack, code, ""
        control_id = message.control_id
        try:
            check_header(message)
            if cfg.validation == "strict":
                validate_strict(message)
            return await self._commit(raw, payload, message, now)
        except ValidationError as exc:
            return await self._nak(raw, payload, message, "reject" if exc.code in REJECT_CODES else "error", exc, now)
        except StoreError as exc:
            # Our problem, not the sender's: AR tells it to resend the unchanged message later.
            log.error("intake.store_failed", listener=raw.listener, control_id=control_id, error=str(exc))
            ack = build_ack(
                message,
                "reject",
                control_id=new_control_id(),
                now=now,
                error=HL7Error("receiver could not store the message; resend later", code=207),
            )
            metrics.MESSAGES.labels(raw.listener, "store_failed").inc()
            return ack, _msa1(ack), control_id
        except Exception as exc:  # boundary: a bug in mapping must become a NAK, never silence
            log.exception("intake.failed", listener=raw.listener, control_id=control_id, error=type(exc).__name__)
            err = HL7Error(f"application internal error ({type(exc).__name__})", code=207)
            return await self._nak(raw, payload, message, "error", err, now)

    async def _commit(
        self, raw: RawMessage, payload: bytes, message: Message, now: datetime
    ) -> tuple[bytes, AckCode, str]:
        message_id = new_id()
        received_at = now.timestamp()
        origin = {"listener": raw.listener, "control_id": message.control_id, "transport": raw.transport}
        events = self.mapper.map_hl7(
            message,
            message_id=message_id,
            source=f"urn:ehr-bridge:hl7v2:{raw.listener}",
            received_at=now,
            origin=origin,
        )
        routed = [(event, [NewDelivery(channel=c) for c in self.router.channels_for(event)]) for event in events]
        status = MessageStatus.ACCEPTED if events or self.mapper.matches(message) else MessageStatus.UNMAPPED
        ack = build_ack(message, "accept", control_id=new_control_id(), now=now)
        code = _msa1(ack)
        entry = JournalEntry(
            id=message_id,
            listener=raw.listener,
            transport=raw.transport,
            received_at=received_at,
            raw=payload,
            status=status,
            ack_code=code.value,
            control_id=message.control_id,
            sending_application=message.sending_application,
            sending_facility=message.sending_facility,
            message_type=f"{message.message_code}^{message.trigger}".rstrip("^"),
            peer=raw.peer,
        )
        result = await self.store.commit_message(entry, routed, dedup_window=self.settings.dedup.window_seconds)
        outcome = "duplicate" if result.duplicate else status.value
        metrics.MESSAGES.labels(raw.listener, outcome).inc()
        log.info(
            "intake.accepted",
            listener=raw.listener,
            control_id=message.control_id,
            message_id=message_id,
            message_type=entry.message_type,
            events=0 if result.duplicate else len(events),
            deliveries=len(result.delivery_ids),
            outcome=outcome,
        )
        if result.delivery_ids:
            self.on_commit({d.channel for _, ds in routed for d in ds})
        return ack, code, message.control_id

    async def _nak(
        self,
        raw: RawMessage,
        payload: bytes,
        message: Message,
        outcome: Outcome,
        error: HL7Error,
        now: datetime,
    ) -> tuple[bytes, AckCode, str]:
        ack = build_ack(message, outcome, control_id=new_control_id(), now=now, error=error)
        code = _msa1(ack)
        await self._journal_rejection(raw, payload, error, code, message=message)
        return ack, code, message.control_id

    async def _journal_rejection(
        self, raw: RawMessage, payload: bytes, error: HL7Error, code: AckCode, *, message: Message | None
    ) -> None:
        entry = JournalEntry(
            id=new_id(),
            listener=raw.listener,
            transport=raw.transport,
            received_at=time.time(),
            raw=payload,
            status=MessageStatus.REJECTED,
            ack_code=code.value,
            control_id=message.control_id if message else "",
            sending_application=message.sending_application if message else "",
            sending_facility=message.sending_facility if message else "",
            message_type=f"{message.message_code}^{message.trigger}".rstrip("^") if message else "",
            peer=raw.peer,
            error=f"{error.code} {error}"[:500],
        )
        metrics.MESSAGES.labels(raw.listener, "rejected").inc()
        log.warning(
            "intake.rejected",
            listener=raw.listener,
            control_id=entry.control_id,
            ack_code=code.value,
            error_code=error.code,
            error_type=type(error).__name__,
        )
        try:
            await self.store.journal(entry)
        except StoreError as exc:
            # The NAK still goes out: a NAK loses nothing, the sender keeps the message.
            log.error("intake.journal_failed", listener=raw.listener, error=str(exc))


def _msa1(ack: bytes) -> AckCode:
    """MSA-1 of the (first) ACK we built; we know its layout, so no full parse."""
    start = ack.find(b"\rMSA") + 4
    sep = ack[3:4]
    return AckCode(ack[start + 1 : start + 3].decode("ascii")) if sep else AckCode.AE
