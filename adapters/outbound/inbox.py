"""The built-in inbox: a feed kept in the store, a live web page, a JSON API and a console line.

This is the sink ``make run`` uses with no configuration, so a new user sees
events arrive without any chat workspace. The page polls ``/api/inbox`` once
a second for items after the last one it has.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar, Literal

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from bridge.channels import AdapterContext, ChannelConfig, PhiLevel, Post, SendResult

__all__ = ["InboxAdapter", "InboxConfig"]


class InboxConfig(ChannelConfig):
    type: Literal["inbox"] = "inbox"
    #: The inbox runs on the bridge's own host; LIMITED keeps names off screens nearby by default.
    phi: PhiLevel = PhiLevel.LIMITED
    #: Print a one-line summary of each event to standard output.
    console: bool = True


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


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ehr-bridge inbox</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d1d1f}
 header{background:#17324d;color:#fff;padding:.8rem 1.2rem}
 header h1{font-size:1.1rem;margin:0} header span{opacity:.7;font-size:.85rem}
 main{max-width:60rem;margin:1rem auto;padding:0 1rem}
 .item{background:#fff;border-left:5px solid #8a96a3;border-radius:4px;margin:.6rem 0;padding:.6rem .9rem;
       box-shadow:0 1px 2px rgba(0,0,0,.08)}
 .critical{border-color:#c62828}.warning{border-color:#ef6c00}.notice{border-color:#1565c0}
 .meta{font-size:.8rem;color:#5f6b77}.title{font-weight:600}.cancel .title,.cancel .summary{text-decoration:line-through}
 dl{display:grid;grid-template-columns:max-content 1fr;gap:.1rem .8rem;margin:.4rem 0 0;font-size:.9rem}
 dt{color:#5f6b77} dd{margin:0} #empty{color:#5f6b77}
</style></head>
<body><header><h1>ehr-bridge inbox</h1><span id="status">connecting…</span></header>
<main><p id="empty">No events yet. Send one: <code>ehr-bridge send FILE</code></p><div id="feed"></div></main>
<script>
let last = 0;
const feed = document.getElementById('feed');
function el(tag, cls, text){const e=document.createElement(tag); if(cls) e.className=cls; if(text!==undefined) e.textContent=text; return e;}
function show(it){
  const box = el('div', 'item ' + it.severity + ' ' + it.lifecycle);
  box.appendChild(el('div','meta', it.occurred_at + ' · ' + it.type + ' · ' + it.severity + (it.location ? ' · ' + it.location : '')));
  box.appendChild(el('div','title', it.title));
  if (it.summary) box.appendChild(el('div','summary', it.summary));
  if (it.facts && it.facts.length){ const dl = el('dl');
    for (const [k,v] of it.facts){ dl.appendChild(el('dt','',k)); dl.appendChild(el('dd','',v)); } box.appendChild(dl); }
  feed.prepend(box); document.getElementById('empty').hidden = true;
}
async function poll(){
  try{
    const r = await fetch('api/inbox?after=' + last); const data = await r.json();
    for (const it of data.items){ show(it); last = Math.max(last, it.id); }
    document.getElementById('status').textContent = 'live · updated ' + new Date().toLocaleTimeString();
  }catch(e){ document.getElementById('status').textContent = 'reconnecting…'; }
  setTimeout(poll, 1000);
}
poll();
</script></body></html>
"""
