"""The built-in inbox: a feed kept in the store, a live web page, a JSON API and a console line.

This is the sink ``make run`` uses with no configuration, so a new user sees
events arrive without any chat workspace. The page polls ``/api/inbox`` once
a second for items after the last one it has.

The feed and the page show what the channel's PHI level allows. The console
line goes to standard output, which is a log: it shows only what a ``none``
channel shows of any event (its feed id, severity, type and location), never
the wording, which may hold initials, the MRN's last 4 or free text.
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
    #: Print one line per event to standard output: severity, type and location only (PHI ``none``).
    console: bool = True

    @model_validator(mode="after")
    def _console_is_a_log(self) -> InboxConfig:
        # Standard output ends up in the container log. The console line shows PHI none content
        # only; a full-PHI channel keeps it off besides, so no change of the line can leak full PHI.
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
            sys.stdout.write(_console_line(feed_id, payload) + "\n")
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


def _console_line(feed_id: int, payload: dict[str, Any]) -> str:
    """The console line of a feed item: PHI level ``none`` content only, whatever the channel's level.

    Severity, event type and location (which every level shows, down to room and
    bed); not the title, summary or facts, which carry what the channel's level
    allows (initials, the MRN's last 4, result values, free text).
    """
    severity = str(payload["severity"]).upper()
    where = payload.get("location") or ""
    return f"[inbox #{feed_id}] {severity:<8} {payload['type']:<32} {where}".rstrip()


_PAGE = (resources.files(__package__) / "inbox.html").read_text(encoding="utf-8")
