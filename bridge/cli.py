"""The ``ehr-bridge`` command line: serve, send, map, simulate, check-config, dead letters and FHIR subscriptions."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer

from bridge import registry
from bridge.channels import PhiLevel
from bridge.config import Settings, load_config
from bridge.errors import BridgeError, ConfigError, MappingError

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ehr-bridge: HL7 v2 and FHIR to clinical chat.")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: deliveries that gave up.")
app.add_typer(dlq_app, name="dlq")
subscriptions_app = typer.Typer(no_args_is_help=True, help="FHIR subscriptions on the servers in config.")
app.add_typer(subscriptions_app, name="subscriptions")


@app.callback()
def _logging() -> None:
    """Logs go to stderr (stdout carries command output); ``serve`` reconfigures from its settings."""
    from bridge.logs import configure

    configure("warning", "console")


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config YAML (default: $EHR_BRIDGE_CONFIG, else embedded defaults)."),
]


def _settings(config: Path | None) -> Settings:
    path = config or (Path(os.environ["EHR_BRIDGE_CONFIG"]) if os.environ.get("EHR_BRIDGE_CONFIG") else None)
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(f"config error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the bridge: MLLP listeners, HTTP API, delivery workers."""
    import uvicorn

    from bridge.app import create_app
    from bridge.logs import configure
    from bridge.runtime import Runtime

    settings = _settings(config)
    configure(settings.logging.level, settings.logging.format)
    try:
        runtime = Runtime(settings)
    except BridgeError as exc:
        typer.echo(f"cannot start: {exc}", err=True)
        raise typer.Exit(2) from exc
    if settings.http.admin_token is None and settings.http.host not in ("127.0.0.1", "::1", "localhost"):
        structlog.get_logger("bridge.cli").warning(
            "http.admin_unauthenticated",
            host=settings.http.host,
            detail="set http.admin_token: /inbox and /api show PHI",
        )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(runtime, manage_runtime=True),
            host=settings.http.host,
            port=settings.http.port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
    )
    server.run()
    if not server.started:
        raise typer.Exit(1)


