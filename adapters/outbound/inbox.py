"""The built-in inbox: a feed kept in the store, a live web page, a JSON API and a console line.

This is the sink ``make run`` uses with no configuration, so a new user sees
events arrive without any chat workspace. The page polls ``/api/inbox`` once
a second for items after the last one it has.
"""

from __future__ import annotations

import sys
from importlib import resources
from typing import Any, ClassVar, Literal

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from pydantic import model_validator

from bridge.channels import AdapterContext, ChannelConfig, PhiLevel, Post, SendResult

__all__ = ["InboxAdapter", "InboxConfig"]


class InboxConfig(ChannelConfig):
    type: Literal["inbox"] = "inbox"
    #: The inbox runs on the bridge's own host; LIMITED keeps names off screens nearby by default.
    phi: PhiLevel = PhiLevel.LIMITED
    #: Print a one-line summary of each event to standard output.
    console: bool = True

    @model_validator(mode="after")
    def _console_is_a_log(self) -> InboxConfig:
        # Standard output ends up in the container log, where full PHI must never go.
        if self.console and self.phi is PhiLevel.FULL:
            raise ValueError("console: true writes to the log; use phi none or limited, or console: false")
        return self


class InboxAdapter:
    config_model: ClassVar[type[ChannelConfig]] = InboxConfig
    max_text: ClassVar[int] = 10_000
    rate_per_sec: ClassVar[float] = 0.0
    supports_threads: ClassVar[bool] = False
    supports_update: ClassVar[bool] = False

    def __init__(self, config: InboxConfig, context: AdapterContext) -> None:
        self.config = config
        self.name = context.name
        self.store = context.store

    def __repr__(self) -> str:
        return f"InboxAdapter(name={self.name!r})"

    def render(self, post: Post) -> dict[str, Any]:
        event = post.event
        return {
            "delivery_id": post.delivery_id,
            "event_id": event.id,
            "type": event.type.value,
            "severity": event.severity.value,
            "lifecycle": event.lifecycle.value,
            "occurred_at": event.occurred_at.isoformat(),
            "location": event.encounter.location.display,
            "title": post.title[: self.max_text],
            "summary": post.summary[: self.max_text],
            "facts": [list(f) for f in post.facts],
            "text": post.text[: self.max_text],
        }

    async def send(self, payload: dict[str, Any]) -> SendResult:
        feed_id = await self.store.inbox_append(payload["delivery_id"], payload)
        if self.config.console:
            severity = str(payload["severity"]).upper()
            sys.stdout.write(f"[inbox #{feed_id}] {severity:<8} {payload['type']:<32} {payload['text']}\n")
            sys.stdout.flush()
        return SendResult(external_id=str(feed_id))

    async def aclose(self) -> None:
        return None

    def router(self) -> APIRouter:
        """``GET /inbox`` (the live page) and ``GET /api/inbox`` (JSON)."""
        router = APIRouter()
        store = self.store

        @router.get("/api/inbox")
        async def api_inbox(after: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
            items = await store.inbox_items(after=after, limit=limit)
            return {"items": items, "last_id": items[-1]["id"] if items else after}

        @router.get("/inbox", response_class=HTMLResponse)
        async def inbox_page() -> str:
            return _PAGE

        return router


_PAGE = (resources.files(__package__) / "inbox.html").read_text(encoding="utf-8")
