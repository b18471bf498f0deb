"""The FastAPI app factory: inbound HTTP routes, health, metrics and the admin API.

``create_app(runtime)`` mounts the routers the registered adapters provide
(HL7 over HTTP, the inbox page). With ``manage_runtime`` the app's lifespan
starts and stops the runtime, which is how ``ehr-bridge serve`` runs it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.metrics import CHANNEL_DISABLED
from bridge.runtime import Runtime

__all__ = ["create_app"]

_ADMIN_PATHS = ("/inbox", "/api/", "/metrics", "/docs", "/openapi.json")


def _authorized(request: Request, secret: bytes) -> bool:
    """Bearer <token>, or Basic with the token as password (so a browser can open /inbox)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        offered = value.strip().encode()
    elif scheme.lower() == "basic":
        try:
            offered = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            return False
    else:
        return False
    return hmac.compare_digest(offered, secret)


def create_app(runtime: Runtime, *, manage_runtime: bool = False) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_runtime:
            await runtime.start()
        try:
            yield
        finally:
            if manage_runtime:
                await runtime.stop()

    app = FastAPI(title="ehr-bridge", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    for router in runtime.http_routers():
        app.include_router(router)

    token = runtime.settings.http.admin_token
    if token is not None:
        secret = token.get_secret_value().encode()

        @app.middleware("http")
        async def admin_auth(request: Request, call_next: Any) -> Response:
            # Probes and HL7 intake (its own per-listener token) stay open; everything that shows PHI does not.
            if request.url.path.startswith(_ADMIN_PATHS) and not _authorized(request, secret):
                return Response(
                    "admin token required\n",
                    status_code=401,
                    media_type="text/plain; charset=utf-8",
                    headers={"WWW-Authenticate": 'Basic realm="ehr-bridge", charset="UTF-8"'},
                )
            response: Response = await call_next(request)
            return response

    @app.get("/healthz")
    async def healthz() -> Response:
        """Liveness: the process answers and its store can still write; otherwise restart it."""
        if runtime.started and not runtime.store.healthy:
            return JSONResponse({"status": "store writer stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        """Readiness: the store commits, the listeners are bound and the delivery workers run."""
        problems: list[str] = []
        if not runtime.started:
            problems.append("runtime not started")
        else:
            try:
                await runtime.store.ping()
            except Exception as exc:  # boundary: report, do not raise
                problems.append(f"store: {type(exc).__name__}")
            if not runtime.dispatcher.running:
                problems.append("delivery workers not running")
            missing = [
                c.name for c in runtime.settings.listeners if c.port is not None and c.name not in runtime.servers
            ]
            if missing:
                problems.append(f"listeners not bound: {', '.join(missing)}")
        body: dict[str, Any] = {"status": "ready" if not problems else "not ready", "problems": problems}
        if not problems:
            # Still ready (intake works, nothing is lost), but operators must see it: deliveries there go dead.
            body["disabled_channels"] = await runtime.store.disabled_channels()
        return JSONResponse(body, status_code=200 if not problems else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        if runtime.started:
            disabled = await runtime.store.disabled_channels()
            for channel in runtime.settings.channels:
                CHANNEL_DISABLED.labels(channel).set(1 if channel in disabled else 0)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/dlq")
    async def dlq(limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        rows = await runtime.store.dead_letters(limit=limit)
        return {
            "items": [
                {
                    "id": r.id,
                    "event_id": r.event_id,
                    "channel": r.channel,
                    "event_type": r.event_type,
                    "attempts": r.attempts,
                    "last_error": r.last_error,
                    "updated_at": r.updated_at,
                }
                for r in rows
            ]
        }

    return app
