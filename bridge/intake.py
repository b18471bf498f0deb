"""Intake: the one entry point for inbound HL7 v2, whatever the transport.

``accept`` reads the payload (lazily), recognises duplicates, maps and routes,
commits the journal row, the events and the outbox rows in one transaction,
and only then builds the ACK (DESIGN.md §2.1). Every failure becomes a NAK
with an ERR segment; nothing here raises to the transport.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
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
from bridge.logs import error_fields
from bridge.mapping import Mapper
from bridge.routing import Router
from bridge.store import JournalEntry, MessageStatus, NewDelivery, Store, new_id

__all__ = ["Intake", "RawMessage", "Receipt"]

log = structlog.get_logger(__name__)

Outcome = Literal["accept", "error", "reject"]

#: Time budget of one strict validation (hl7apy); a message that needs more is answered AE.
_STRICT_BUDGET = 10.0
#: NAKs built from unparsable bytes are latin-1: every byte value maps to a character.
_NAK_ENCODING = "iso-8859-1"

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
    #: The failure was ours (store, internal error): the sender should resend the unchanged message later.
    transient: bool = False
    #: Python codec the ACK bytes are encoded in (the inbound message's).
    encoding: str = "ascii"


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
        self._validator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hl7-strict-validation")

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
            answers = [await self._accept_one(raw, part) for part in parts]
            receipt = Receipt(
                ack=b"".join(a.ack for a in answers),
                code=min((a.code for a in answers), key=_CODE_RANK.__getitem__),
                control_ids=tuple(cid for a in answers for cid in a.control_ids),
                transient=any(a.transient for a in answers),
                encoding=answers[0].encoding,
            )
        metrics.ack_seconds(raw.listener).observe(time.perf_counter() - started)
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

    async def _accept_one(self, raw: RawMessage, payload: bytes) -> Receipt:
        cfg = self.listener(raw.listener)
        now = datetime.now(UTC)
        try:
            message = parse(payload, charset=raw.charset, fallback=cfg.charset_fallback)
        except ParseError as exc:
            ack = build_nak_from_bytes(payload, "error", control_id=new_control_id(), now=now, error=exc)
            code = _msa1(ack)
            await self._journal_rejection(raw, payload, exc, code, message=None)
            return Receipt(ack, code, ("",), encoding=_NAK_ENCODING)
        control_id = message.control_id
        try:
            check_header(message)
            if cfg.validation == "strict":
                await self._validate_strict(message)
            return await self._commit(raw, payload, message, now)
        except ValidationError as exc:
            return await self._nak(raw, payload, message, "reject" if exc.code in REJECT_CODES else "error", exc, now)
        except StoreError as exc:
            # Our problem, not the sender's: AR tells it to resend the unchanged message later.
            log.error("intake.store_failed", listener=raw.listener, control_id=control_id, **error_fields(exc))
            metrics.messages(raw.listener, "store_failed").inc()
            error = HL7Error("receiver could not store the message; resend later", code=207)
            ack = build_ack(message, "reject", control_id=new_control_id(), now=now, error=error)
            return Receipt(ack, _msa1(ack), (control_id,), transient=True, encoding=message.encoding)
        except Exception as exc:  # boundary: a bug of ours must become a NAK, never silence
            # AR, not AE: nothing is wrong with the message (it is journaled); a resend after the fix works.
            log.error("intake.failed", listener=raw.listener, control_id=control_id, **error_fields(exc))
            err = HL7Error(f"application internal error ({type(exc).__name__}); resend later", code=207)
            receipt = await self._nak(raw, payload, message, "reject", err, now)
            return replace(receipt, transient=True)

    async def _validate_strict(self, message: Message) -> None:
        # hl7apy costs milliseconds per segment: off the event loop, one at a time, within a budget.
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self._validator, validate_strict, message), _STRICT_BUDGET)
        except TimeoutError as exc:
            raise ValidationError(f"strict validation did not finish within {_STRICT_BUDGET:.0f} s", code=207) from exc

    async def _commit(self, raw: RawMessage, payload: bytes, message: Message, now: datetime) -> Receipt:
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
        result = await self.store.commit_message(
            entry, routed, dedup_window=self.settings.dedup.window_seconds, channels=self.settings.channels.keys()
        )
        outcome = "duplicate" if result.duplicate else status.value
        if result.control_id_reused:
            # Same sender and control ID, different content: a new message (counter reset), not a resend.
            log.warning("intake.control_id_reused", listener=raw.listener, control_id=message.control_id)
        metrics.messages(raw.listener, outcome).inc()
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
            # result.channels adds those a correction or cancellation follows its original to.
            self.on_commit({d.channel for _, ds in routed for d in ds} | set(result.channels))
        return Receipt(ack, code, (message.control_id,), encoding=message.encoding)

    async def _nak(
        self,
        raw: RawMessage,
        payload: bytes,
        message: Message,
        outcome: Outcome,
        error: HL7Error,
        now: datetime,
    ) -> Receipt:
        ack = build_ack(message, outcome, control_id=new_control_id(), now=now, error=error)
        code = _msa1(ack)
        await self._journal_rejection(raw, payload, error, code, message=message)
        return Receipt(ack, code, (message.control_id,), encoding=message.encoding)

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
        metrics.messages(raw.listener, "rejected").inc()
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
            log.error("intake.journal_failed", listener=raw.listener, **error_fields(exc))


def _msa1(ack: bytes) -> AckCode:
    """MSA-1 of the (first) ACK we built; we know its layout, so no full parse."""
    start = ack.find(b"\rMSA") + 4
    sep = ack[3:4]
    return AckCode(ack[start + 1 : start + 3].decode("ascii")) if sep else AckCode.AE
