"""The adapter registry: adapters are found by name through entry points, so the core never imports them.

Groups (declared in ``pyproject.toml``; a third-party package may add its own):

- ``ehr_bridge.channels``: outbound adapter classes (``slack``, ``webhook``, ``inbox``);
- ``ehr_bridge.inbound``: inbound transports (``mllp`` server factory, ``mllp_client``, the ``hl7_http``
  and ``fhir`` routers).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from bridge.errors import ConfigError

__all__ = ["CHANNELS", "INBOUND", "load", "names"]

CHANNELS = "ehr_bridge.channels"
INBOUND = "ehr_bridge.inbound"


def names(group: str) -> list[str]:
    """Every name registered in ``group``."""
    return sorted({ep.name for ep in entry_points(group=group)})


def load(group: str, name: str, *, path: str = "") -> Any:
    """The object registered as ``name`` in ``group``; a ConfigError naming ``path`` if there is none."""
    for ep in entry_points(group=group):
        if ep.name == name:
            return ep.load()
    known = ", ".join(names(group)) or "none"
    kind = "channel type" if group == CHANNELS else "adapter"
    raise ConfigError(f"unknown {kind} {name!r} (known: {known})", path=path)
