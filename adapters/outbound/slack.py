"""Outbound adapter for Slack through the Web API (``chat.postMessage`` and ``chat.update``).

The Web API, not incoming webhooks, because only the Web API returns the
message ``ts`` that threads replies and lets a correction or cancellation edit
the original post (REFERENCE §4.1, §6.5).

:meth:`SlackAdapter.render` returns a :class:`SlackCall`: the Web API method
name and its JSON arguments. It is pure, so payloads are snapshot-tested as
plain dicts; :meth:`SlackAdapter.send` only adds the bearer token.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, NoReturn

import httpx
import structlog
from pydantic import Field, SecretStr, field_validator

from adapters.outbound.http import parse_retry_after, raise_for_delivery, request
from bridge.channels import AdapterContext, ChannelConfig, Post, SendResult
from bridge.errors import Permanent, Retryable
from bridge.events import Lifecycle, Severity

__all__ = ["SlackAdapter", "SlackCall", "SlackConfig"]

log = structlog.get_logger(__name__)

#: Slack's documented limits (REFERENCE §4.1; bolt-js #2509).
MAX_TEXT = 40_000
MAX_SECTION_TEXT = 3_000
MAX_FIELD_TEXT = 2_000
MAX_FIELDS_PER_SECTION = 10
MAX_HEADER_TEXT = 150
MAX_BLOCKS = 50
ELLIPSIS = "…"

_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")

#: Errors that will fail every delivery of the channel until someone fixes the token,
#: the app's scopes or the channel: they disable the channel rather than dead-letter
#: each event one by one.
_CHANNEL_ERRORS = frozenset(
    {
        "account_inactive",
        "channel_not_found",
        "ekm_access_denied",
        "enterprise_is_restricted",
        "invalid_auth",
        "is_archived",
        "missing_scope",
        "no_permission",
        "not_allowed_token_type",
        "not_authed",
        "not_in_channel",
        "org_login_required",
        "restricted_action",
        "team_access_not_granted",
        "token_expired",
        "token_revoked",
    }
)

#: Errors Slack documents as transient.
_TRANSIENT_ERRORS = frozenset(
    {
        "fatal_error",
        "internal_error",
        "rate_limited",
        "ratelimited",
        "request_timeout",
        "service_unavailable",
        "team_added_to_org",
    }
)

_SEVERITY_ICON = {
    Severity.INFO: ":information_source:",
    Severity.NOTICE: ":large_blue_circle:",
    Severity.WARNING: ":warning:",
    Severity.CRITICAL: ":rotating_light:",
}

_LABELS = {Lifecycle.CORRECT: "Corrected", Lifecycle.CANCEL: "Cancelled"}
_LABEL_ICON = {"Corrected": ":pencil2:", "Cancelled": ":no_entry_sign:"}


class SlackConfig(ChannelConfig):
    """A Slack channel reached with a bot token."""

    type: Literal["slack"]
    #: Bot token (``xoxb-``): the bridge posts as an app, never as a person.
    token: SecretStr
    #: Channel ID (``C0123ABCD``): ``chat.update`` accepts IDs only, not ``#names``.
    channel: str
    #: Web API root; overridden by tests and on-prem egress proxies.
    base_url: str = "https://slack.com/api"
    #: Link and media previews; off because a preview fetch discloses the link to a third party.
    unfurl: bool = False
    timeout: float = Field(default=10.0, gt=0, le=60)

    @field_validator("token")
    @classmethod
    def _bot_token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("xoxb-"):
            raise ValueError("must be a Slack bot token (xoxb-...)")
        return value

    @field_validator("channel")
    @classmethod
    def _channel_id(cls, value: str) -> str:
        if not _CHANNEL_ID.match(value):
            raise ValueError("must be a Slack channel ID such as C0123ABCD, not a #name")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


@dataclass(frozen=True, slots=True)
class SlackCall:
    """One Web API call: ``method`` (``chat.postMessage`` or ``chat.update``) and its JSON arguments."""

    method: str
    body: dict[str, Any]


class SlackAdapter:
    """Posts events to one Slack channel; corrections and cancellations edit the original post."""

    config_model: ClassVar[type[SlackConfig]] = SlackConfig
    max_text: ClassVar[int] = MAX_TEXT
    #: chat.postMessage's special tier: about one message per second per channel.
    rate_per_sec: ClassVar[float] = 1.0
    supports_threads: ClassVar[bool] = True
    supports_update: ClassVar[bool] = True

    def __init__(
        self,
        config: SlackConfig,
        context: AdapterContext,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._name = context.name
        self._http = context.http
        self._clock = clock

    def __repr__(self) -> str:
        return f"SlackAdapter(name={self._name!r}, channel={self._config.channel!r})"

    def render(self, post: Post) -> SlackCall:
        """The Web API call for ``post``. Pure: the same post always gives the same call."""
        lifecycle = post.event.lifecycle
        label = _LABELS.get(lifecycle)
        prefix = f"{label}: " if label else ""
        room = MAX_TEXT - len(prefix)
        channel = self._config.channel
        if post.original_ref is not None and label is not None:
            struck = lifecycle is Lifecycle.CANCEL
            return SlackCall(
                "chat.update",
                {
                    "channel": channel,
                    "ts": post.original_ref,
                    "text": prefix + (_struck(post.text, room) if struck else _mrkdwn(post.text, room)),
                    "blocks": _blocks(post, label=label, struck=struck),
                },
            )
        # Without original_ref the original may never have reached this channel
        # (routed elsewhere, or dead): the correction or cancellation is a new post.
        body: dict[str, Any] = {
            "channel": channel,
            "text": prefix + _mrkdwn(post.text, room),
            "blocks": _blocks(post, label=label, struck=False),
            "unfurl_links": self._config.unfurl,
            "unfurl_media": self._config.unfurl,
        }
        if post.thread_ref is not None:
            body["thread_ts"] = post.thread_ref
            # A critical reply hidden in a thread is a missed critical: show it in the channel too.
            if post.event.severity is Severity.CRITICAL:
                body["reply_broadcast"] = True
        return SlackCall("chat.postMessage", body)

    async def send(self, payload: SlackCall) -> SendResult:
        """Call the Web API. Returns the message ``ts``; raises ``Retryable`` or ``Permanent``."""
        content = json.dumps(payload.body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        response = await request(
            self._http,
            "POST",
            f"{self._config.base_url}/{payload.method}",
            content=content,
            headers={
                "Authorization": f"Bearer {self._config.token.get_secret_value()}",
                # Without the charset Slack answers with a missing_charset warning.
                "Content-Type": "application/json; charset=utf-8",
            },
            timeout=self._config.timeout,
        )
        now = datetime.fromtimestamp(self._clock(), UTC)
        raise_for_delivery(response, now=now)
        try:
            data = response.json()
        except ValueError as exc:
            # A 200 that is not JSON comes from a proxy in between, not from Slack.
            raise Retryable(f"slack {payload.method}: response is not JSON") from exc
        if not isinstance(data, dict):
            raise Retryable(f"slack {payload.method}: unexpected response shape")
        if data.get("ok") is not True:
            self._raise_api_error(payload.method, data.get("error"), response, now)
        if payload.method == "chat.update":
            return SendResult(external_id=str(payload.body["ts"]))
        ts = data.get("ts")
        if not isinstance(ts, str):
            # The message is posted: raising would make the worker post it again. Without a ts
            # later replies go top-level and corrections become new posts, which is what a lost
            # original looks like anyway.
            log.warning("slack.ts_missing", channel=self._name, method=payload.method)
            return SendResult(external_id=None)
        sent_thread = payload.body.get("thread_ts")
        if sent_thread is not None:
            message = data.get("message")
            got_thread = message.get("thread_ts") if isinstance(message, dict) else None
            if got_thread != sent_thread:
                # slack-go #1571: a reply to a deleted parent is posted top-level, silently.
                log.warning("slack.thread_lost", channel=self._name, thread_ts=sent_thread, ts=ts)
        return SendResult(external_id=ts)

    def _raise_api_error(self, method: str, error: object, response: httpx.Response, now: datetime) -> NoReturn:
        code = error if isinstance(error, str) and re.fullmatch(r"[a-z0-9_]{1,64}", error) else "unknown"
        log.warning("slack.api_error", channel=self._name, method=method, error=code)
        message = f"slack {method}: {code}"
        if code in _TRANSIENT_ERRORS:
            raise Retryable(message, defer=parse_retry_after(response.headers.get("Retry-After"), now))
        raise Permanent(message, disable_channel=code in _CHANNEL_ERRORS)

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the runtime."""
        return None


