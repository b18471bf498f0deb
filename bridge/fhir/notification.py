"""Read FHIR subscription notification bundles and ``$status`` answers into plain values.

One responsibility: turn an already JSON-decoded body into a :class:`Notification`,
whichever of the three wire shapes the server speaks, and validate included focus
resources with fhir.resources. Pure: no I/O, no logging, nothing stored.

The shapes (REFERENCE.md §3.2, §3.3; Subscriptions Backport IG ``notifications.md``):

- ``r4-backport``: ``Bundle.type`` ``history``, ``entry[0]`` a ``Parameters`` with the
  ``backport-subscription-status-r4`` profile; every number is a ``valueString``.
- ``r4b``: ``Bundle.type`` ``history``, ``entry[0]`` a ``SubscriptionStatus``; numbers are strings.
- ``r5``: ``Bundle.type`` ``subscription-notification``, ``entry[0]`` a ``SubscriptionStatus``.

Errors are :class:`bridge.errors.FhirError`. Status 400 for notifications, with issue code
``structure`` when an element has the wrong JSON type and ``invalid`` when the content is
wrong (bad code, missing required element, wrong resource). Status 422 for focus resources
that fail validation. Messages name the element path and quote at most
``resourceType`` and type codes, never other content (PHI).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal

import pydantic

from bridge.errors import FhirError

if TYPE_CHECKING:
    from fhir_core.fhirabstractmodel import FHIRAbstractModel

__all__ = [
    "Notification",
    "NotificationEvent",
    "NotificationType",
    "Shape",
    "parse_notification",
    "parse_status_bundle",
    "validate_resource",
]

Shape = Literal["r4-backport", "r4b", "r5"]
FhirVersion = Literal["r4", "r4b", "r5"]

_NOTIFICATION_BUNDLE_TYPES: Final = ("history", "subscription-notification")
_R4_STATUS_PROFILE: Final = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
)
#: Parameter names that make an R4 ``Parameters`` a subscription status even without the profile:
#: servers are not required to send ``meta.profile``, and both are 1..1 in the IG profile.
_R4_STATUS_MARKERS: Final = frozenset({"subscription", "type"})
# integer64 (R5) caps the counters; in JSON it is a string of digits, as are R4/R4B's strings.
_INT64_MAX: Final = 2**63 - 1
_DIGITS: Final = re.compile(r"[0-9]{1,19}")
# Only values shaped like a code are ever quoted back, so free text cannot leak into a message.
_CODE_LIKE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
_RESOURCE_TYPE_LIKE: Final = re.compile(r"[A-Z][A-Za-z]{0,63}")
_HISTORY: Final = "_history"


class NotificationType(StrEnum):
    """``SubscriptionStatus.type`` (value set ``subscription-notification-type``)."""

    #: Sent once when a rest-hook subscription starts; a 2xx answer makes it ``active``.
    HANDSHAKE = "handshake"
    #: Sent every ``heartbeatPeriod`` without events; proves the channel is alive.
    HEARTBEAT = "heartbeat"
    #: One or more real events; the only type that counts in ``eventsSinceSubscriptionStart``.
    EVENT = "event-notification"
    #: The answer of ``$status``: the subscription's state, no events.
    QUERY_STATUS = "query-status"
    #: The answer of ``$events``: past events replayed for gap recovery.
    QUERY_EVENT = "query-event"


@dataclass(frozen=True, slots=True)
class NotificationEvent:
    """One ``notificationEvent`` (R4B/R5) or ``notification-event`` parameter (R4 backport)."""

    number: int | None
    timestamp: str | None
    focus: str | None
    additional_context: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Notification:
    """A subscription notification (or one ``$status`` entry) in a shape-independent form.

    ``resources`` holds every resource included after the status entry, reachable both by
    its ``fullUrl`` and by ``Type/id``; it is empty for ``id-only`` and ``empty`` payloads.
    When two entries share a key the later one wins, as it belongs to the later event.
    ``resources`` is left out of ``repr`` because full-resource payloads carry PHI.
    """

    shape: Shape
    subscription: str
    subscription_id: str
    topic: str | None
    type: NotificationType
    status: str | None
    events_since_start: int | None
    events: tuple[NotificationEvent, ...]
    resources: Mapping[str, dict[str, Any]] = field(
        default_factory=lambda: MappingProxyType({}), hash=False, repr=False
    )
    errors: tuple[str, ...] = ()

    def resource_for(self, reference: str) -> dict[str, Any] | None:
        """The included resource a focus or context reference points at, if the bundle carries it.

        Tried as given first, then by its ``Type/id`` tail: servers write focus references
        and ``fullUrl`` against different bases (even the IG's own examples do).
        """
        found = self.resources.get(reference)
        if found is None:
            key = _type_and_id(reference)
            found = self.resources.get(key) if key is not None else None
        return found


@dataclass(frozen=True, slots=True)
class _Status:
    """The status entry's content before the notification type is settled."""

    subscription: str
    topic: str | None
    type: object
    type_where: str
    status: str | None
    events_since_start: int | None
    events: tuple[NotificationEvent, ...]
    errors: tuple[str, ...]


def parse_notification(body: object) -> Notification:
    """Read a rest-hook notification body (R4 backport, R4B or R5) into a :class:`Notification`.

    Raises :class:`FhirError` (400) naming the first problem; nothing else escapes.
    """
    bundle = _bundle(body)
    bundle_type = bundle.get("type")
    if bundle_type not in _NOTIFICATION_BUNDLE_TYPES:
        raise _invalid(f"Bundle.type must be history or subscription-notification, got {_quote(bundle_type)}")
    entries = _array(bundle, "entry", "Bundle.entry")
    if not entries:
        raise _invalid("Bundle has no entry; entry[0] must be the subscription status")
    status_entry = _object(entries[0], "entry[0]")
    resource = status_entry.get("resource")
    if resource is None:
        raise _invalid("entry[0] has no resource; it must be the subscription status")
    resource = _object(resource, "entry[0].resource")
    resource_type = resource.get("resourceType")
    where = "entry[0].resource"
    shape: Shape
    if resource_type == "SubscriptionStatus":
        shape = "r4b" if bundle_type == "history" else "r5"
        status = _read_subscription_status(resource, where, with_events=True)
    elif resource_type == "Parameters":
        if bundle_type != "history":
            # Parameters stands in for SubscriptionStatus only in R4, which has no
            # subscription-notification Bundle type (Backport IG BackportNotificationR4.fsh).
            raise _invalid(
                "entry[0] is a Parameters status, which only R4 history bundles carry; "
                "a subscription-notification Bundle needs a SubscriptionStatus"
            )
        if not _is_r4_status(resource):
            raise _invalid(
                "entry[0] is not a subscription status (Parameters without the subscription and type parameters)"
            )
        shape = "r4-backport"
        status = _read_parameters_status(resource, where, with_events=True)
    else:
        raise _invalid(f"entry[0] is not a subscription status (resourceType {_quote(resource_type)})")
    notification_type = _notification_type(status.type, status.type_where)
    return _notification(shape, status, notification_type, resources=_included_resources(entries[1:]))


def parse_status_bundle(body: object, *, version: FhirVersion | None = None) -> list[Notification]:
    """Read the ``$status`` answer: a ``searchset`` of status resources, one Notification each.

    The entries carry no events and no resources and are typed ``query-status``, which is
    what the operation returns whatever the entry says. A searchset does not tell R4B from
    R5, so ``version`` (the server's configured version) decides; without it a JSON number
    in ``eventsSinceSubscriptionStart`` means R5, anything else R4B. OperationOutcome
    entries (``search.mode`` ``outcome``) are skipped.
    """
    bundle = _bundle(body)
    bundle_type = bundle.get("type")
    if bundle_type != "searchset":
        raise _invalid(f"Bundle.type must be searchset for a $status answer, got {_quote(bundle_type)}")
    notifications: list[Notification] = []
    for index, raw_entry in enumerate(_array(bundle, "entry", "Bundle.entry")):
        where = f"entry[{index}]"
        entry = _object(raw_entry, where)
        resource = entry.get("resource")
        if resource is None:
            raise _invalid(f"{where} has no resource")
        resource = _object(resource, f"{where}.resource")
        resource_type = resource.get("resourceType")
        if resource_type == "OperationOutcome" or _search_mode(entry, where) == "outcome":
            continue
        shape: Shape
        if resource_type == "Parameters" and _is_r4_status(resource):
            shape = "r4-backport"
            status = _read_parameters_status(resource, f"{where}.resource", with_events=False)
        elif resource_type == "SubscriptionStatus":
            shape = _subscription_status_shape(resource, version)
            status = _read_subscription_status(resource, f"{where}.resource", with_events=False)
        else:
            raise _invalid(f"{where} is not a subscription status (resourceType {_quote(resource_type)})")
        notifications.append(_notification(shape, status, NotificationType.QUERY_STATUS))
    return notifications


def validate_resource(resource: dict[str, Any], version: FhirVersion) -> None:
    """Validate a focus resource with fhir.resources: R4B models for r4 and r4b, R5 for r5.

    Raises :class:`FhirError` 422 ``invalid`` naming the resourceType and the first failing
    element path, or 422 ``not-supported`` for a resourceType the version does not define.
    """
    if not isinstance(resource, dict):
        raise FhirError(
            f"resource must be a JSON object, got {_kind(resource)}",
            status=422,
            issue_code="invalid",
        )
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise FhirError("resource has no resourceType", status=422, issue_code="invalid")
    label = version.upper()
    package = "R5" if version == "r5" else "R4B"
    model = _model_class(package, resource_type) if _RESOURCE_TYPE_LIKE.fullmatch(resource_type) else None
    if model is None:
        raise FhirError(
            f"resourceType {_quote(resource_type)} is not a FHIR {label} resource",
            status=422,
            issue_code="not-supported",
        )
    try:
        model.model_validate(resource)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False, include_context=False)
        path, kind = (_loc_path(first[0]["loc"]), first[0]["type"]) if first else ("", "invalid")
        raise FhirError(
            f"{resource_type} is not valid FHIR {label} at {path or '(resource)'} ({kind})",
            status=422,
            issue_code="invalid",
        ) from exc
    except (ValueError, TypeError) as exc:
        # fhir_core validators can fail outside pydantic's error collection; the boundary
        # still answers 422 and keeps the cause, without repeating its (possibly quoting) text.
        raise FhirError(
            f"{resource_type} is not valid FHIR {label} ({type(exc).__name__})",
            status=422,
            issue_code="invalid",
        ) from exc


