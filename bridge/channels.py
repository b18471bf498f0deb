"""The contract between the core and outbound adapters, and the registry that finds them.

An outbound adapter turns a :class:`Post` (an event already reduced to what the
channel's PHI level allows, with its thread and original-post references) into
a request, and sends it. It holds no business logic: retries, ordering and
dead letters belong to :mod:`bridge.delivery`.

Adapters are found by name through :mod:`bridge.registry`, so the core never
imports them (dependencies point adapters → bridge) and third parties can add
their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable

import httpx
from pydantic import BaseModel, ConfigDict, Field

from bridge import registry
from bridge.events import ClinicalEvent

__all__ = [
    "LOCALE_PATTERN",
    "AdapterContext",
    "ChannelConfig",
    "OutboundAdapter",
    "PhiLevel",
    "Post",
    "SendResult",
    "adapter_class",
    "adapter_names",
]


#: A locale names a wording file (``mappings/templates/<locale>.yaml``): ``en``, ``de``, ``de-CH``.
LOCALE_PATTERN = r"^[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$"


class PhiLevel(StrEnum):
    """How much protected health information a channel may show (HIPAA minimum necessary)."""

    #: No patient identifiers at all: event type, location down to the bed, severity, time, names of tests.
    NONE = "none"
    #: Initials and the MRN's last 4, sex, location, attending and clinical content; no birth date, no full MRN.
    LIMITED = "limited"
    #: Everything the event carries: for channels whose membership is the care team.
    FULL = "full"


class ChannelConfig(BaseModel):
    """Base of every adapter's config model. Secrets are ``SecretStr`` so reprs mask them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    phi: PhiLevel = PhiLevel.LIMITED
    #: Upper bound of delivery attempts before the delivery is dead (overrides the global value).
    max_attempts: int | None = Field(None, ge=1)
    #: Sends per second to this channel (0 = unlimited); overrides the adapter's default.
    rate_per_sec: float | None = Field(None, ge=0)
    #: Language of the wording (a file ``mappings/templates/<locale>.yaml``); default: its routes', else
    #: ``templates.locale``.
    locale: str | None = Field(None, pattern=LOCALE_PATTERN)


@dataclass(frozen=True, slots=True)
class Post:
    """What one channel must show for one event.

    ``event`` is already reduced to the channel's PHI level; ``title``,
    ``summary``, ``facts`` and ``label`` are the composed wording, in the
    channel's locale (from ``mappings/templates/``). ``delivery_id`` is stable
    across retries: adapters use it as their idempotency key (``webhook-id``,
    Matrix txnId).
    """

    delivery_id: str
    channel: str
    event: ClinicalEvent
    title: str
    summary: str
    facts: tuple[tuple[str, str], ...] = ()
    #: External id of the first post of this thread key in this channel (Slack ``ts``), if any.
    thread_ref: str | None = None
    #: External id of the post this event corrects or cancels, if any.
    original_ref: str | None = None
    #: What a correction or cancellation says it is ("Corrected", "Storniert"); None for other lifecycles.
    label: str | None = None

    @property
    def text(self) -> str:
        """Plain-text form: the notification fallback and the console line."""
        return f"{self.title}: {self.summary}" if self.summary else self.title


@dataclass(frozen=True, slots=True)
class SendResult:
    """What an adapter learned from a successful send."""

    #: The post's id at the target (Slack ``ts``, Matrix ``event_id``); None when it has none.
    external_id: str | None = None
    #: A correction or cancellation whose original could not be edited (gone) was posted as a new
    #: post instead, under ``external_id`` (see ``bridge.delivery.edited_in_place``).
    posted_anew: bool = False


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """What the runtime hands an adapter at construction."""

    #: The channel's configured name (e.g. ``icu-slack``).
    name: str
    #: The channel's HTTP client (``bridge.http.delivery_client``), closed by the runtime; adapters create none.
    http: httpx.AsyncClient
    #: The durable store (the inbox keeps its feed there).
    store: Any


@runtime_checkable
class OutboundAdapter(Protocol):
    """One class per target. Limits are class attributes; ``render`` is pure.

    Constructed as ``cls(config, context)`` with its validated ``config_model``.
    """

    config_model: ClassVar[type[ChannelConfig]]
    max_text: ClassVar[int]
    rate_per_sec: ClassVar[float]
    supports_threads: ClassVar[bool]
    supports_update: ClassVar[bool]

    def render(self, post: Post) -> Any:
        """Build the request payload for ``post``. Pure: no I/O, no clock."""
        ...

    async def send(self, payload: Any) -> SendResult:
        """Send ``payload``. Raises ``Retryable`` or ``Permanent``; never returns a failure."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def adapter_names() -> list[str]:
    """Names of every registered outbound adapter."""
    return registry.names(registry.CHANNELS)


def adapter_class(name: str, *, path: str = "") -> type[OutboundAdapter]:
    """The adapter class registered as ``name``; a ConfigError naming ``path`` if none is."""
    cls: type[OutboundAdapter] = registry.load(registry.CHANNELS, name, path=path)
    return cls
