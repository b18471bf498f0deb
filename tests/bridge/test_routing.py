"""Routing: which channels an event goes to, from the routes in config (bridge/routing.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bridge.config import RouteConfig, RouteMatch
from bridge.events import ClinicalEvent, Encounter, EventType, Location, Severity
from bridge.routing import Router

EventFactory = Callable[..., ClinicalEvent]


def route(*channels: str, name: str = "r", **match: Any) -> RouteConfig:
    return RouteConfig(name=name, match=RouteMatch(**match), channels=list(channels))


def encounter(
    *, facility: str | None = "NORTH", unit: str | None = "ICU", patient_class: str | None = "I"
) -> Encounter:
    return Encounter(patient_class=patient_class, location=Location(facility=facility, unit=unit))


@pytest.mark.parametrize(
    ("match", "event", "routed"),
    [
        pytest.param({}, {}, True, id="defaults-match-everything"),
        pytest.param({"types": ["result.*"]}, {"type": EventType.RESULT_CRITICAL}, True, id="glob-matches"),
        pytest.param({"types": ["result.*"]}, {"type": EventType.ENCOUNTER_ADMITTED}, False, id="glob-misses"),
        pytest.param({"types": ["encounter.admitted"]}, {"type": EventType.ENCOUNTER_ADMITTED}, True, id="exact-type"),
        pytest.param(
            {"types": ["encounter.admitted"]},
            {"type": EventType.ENCOUNTER_CANCELLED},
            False,
            id="exact-type-is-not-a-prefix",
        ),
        pytest.param(
            {"types": ["order.*", "result.critical"]},
            {"type": EventType.RESULT_CRITICAL},
            True,
            id="any-of-globs",
        ),
        pytest.param({"types": ["Result.*"]}, {"type": EventType.RESULT_FINAL}, False, id="globs-are-case-sensitive"),
        pytest.param({"min_severity": "warning"}, {"severity": Severity.WARNING}, True, id="severity-equal"),
        pytest.param({"min_severity": "warning"}, {"severity": Severity.CRITICAL}, True, id="severity-above"),
        pytest.param({"min_severity": "warning"}, {"severity": Severity.NOTICE}, False, id="severity-below"),
        pytest.param({"facilities": ["NORTH"]}, {"encounter": encounter()}, True, id="facility-listed"),
        pytest.param({"facilities": ["SOUTH"]}, {"encounter": encounter()}, False, id="facility-not-listed"),
        pytest.param({"facilities": ["NORTH"]}, {"encounter": encounter(facility=None)}, False, id="facility-unknown"),
        pytest.param({"units": ["ICU", "ED"]}, {"encounter": encounter()}, True, id="unit-listed"),
        pytest.param({"units": ["ED"]}, {"encounter": encounter()}, False, id="unit-not-listed"),
        pytest.param({"patient_classes": ["I"]}, {"encounter": encounter()}, True, id="class-listed"),
        pytest.param({"patient_classes": ["E", "O"]}, {"encounter": encounter()}, False, id="class-not-listed"),
        pytest.param(
            {"patient_classes": ["I"]},
            {"encounter": encounter(patient_class=None)},
            False,
            id="class-unknown",
        ),
        pytest.param(
            {"types": ["result.*"], "min_severity": "critical", "units": ["ICU"], "facilities": ["NORTH"]},
            {"type": EventType.RESULT_CRITICAL, "severity": Severity.CRITICAL, "encounter": encounter()},
            True,
            id="all-filters-hold",
        ),
        pytest.param(
            {"types": ["result.*"], "min_severity": "critical", "units": ["ICU"], "facilities": ["SOUTH"]},
            {"type": EventType.RESULT_CRITICAL, "severity": Severity.CRITICAL, "encounter": encounter()},
            False,
            id="one-filter-fails",
        ),
    ],
)
def test_route_filters(make_event: EventFactory, match: dict[str, Any], event: dict[str, Any], routed: bool) -> None:
    router = Router.from_config([route("icu", **match)])
    made = make_event(**event)

    assert router.channels_for(made) == (["icu"] if routed else [])
    # misses() names a reason for each failing filter and none when the route matches: the two stay in step.
    misses = router.routes[0].misses(made, router.also(made))
    assert (misses == []) is routed
    if match.get("facilities") == ["SOUTH"]:
        assert misses == ["facility NORTH not in SOUTH"]


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        pytest.param([route("a", "b"), route("b", "c")], ["a", "b", "c"], id="union-in-config-order"),
        pytest.param([route("c"), route("a", "c")], ["c", "a"], id="first-mention-wins"),
        pytest.param(
            [route("a", types=["order.*"]), route("b", "c")], ["b", "c"], id="non-matching-route-adds-nothing"
        ),
        pytest.param([route("a", "a")], ["a"], id="repeated-in-one-route"),
        pytest.param([route("a", types=["order.*"])], [], id="no-route-matches"),
        pytest.param([], [], id="no-routes"),
    ],
)
def test_event_goes_to_union_of_matching_routes_each_channel_once(
    make_event: EventFactory, routes: list[RouteConfig], expected: list[str]
) -> None:
    assert Router.from_config(routes).channels_for(make_event(type=EventType.RESULT_FINAL)) == expected


# --- a correction routes as the type it would have as a new event (catalogue routes_as; review 2, finding 1) ---


@pytest.mark.parametrize(
    ("severity", "routed"),
    [
        pytest.param(Severity.CRITICAL, True, id="critical-correction-reaches-critical-routes"),
        pytest.param(Severity.WARNING, False, id="abnormal-correction-does-not"),
        pytest.param(Severity.NOTICE, False, id="normal-correction-does-not"),
    ],
)
def test_a_critical_correction_matches_the_routes_for_critical_results(
    make_event: EventFactory, severity: Severity, routed: bool
) -> None:
    router = Router.from_config([route("oncall", types=["result.critical"])])
    event = make_event(type=EventType.RESULT_CORRECTED, severity=severity)

    assert router.channels_for(event) == (["oncall"] if routed else [])


def test_routes_as_comes_from_the_catalogue_and_keeps_the_routes_other_filters(make_event: EventFactory) -> None:
    routes = [
        route("elsewhere", types=["result.critical"], facilities=["SOUTH"]),
        route("oncall", types=["result.critical"], min_severity="critical"),
        route("orders", types=["order.*"]),
    ]
    corrected = make_event(
        type=EventType.RESULT_CORRECTED, severity=Severity.CRITICAL, encounter=encounter(facility="NORTH")
    )

    assert Router.from_config(routes).channels_for(corrected) == ["oncall"]
    # The critical result itself is not routed as anything else.
    assert Router.from_config(routes).also(make_event(type=EventType.RESULT_CRITICAL)) == ()


def test_misses_counts_the_types_an_event_routes_as(make_event: EventFactory) -> None:
    router = Router.from_config([route("oncall", types=["result.critical"], units=["CCU"])])
    corrected = make_event(type=EventType.RESULT_CORRECTED, severity=Severity.CRITICAL, encounter=encounter())

    assert router.routes[0].misses(corrected, router.also(corrected)) == ["unit ICU not in CCU"]
    assert router.routes[0].misses(corrected) == [
        "type result.corrected not in result.critical",
        "unit ICU not in CCU",
    ]