@lru_cache(maxsize=512)
def _model_class(package: Literal["R4B", "R5"], resource_type: str) -> type[FHIRAbstractModel] | None:
    """The fhir.resources model for a resource type, or None when it is no resource there.

    ``get_fhir_model_class`` also answers data types (``Coding``); those are not resources.
    """
    # Imported on first use: parsing notifications needs no models, and the R4B and R5
    # packages each cost a cold import, and a bridge speaking one version pays for that one only.
    lookup: Callable[[str], type[FHIRAbstractModel]]
    base: type[FHIRAbstractModel]
    if package == "R4B":
        from fhir.resources.R4B import get_fhir_model_class as r4b_lookup
        from fhir.resources.R4B.resource import Resource as R4BResource

        lookup, base = r4b_lookup, R4BResource
    else:
        from fhir.resources import get_fhir_model_class as r5_lookup
        from fhir.resources.resource import Resource as R5Resource

        lookup, base = r5_lookup, R5Resource
    try:
        model = lookup(resource_type)
    except ValueError:
        return None
    return model if issubclass(model, base) else None


def _loc_path(loc: tuple[int | str, ...]) -> str:
    # fhir_core reports whole-element failures at a trailing "root", which is no FHIR element.
    if loc and loc[-1] == "root":
        loc = loc[:-1]
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def _notification(
    shape: Shape,
    status: _Status,
    notification_type: NotificationType,
    *,
    resources: Mapping[str, dict[str, Any]] | None = None,
) -> Notification:
    subscription_id = _logical_id(status.subscription)
    if not subscription_id:
        raise _invalid("the subscription reference has no logical id")
    notification = Notification(
        shape=shape,
        subscription=status.subscription,
        subscription_id=subscription_id,
        topic=status.topic,
        type=notification_type,
        status=status.status,
        events_since_start=status.events_since_start,
        events=status.events,
        errors=status.errors,
    )
    if resources:
        notification = replace(notification, resources=MappingProxyType(dict(resources)))
    return notification