@app.command()
def send(
    files: Annotated[list[Path], typer.Argument(help="HL7 files; batches and concatenations are split.")],
    host: Annotated[str, typer.Option(help="MLLP host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="MLLP port.")] = 2575,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each ACK.")] = 10.0,
) -> None:
    """Send messages over MLLP, one frame each, and print each ACK's MSA segment."""
    from bridge.hl7 import split_messages

    client_cls = registry.load(registry.INBOUND, "mllp_client")

    async def run() -> int:
        failures = 0
        async with client_cls(host, port, timeout=timeout) as client:
            for path in files:
                for n, payload in enumerate(split_messages(_unframe(path.read_bytes())), start=1):
                    ack = await client.send(payload)
                    msa = _segment(ack, b"MSA")
                    typer.echo(f"{path.name}#{n}: {msa}")
                    if not msa.startswith(("MSA|AA", "MSA|CA")):
                        failures += 1
        return failures

    try:
        failures = asyncio.run(run())
    except (OSError, TimeoutError, BridgeError) as exc:
        typer.echo(f"send failed: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from exc
    raise typer.Exit(1 if failures else 0)


def _unframe(data: bytes) -> bytes:
    """Drop MLLP block characters from a file captured off the wire, so each message is framed once."""
    return data.replace(b"\x0b", b"").replace(b"\x1c\r", b"\r").replace(b"\x1c", b"")


def _segment(message: bytes, name: bytes) -> str:
    for seg in message.replace(b"\n", b"\r").split(b"\r"):
        if seg.startswith(name):
            return seg.decode("utf-8", "replace")
    return "(no " + name.decode() + " segment)"


InputPaths = Annotated[
    list[Path],
    typer.Argument(exists=True, help="HL7 v2 files (batches and concatenations are split), FHIR JSON, or folders."),
]


@app.command("map")
def map_(
    paths: InputPaths,
    table: Annotated[bool, typer.Option("--table", help="One row per event instead of JSON.")] = False,
    summary: Annotated[
        bool, typer.Option("--summary", help="Counts per message and event type, and what did not map and why.")
    ] = False,
    phi: Annotated[
        PhiLevel | None,
        typer.Option(help="What identifiers to print: full for JSON by default, limited for --table."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Print the events each message maps to. No side effects; folders are walked recursively."""
    from bridge.simulate import Mappings, Summary, format_summary, format_table, reports_json, survey

    settings = _settings(config)
    mappings = Mappings(settings.mapping)
    fallback = settings.listeners[0].charset_fallback if settings.listeners else "iso-8859-1"
    try:
        # The mapping files are read on first use: a broken site file fails here.
        reports = list(survey(paths, mappings, received_at=datetime.now(UTC), fallback=fallback))
        counted = Summary.of(reports, mappings) if summary else None
    except MappingError as exc:
        typer.echo(f"mapping error: {exc}", err=True)
        raise typer.Exit(2) from exc
    # Pseudonyms keyed for this run only: an unkeyed hash of a visit number is reversed by trying them all.
    hash_key = secrets.token_bytes(32)
    if table:
        typer.echo(format_table(reports, phi or PhiLevel.LIMITED, hash_key=hash_key), nl=False)
    if counted is not None:
        if table:
            typer.echo("")
        typer.echo(format_summary(counted), nl=False)
    if not table and counted is None:
        json.dump(
            reports_json(reports, phi or PhiLevel.FULL, hash_key=hash_key), sys.stdout, indent=2, ensure_ascii=False
        )
        sys.stdout.write("\n")


@app.command()
def simulate(
    paths: Annotated[
        list[Path],
        typer.Argument(exists=True, help="HL7 v2 files (batches and concatenations are split) or folders of them."),
    ],
    config: ConfigOption = None,
    payload: Annotated[bool, typer.Option("--payload", help="Show each rendered request as compact JSON.")] = False,
) -> None:
    """Show what each channel would receive: mapping, routing, duplicates, PHI level and rendering; nothing is sent."""
    from bridge.logs import configure
    from bridge.simulate import format_simulation
    from bridge.simulate import simulate as run

    settings = _settings(config)
    # The report says what became of every message; intake's warnings would repeat it on stderr.
    configure("error", "console")
    try:
        result = asyncio.run(run(settings, paths))
    except BridgeError as exc:
        typer.echo(f"cannot simulate: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(format_simulation(result, payload=payload), nl=False)


@app.command("check-config")
def check_config(file: Path) -> None:
    """Validate a config file and load what serve would: the mapping files of both formats and the templates.

    Errors name the YAML path of the config, or the file and JSON path of a mapping or template file.
    """
    from bridge.compose import Templates
    from bridge.fhir.mapping import FhirMapper
    from bridge.mapping import Mapper, MappingOptions

    settings = _settings(file)
    options = MappingOptions.from_config(settings.mapping)
    try:
        # FHIR files are checked even without subscriptions: a site's extra folder may hold them for later.
        hl7, fhir = Mapper.load(options), FhirMapper.load(options)
    except MappingError as exc:
        typer.echo(f"mapping error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        templates = Templates.load(settings.mapping.extra_paths, timezone=settings.templates.zone)
    except MappingError as exc:
        typer.echo(f"template error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(
        f"ok: {len(settings.listeners)} listener(s), {len(settings.routes)} route(s), "
        f"{len(settings.channels)} channel(s): {', '.join(sorted(settings.channels))}"
    )
    typer.echo(
        f"mappings: {len(hl7.sources)} HL7 v2 and {len(fhir.sources)} FHIR file(s); "
        f"templates: {', '.join(sorted(templates.locales))}, times shown in {settings.templates.timezone}"
    )


async def _with_store(settings: Settings, fn: Any) -> Any:
    from bridge.store.sqlite import SQLiteStore

    store = SQLiteStore(settings.store.path)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


@dlq_app.command("list")
def dlq_list(config: ConfigOption = None, limit: int = 100) -> None:
    """List dead deliveries, newest first."""
    settings = _settings(config)
    rows = asyncio.run(_with_store(settings, lambda s: s.dead_letters(limit=limit)))
    if not rows:
        typer.echo("no dead letters")
        return
    for r in rows:
        when = datetime.fromtimestamp(r.updated_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(f"{r.id}  {r.channel}  {r.event_type}  attempts={r.attempts}  {when}Z  {r.last_error}")


@dlq_app.command("replay")
def dlq_replay(
    ids: Annotated[list[str] | None, typer.Argument(help="Delivery ids from `dlq list`.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
    config: ConfigOption = None,
) -> None:
    """Make dead deliveries pending again; a running bridge picks them up."""
    if not ids and not all_:
        typer.echo("give delivery ids or --all", err=True)
        raise typer.Exit(2)
    settings = _settings(config)
    count = asyncio.run(_with_store(settings, lambda s: s.replay(None if all_ else list(ids or []))))
    typer.echo(f"replayed {count} delivery(ies)")


@subscriptions_app.command("ensure")
def subscriptions_ensure(config: ConfigOption = None) -> None:
    """Create or update each configured Subscription on its FHIR server, in the form that server speaks."""
    import httpx

    from bridge.fhir.client import FhirClient
    from bridge.fhir.subscriptions import build_subscription

    settings = _settings(config)
    if not settings.fhir.subscriptions:
        typer.echo("no subscriptions configured (fhir.subscriptions)")
        return

    async def run() -> int:
        failures = 0
        async with httpx.AsyncClient() as http:
            for sub in settings.fhir.subscriptions:
                server = settings.fhir.servers[sub.server]
                try:
                    saved = await FhirClient(server, http).update(build_subscription(sub, server))
                except BridgeError as exc:
                    typer.echo(f"{sub.name}: failed: {exc}", err=True)
                    failures += 1
                    continue
                typer.echo(
                    f"{sub.name}: {server.version} Subscription/{sub.resource_id} {saved.get('status', 'saved')}"
                )
        return failures

    raise typer.Exit(1 if asyncio.run(run()) else 0)


@subscriptions_app.command("status")
def subscriptions_status(config: ConfigOption = None) -> None:
    """Each subscription's state as the FHIR server and the bridge each see it."""
    import httpx

    from bridge.fhir.client import FhirClient
    from bridge.fhir.notification import parse_status_bundle

    settings = _settings(config)

    async def run(store: Any) -> None:
        async with httpx.AsyncClient() as http:
            for sub in settings.fhir.subscriptions:
                server = settings.fhir.servers[sub.server]
                try:
                    statuses = parse_status_bundle(
                        await FhirClient(server, http).status(sub.resource_id), version=server.version
                    )
                    remote = statuses[0] if statuses else None
                    server_view = f"{remote.status} events={remote.events_since_start}" if remote else "no status"
                except BridgeError as exc:
                    server_view = f"unavailable ({type(exc).__name__})"
                state = await store.subscription_state(sub.name)
                seen = (
                    datetime.fromtimestamp(state.last_seen_at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
                    if state.last_seen_at
                    else "never"
                )
                typer.echo(
                    f"{sub.name}: server {server_view} | bridge {state.status} events={state.last_event_number}"
                    f" last seen {seen}{' STALE' if state.stale_since else ''}"
                )

    asyncio.run(_with_store(settings, run))


def main() -> None:
    app()
