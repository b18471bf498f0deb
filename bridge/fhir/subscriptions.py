"""Subscription resources for ``subscriptions ensure``, built from config in the form each server speaks.

- R4 and R4B servers with a topic get the Subscriptions Backport IG shape: the topic URL in ``criteria``,
  the R5 elements as ``backport-*`` extensions (``input/fsh/BackportSubscription.fsh``). R4B has no native
  topic-based Subscription either; its ``SubscriptionTopic`` exists, its ``Subscription`` is still R4's.
- R4 and R4B servers with ``criteria`` get the classic query-based Subscription (REFERENCE.md §3.1).
- R5 servers get the native shape: ``topic``, ``filterBy``, ``channelType``, ``parameter`` (§3.3).

Every resource is checked with fhir.resources before it leaves (the R4B models stand in for R4, which
fhir.resources 8 lacks). The header token is a secret: it is written into the returned resource, which
goes to the server, and nowhere else: not into logs, exception messages or exception chains.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import structlog
from fhir.resources.R4B.subscription import Subscription as SubscriptionR4B
from fhir.resources.subscription import Subscription as SubscriptionR5
from pydantic import ValidationError as PydanticValidationError

from bridge.config import FhirServerConfig, SubscriptionConfig
from bridge.errors import ConfigError, FhirError

__all__ = [
    "BACKPORT_PROFILE",
    "CHANNEL_TYPE_SYSTEM",
    "FILTER_CRITERIA_URL",
    "HEARTBEAT_PERIOD_URL",
    "PAYLOAD_CONTENT_URL",
    "TIMEOUT_URL",
    "build_subscription",
    "describe",
    "notification_timeout",
    "validate_subscription",
]

log = structlog.get_logger(__name__)

FhirVersion = Literal["r4", "r4b", "r5"]

_BACKPORT_SD: Final = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
#: The Backport IG profile a topic-based R4/R4B Subscription claims.
BACKPORT_PROFILE: Final = _BACKPORT_SD + "backport-subscription"
#: On ``Subscription.criteria``: one search-style filter per extension, ANDed.
FILTER_CRITERIA_URL: Final = _BACKPORT_SD + "backport-filter-criteria"
#: On ``Subscription.channel.payload``: ``empty`` | ``id-only`` | ``full-resource``.
PAYLOAD_CONTENT_URL: Final = _BACKPORT_SD + "backport-payload-content"
#: On ``Subscription.channel``: seconds between heartbeats.
HEARTBEAT_PERIOD_URL: Final = _BACKPORT_SD + "backport-heartbeat-period"
#: On ``Subscription.channel``: seconds the server waits for our answer.
TIMEOUT_URL: Final = _BACKPORT_SD + "backport-timeout"
#: R5 ``Subscription.channelType`` code system.
CHANNEL_TYPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/subscription-channel-type"

_FHIR_JSON: Final = "application/fhir+json"
_PATH: Final = "fhir.subscriptions[]"

# Our 200 leaves only after the notification is committed, which can include id-only fetches and a
# gap recovery through $events, each bounded by the server's read timeout. A server that gives up
# sooner redelivers what we are still committing, so leave room for a fetch, its retry and the commit.
_MIN_TIMEOUT_SECONDS: Final = 30
_TIMEOUT_FACTOR: Final = 3

# The R5 SubscriptionFilterBy.modifier codes; a search modifier outside them cannot be said in filterBy.
_R5_MODIFIERS: Final = frozenset(
    {
        "missing",
        "exact",
        "contains",
        "not",
        "text",
        "in",
        "not-in",
        "below",
        "above",
        "type",
        "identifier",
        "of-type",
        "code-text",
        "text-advanced",
        "iterate",
    }
)

# ``[Type?]param[:modifier]=value[&...]``, the search-string form both the Backport IG's
# filter-criteria and SubscriptionTopic.canFilterBy use.
_FILTER: Final = re.compile(r"^(?:(?P<type>[A-Z][A-Za-z]*)\?)?(?P<query>[^?#\s]+)$")
_PARAMETER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*(?::[A-Za-z][A-Za-z0-9\-]*)?$")

# The adapter compares ``Authorization: Bearer <token>`` after stripping, and HTTP header values
# cannot carry controls; a token with whitespace or non-ASCII would never authenticate.
_TOKEN: Final = re.compile(r"^[\x21-\x7e]+$")


@dataclass(frozen=True, slots=True)
class _FilterTerm:
    resource_type: str | None
    parameter: str
    modifier: str | None
    value: str


def build_subscription(sub: SubscriptionConfig, server: FhirServerConfig) -> dict[str, Any]:
    """The Subscription resource ``subscriptions ensure`` PUTs to ``server`` for ``sub``.

    Raises ``ConfigError`` when the configuration cannot be expressed for that server, and
    ``FhirError`` (422) when the result does not validate with fhir.resources.
    """
    if sub.criteria is not None and server.version == "r5":
        raise ConfigError(
            f"subscription {sub.name!r}: R5 has no query-based Subscription; use a topic",
            path=f"{_PATH}.criteria",
        )
    if sub.criteria is not None and sub.filters:
        raise ConfigError(
            f"subscription {sub.name!r}: filters apply to topics only; put the search in criteria",
            path=f"{_PATH}.filters",
        )
    endpoint = _endpoint(sub)
    authorization = f"Bearer {_token(sub)}"
    timeout = notification_timeout(server)
    if sub.topic is None:
        assert sub.criteria is not None  # SubscriptionConfig guarantees exactly one of topic and criteria
        resource = _classic(sub, sub.criteria, endpoint, authorization)
    elif server.version == "r5":
        resource = _r5(sub, sub.topic, endpoint, authorization, timeout)
    else:
        resource = _backport(sub, sub.topic, endpoint, authorization, timeout)
    validate_subscription(resource, server.version)
    return resource


def validate_subscription(resource: dict[str, Any], version: FhirVersion) -> None:
    """Check ``resource`` with fhir.resources: the R4B models for r4 and r4b, the R5 models for r5.

    Raises ``FhirError`` (422) naming the failing element paths. The pydantic error is not chained:
    it holds the input values, and the input holds the header token.
    """
    model = SubscriptionR5 if version == "r5" else SubscriptionR4B
    try:
        model.model_validate(resource)
    except PydanticValidationError as exc:
        problems = _problems(exc)
    else:
        return
    raise FhirError(f"Subscription is not valid FHIR {version.upper()}: {problems}", status=422)


def describe(sub: SubscriptionConfig) -> dict[str, str]:
    """A printable summary for ``subscriptions status``; the header token is only ever shown masked."""
    return {
        "name": sub.name,
        "server": sub.server,
        "id": sub.resource_id,
        "kind": "topic" if sub.topic is not None else "criteria",
        "topic": sub.topic or "-",
        "criteria": sub.criteria or "-",
        "filters": " AND ".join(sub.filters) or "-",
        "payload": sub.payload,
        "heartbeat": f"{sub.heartbeat_seconds}s" if sub.heartbeat_seconds is not None else "off",
        "endpoint": _masked_url(sub.endpoint) if sub.endpoint else "-",
        "header_token": "********",
    }


def notification_timeout(server: FhirServerConfig) -> int:
    """Seconds the FHIR server should wait for our answer to a notification (``timeout``)."""
    return max(_MIN_TIMEOUT_SECONDS, math.ceil(_TIMEOUT_FACTOR * server.timeout))


def _backport(sub: SubscriptionConfig, topic: str, endpoint: str, authorization: str, timeout: int) -> dict[str, Any]:
    # Backport IG BackportSubscription: the R5 elements ride as extensions. Extensions on the
    # primitives criteria and channel.payload go in their ``_criteria`` / ``_payload`` siblings
    # (FHIR JSON, json.html#primitive).
    for i, text in enumerate(sub.filters):
        _parse_filter(sub, i, text)
    resource = _base(sub, profile=BACKPORT_PROFILE)
    resource["criteria"] = topic
    if sub.filters:
        resource["_criteria"] = {"extension": [{"url": FILTER_CRITERIA_URL, "valueString": f} for f in sub.filters]}
    channel_extensions: list[dict[str, Any]] = []
    if sub.heartbeat_seconds is not None:
        channel_extensions.append({"url": HEARTBEAT_PERIOD_URL, "valueUnsignedInt": sub.heartbeat_seconds})
    channel_extensions.append({"url": TIMEOUT_URL, "valueUnsignedInt": timeout})
    resource["channel"] = {
        "extension": channel_extensions,
        "type": "rest-hook",
        "endpoint": endpoint,
        # The profile makes payload 1..1 even for ``empty``: the MIME type of the notification bundle.
        "payload": _FHIR_JSON,
        "_payload": {"extension": [{"url": PAYLOAD_CONTENT_URL, "valueCode": sub.payload}]},
        "header": [f"Authorization: {authorization}"],
    }
    return resource


def _classic(sub: SubscriptionConfig, criteria: str, endpoint: str, authorization: str) -> dict[str, Any]:
    resource = _base(sub)
    resource["criteria"] = criteria
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint}
    # R4 rest-hook: with a payload the server PUTs {endpoint}/{Type}/{id}; without one it POSTs an
    # empty body and the bridge searches the criteria. Classic has no id-only, and the search is how
    # the bridge reads by id anyway, so id-only and empty both omit the payload.
    if sub.payload == "full-resource":
        channel["payload"] = _FHIR_JSON
    channel["header"] = [f"Authorization: {authorization}"]
    resource["channel"] = channel
    return resource


def _r5(sub: SubscriptionConfig, topic: str, endpoint: str, authorization: str, timeout: int) -> dict[str, Any]:
    resource = _base(sub)
    resource["topic"] = topic
    filter_by: list[dict[str, Any]] = []
    for i, text in enumerate(sub.filters):
        for term in _parse_filter(sub, i, text):
            if term.modifier is not None and term.modifier not in _R5_MODIFIERS:
                # e.g. the type modifier ``subject:Patient``: R5 filterBy.modifier is a closed code list.
                raise ConfigError(
                    f"subscription {sub.name!r}: filters[{i}] uses a search modifier R5 filterBy cannot express",
                    path=f"{_PATH}.filters",
                )
            filter_by.append(_filter_by(term))
    if filter_by:
        resource["filterBy"] = filter_by
    resource["channelType"] = {"system": CHANNEL_TYPE_SYSTEM, "code": "rest-hook"}
    resource["endpoint"] = endpoint
    # R5 parameter replaces channel.header: "e.g., HTTP Headers" (Subscription.parameter).
    resource["parameter"] = [{"name": "Authorization", "value": authorization}]
    if sub.heartbeat_seconds is not None:
        resource["heartbeatPeriod"] = sub.heartbeat_seconds
    resource["timeout"] = timeout
    resource["contentType"] = _FHIR_JSON
    resource["content"] = sub.payload
    return resource


def _base(sub: SubscriptionConfig, *, profile: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Subscription", "id": sub.resource_id}
    if profile is not None:
        resource["meta"] = {"profile": [profile]}
    # ``requested``: the server moves it to active after our 2xx to its handshake (Backport channels.md).
    resource["status"] = "requested"
    resource["reason"] = f"ehr-bridge {sub.name}"
    return resource


def _filter_by(term: _FilterTerm) -> dict[str, Any]:
    element: dict[str, Any] = {}
    if term.resource_type is not None:
        # Bare type names, as SubscriptionTopic.canFilterBy.resource uses them (relative to the
        # StructureDefinition root of the server's version).
        element["resourceType"] = term.resource_type
    element["filterParameter"] = term.parameter
    if term.modifier is not None:
        element["modifier"] = term.modifier
    # Comparator prefixes stay in the value: R5 filterBy.value is "as is legal in search", e.g. le1950.
    element["value"] = term.value
    return element


def _parse_filter(sub: SubscriptionConfig, index: int, text: str) -> list[_FilterTerm]:
    def bad(reason: str) -> ConfigError:
        # The filter text stays out of the message: it may name a patient.
        return ConfigError(f"subscription {sub.name!r}: filters[{index}] {reason}", path=f"{_PATH}.filters")

    match = _FILTER.match(text)
    if match is None:
        raise bad("is not a search string like 'Type?param=value'")
    terms: list[_FilterTerm] = []
    for pair in match["query"].split("&"):
        name, sep, raw_value = pair.partition("=")
        if not sep or not raw_value or _PARAMETER.match(name) is None:
            raise bad("needs parameter=value terms joined by '&'")
        parameter, _, modifier = name.partition(":")
        terms.append(
            _FilterTerm(
                resource_type=match["type"],
                parameter=parameter,
                modifier=modifier or None,
                value=unquote(raw_value),
            )
        )
    return terms


def _endpoint(sub: SubscriptionConfig) -> str:
    if not sub.endpoint:
        raise ConfigError(
            f"subscription {sub.name!r}: endpoint is required for subscriptions ensure", path=f"{_PATH}.endpoint"
        )
    try:
        parts = urlsplit(sub.endpoint)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"subscription {sub.name!r}: endpoint must be an http(s) URL", path=f"{_PATH}.endpoint")
    if parts.scheme != "https":
        # Backport channels.md: servers should refuse http:// endpoints, and the header token would travel in clear.
        log.warning("fhir.subscription_endpoint_insecure", subscription=sub.name, outcome="http_endpoint")
    return sub.endpoint


def _token(sub: SubscriptionConfig) -> str:
    token = sub.header_token.get_secret_value()
    if _TOKEN.match(token) is None:
        raise ConfigError(
            f"subscription {sub.name!r}: header_token must be printable ASCII without spaces",
            path=f"{_PATH}.header_token",
        )
    return token


def _problems(exc: PydanticValidationError) -> str:
    # loc and msg only: pydantic's messages describe the expectation, the input sits in ``input``.
    found: list[str] = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = "Subscription" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        problem = f"{where}: {error['msg']}"
        if problem not in found:
            found.append(problem)
    return "; ".join(found)


def _masked_url(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))