def _bundle(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _structure(f"the body must be a JSON object, got {_kind(body)}")
    resource_type = body.get("resourceType")
    if resource_type != "Bundle":
        raise _invalid(f"expected a Bundle, got resourceType {_quote(resource_type)}")
    return body


def _read_subscription_status(resource: dict[str, Any], where: str, *, with_events: bool) -> _Status:
    """R4B and R5 ``SubscriptionStatus``; the two differ only in how numbers are typed."""
    events: list[NotificationEvent] = []
    if with_events:
        for index, raw in enumerate(_array(resource, "notificationEvent", f"{where}.notificationEvent")):
            event_where = f"{where}.notificationEvent[{index}]"
            event = _object(raw, event_where)
            number = event.get("eventNumber")
            context = _array(event, "additionalContext", f"{event_where}.additionalContext")
            events.append(
                NotificationEvent(
                    number=None if number is None else _count(number, f"{event_where}.eventNumber"),
                    timestamp=_optional_str(event, "timestamp", f"{event_where}.timestamp"),
                    focus=_reference(event.get("focus"), f"{event_where}.focus"),
                    additional_context=_references(context, f"{event_where}.additionalContext"),
                )
            )
    since = resource.get("eventsSinceSubscriptionStart")
    errors: list[str] = []
    for index, concept in enumerate(_array(resource, "error", f"{where}.error")):
        errors.extend(_concept_texts(concept, f"{where}.error[{index}]"))
    return _Status(
        subscription=_required_reference(resource.get("subscription"), f"{where}.subscription"),
        topic=_optional_str(resource, "topic", f"{where}.topic"),
        type=resource.get("type"),
        type_where=f"{where}.type",
        status=_optional_str(resource, "status", f"{where}.status"),
        events_since_start=None if since is None else _count(since, f"{where}.eventsSinceSubscriptionStart"),
        events=tuple(events),
        errors=tuple(errors),
    )


def _read_parameters_status(resource: dict[str, Any], where: str, *, with_events: bool) -> _Status:
    """The R4 backport status: a ``Parameters`` with open slicing on ``parameter.name``."""
    found = _named_parts(resource, "parameter", where)

    def first(name: str) -> tuple[str, dict[str, Any]] | None:
        return found[name][0] if found.get(name) else None

    subscription = first("subscription")
    if subscription is None:
        raise _invalid(f"{where} has no subscription parameter")
    topic = first("topic")
    status = first("status")
    since = first("events-since-subscription-start")
    events: list[NotificationEvent] = []
    if with_events:
        for event_where, parameter in found.get("notification-event", []):
            events.append(_parameters_event(parameter, event_where))
    errors: list[str] = []
    for error_where, parameter in found.get("error", []):
        concept = parameter.get("valueCodeableConcept")
        if concept is not None:
            errors.extend(_concept_texts(concept, f"{error_where}.valueCodeableConcept"))
    type_parameter = first("type")
    return _Status(
        subscription=_required_reference(subscription[1].get("valueReference"), f"{subscription[0]}.valueReference"),
        topic=_value_str(topic, ("valueCanonical", "valueUri")),
        type=None if type_parameter is None else type_parameter[1].get("valueCode"),
        type_where=f"{where}.parameter(type)" if type_parameter is None else f"{type_parameter[0]}.valueCode",
        status=_value_str(status, ("valueCode",)),
        events_since_start=_value_count(since),
        events=tuple(events),
        errors=tuple(errors),
    )


def _parameters_event(parameter: dict[str, Any], where: str) -> NotificationEvent:
    parts = _named_parts(parameter, "part", where)
    number = parts.get("event-number")
    timestamp = parts.get("timestamp")
    focus = parts.get("focus")
    context: list[str] = []
    for context_where, part in parts.get("additional-context", []):
        reference = _reference(part.get("valueReference"), f"{context_where}.valueReference")
        if reference is not None:
            context.append(reference)
    return NotificationEvent(
        number=_value_count(number[0]) if number else None,
        timestamp=_value_str(timestamp[0], ("valueInstant", "valueDateTime")) if timestamp else None,
        focus=_reference(focus[0][1].get("valueReference"), f"{focus[0][0]}.valueReference") if focus else None,
        additional_context=tuple(context),
    )


def _named_parts(owner: dict[str, Any], key: str, where: str) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Group ``parameter``/``part`` entries by name, each with its element path for messages."""
    grouped: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for index, raw in enumerate(_array(owner, key, f"{where}.{key}")):
        item = _object(raw, f"{where}.{key}[{index}]")
        name = item.get("name")
        if not isinstance(name, str):
            raise _structure(f"{where}.{key}[{index}].name must be a string, got {_kind(name)}")
        # Open slicing: unknown names are kept but never looked up, so only the names the
        # IG defines can reach a message.
        grouped.setdefault(name, []).append((f"{where}.{key}[{index}]({name})", item))
    return grouped


def _value_str(found: tuple[str, dict[str, Any]] | None, keys: tuple[str, ...]) -> str | None:
    if found is None:
        return None
    where, parameter = found
    for key in keys:
        if key in parameter:
            return _optional_str(parameter, key, f"{where}.{key}")
    return None


def _value_count(found: tuple[str, dict[str, Any]] | None) -> int | None:
    if found is None:
        return None
    where, parameter = found
    # The IG types these valueString; integer value[x] forms are read too, the number is what matters.
    for key in ("valueString", "valueInteger64", "valueInteger", "valueUnsignedInt"):
        if key in parameter and parameter[key] is not None:
            return _count(parameter[key], f"{where}.{key}")
    return None


def _is_r4_status(resource: dict[str, Any]) -> bool:
    meta = resource.get("meta")
    if isinstance(meta, dict):
        profiles = meta.get("profile")
        if isinstance(profiles, list) and any(
            isinstance(p, str) and p.split("|", 1)[0] == _R4_STATUS_PROFILE for p in profiles
        ):
            return True
    parameters = resource.get("parameter")
    return isinstance(parameters, list) and any(
        isinstance(p, dict) and isinstance(p.get("name"), str) and p["name"] in _R4_STATUS_MARKERS for p in parameters
    )


def _subscription_status_shape(resource: dict[str, Any], version: FhirVersion | None) -> Shape:
    if version is not None:
        return "r5" if version == "r5" else "r4b"
    since = resource.get("eventsSinceSubscriptionStart")
    return "r5" if isinstance(since, int) and not isinstance(since, bool) else "r4b"


def _search_mode(entry: dict[str, Any], where: str) -> str | None:
    search = entry.get("search")
    if search is None:
        return None
    return _optional_str(_object(search, f"{where}.search"), "mode", f"{where}.search.mode")


def _included_resources(entries: list[Any]) -> dict[str, dict[str, Any]]:
    resources: dict[str, dict[str, Any]] = {}
    for offset, raw in enumerate(entries):
        where = f"entry[{offset + 1}]"
        entry = _object(raw, where)
        resource = entry.get("resource")
        if resource is None:
            continue  # id-only payloads list the focus without its content
        resource = _object(resource, f"{where}.resource")
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str) or not _RESOURCE_TYPE_LIKE.fullmatch(resource_type):
            raise _invalid(f"{where}.resource has no valid resourceType")
        full_url = _optional_str(entry, "fullUrl", f"{where}.fullUrl")
        if full_url:
            resources[full_url] = resource
        resource_id = _optional_str(resource, "id", f"{where}.resource.id")
        if resource_id:
            resources[f"{resource_type}/{resource_id}"] = resource
    return resources


def _notification_type(value: object, where: str) -> NotificationType:
    if value is None:
        raise _invalid(f"{where} is missing")
    if not isinstance(value, str):
        raise _structure(f"{where} must be a code, got {_kind(value)}")
    try:
        return NotificationType(value)
    except ValueError:
        raise _invalid(f"{where} {_quote(value)} is not a notification type") from None


def _count(value: object, where: str) -> int:
    """An event counter: integer64 in R5, a string in R4/R4B and in R5's own JSON form."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _structure(f"{where} must be a string of digits or a number, got {_kind(value)}")
    if isinstance(value, str):
        # fullmatch on ASCII digits: int() would also take "+1", " 1", "1_0" and other scripts' digits.
        if not _DIGITS.fullmatch(value):
            raise _invalid(f"{where} must be a non-negative integer")
        value = int(value)
    if not 0 <= value <= _INT64_MAX:
        raise _invalid(f"{where} must be a non-negative integer64")
    return value


def _concept_texts(concept: object, where: str) -> list[str]:
    """Codes of a CodeableConcept's codings, or its text when none is coded."""
    concept = _object(concept, where)
    codes: list[str] = []
    for index, raw in enumerate(_array(concept, "coding", f"{where}.coding")):
        code = _optional_str(_object(raw, f"{where}.coding[{index}]"), "code", f"{where}.coding[{index}].code")
        if code:
            codes.append(code)
    if codes:
        return codes
    text = _optional_str(concept, "text", f"{where}.text")
    return [text] if text else []


def _required_reference(value: object, where: str) -> str:
    reference = _reference(value, where)
    if reference is None:
        raise _invalid(f"{where} has no reference")
    return reference


def _reference(value: object, where: str) -> str | None:
    if value is None:
        return None
    reference = _optional_str(_object(value, where), "reference", f"{where}.reference")
    return reference or None


def _references(values: list[Any], where: str) -> tuple[str, ...]:
    found = (_reference(value, f"{where}[{index}]") for index, value in enumerate(values))
    return tuple(reference for reference in found if reference is not None)


def _path_segments(reference: str) -> list[str]:
    # Query and fragment never belong to the identity; _history/{vid} names a version of it.
    path = reference.split("#", 1)[0].split("?", 1)[0]
    segments = [segment for segment in path.split("/") if segment]
    if len(segments) >= 3 and segments[-2] == _HISTORY:
        segments = segments[:-2]
    return segments


def _logical_id(reference: str) -> str:
    segments = _path_segments(reference)
    return segments[-1] if segments else ""


def _type_and_id(reference: str) -> str | None:
    segments = _path_segments(reference)
    if len(segments) >= 2 and _RESOURCE_TYPE_LIKE.fullmatch(segments[-2]):
        return f"{segments[-2]}/{segments[-1]}"
    return None


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _structure(f"{where} must be a JSON object, got {_kind(value)}")
    return value


def _array(owner: dict[str, Any], key: str, where: str) -> list[Any]:
    value = owner.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _structure(f"{where} must be a JSON array, got {_kind(value)}")
    return value


def _optional_str(owner: dict[str, Any], key: str, where: str) -> str | None:
    value = owner.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _structure(f"{where} must be a string, got {_kind(value)}")


def _kind(value: object) -> str:
    """The JSON type of a value, which is safe to name where the value itself is not."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _quote(value: object) -> str:
    """A code for an error message: quoted when code-shaped, otherwise only described."""
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return repr(value) if _CODE_LIKE.fullmatch(value) else "a value that is not a code"
    return f"a JSON {_kind(value)}"


def _structure(message: str) -> FhirError:
    return FhirError(message, status=400, issue_code="structure")


def _invalid(message: str) -> FhirError:
    return FhirError(message, status=400, issue_code="invalid")
