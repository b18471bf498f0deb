"""The composition root: builds the store, mapper, router, adapters, workers and listeners from Settings.

Adapters come from :mod:`bridge.registry` by name. Start order matters for
the guarantees: the store opens and reclaims deliveries left in flight by a
crash before any listener accepts a message.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import httpx
import structlog

from bridge import registry
from bridge.channels import AdapterContext, OutboundAdapter, adapter_class
from bridge.compose import Templates
from bridge.config import ListenerConfig, Settings
from bridge.delivery import ChannelWorker, Dispatcher, RetryPolicy
from bridge.errors import FramingError
from bridge.fhir.client import FhirClient
from bridge.fhir.intake import FhirIntake, has_heartbeat
from bridge.fhir.mapping import FhirMapper
from bridge.http import delivery_client
from bridge.intake import Intake, RawMessage
from bridge.mapping import Mapper, MappingOptions
from bridge.routing import Router
from bridge.store.sqlite import SQLiteStore

__all__ = ["ListenerHandler", "Runtime"]

log = structlog.get_logger(__name__)


class _Server(Protocol):
    port: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ListenerHandler:
    """Connects one MLLP listener to intake: a frame in, the ACK bytes out."""

    def __init__(self, intake: Intake, listener: str) -> None:
        self.intake = intake
        self.listener = listener

    async def on_frame(self, payload: bytes, peer: str) -> bytes | None:
        receipt = await self.intake.accept(RawMessage(self.listener, payload, "mllp", peer))
        return receipt.ack

    async def on_oversize(self, head: bytes, size: int, peer: str) -> bytes | None:
        error = FramingError(f"frame of {size} bytes exceeds the listener's limit", code=100)
        receipt = await self.intake.reject(RawMessage(self.listener, head, "mllp", peer), error)
        return receipt.ack


class Runtime:
    """Everything a running bridge holds."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = SQLiteStore(
            settings.store.path, lease_seconds=settings.store.lease_seconds, synchronous=settings.store.synchronous
        )
        self.mapper = Mapper.load(MappingOptions.from_config(settings.mapping))
        self.templates = Templates.load(settings.mapping.extra_paths, timezone=settings.templates.zone)
        locales = settings.channel_locales()
        self.router = Router.from_config(settings.routes)
        # The FHIR clients share this one; each channel delivers through a client of its own (bridge/http.py).
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=5.0))
        self.channel_http: dict[str, httpx.AsyncClient] = {}
        self.adapters: dict[str, OutboundAdapter] = {}
        for name, cfg in settings.channels.items():
            cls = adapter_class(cfg.type, path=f"channels.{name}.type")
            self.channel_http[name] = delivery_client()
            context = AdapterContext(name=name, http=self.channel_http[name], store=self.store)
            self.adapters[name] = cls(cfg, context)  # type: ignore[call-arg]
        workers = {
            name: ChannelWorker(
                name,
                adapter,
                self.store,
                policy=RetryPolicy.from_config(settings.delivery, max_attempts=settings.channels[name].max_attempts),
                templates=self.templates,
                phi=settings.channels[name].phi,
                locale=locales[name],
                kind=settings.channels[name].type,
                poll_interval=settings.delivery.poll_interval,
                max_in_flight=settings.delivery.max_in_flight,
                rate_per_sec=settings.channels[name].rate_per_sec,
            )
            for name, adapter in self.adapters.items()
        }
        self.dispatcher = Dispatcher(workers)
        self.intake = Intake(settings, self.store, self.mapper, self.router, on_commit=self.dispatcher.wake)
        self.fhir: FhirIntake | None = None
        if settings.fhir.subscriptions:
            self.fhir = FhirIntake(
                settings,
                self.store,
                FhirMapper.load(MappingOptions.from_config(settings.mapping)),
                self.router,
                {name: FhirClient(cfg, self.http) for name, cfg in settings.fhir.servers.items()},
                on_commit=self.dispatcher.wake,
            )
        self.servers: dict[str, _Server] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self.started = False

    async def start(self, *, listeners: bool = True) -> None:
        await self.store.open()
        reclaimed = await self.store.reclaim_in_flight()
        if reclaimed:
            log.warning("runtime.reclaimed_in_flight", deliveries=reclaimed)
        hash_key = await self.store.secret("phi-pseudonym")
        for worker in self.dispatcher.workers.values():
            worker.hash_key = hash_key
        self.dispatcher.start()
        if listeners:
            factory = registry.load(registry.INBOUND, "mllp")
            for cfg in self.settings.listeners:
                if cfg.port is None:
                    continue
                server: _Server = factory(cfg, ListenerHandler(self.intake, cfg.name))
                await server.start()
                self.servers[cfg.name] = server
                log.info("runtime.listening", listener=cfg.name, transport="mllp", port=server.port)
        heartbeats = [
            s.heartbeat_seconds for s in self.settings.fhir.subscriptions if has_heartbeat(s) and s.heartbeat_seconds
        ]
        if self.fhir is not None and heartbeats:
            # Look often enough to notice 2 x the shortest heartbeat soon after it passes.
            self._watchdog = asyncio.create_task(
                self._watch(self.fhir, max(1.0, min(heartbeats) / 2)), name="fhir-watchdog"
            )
        self.started = True

    async def _watch(self, fhir: FhirIntake, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await fhir.watch()

    def mllp_port(self, listener: str) -> int:
        return self.servers[listener].port

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        for server in self.servers.values():
            await server.stop()
        self.servers.clear()
        await self.dispatcher.stop()
        await asyncio.gather(*(a.aclose() for a in self.adapters.values()), return_exceptions=True)
        await asyncio.gather(*(c.aclose() for c in self.channel_http.values()), return_exceptions=True)
        await self.http.aclose()
        await self.store.close()
        self.started = False

    def http_routers(self) -> list[Any]:
        """Routers of inbound HTTP adapters and of outbound adapters that serve pages (the inbox)."""
        build = registry.load(registry.INBOUND, "hl7_http")
        routers = [build(self.intake, max_body_bytes=self.settings.http.max_body_bytes)]
        if self.fhir is not None:
            build_fhir = registry.load(registry.INBOUND, "fhir")
            routers.append(build_fhir(self.fhir, max_body_bytes=self.settings.http.max_body_bytes))
        seen: set[type] = set()
        for adapter in self.adapters.values():
            make = getattr(adapter, "router", None)
            if make is not None and type(adapter) not in seen:
                seen.add(type(adapter))
                routers.append(make())
        return routers

    def listener_config(self, name: str) -> ListenerConfig | None:
        return self.settings.listener(name)
