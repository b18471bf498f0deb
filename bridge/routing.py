"""Routing: which channels an event goes to, from the routes in config.

A route matches on event type globs, a minimum severity, the location's
facility or unit and the patient class. An event goes to the union of the
channels of every matching route, in config order, each channel once.

An event's type globs match its own type and the types the catalogue says it
also routes as from its severity on (``routes_as``): a correction that makes a
result critical matches the routes for ``result.critical``, since it is a new
critical value for whoever is routed those.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bridge.catalogue import RoutesAs, routes_as_table
from bridge.config import RouteConfig
from bridge.events import ClinicalEvent, EventType, Severity, type_matches

__all__ = ["Route", "Router"]


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    types: tuple[str, ...]
    min_severity: Severity
    facilities: frozenset[str]
    units: frozenset[str]
    patient_classes: frozenset[str]
    channels: tuple[str, ...]

    @classmethod
    def from_config(cls, cfg: RouteConfig) -> Route:
        m = cfg.match
        return cls(
            name=cfg.name,
            types=tuple(m.types),
            min_severity=m.min_severity,
            facilities=frozenset(m.facilities),
            units=frozenset(m.units),
            patient_classes=frozenset(m.patient_classes),
            channels=tuple(cfg.channels),
        )

    def matches(self, event: ClinicalEvent, also: tuple[str, ...] = ()) -> bool:
        """Whether ``event`` matches; ``also``: other types it routes as (its own type always counts)."""
        location = event.encounter.location
        return (
            any(type_matches(t, self.types) for t in (event.type.value, *also))
            and event.severity.at_least(self.min_severity)
            and (not self.facilities or location.facility in self.facilities)
            and (not self.units or location.unit in self.units)
            and (not self.patient_classes or event.encounter.patient_class in self.patient_classes)
        )

    def misses(self, event: ClinicalEvent, also: tuple[str, ...] = ()) -> list[str]:
        """Why ``event`` does not match, one reason per failing filter ([] when it matches).

        The same filters as :meth:`matches`, which stays the fast path; a test keeps the two in step.
        """
        location = event.encounter.location
        failed: list[str] = []
        types = (event.type.value, *also)
        if not any(type_matches(t, self.types) for t in types):
            failed.append(f"type {' or '.join(types)} not in {', '.join(self.types)}")
        if not event.severity.at_least(self.min_severity):
            failed.append(f"severity {event.severity.value} below {self.min_severity.value}")
        for what, value, allowed in (
            ("facility", location.facility, self.facilities),
            ("unit", location.unit, self.units),
            ("patient class", event.encounter.patient_class, self.patient_classes),
        ):
            if allowed and value not in allowed:
                failed.append(f"{what} {value or '(none)'} not in {', '.join(sorted(allowed))}")
        return failed


class Router:
    """Compiled routes; :meth:`channels_for` is pure."""

    def __init__(self, routes: list[Route], routes_as: Mapping[EventType, tuple[RoutesAs, ...]] | None = None) -> None:
        self.routes = routes
        #: From the catalogue (``routes_as``), read once: routing never reads YAML per event.
        self.routes_as = routes_as_table() if routes_as is None else routes_as

    @classmethod
    def from_config(cls, routes: list[RouteConfig]) -> Router:
        return cls([Route.from_config(r) for r in routes])

    def also(self, event: ClinicalEvent) -> tuple[str, ...]:
        """The other types ``event`` routes as at its severity (catalogue ``routes_as``)."""
        return tuple(a.type.value for a in self.routes_as.get(event.type, ()) if event.severity.at_least(a.severity))

    def channels_for(self, event: ClinicalEvent) -> list[str]:
        out: dict[str, None] = {}
        also = self.also(event)
        for route in self.routes:
            if route.matches(event, also):
                out.update(dict.fromkeys(route.channels))
        return list(out)
