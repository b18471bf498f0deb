"""FHIR intake: a subscription notification in, its events committed, then 200.

The same guarantee as HL7 (DESIGN.md §2.1): the 200 leaves only after the
notification is journaled with its events, outbox rows and the subscription's
progress (last event number, resource versions) in one transaction. A failure
to fetch what the events need answers 503, and the server delivers again.

Never miss an event (Backport IG, errors.md): event numbers are tracked per
subscription; a gap is filled from ``$events`` (or a search when the server
lacks it) before the new events are posted, in order; a heartbeat that shows
a higher ``eventsSinceSubscriptionStart`` is a gap too; and a subscription
that stays silent past twice its heartbeat raises ``bridge.subscription.stale``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from bridge.config import Settings, SubscriptionConfig
from bridge.errors import FetchError, FhirError, OffBaseReference
from bridge.events import ClinicalEvent, EventType, Severity, Subject
from bridge.fhir.client import FhirClient
from bridge.fhir.mapping import FhirMapper
from bridge.fhir.notification import (
    Notification,
    NotificationEvent,
    NotificationType,
    parse_notification,
    parse_status_bundle,
    validate_resource,
)
from bridge.logs import error_fields
from bridge.routing import Router
from bridge.store import JournalEntry, MessageStatus, NewDelivery, Store, SubscriptionProgress, new_id

__all__ = ["FhirIntake", "FhirReceipt", "has_heartbeat", "operation_outcome"]

log = structlog.get_logger(__name__)

#: Resource types whose reference in a focus resource is fetched as context (names, MRN, location).
_CONTEXT_REFERENCES = ("subject", "patient", "encounter")


def operation_outcome(code: str, diagnostics: str, *, severity: str = "error") -> dict[str, Any]:
    """A FHIR OperationOutcome with one issue; ``diagnostics`` names the problem, never content."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


@dataclass(frozen=True, slots=True)
class FhirReceipt:
    """The HTTP answer to a notification."""

    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Batch:
    """What one commit carries: the events, and the progress that counts as seen only with them."""

    events: list[ClinicalEvent] = field(default_factory=list)
    snapshots: dict[str, tuple[str, str]] = field(default_factory=dict)
    last_event_number: int | None = None
    watermark: str | None = None