def _escape(text: str) -> str:
    # Slack parses &, < and > in mrkdwn; unescaped, "<!channel>" in clinical text would ping everyone.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mrkdwn(text: str, limit: int) -> str:
    """``text`` escaped for mrkdwn, cut to ``limit`` characters with an ellipsis, never inside an entity."""
    escaped = _escape(text)
    if len(escaped) <= limit:
        return escaped
    budget = limit - len(ELLIPSIS)
    pieces: list[str] = []
    used = 0
    for char in text:
        piece = _escape(char)
        if used + len(piece) > budget:
            break
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces) + ELLIPSIS


def _plain(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS


def _strike(mrkdwn: str) -> str:
    # Slack strikethrough does not span line breaks: each line gets its own tildes.
    return "\n".join(f"~{line}~" if line.strip() else line for line in mrkdwn.split("\n"))


def _struck(text: str, limit: int) -> str:
    return _strike(_mrkdwn(text, limit - 2 * (text.count("\n") + 1)))


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _field(label: str, value: str, *, struck: bool) -> dict[str, Any]:
    head = f"*{_mrkdwn(label, 200)}*"
    room = MAX_FIELD_TEXT - len(head) - 1
    body = _struck(value, room) if struck else _mrkdwn(value, room)
    return {"type": "mrkdwn", "text": f"{head}\n{body}" if body else head}


def _field_sections(fields: list[dict[str, Any]], room: int) -> Iterator[dict[str, Any]]:
    capacity = room * MAX_FIELDS_PER_SECTION
    if len(fields) > capacity:
        fields = [*fields[: capacity - 1], {"type": "mrkdwn", "text": ELLIPSIS}]
    for start in range(0, len(fields), MAX_FIELDS_PER_SECTION):
        yield {"type": "section", "fields": fields[start : start + MAX_FIELDS_PER_SECTION]}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _blocks(post: Post, *, label: str | None, struck: bool) -> list[dict[str, Any]]:
    """Title, label, summary, facts, then a context line with severity and event type."""
    head: list[dict[str, Any]] = []
    label_block = [_context(f"{_LABEL_ICON[label]} *{label}*")] if label else []
    if struck:
        # A header is plain_text and cannot be struck through: the label leads, the title is a section.
        head += label_block
        if post.title:
            head.append(_section(_struck(post.title, MAX_SECTION_TEXT)))
        if post.summary:
            head.append(_section(_struck(post.summary, MAX_SECTION_TEXT)))
    else:
        if post.title:
            title = _plain(post.title, MAX_HEADER_TEXT)
            head.append({"type": "header", "text": {"type": "plain_text", "text": title}})
        head += label_block
        if post.summary:
            head.append(_section(_mrkdwn(post.summary, MAX_SECTION_TEXT)))
    event = post.event
    tail = [_context(f"{_SEVERITY_ICON[event.severity]} *{event.severity.value}* · `{event.type.value}`")]
    fields = [_field(name, value, struck=struck) for name, value in post.facts]
    room = MAX_BLOCKS - len(head) - len(tail)
    return [*head, *_field_sections(fields, room), *tail]
