"""Subscription resources for ``subscriptions ensure``: R4 backport, R4 classic, R4B and R5 shapes.

The extension URLs are spelled out here rather than imported, so a typo in the module is caught.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.subscription import Subscription as SubscriptionR4B
from fhir.resources.subscription import Subscription as SubscriptionR5
from structlog.testing import capture_logs

from bridge.config import FhirServerConfig, SubscriptionConfig
from bridge.errors import ConfigError, FhirError
from bridge.fhir.subscriptions import build_subscription, describe, notification_timeout, validate_subscription

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpus" / "fhir" / "subscription-setup"

TOKEN = "s3cr3t-T0ken.abc"
TOPIC = "http://example.org/FHIR/R5/SubscriptionTopic/admission"
ENDPOINT = "https://bridge.example.org/fhir/adt"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
FILTERS = ["Encounter?patient=Patient/123&status=in-progress", "Encounter?patient:in=Group%2F7"]


def _sub(**overrides: Any) -> SubscriptionConfig:
    fields: dict[str, Any] = {
        "name": "adt",
        "server": "ehr",
        "topic": TOPIC,
        "filters": FILTERS,
        "payload": "id-only",
        "heartbeat_seconds": 120,
        "header_token": TOKEN,
        "endpoint": ENDPOINT,
    }
    fields.update(overrides)
    return SubscriptionConfig.model_validate(fields)


def _server(version: str, timeout: float = 10.0) -> FhirServerConfig:
    return FhirServerConfig.model_validate(
        {"base_url": "https://ehr.example.org/fhir", "version": version, "timeout": timeout}
    )


def _extension(extensions: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in extensions if e["url"] == BACKPORT + name]


@pytest.mark.parametrize("version", ["r4", "r4b"])
def test_topic_subscription_on_r4_and_r4b_takes_the_backport_shape(version: str) -> None:
    resource = build_subscription(_sub(), _server(version))

    SubscriptionR4B.model_validate(resource)
    assert resource["resourceType"] == "Subscription"
    assert resource["id"] == "ehr-bridge-adt"
    assert resource["status"] == "requested"
    assert resource["reason"] == "ehr-bridge adt"
    assert resource["meta"]["profile"] == [BACKPORT + "backport-subscription"]
    assert resource["criteria"] == TOPIC
    assert resource["_criteria"]["extension"] == [
        {"url": BACKPORT + "backport-filter-criteria", "valueString": FILTERS[0]},
        {"url": BACKPORT + "backport-filter-criteria", "valueString": FILTERS[1]},
    ]
    channel = resource["channel"]
    assert channel["type"] == "rest-hook"
    assert channel["endpoint"] == ENDPOINT
    assert channel["header"] == [f"Authorization: Bearer {TOKEN}"]
    assert channel["payload"] == "application/fhir+json"
    assert channel["_payload"]["extension"] == [{"url": BACKPORT + "backport-payload-content", "valueCode": "id-only"}]
    assert _extension(channel["extension"], "backport-heartbeat-period") == [
        {"url": BACKPORT + "backport-heartbeat-period", "valueUnsignedInt": 120}
    ]
    assert _extension(channel["extension"], "backport-timeout") == [
        {"url": BACKPORT + "backport-timeout", "valueUnsignedInt": 30}
    ]
    assert "topic" not in resource


@pytest.mark.parametrize(
    ("payload", "expected_payload"),
    [("full-resource", "application/fhir+json"), ("id-only", None), ("empty", None)],
)
def test_criteria_subscription_on_r4_is_classic_with_payload_only_for_full_resource(
    payload: str, expected_payload: str | None
) -> None:
    sub = _sub(topic=None, criteria="Encounter?status=in-progress", filters=[], payload=payload)

    resource = build_subscription(sub, _server("r4"))

    SubscriptionR4B.model_validate(resource)
    assert resource["criteria"] == "Encounter?status=in-progress"
    assert resource["status"] == "requested"
    assert "meta" not in resource
    assert "_criteria" not in resource
    channel = resource["channel"]
    assert channel["type"] == "rest-hook"
    assert channel["endpoint"] == ENDPOINT
    assert channel["header"] == [f"Authorization: Bearer {TOKEN}"]
    assert channel.get("payload") == expected_payload
    assert "_payload" not in channel
    assert "extension" not in channel


def test_topic_subscription_on_r5_is_native_with_parsed_filters() -> None:
    resource = build_subscription(_sub(), _server("r5"))

    SubscriptionR5.model_validate(resource)
    assert resource["status"] == "requested"
    assert resource["reason"] == "ehr-bridge adt"
    assert resource["topic"] == TOPIC
    assert resource["filterBy"] == [
        {"resourceType": "Encounter", "filterParameter": "patient", "value": "Patient/123"},
        {"resourceType": "Encounter", "filterParameter": "status", "value": "in-progress"},
        {"resourceType": "Encounter", "filterParameter": "patient", "modifier": "in", "value": "Group/7"},
    ]
    assert resource["channelType"] == {
        "system": "http://terminology.hl7.org/CodeSystem/subscription-channel-type",
        "code": "rest-hook",
    }
    assert resource["endpoint"] == ENDPOINT
    assert resource["parameter"] == [{"name": "Authorization", "value": f"Bearer {TOKEN}"}]
    assert resource["heartbeatPeriod"] == 120
    assert resource["timeout"] == 30
    assert resource["contentType"] == "application/fhir+json"
    assert resource["content"] == "id-only"
    assert not {"criteria", "channel", "meta"} & resource.keys()


@pytest.mark.parametrize("payload", ["full-resource", "id-only", "empty"])
def test_payload_kind_lands_where_each_version_reads_it(payload: str) -> None:
    backport = build_subscription(_sub(payload=payload), _server("r4"))
    native = build_subscription(_sub(payload=payload), _server("r5"))

    assert backport["channel"]["_payload"]["extension"][0]["valueCode"] == payload
    # The Backport profile makes channel.payload 1..1: the notification bundle's MIME type even for empty.
    assert backport["channel"]["payload"] == "application/fhir+json"
    assert native["content"] == payload


def test_filter_without_resource_type_leaves_filter_by_resource_type_out() -> None:
    resource = build_subscription(_sub(filters=["patient=Patient/9"]), _server("r5"))

    assert resource["filterBy"] == [{"filterParameter": "patient", "value": "Patient/9"}]


def test_subscription_without_filters_carries_no_filter_elements() -> None:
    backport = build_subscription(_sub(filters=[]), _server("r4b"))
    native = build_subscription(_sub(filters=[]), _server("r5"))

    assert "_criteria" not in backport
    assert "filterBy" not in native


def test_no_heartbeat_omits_the_heartbeat_but_keeps_the_timeout() -> None:
    backport = build_subscription(_sub(heartbeat_seconds=None), _server("r4"))
    native = build_subscription(_sub(heartbeat_seconds=None), _server("r5"))

    assert _extension(backport["channel"]["extension"], "backport-heartbeat-period") == []
    assert len(_extension(backport["channel"]["extension"], "backport-timeout")) == 1
    assert "heartbeatPeriod" not in native
    assert native["timeout"] == 30


@pytest.mark.parametrize(("read_timeout", "expected"), [(1.0, 30), (10.0, 30), (20.0, 60), (25.5, 77)])
def test_notification_timeout_leaves_room_for_the_fetches_behind_our_answer(read_timeout: float, expected: int) -> None:
    assert notification_timeout(_server("r5", timeout=read_timeout)) == expected
    assert build_subscription(_sub(), _server("r5", timeout=read_timeout))["timeout"] == expected


def test_server_id_becomes_the_resource_id() -> None:
    assert build_subscription(_sub(server_id="sub-42"), _server("r5"))["id"] == "sub-42"


def test_criteria_subscription_on_r5_is_refused_naming_criteria() -> None:
    sub = _sub(topic=None, criteria="Encounter?status=in-progress", filters=[])

    with pytest.raises(ConfigError) as caught:
        build_subscription(sub, _server("r5"))

    assert caught.value.path == "fhir.subscriptions[].criteria"
    assert "'adt'" in str(caught.value)


def test_criteria_subscription_with_filters_is_refused() -> None:
    sub = _sub(topic=None, criteria="Encounter?status=in-progress")

    with pytest.raises(ConfigError) as caught:
        build_subscription(sub, _server("r4"))

    assert caught.value.path == "fhir.subscriptions[].filters"


@pytest.mark.parametrize("version", ["r4", "r4b", "r5"])
def test_missing_endpoint_is_a_config_error(version: str) -> None:
    with pytest.raises(ConfigError, match="endpoint is required for subscriptions ensure") as caught:
        build_subscription(_sub(endpoint=None), _server(version))

    assert caught.value.path == "fhir.subscriptions[].endpoint"


@pytest.mark.parametrize(
    "endpoint", ["bridge.example.org/fhir/adt", "ftp://bridge.example.org/x", "https://", "http://[::1"]
)
def test_endpoint_that_is_not_an_http_url_is_a_config_error(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="http\\(s\\) URL"):
        build_subscription(_sub(endpoint=endpoint), _server("r4"))


def test_http_endpoint_is_built_with_a_warning_that_names_only_the_subscription() -> None:
    with capture_logs() as logs:
        resource = build_subscription(_sub(endpoint="http://127.0.0.1:8080/fhir/adt"), _server("r5"))

    assert resource["endpoint"] == "http://127.0.0.1:8080/fhir/adt"
    assert [entry["event"] for entry in logs] == ["fhir.subscription_endpoint_insecure"]
    assert logs[0]["subscription"] == "adt"
    assert TOKEN not in repr(logs)


@pytest.mark.parametrize("token", ["two words", " padded", "line\r\nX-Injected: 1", "caf\u00e9", ""])
def test_header_token_that_cannot_travel_in_a_header_is_refused_without_echoing_it(token: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_subscription(_sub(header_token=token), _server("r4"))

    assert caught.value.path == "fhir.subscriptions[].header_token"
    if token.strip():
        assert token.strip() not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "Encounter?",
        "Encounter?patient",
        "Encounter?patient=",
        "Encounter?=Patient/1",
        "Encounter?patient=Patient/1&",
        "encounter?patient=Patient/1",
        "Encounter?patient=Patient 1",
        "Encounter?patient=Patient/1?x=1",
    ],
)
@pytest.mark.parametrize("version", ["r4", "r5"])
def test_malformed_filter_is_refused_without_quoting_it(text: str, version: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_subscription(_sub(filters=["Encounter?patient=Patient/1", text]), _server(version))

    assert caught.value.path == "fhir.subscriptions[].filters"
    assert "filters[1]" in str(caught.value)
    assert text not in str(caught.value)


def test_search_modifier_r5_filter_by_cannot_express_is_refused_on_r5_only() -> None:
    sub = _sub(filters=["Observation?subject:Patient=123"])

    with pytest.raises(ConfigError, match="modifier"):
        build_subscription(sub, _server("r5"))
    backport = build_subscription(sub, _server("r4"))
    assert backport["_criteria"]["extension"][0]["valueString"] == "Observation?subject:Patient=123"


def test_validation_failure_is_a_422_naming_the_element_without_the_token() -> None:
    resource = build_subscription(_sub(), _server("r4"))
    resource["channel"]["header"] = f"Authorization: Bearer {TOKEN}"

    with pytest.raises(FhirError) as caught:
        validate_subscription(resource, "r4")

    assert caught.value.status == 422
    assert "Subscription.channel.header" in str(caught.value)
    assert TOKEN not in str(caught.value)
    # The pydantic error holds the input, token included: it must not ride along in the chain.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


def test_validation_names_indexed_paths() -> None:
    resource = build_subscription(_sub(), _server("r5"))
    del resource["filterBy"][1]["filterParameter"]

    with pytest.raises(FhirError, match=r"Subscription\.filterBy\[1\]\.filterParameter"):
        validate_subscription(resource, "r5")


@pytest.mark.parametrize(("built_for", "checked_as"), [("r5", "r4"), ("r5", "r4b"), ("r4", "r5")])
def test_a_resource_is_checked_against_the_models_of_the_version_given(built_for: str, checked_as: str) -> None:
    resource = build_subscription(_sub(), _server(built_for))

    with pytest.raises(FhirError) as caught:
        validate_subscription(resource, checked_as)  # type: ignore[arg-type]

    assert caught.value.status == 422
    assert checked_as.upper() in str(caught.value)


@pytest.mark.parametrize(
    ("version", "overrides"),
    [
        ("r4", {}),
        ("r4", {"topic": None, "criteria": "Encounter?status=in-progress", "filters": [], "payload": "full-resource"}),
        ("r4b", {}),
        ("r5", {}),
    ],
    ids=["r4-topic", "r4-criteria", "r4b-topic", "r5-topic"],
)
def test_round_trip_through_the_models_keeps_every_element_and_extension(
    version: str, overrides: dict[str, Any]
) -> None:
    resource = build_subscription(_sub(**overrides), _server(version))
    model = SubscriptionR5 if version == "r5" else SubscriptionR4B

    dumped = model.model_validate(resource).model_dump(mode="json", by_alias=True, exclude_none=True)

    assert dumped == resource


def test_describe_summarises_without_the_token() -> None:
    sub = _sub(endpoint="https://user:pw@bridge.example.org/fhir/adt?key=k1")

    summary = describe(sub)

    assert summary["name"] == "adt"
    assert summary["id"] == "ehr-bridge-adt"
    assert summary["kind"] == "topic"
    assert summary["topic"] == TOPIC
    assert summary["criteria"] == "-"
    assert summary["payload"] == "id-only"
    assert summary["heartbeat"] == "120s"
    assert summary["endpoint"] == "https://***@bridge.example.org/fhir/adt?***"
    assert summary["header_token"] == "********"
    assert all(TOKEN not in value for value in summary.values())
    assert all(secret not in repr(summary) for secret in (TOKEN, "pw", "k1"))


def test_describe_of_a_criteria_subscription_without_endpoint_or_heartbeat() -> None:
    sub = _sub(topic=None, criteria="Encounter?status=in-progress", filters=[], endpoint=None, heartbeat_seconds=None)

    summary = describe(sub)

    assert (summary["kind"], summary["criteria"], summary["topic"]) == ("criteria", "Encounter?status=in-progress", "-")
    assert (summary["endpoint"], summary["heartbeat"], summary["filters"]) == ("-", "off", "-")


@pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not checked out")
@pytest.mark.parametrize(
    ("folder", "version"),
    [("r4b", "r4b"), ("r5", "r5")],
)
def test_corpus_subscriptions_pass_the_same_validation(folder: str, version: str) -> None:
    files = sorted((CORPUS / folder).glob("Subscription-*.json"))
    assert files
    for path in files:
        validate_subscription(json.loads(path.read_text(encoding="utf-8")), version)  # type: ignore[arg-type]


@pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not checked out")
def test_header_token_has_the_shape_of_the_corpus_examples() -> None:
    classic = json.loads((CORPUS / "r4b" / "Subscription-example.json").read_text(encoding="utf-8"))
    native = json.loads((CORPUS / "r5" / "Subscription-admission.json").read_text(encoding="utf-8"))
    ours_classic = build_subscription(
        _sub(topic=None, criteria="Encounter?status=in-progress", filters=[]), _server("r4b")
    )
    ours_native = build_subscription(_sub(), _server("r5"))

    def shape(value: str) -> str:
        return value.rsplit(" ", 1)[0]

    assert [shape(h) for h in ours_classic["channel"]["header"]] == [shape(h) for h in classic["channel"]["header"]]
    assert [(p["name"], shape(p["value"])) for p in ours_native["parameter"]] == [
        (p["name"], shape(p["value"])) for p in native["parameter"]
    ]
    assert ours_native["channelType"]["code"] == native["channelType"]["code"]
    assert ours_native["contentType"] == native["contentType"]