class FhirIntake:
    """Notifications in, committed events out. One instance serves every configured subscription."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        mapper: FhirMapper,
        router: Router,
        clients: Mapping[str, FhirClient],
        *,
        on_commit: Callable[[Iterable[str]], None] = lambda channels: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.mapper = mapper
        self.router = router
        self.clients = clients
        self.on_commit = on_commit
        self.clock = clock
        self.started_at = clock()

    def subscription(self, name: str) -> SubscriptionConfig | None:
        return self.settings.fhir.subscription(name)

    # -- entry points ----------------------------------------------------------------------

    async def notify(self, name: str, body: bytes) -> FhirReceipt:
        """``POST /fhir/{name}``: a notification Bundle, or (R4 classic) an empty body."""
        sub = self._require(name)
        try:
            if not body.strip():
                return await self._ping(sub, body)
            try:
                document = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                where = f" at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
                raise FhirError(f"body is not valid JSON{where}", issue_code="structure") from exc
            notification = parse_notification(document)
            self._check_addressee(sub, notification)
            return await self._handle(sub, notification, body)
        except FhirError as exc:
            return self._refuse(sub, exc)

    async def put_resource(self, name: str, resource_type: str, resource_id: str, body: bytes) -> FhirReceipt:
        """``PUT /fhir/{name}/{Type}/{id}``: R4 classic rest-hook with a payload carries the resource itself."""
        sub = self._require(name)
        try:
            try:
                resource = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise FhirError("body is not valid JSON", issue_code="structure") from exc
            if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
                raise FhirError(f"body must be a {resource_type} resource", issue_code="invalid")
            if str(resource.get("id", "")) != resource_id:
                raise FhirError(f"resource id does not match the URL ({resource_type}/{resource_id})")
            validate_resource(resource, self._server(sub).version)
            batch = _Batch()
            await self._map_resources(sub, [resource], {}, batch, origin={"subscription": sub.name})
            await self._commit(sub, body, "resource-put", batch)
            await self.store.record_subscription(sub.name, last_seen_at=self.clock(), stale_since=None)
            return FhirReceipt(200)
        except FhirError as exc:
            return self._refuse(sub, exc)

    async def watch(self) -> None:
        """One pass of the heartbeat watchdog over every subscription with a heartbeat period."""
        for sub in self.settings.fhir.subscriptions:
            if not has_heartbeat(sub):
                continue
            try:
                await self._watch_one(sub)
            except Exception as exc:  # boundary: one server's trouble must not stop the watchdog
                log.error("fhir.watchdog_failed", subscription=sub.name, **error_fields(exc))

    # -- notifications ---------------------------------------------------------------------

    async def _handle(self, sub: SubscriptionConfig, n: Notification, body: bytes) -> FhirReceipt:
        now = self.clock()
        fields: dict[str, Any] = {"last_seen_at": now, "stale_since": None}
        if n.type is NotificationType.HANDSHAKE:
            fields["status"] = "active"
        elif n.status:
            fields["status"] = n.status
        state = await self.store.subscription_state(sub.name)
        batch = _Batch()
        if n.type in (NotificationType.EVENT, NotificationType.QUERY_EVENT):
            numbered = sorted((e for e in n.events if e.number is not None), key=lambda e: e.number or 0)
            first = numbered[0].number if numbered else None
            if first is not None and first > state.last_event_number + 1:
                log.warning("fhir.gap", subscription=sub.name, since=state.last_event_number + 1, until=first - 1)
                await self._recover(sub, state.last_event_number + 1, first - 1, batch)
            fresh = [e for e in n.events if e.number is None or e.number > state.last_event_number]
            # An empty payload names no focus: ask $events which resources these numbers were about.
            blind = [e.number for e in fresh if e.focus is None and e.number is not None]
            if blind:
                await self._recover(sub, min(blind), max(blind), batch)
            await self._map_events(sub, [e for e in fresh if e.focus is not None], n.resources, batch)
            newest = max((e.number for e in numbered if e.number is not None), default=None)
            if newest is not None:
                batch.last_event_number = max(newest, batch.last_event_number or 0)
        elif n.events_since_start is not None and n.events_since_start > state.last_event_number:
            # A heartbeat or status that counts more events than we committed: we missed some.
            await self._recover(sub, state.last_event_number + 1, n.events_since_start, batch)
        if batch.events or batch.last_event_number is not None:
            await self._commit(sub, body, n.type.value, batch)
        await self.store.record_subscription(sub.name, **fields)
        log.info(
            "fhir.notification",
            subscription=sub.name,
            type=n.type.value,
            events=len(batch.events),
            last_event_number=batch.last_event_number,
        )
        return FhirReceipt(200)

    async def _ping(self, sub: SubscriptionConfig, body: bytes) -> FhirReceipt:
        """R4 classic: an empty POST means "something matching your criteria changed"."""
        if sub.criteria is None:
            raise FhirError("empty body: this endpoint serves a topic-based subscription", issue_code="required")
        state = await self.store.subscription_state(sub.name)
        batch = _Batch()
        resources = await self._search(sub, sub.criteria, state.watermark)
        await self._map_resources(sub, resources, {}, batch, origin={"subscription": sub.name})
        batch.watermark = _newest_update(resources, state.watermark)
        await self._commit(sub, body, "criteria-ping", batch)
        await self.store.record_subscription(sub.name, last_seen_at=self.clock(), stale_since=None, status="active")
        return FhirReceipt(200)

    async def _recover(self, sub: SubscriptionConfig, since: int, until: int, batch: _Batch) -> None:
        """Fetch missed events ``since..until`` and map them first, in order."""
        log.info("fhir.fetch_events", subscription=sub.name, since=since, until=until)
        client = self._client(sub)
        content = "full-resource" if sub.payload == "full-resource" else "id-only"
        try:
            bundle = await client.events(sub.resource_id, since=since, until=until, content=content)
        except FetchError as exc:
            if exc.transient:
                raise
            await self._recover_by_search(sub, since, until, batch, reason=f"$events answered {exc.status}")
            return
        missed = parse_notification(bundle)
        events = sorted(
            (e for e in missed.events if e.number is None or since <= e.number <= until), key=lambda e: e.number or 0
        )
        await self._map_events(sub, events, missed.resources, batch)
        batch.last_event_number = max(until, batch.last_event_number or 0)

    async def _recover_by_search(
        self, sub: SubscriptionConfig, since: int, until: int, batch: _Batch, *, reason: str
    ) -> None:
        query = sub.criteria or (sub.filters[0] if sub.filters else None)
        state = await self.store.subscription_state(sub.name)
        if query is None:
            # Nothing to search with: say so loudly (an ops event), and do not ask again for the same range.
            log.error("fhir.gap_unrecoverable", subscription=sub.name, since=since, until=until, reason=reason)
            batch.events.append(self._ops_event(sub, EventType.SUBSCRIPTION_ERROR, f"events {since}-{until} missed"))
        else:
            resources = await self._search(sub, query, state.watermark)
            await self._map_resources(
                sub, resources, {}, batch, origin={"subscription": sub.name, "recovered": "search"}
            )
            batch.watermark = _newest_update(resources, state.watermark)
        batch.last_event_number = max(until, batch.last_event_number or 0)

    async def _search(self, sub: SubscriptionConfig, query: str, watermark: str | None) -> list[dict[str, Any]]:
        separator = "&" if "?" in query else "?"
        full = f"{query}{separator}_lastUpdated=gt{watermark}" if watermark else query
        return await self._client(sub).search(full)

    # -- mapping ---------------------------------------------------------------------------

    async def _map_events(
        self,
        sub: SubscriptionConfig,
        events: list[NotificationEvent],
        resources: Mapping[str, dict[str, Any]],
        batch: _Batch,
    ) -> None:
        version = self._server(sub).version
        focused: list[dict[str, Any]] = []
        for event in events:
            if event.focus is None:
                continue
            resource = _lookup(resources, event.focus)
            if resource is None:
                # id-only (or an entry without its resource): fetch it, from the configured base only.
                try:
                    resource = await self._client(sub).read(event.focus)
                except FetchError as exc:
                    if exc.transient:
                        raise
                    # Gone or not ours to see (404, 403): nothing to post, and asking again will not help.
                    log.warning(
                        "fhir.focus_unavailable", subscription=sub.name, event_number=event.number, status=exc.status
                    )
                    continue
            else:
                validate_resource(resource, version)
            focused.append(resource)
        origin = {"subscription": sub.name}
        numbers = [str(e.number) for e in events if e.number is not None]
        if numbers:
            origin["event_numbers"] = ",".join(numbers)
        await self._map_resources(sub, focused, resources, batch, origin=origin)

    async def _map_resources(
        self,
        sub: SubscriptionConfig,
        resources: list[dict[str, Any]],
        known: Mapping[str, dict[str, Any]],
        batch: _Batch,
        *,
        origin: dict[str, str],
    ) -> None:
        keys = [_key(r) for r in resources]
        previous = await self.store.snapshots([k for k in keys if k])
        received_at = datetime.fromtimestamp(self.clock(), UTC)
        for resource, key in zip(resources, keys, strict=True):
            context = dict(known)
            context.update(await self._context(sub, resource, known))
            before = batch.snapshots.get(key)
            events = self.mapper.map_resource(
                resource,
                message_id=new_id(),
                source=f"urn:ehr-bridge:fhir:{sub.name}",
                received_at=received_at,
                origin=origin,
                previous=json.loads(before[1]) if before else previous.get(key),
                context=context,
                topic=sub.topic,
            )
            batch.events.extend(events)
            if key:
                version = str(resource.get("meta", {}).get("versionId", ""))
                batch.snapshots[key] = (version, json.dumps(resource, separators=(",", ":")))

    async def _context(
        self, sub: SubscriptionConfig, resource: dict[str, Any], known: Mapping[str, dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """The patient and encounter a resource refers to, from the notification or fetched from the base."""
        found: dict[str, dict[str, Any]] = {}
        for element, value in _context_references(resource):
            reference = value.get("reference") if isinstance(value, dict) else None
            if not isinstance(reference, str) or reference.startswith("#") or _lookup(known, reference) is not None:
                continue
            try:
                found[reference] = await self._client(sub).read(reference)
            except OffBaseReference:
                continue  # logged by the client; context is optional, the event still maps
            except FetchError as exc:
                if exc.transient:
                    raise
                log.warning("fhir.context_unavailable", subscription=sub.name, element=element, status=exc.status)
        return found

    # -- the watchdog ----------------------------------------------------------------------

    async def _watch_one(self, sub: SubscriptionConfig) -> None:
        assert sub.heartbeat_seconds is not None
        state = await self.store.subscription_state(sub.name)
        now = self.clock()
        last = state.last_seen_at or self.started_at
        if now - last <= 2 * sub.heartbeat_seconds or (state.stale_since is not None and state.stale_since >= last):
            return
        server_status: str | None = None
        counted: int | None = None
        try:
            statuses = parse_status_bundle(
                await self._client(sub).status(sub.resource_id), version=self._server(sub).version
            )
            if statuses:
                server_status, counted = statuses[0].status, statuses[0].events_since_start
        except FhirError as exc:
            log.warning("fhir.status_unavailable", subscription=sub.name, status=exc.status)
        batch = _Batch()
        silence = int(now - last)
        if server_status == "error":
            batch.events.append(
                self._ops_event(sub, EventType.SUBSCRIPTION_ERROR, f"server reports error after {silence} s")
            )
        else:
            batch.events.append(self._ops_event(sub, EventType.SUBSCRIPTION_STALE, f"no notification for {silence} s"))
        if counted is not None and counted > state.last_event_number:
            try:
                await self._recover(sub, state.last_event_number + 1, counted, batch)
            except FhirError as exc:
                log.warning("fhir.recovery_failed", subscription=sub.name, status=exc.status)
        await self._commit(sub, b"", "watchdog", batch)
        await self.store.record_subscription(
            sub.name, stale_since=now, **({"status": server_status} if server_status else {})
        )
        log.warning("fhir.subscription_stale", subscription=sub.name, silence=silence, server_status=server_status)

    def _ops_event(self, sub: SubscriptionConfig, kind: EventType, text: str) -> ClinicalEvent:
        now = datetime.fromtimestamp(self.clock(), UTC)
        return ClinicalEvent(
            id=f"{new_id()}-1",
            type=kind,
            severity=Severity.CRITICAL if kind is EventType.SUBSCRIPTION_ERROR else Severity.WARNING,
            occurred_at=now,
            source=f"urn:ehr-bridge:fhir:{sub.name}",
            subject=Subject(kind="subscription", key=sub.name, text=text),
            thread_key=f"subscription:{sub.name}",
            dedup_key=f"{kind.value}:{sub.name}:{int(now.timestamp())}",
            origin={"subscription": sub.name},
        )

    # -- commit ----------------------------------------------------------------------------

    async def _commit(self, sub: SubscriptionConfig, body: bytes, kind: str, batch: _Batch) -> None:
        entry = JournalEntry(
            id=new_id(),
            listener=sub.name,
            transport="fhir",
            received_at=self.clock(),
            raw=body,
            status=MessageStatus.ACCEPTED if batch.events else MessageStatus.UNMAPPED,
            ack_code="200",
            sending_application=f"fhir:{sub.name}",
            message_type=kind,
        )
        routed = [(e, [NewDelivery(channel=c) for c in self.router.channels_for(e)]) for e in batch.events]
        progress = SubscriptionProgress(
            subscription=sub.name,
            last_event_number=batch.last_event_number,
            watermark=batch.watermark,
            snapshots=tuple((key, version, body) for key, (version, body) in batch.snapshots.items()),
        )
        result = await self.store.commit_message(
            entry,
            routed,
            dedup_window=self.settings.dedup.window_seconds,
            progress=progress,
            channels=self.settings.channels.keys(),
        )
        if result.delivery_ids:
            # result.channels adds those a correction or cancellation follows its original to.
            self.on_commit({d.channel for _, ds in routed for d in ds} | set(result.channels))

    # -- helpers ---------------------------------------------------------------------------

    def _require(self, name: str) -> SubscriptionConfig:
        sub = self.subscription(name)
        if sub is None:
            raise KeyError(name)
        return sub

    def _server(self, sub: SubscriptionConfig) -> Any:
        return self.settings.fhir.servers[sub.server]

    def _client(self, sub: SubscriptionConfig) -> FhirClient:
        return self.clients[sub.server]

    def _check_addressee(self, sub: SubscriptionConfig, n: Notification) -> None:
        if n.subscription_id and n.subscription_id != sub.resource_id:
            expected = sub.resource_id
            raise FhirError(
                f"notification is for Subscription/{n.subscription_id}; this endpoint serves Subscription/{expected}",
                issue_code="not-found",
            )

    def _refuse(self, sub: SubscriptionConfig, exc: FhirError) -> FhirReceipt:
        transient = isinstance(exc, FetchError) and exc.transient
        status = 503 if transient else exc.status
        log.warning(
            "fhir.refused", subscription=sub.name, status=status, issue=exc.issue_code, error=type(exc).__name__
        )
        headers = {"Retry-After": "30"} if transient else {}
        return FhirReceipt(status, operation_outcome(exc.issue_code, str(exc)), headers)


def has_heartbeat(sub: SubscriptionConfig) -> bool:
    """Topic-based subscriptions send heartbeats; R4 classic (criteria) ones cannot, so silence means nothing."""
    return sub.heartbeat_seconds is not None and sub.criteria is None


def _key(resource: dict[str, Any]) -> str:
    kind, ident = resource.get("resourceType"), resource.get("id")
    return f"{kind}/{ident}" if isinstance(kind, str) and isinstance(ident, str) else ""


def _context_references(resource: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(element, Reference) of the patient and encounter a resource names (``_CONTEXT_REFERENCES``).

    A DocumentReference names its visit in ``context.encounter`` (R4) or among ``context``
    (R5, which may also name an Appointment or EpisodeOfCare): the first Encounter there.
    """
    for element in _CONTEXT_REFERENCES:
        yield element, resource.get(element)
    context = resource.get("context")
    listed = context.get("encounter") if isinstance(context, dict) else context
    for value in listed if isinstance(listed, list) else []:
        if isinstance(value, dict) and "/Encounter/" in f"/{value.get('reference', '')}":
            yield "context", value
            return


def _lookup(resources: Mapping[str, dict[str, Any]], reference: str) -> dict[str, Any] | None:
    """A resource by its reference: as given, or by its "Type/id" tail (absolute URLs, _history)."""
    if reference in resources:
        return resources[reference]
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return resources.get("/".join(parts[-2:])) if len(parts) >= 2 else None


def _newest_update(resources: list[dict[str, Any]], watermark: str | None) -> str | None:
    stamps = [r.get("meta", {}).get("lastUpdated") for r in resources]
    valid = [s for s in stamps if isinstance(s, str)]
    if watermark:
        valid.append(watermark)
    return max(valid, default=None)
