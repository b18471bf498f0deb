"""Configuration: YAML with ``${ENV}`` interpolation, validated by pydantic.

Every error names the YAML path it concerns (``routes[1].channels[0]``). With
no file at all, :func:`load_config` returns the embedded defaults: SQLite in
``./data``, MLLP on 2575, HTTP on 8080 and one route sending everything to the
built-in inbox. Secrets are ``SecretStr`` and are masked in every repr.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from bridge.channels import LOCALE_PATTERN, ChannelConfig, adapter_class
from bridge.errors import ConfigError
from bridge.events import Severity

__all__ = [
    "DedupConfig",
    "DeliveryConfig",
    "FhirAuthConfig",
    "FhirConfig",
    "FhirServerConfig",
    "HttpConfig",
    "ListenerConfig",
    "LoggingConfig",
    "MappingConfig",
    "RouteConfig",
    "RouteMatch",
    "Settings",
    "StoreConfig",
    "SubscriptionConfig",
    "TemplatesConfig",
    "TlsConfig",
    "load_config",
    "parse_config",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreConfig(_Section):
    #: Only the embedded SQLite store exists so far.
    backend: Literal["sqlite"] = "sqlite"
    #: Database file; its directory is created on start.
    path: Path = Path("data/bridge.db")
    #: A delivery in flight longer than this is handed out again (its worker died mid-send); keep it
    #: above every channel's send timeout, or slow sends are sent twice.
    lease_seconds: float = Field(300.0, gt=0)
    #: Durability of each commit. FULL: on disk (fsync) before the ACK, survives power loss. NORMAL: fsync at
    #: WAL checkpoints only; faster, and a power loss or OS crash can lose the last ACKed messages.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"


class HttpConfig(_Section):
    #: Loopback by default: the inbox and the admin API show PHI. Set 0.0.0.0 together with ``admin_token``.
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: Largest accepted request body (HL7 over HTTP, FHIR); larger gets 413.
    max_body_bytes: int = Field(1_048_576, gt=0)
    #: Required on /inbox, /api/*, /metrics and /docs (Bearer, or Basic with this as the password) when set.
    admin_token: SecretStr | None = None


class TlsConfig(_Section):
    cert: Path
    key: Path
    #: CA bundle for client certificates; when set, clients must present one (mutual TLS).
    client_ca: Path | None = None


class ListenerConfig(_Section):
    #: Name used in logs, in ``POST /hl7/{name}`` and in the journal.
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    #: Loopback by default; set 0.0.0.0 (or an interface address) to take messages from the network.
    host: str = "127.0.0.1"
    #: MLLP port; ``null`` makes the listener HTTP-only.
    port: int | None = Field(2575, ge=0, le=65535)
    max_frame_bytes: int = Field(1_048_576, gt=0)
    idle_timeout: float = Field(300.0, gt=0)
    max_connections: int = Field(100, gt=0)
    #: Codec for messages without MSH-18 that are not valid UTF-8 (European feeds send 8859-1 unannounced).
    charset_fallback: str = "iso-8859-1"
    #: ``strict`` validates against the declared version with hl7apy and answers findings with AE + ERR.
    validation: Literal["lenient", "strict"] = "lenient"
    #: Bearer token required on ``POST /hl7/{name}``; none means no auth on HTTP for this listener.
    http_token: SecretStr | None = None
    tls: TlsConfig | None = None

    @field_validator("charset_fallback")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError as exc:
            raise ValueError(f"unknown codec {value!r}") from exc
        return value


class DedupConfig(_Section):
    #: Same (MSH-3, MSH-4, MSH-10) within this many seconds is re-ACKed and not re-posted.
    window_seconds: float = Field(172_800.0, ge=0)


class RouteMatch(_Section):
    #: Event type globs, e.g. ``result.*``.
    types: list[str] = Field(default_factory=lambda: ["*"])
    min_severity: Severity = Severity.INFO
    #: Location facilities (PV1-3.4); empty matches any.
    facilities: list[str] = Field(default_factory=list)
    #: Location units / points of care (PV1-3.1); empty matches any.
    units: list[str] = Field(default_factory=list)
    #: Patient classes (PV1-2: I, O, E, ...); empty matches any.
    patient_classes: list[str] = Field(default_factory=list)


class RouteConfig(_Section):
    name: str
    match: RouteMatch = RouteMatch()
    channels: list[str] = Field(min_length=1)
    #: Locale of the wording for this route's channels (unless a channel names its own).
    locale: str | None = Field(None, pattern=LOCALE_PATTERN)


class DeliveryConfig(_Section):
    #: Attempts before a delivery is dead (a channel may lower or raise it).
    max_attempts: int = Field(10, ge=1)
    initial_backoff: float = Field(1.0, gt=0)
    max_backoff: float = Field(600.0, gt=0)
    multiplier: float = Field(2.0, ge=1)
    #: Fraction of each delay drawn at random, so retries of many deliveries spread out.
    jitter: float = Field(0.3, ge=0, le=1)
    #: How often workers look for due retries when nothing wakes them.
    poll_interval: float = Field(0.5, gt=0)
    #: Deliveries of one channel sent concurrently (always one at a time per thread key).
    max_in_flight: int = Field(4, ge=1)


class MappingConfig(_Section):
    #: OBX-8 flags that make a result critical (Table 0078; add LU, HU, <, > if your site uses them).
    critical_flags: list[str] = Field(default_factory=lambda: ["HH", "LL", "AA"])
    #: Extra folders or files of mapping YAML, applied after the bundled ones. A file with ``extends: adt.yaml``
    #: is layered over that file (see docs/configuration.md); another file of the same name replaces it.
    extra_paths: list[Path] = Field(default_factory=list)
    #: Assigning authorities of this site's MRNs (HL7 CX-4.1, FHIR Identifier.system), most preferred first:
    #: picks the MRN when PID-3 carries MR identifiers of several authorities.
    mrn_authorities: list[str] = Field(default_factory=list)
    #: IANA time zone of HL7 times without an offset (TS/DTM: the sender's local time), e.g. EVN-2, AIS-4.
    #: In a config file the default is ``templates.timezone``.
    sender_timezone: str = "UTC"

    @field_validator("extra_paths")
    @classmethod
    def _paths_exist(cls, value: list[Path]) -> list[Path]:
        for i, path in enumerate(value):
            if not path.exists():
                # A typo here would silently run the bundled mappings only.
                raise ConfigError(f"no such file or folder: {path}", path=f"mapping.extra_paths[{i}]")
        return value

    @field_validator("sender_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        _zone(value)
        return value

    @property
    def sender_zone(self) -> tzinfo:
        return _zone(self.sender_timezone)


def _zone(name: str) -> tzinfo:
    """The IANA time zone ``name``; UTC needs no time zone database."""
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown IANA time zone {name!r} (e.g. Europe/Berlin, America/New_York)") from exc


def _valid_zone(name: object) -> bool:
    if not isinstance(name, str):
        return False
    try:
        _zone(name)
    except ValueError:
        return False
    return True


class TemplatesConfig(_Section):
    """The wording of notifications: ``mappings/templates/<locale>.yaml`` (see docs/configuration.md)."""

    #: Locale of every channel that neither names its own nor gets one from its routes.
    locale: str = Field("en", pattern=LOCALE_PATTERN)
    #: IANA time zone in which ``{time}`` and ``{start}`` are shown; the default of ``mapping.sender_timezone``.
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        _zone(value)
        return value

    @property
    def zone(self) -> tzinfo:
        return _zone(self.timezone)


class FhirAuthConfig(_Section):
    """How the bridge authenticates to a FHIR server it reads from."""

    #: ``none``, a static ``bearer`` token, or ``smart`` Backend Services (client credentials + private_key_jwt).
    type: Literal["none", "bearer", "smart"] = "none"
    #: The static bearer token (type bearer).
    token: SecretStr | None = None
    #: SMART: the token endpoint, the registered client id, the signing key (PEM text, or a file) and its algorithm.
    token_url: str | None = None
    client_id: str | None = None
    private_key: SecretStr | None = None
    private_key_file: Path | None = None
    algorithm: Literal["RS384", "ES384"] = "RS384"
    #: ``kid`` of the key in the client's registered JWKS.
    key_id: str | None = None
    scope: str = "system/*.read"

    @model_validator(mode="after")
    def _complete(self) -> FhirAuthConfig:
        if self.type == "bearer" and self.token is None:
            raise ValueError("type bearer needs 'token'")
        if self.type == "smart":
            missing = [k for k in ("token_url", "client_id") if getattr(self, k) is None]
            if self.private_key is None and self.private_key_file is None:
                missing.append("private_key or private_key_file")
            if missing:
                raise ValueError(f"type smart needs {', '.join(missing)}")
        return self


class FhirServerConfig(_Section):
    """A FHIR server the bridge reads from (id-only fetches, $status, $events, searches)."""

    #: The service base, e.g. ``https://fhir.example.org/fhir``; nothing outside it is ever fetched.
    base_url: str
    #: The server's FHIR version: ``r4`` (with the Subscriptions Backport IG), ``r4b`` or ``r5``.
    version: Literal["r4", "r4b", "r5"] = "r4"
    auth: FhirAuthConfig = FhirAuthConfig()
    timeout: float = Field(10.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _http_base(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


class SubscriptionConfig(_Section):
    """One subscription: the endpoint ``POST /fhir/{name}`` and, for ``subscriptions ensure``, its resource."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    #: Key of the server under ``fhir.servers``.
    server: str
    #: Topic-based (Backport IG on R4/R4B, R5): the SubscriptionTopic canonical URL.
    topic: str | None = None
    #: R4 classic (query-based): the search criteria, e.g. ``Encounter?status=in-progress``.
    criteria: str | None = None
    #: Topic filters (backport-filter-criteria / R5 filterBy), as search strings: ``Encounter?location=...``.
    filters: list[str] = Field(default_factory=list)
    payload: Literal["full-resource", "id-only", "empty"] = "id-only"
    #: Seconds between heartbeats the server sends; silence beyond twice this raises ``bridge.subscription.stale``.
    #: Topic-based subscriptions only: R4 classic (criteria) has no heartbeat.
    heartbeat_seconds: int | None = Field(60, gt=0)
    #: The token the server must send as ``Authorization: Bearer <token>`` (channel.header / parameter).
    header_token: SecretStr
    #: The public URL of this endpoint, as the FHIR server reaches it (``subscriptions ensure`` writes it).
    endpoint: str | None = None
    #: The Subscription's id on the server; default ``ehr-bridge-<name>`` (the id ``ensure`` gives it).
    server_id: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SubscriptionConfig:
        if (self.topic is None) == (self.criteria is None):
            raise ValueError("needs exactly one of 'topic' (topic-based) or 'criteria' (R4 classic)")
        return self

    @property
    def resource_id(self) -> str:
        return self.server_id or f"ehr-bridge-{self.name}"


