"""The durable store: the journal, events, the delivery outbox, threads, the inbox feed and the audit trail.

:class:`Store` is the protocol every backend implements; ``sqlite`` is the
embedded default. The one write that matters, :meth:`Store.commit_message`,
writes a journal row, its events and their outbox rows in a single
transaction; intake sends the ACK only after it returns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from bridge.events import ClinicalEvent, Severity

__all__ = [
    "ClaimedDelivery",
    "CommitResult",
    "DeliveryRow",
    "DeliveryStatus",
    "EventStatus",
    "JournalEntry",
    "MessageStatus",
    "NewDelivery",
    "Store",
    "SubscriptionProgress",
    "SubscriptionState",
    "new_id",
]


def new_id() -> str:
    """A time-ordered unique id (48-bit milliseconds + 64 random bits, hex): sorts by creation."""
    return f"{int(time.time() * 1000):012x}{os.urandom(8).hex()}"


class MessageStatus(StrEnum):
    """Journal status of an inbound message."""

    #: Committed with its events (possibly none routed).
    ACCEPTED = "accepted"
    #: Seen before within the dedup window: re-ACKed, nothing new created.
    DUPLICATE = "duplicate"
    #: Answered with a NAK (AE/AR); the raw bytes are kept for analysis and replay.
    REJECTED = "rejected"
    #: Accepted, but no mapping matches its type: ACKed AA, no events.
    UNMAPPED = "unmapped"


class EventStatus(StrEnum):
    """What routing made of an event."""

    #: At least one channel gets it.
    ROUTED = "routed"
    #: No route matched: journaled only (the sender did nothing wrong).
    UNROUTED = "unrouted"
    #: The same clinical fact (dedup key) was already recorded within the window.
    DUPLICATE = "duplicate"


class DeliveryStatus(StrEnum):
    """State of one event's delivery to one channel (the outbox)."""

    #: Waiting for its turn (``next_attempt_at``) and for earlier events of its thread.
    PENDING = "pending"
    #: Claimed by a worker; pending again at restart or when its lease runs out unrecorded.
    IN_FLIGHT = "in_flight"
    #: The target accepted it.
    DELIVERED = "delivered"
    #: Gave up (permanent error or attempts exhausted); ``dlq replay`` resurrects it.
    DEAD = "dead"
    #: Not sent, for good: when it came to be sent (a replay), a later correction or cancellation of
    #: its subject had already reached the channel, and sending it would bring back what that one
    #: replaced. Audited (``delivery.superseded``); not a dead letter, since nothing is left to replay.
    SUPERSEDED = "superseded"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One inbound message (or unparsable payload) as journaled. No content besides ``raw``."""

    id: str
    listener: str
    transport: str
    received_at: float
    raw: bytes
    status: MessageStatus
    ack_code: str
    control_id: str = ""
    sending_application: str = ""
    sending_facility: str = ""
    message_type: str = ""
    peer: str = ""
    #: Short reason for a rejection (0357 code and text), never content.
    error: str = ""


@dataclass(frozen=True, slots=True)
class NewDelivery:
    channel: str
    #: First attempt not before this time (quiet hours, digests later).
    not_before: float = 0.0
    #: Created dead with this error instead of pending: a correction or cancellation following a post
    #: that is dead in the channel (``dlq replay`` sends both, in thread order).
    dead: str = ""
    #: The thread to deliver in, when not the event's own: a correction or cancellation goes in the
    #: thread of the post it supersedes in that channel (claim order and thread root follow that post).
    thread_key: str | None = None


@dataclass(frozen=True, slots=True)
class CommitResult:
    #: True when (MSH-3, MSH-4, MSH-10) and the body after MSH were already accepted within the window;
    #: nothing was written but the journal row.
    duplicate: bool
    #: Ids of the delivery rows created.
    delivery_ids: tuple[str, ...] = ()
    #: The (MSH-3, MSH-4, MSH-10) triple was accepted within the window with a different body: the
    #: sender reused a control id (its counter reset), so the message was accepted as new.
    control_id_reused: bool = False
    #: Channels that got a pending delivery, routed or following a post (the workers to wake), each once.
    channels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SubscriptionProgress:
    """FHIR subscription state that must commit in the same transaction as the notification's events."""

    subscription: str
    #: Highest event number now committed (never lowered).
    last_event_number: int | None = None
    #: R4 classic: the ``_lastUpdated`` of the newest resource seen, for the next search.
    watermark: str | None = None
    #: ("Type/id", versionId, resource JSON) of each resource as now current: the "previous" of the next version.
    snapshots: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """What the bridge knows of one FHIR subscription."""

    name: str
    #: requested | active | error | off, as the last handshake, heartbeat or $status said.
    status: str = "requested"
    last_event_number: int = 0
    last_seen_at: float | None = None
    watermark: str | None = None
    error: str = ""
    #: When silence was last reported as ``bridge.subscription.stale`` (reported once per silence).
    stale_since: float | None = None


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery handed to a worker, with what rendering needs."""

    id: str
    channel: str
    attempts: int
    event: ClinicalEvent
    #: External id of the thread root in this channel, if one was posted.
    thread_ref: str | None
    #: External id of the post this event corrects or cancels, if found (a cancellation: the latest of them).
    original_ref: str | None
    #: Severity of what the post ``original_ref`` shows: its event's, or that of the latest correction
    #: recorded against it. A correction more severe than that also alerts (``bridge.delivery.alert_for``).
    original_severity: Severity | None = None
    #: Every post the event changes, latest first (``original_ref`` is the first): a correction edits
    #: the latest post; a cancellation strikes each post of the subject the channel made (the
    #: preliminary report's and the final one's), except older ones already struck. Either way the
    #: alerts that shadow those posts (an earlier correction's, see ``mark_delivered``) come last,
    #: edited or struck along with them.
    original_refs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """A delivery as listed by ``dlq list`` and the admin API."""

    id: str
    event_id: str
    channel: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_error: str
    updated_at: float
    extra: dict[str, Any] = field(default_factory=dict)


class Store(Protocol):
    """What intake, delivery and the CLI need from a durable store."""

    @property
    def healthy(self) -> bool:
        """False once the store can no longer write (its writer died): the process must be restarted."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def commit_message(
        self,
        entry: JournalEntry,
        events: list[tuple[ClinicalEvent, list[NewDelivery]]],
        *,
        dedup_window: float,
        progress: SubscriptionProgress | None = None,
        channels: Collection[str] | None = None,
    ) -> CommitResult:
        """Journal ``entry`` with its events and outbox rows in one transaction.

        ``progress`` (FHIR) is written in the same transaction: the event number and
        resource versions count as seen only if the events they produced are committed.

        For an ACCEPTED entry whose (sending app, facility, control id) and
        body after the MSH segment were accepted within ``dedup_window``
        seconds, the entry is journaled as a duplicate and nothing else is
        written; the same triple with another body is a new message
        (``control_id_reused``). An event whose dedup key was recorded within
        the window gets no deliveries.

        A correction or cancellation gets, besides its routed deliveries, one to
        every other channel that holds a post it supersedes (delivered or still
        to be sent; see :meth:`claim` for which post), so it reaches that post
        whatever the routes say: of ``channels`` only (the configured ones;
        None: any). Where that post is dead, so is the new delivery, and ``dlq
        replay`` sends both in order. In a channel holding the post, the
        delivery goes in that post's thread, which may not be the event's own.
        """
        ...

    async def journal(self, entry: JournalEntry) -> None:
        """Record a message without events (a rejection)."""
        ...

    async def subscription_state(self, name: str) -> SubscriptionState:
        """The state of subscription ``name`` (defaults when never seen)."""
        ...

    async def record_subscription(self, name: str, **fields: Any) -> None:
        """Update some of status, last_seen_at, error, stale_since of subscription ``name``."""
        ...

    async def snapshots(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The last committed version of each resource ("Type/id") the bridge has seen."""
        ...

    async def claim(self, channel: str, *, now: float, limit: int) -> list[ClaimedDelivery]:
        """Claim due deliveries of ``channel``, only the oldest open one per thread key.

        A delivery in flight for longer than the store's lease is pending again
        first (its outcome was never recorded), so it is sent once more.

        A correction's or cancellation's ``original_ref`` is the latest post its
        channel made itself (a delivery that posted, not one that edited or struck
        another post) of an event it supersedes: of the types the catalogue lists
        for its type and lifecycle, and, when its link names a subject key, of
        that key and the same subject kind, in any thread of the same patient. A
        link naming event types takes the latest post of those types in the
        delivery's thread (of the same subject unless it is the visit).
        ``original_severity`` is the severity that post shows. A cancellation's
        ``original_refs`` are every such post not struck already, latest first;
        any delivery's are followed by the delivered alerts shadowing them.

        An alert delivery (made by ``mark_delivered(alert=True)``) is handed out
        as a new post in its thread (no ``original_ref``).

        A delivery that a later correction or cancellation, already delivered in
        the channel, made stale (a replay of a dead letter) is not handed out: it
        is marked ``superseded`` and audited (``delivery.superseded``).
        """
        ...

    async def mark_delivered(
        self,
        delivery_id: str,
        *,
        external_id: str | None,
        thread_root: bool,
        audit_detail: str | None = None,
        alert: bool = False,
    ) -> None:
        """Record the delivery; with ``audit_detail``, write its "disclosed" audit row in the same transaction.

        With ``alert`` (a correction that edited the post ``external_id`` and is more severe than
        it showed: ``bridge.delivery.alert_for``), also create, in the same write, the pending
        delivery ``<delivery_id>.alert`` of the same event, channel and thread, claimed next in
        that thread: the alert, sent as a new post with retries of its own, that shadows the
        edited post (later corrections edit it and cancellations strike it with that post). A
        failing alert so never undoes the edit's delivery; an alert not yet sent when a later
        correction or cancellation of the post was delivered is superseded, not sent.
        """
        ...

    async def mark_retry(self, delivery_id: str, *, next_attempt_at: float, error: str) -> None: ...

    async def mark_dead(self, delivery_id: str, *, error: str) -> None: ...

    async def disable_channel(self, channel: str, *, reason: str) -> int:
        """Mark the channel disabled and its open deliveries dead; returns how many."""
        ...

    async def reclaim_in_flight(self) -> int:
        """Return deliveries left in flight by a crash to pending; returns how many."""
        ...

    async def dead_letters(self, *, limit: int = 100) -> list[DeliveryRow]: ...

    async def replay(self, delivery_ids: list[str] | None) -> int:
        """Make dead deliveries pending again (all when ``None``); re-enables their channels."""
        ...

    async def disabled_channels(self) -> dict[str, str]: ...

    async def inbox_append(self, delivery_id: str, item: dict[str, Any]) -> int:
        """Add an item to the inbox feed, once per delivery id; returns its feed id."""
        ...

    async def inbox_items(self, *, after: int = 0, limit: int = 100) -> list[dict[str, Any]]: ...

    async def audit(self, action: str, *, channel: str = "", event_id: str = "", detail: str = "") -> None: ...

    async def secret(self, name: str) -> bytes:
        """A random 32-byte secret created on first use and kept in the store."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot be read and written."""
        ...
