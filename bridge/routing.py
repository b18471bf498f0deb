"""Routing: which channels an event goes to, from the routes in config.

A route matches on event type globs, a minimum severity, the location's
facility or unit and the patient class. An event goes to the union of the
channels of every matching route, in config order, each channel once.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.config import RouteConfig
from bridge.events import ClinicalEvent, Severity, type_matches

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

    def matches(self, event: ClinicalEvent) -> bool:
        location = event.encounter.location
        return (
            type_matches(event.type.value, self.types)
            and event.severity.at_least(self.min_severity)
            and (not self.facilities or location.facility in self.facilities)
            and (not self.units or location.unit in self.units)
            and (not self.patient_classes or event.encounter.patient_class in self.patient_classes)
        )


class Router:
    """Compiled routes; :meth:`channels_for` is pure."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    @classmethod
    def from_config(cls, routes: list[RouteConfig]) -> Router:
        return cls([Route.from_config(r) for r in routes])

    def channels_for(self, event: ClinicalEvent) -> list[str]:
        out: dict[str, None] = {}
        for route in self.routes:
            if route.matches(event):
                out.update(dict.fromkeys(route.channels))
        return list(out)