class FhirConfig(_Section):
    servers: dict[str, FhirServerConfig] = Field(default_factory=dict)
    subscriptions: list[SubscriptionConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known_servers(self) -> FhirConfig:
        seen: set[str] = set()
        for i, sub in enumerate(self.subscriptions):
            if sub.server not in self.servers:
                known = ", ".join(sorted(self.servers)) or "none"
                raise ConfigError(
                    f"unknown FHIR server {sub.server!r} (configured: {known})", path=f"fhir.subscriptions[{i}].server"
                )
            if sub.name in seen:
                raise ConfigError(f"duplicate subscription name {sub.name!r}", path=f"fhir.subscriptions[{i}].name")
            seen.add(sub.name)
        return self

    def subscription(self, name: str) -> SubscriptionConfig | None:
        return next((s for s in self.subscriptions if s.name == name), None)


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


def _default_listeners() -> list[ListenerConfig]:
    return [ListenerConfig(name="default")]


def _default_routes() -> list[RouteConfig]:
    return [RouteConfig(name="everything", channels=["inbox"])]


def _default_channels() -> dict[str, dict[str, Any]]:
    return {"inbox": {"type": "inbox"}}


class Settings(_Section):
    store: StoreConfig = StoreConfig()
    http: HttpConfig = HttpConfig()
    listeners: list[ListenerConfig] = Field(default_factory=_default_listeners)
    dedup: DedupConfig = DedupConfig()
    mapping: MappingConfig = MappingConfig()
    templates: TemplatesConfig = TemplatesConfig()
    routes: list[RouteConfig] = Field(default_factory=_default_routes)
    #: Channel name → the adapter's settings (``type`` picks the adapter).
    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    delivery: DeliveryConfig = DeliveryConfig()
    fhir: FhirConfig = FhirConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="before")
    @classmethod
    def _channel_models(cls, data: Any) -> Any:
        # Each channel is validated by its own adapter's model, found by ``type`` in the registry.
        if not isinstance(data, dict):
            return data
        channels = data.get("channels")
        if channels is None:
            channels = _default_channels()
        elif "routes" not in data:
            # The default route targets the default inbox; with channels of your own, routes are yours too.
            data = {**data, "routes": []}
        if not isinstance(channels, dict):
            raise ConfigError("must be a mapping of channel name to settings", path="channels")
        built: dict[str, ChannelConfig] = {}
        for name, raw in channels.items():
            path = f"channels.{name}"
            if isinstance(raw, ChannelConfig):
                built[name] = raw
                continue
            if not isinstance(raw, dict) or "type" not in raw:
                raise ConfigError("needs a 'type' (e.g. slack, webhook, inbox)", path=path)
            model = adapter_class(str(raw["type"]), path=f"{path}.type").config_model
            try:
                built[name] = model.model_validate(raw)
            except PydanticValidationError as exc:
                raise ConfigError(_first_error(exc), path=_join(path, exc.errors()[0]["loc"])) from exc
        return {**data, "channels": built}

    @model_validator(mode="before")
    @classmethod
    def _sender_zone(cls, data: Any) -> Any:
        # HL7 times without offset are the sender's local time: unless told otherwise, the site's own zone.
        if not isinstance(data, dict):
            return data
        mapping, templates = data.get("mapping", {}), data.get("templates", {})
        zone = templates.timezone if isinstance(templates, TemplatesConfig) else None
        if isinstance(templates, dict):
            zone = templates.get("timezone", "UTC")
        if not _valid_zone(zone):
            return data  # templates.timezone names its own error
        if isinstance(mapping, dict) and "sender_timezone" not in mapping:
            return {**data, "mapping": {**mapping, "sender_timezone": zone}}
        if isinstance(mapping, MappingConfig) and "sender_timezone" not in mapping.model_fields_set:
            return {**data, "mapping": mapping.model_copy(update={"sender_timezone": zone})}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        seen: dict[str, int] = {}
        ports: dict[tuple[str, int], int] = {}
        for i, listener in enumerate(self.listeners):
            if listener.name in seen:
                raise ConfigError(f"duplicate listener name {listener.name!r}", path=f"listeners[{i}].name")
            seen[listener.name] = i
            if listener.port:
                key = (listener.host, listener.port)
                if key in ports:
                    raise ConfigError(
                        f"port {listener.port} already used by listeners[{ports[key]}]",
                        path=f"listeners[{i}].port",
                    )
                ports[key] = i
        for i, route in enumerate(self.routes):
            for j, channel in enumerate(route.channels):
                if channel not in self.channels:
                    known = ", ".join(sorted(self.channels)) or "none"
                    raise ConfigError(
                        f"unknown channel {channel!r} (configured: {known})",
                        path=f"routes[{i}].channels[{j}]",
                    )
        self._check_locales()
        return self

    def listener(self, name: str) -> ListenerConfig | None:
        return next((x for x in self.listeners if x.name == name), None)

    def channel_locales(self) -> dict[str, str]:
        """The locale of each channel: its own ``locale``, else its routes', else ``templates.locale``."""
        return {name: locale for name, (locale, _) in self._locale_sources().items()}

    def _locale_sources(self) -> dict[str, tuple[str, str]]:
        """Each channel's locale and the YAML path that gives it; a ConfigError when two paths disagree."""
        given = {name: (cfg.locale, f"channels.{name}.locale") for name, cfg in self.channels.items() if cfg.locale}
        for i, route in enumerate(self.routes):
            if route.locale is None:
                continue
            for channel in route.channels:
                locale, path = given.setdefault(channel, (route.locale, f"routes[{i}].locale"))
                if locale != route.locale:
                    raise ConfigError(
                        f"channel {channel!r} already has locale {locale!r} from {path}", path=f"routes[{i}].locale"
                    )
        return {name: given.get(name, (self.templates.locale, "templates.locale")) for name in self.channels}

    def _check_locales(self) -> None:
        # Imported here: bridge.compose builds on bridge.mapping, which imports this module.
        from bridge.compose import template_locales

        known = template_locales(self.mapping.extra_paths)
        named = [(self.templates.locale, "templates.locale")]
        named += [(cfg.locale, f"channels.{name}.locale") for name, cfg in self.channels.items() if cfg.locale]
        named += [(r.locale, f"routes[{i}].locale") for i, r in enumerate(self.routes) if r.locale]
        for locale, path in named:
            if locale not in known:
                raise ConfigError(
                    f"no templates for locale {locale!r} (available: {', '.join(sorted(known))})", path=path
                )
        self._locale_sources()


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, path: str, env: dict[str, str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; an unset VAR without default is an error."""
    if isinstance(node, dict):
        return {k: _interpolate(v, _join(path, (k,)), env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{path}[{i}]", env) for i, v in enumerate(node)]
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set", path=path)

        return _ENV.sub(sub, node)
    return node


def _join(prefix: str, loc: tuple[Any, ...] | list[Any]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


def _first_error(exc: PydanticValidationError) -> str:
    err = exc.errors()[0]
    msg = str(err["msg"])
    # Do not echo input values: they may be secrets.
    return msg.removeprefix("Value error, ")


def parse_config(data: dict[str, Any] | None, *, env: dict[str, str] | None = None) -> Settings:
    """Validate an already-loaded YAML document."""
    raw = _interpolate(data or {}, "", dict(os.environ) if env is None else env)
    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping")
    try:
        return Settings.model_validate(raw)
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, ConfigError):
            raise cause from exc
        raise ConfigError(_first_error(exc), path=_join("", err["loc"])) from exc


def load_config(path: Path | str | None = None, *, env: dict[str, str] | None = None) -> Settings:
    """Load and validate ``path``; with no path, the embedded defaults."""
    if path is None:
        return parse_config({}, env=env)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", path=str(p)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"invalid YAML{where}", path=str(p)) from exc
    if data is not None and not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping", path=str(p))
    return parse_config(data, env=env)
