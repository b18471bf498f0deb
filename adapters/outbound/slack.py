"""Outbound adapter for Slack through the Web API (``chat.postMessage`` and ``chat.update``).

The Web API, not incoming webhooks, because only the Web API returns the
message ``ts`` that threads replies and lets a correction or cancellation edit
the original post (REFERENCE §4.1, §6.5).

:meth:`SlackAdapter.render` returns a :class:`SlackCall`: the Web API method
name and its JSON arguments. It is pure, so payloads are snapshot-tested as
plain dicts; :meth:`SlackAdapter.send` adds the bearer token and keeps a retry
from posting twice.

``chat.postMessage`` has no idempotency key, so a post that times out (or gets
a 5xx) after Slack accepted it would appear twice when the worker retries, and
the second copy would become a second thread root. Every post therefore
carries Slack message metadata (event type ``ehr_bridge_delivery``, payload
``{"delivery_id": ...}``; the delivery id is a bridge-generated identifier,
never PHI). When the previous attempt of a delivery *may* have been posted,
the next attempt first looks for it with ``conversations.history`` (or
``conversations.replies`` for a reply; ``include_all_metadata``) and returns
the found ``ts`` instead of posting again.

Which attempts are looked up: only deliveries this adapter instance saw fail
ambiguously and has not seen settled since. Ambiguous means Slack may have
posted: a timeout or transport error, an HTTP 5xx or 408, a 2xx that is not
Slack's JSON (a proxy page), or ``ok:false`` with ``fatal_error`` or
``internal_error`` (Slack documents that "some aspect of the operation"
may have succeeded). A 429, any other ``ok:false`` or another 3xx/4xx is
Slack (or the path to it) refusing, and leaves no trace. A delivery is settled
when a post succeeds, when a lookup finds it, or when a lookup answers that
it is not there. So a first attempt, and a retry after a clean refusal, cost
no extra call. The record is in memory, bounded (the oldest of
``MAX_UNSETTLED`` are forgotten) and lost on restart: a delivery retried after
a restart is posted without a lookup, as before (at-least-once is the floor).

The lookup is bounded to the window of the ambiguous attempts (their start
and end, widened by ``CLOCK_SKEW`` for the difference between our clock and
Slack's) and to one page of ``LOOKUP_LIMIT`` messages: narrow enough that
Slack's 15-message cap for non-Marketplace distributed apps still covers it
in all but the busiest channels. If the lookup fails (no ``channels:history``
or ``groups:history`` scope, rate limit, network), it is logged as
``slack.dedup_lookup_failed`` with the error code and the post goes ahead.
``chat.update`` needs none of this: repeating it sets the same content on the
same ``ts``.

A ``chat.update`` that Slack refuses because the original can no longer be edited
(``message_not_found``: deleted, or gone with the workspace's retention;
``cant_update_message``; ``edit_window_closed``) would dead-letter every later
correction or withdrawal of it. The rendered update therefore carries its
fallback, the same event as a new reply in the thread under its label (what a
correction whose original never reached the channel is), and :meth:`SlackAdapter.send`
posts that instead. Its ``ts`` is what the delivery records: the store counts it
as the channel's own post of the subject, so later corrections edit it.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, NoReturn
from urllib.parse import urlencode

import httpx
import structlog
from pydantic import Field, SecretStr, field_validator

from adapters.outbound.http import parse_retry_after, raise_for_delivery, request
from bridge.channels import AdapterContext, ChannelConfig, Post, SendResult
from bridge.errors import DeliveryError, Permanent, Retryable
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
_ERROR_CODE = re.compile(r"[a-z0-9_]{1,64}")

#: Slack message metadata event type that marks the bridge's posts (``[a-z0-9_]`` per Slack's rules).
METADATA_EVENT_TYPE = "ehr_bridge_delivery"
#: Deliveries whose last attempt may have been posted, remembered per adapter instance.
MAX_UNSETTLED = 10_000
#: Messages read by one duplicate lookup (one page; no pagination).
LOOKUP_LIMIT = 50
#: Seconds added on each side of the lookup window: our clock and Slack's may disagree.
CLOCK_SKEW = 300.0

#: ``ok:false`` errors after which the message may exist anyway: Slack documents both as
#: "It's possible some aspect of the operation succeeded before the error was raised".
_MAYBE_DONE_ERRORS = frozenset({"fatal_error", "internal_error"})

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

#: ``chat.update`` errors that say the original cannot be edited any more: the correction is posted anew.
_ORIGINAL_GONE_ERRORS = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})

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

#: Lifecycles that edit the original post, with the icon beside their label (the label's words come
#: from the templates, in the channel's locale: "Corrected", "Storniert").
_LABEL_ICON = {Lifecycle.CORRECT: ":pencil2:", Lifecycle.CANCEL: ":no_entry_sign:"}


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
class _Window:
    """When the ambiguous attempts of one delivery ran, by the adapter's clock."""

    start: float
    end: float


@dataclass(frozen=True, slots=True)
class _Lookup:
    """What a duplicate lookup learned: ``known`` is False when Slack did not answer it."""

    known: bool
    ts: str | None = None


@dataclass(frozen=True, slots=True)
class SlackCall:
    """One Web API call: ``method`` (``chat.postMessage`` or ``chat.update``) and its JSON arguments.

    ``fallback`` (an update's): the new post to make instead when the original cannot be edited.
    """

    method: str
    body: dict[str, Any]
    fallback: SlackCall | None = None


class _OriginalGone(Permanent):
    """``chat.update`` refused: the post to edit is gone or can no longer be edited."""


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
        #: Delivery id → window of its attempts that may have been posted; oldest first.
        self._unsettled: OrderedDict[str, _Window] = OrderedDict()

    def __repr__(self) -> str:
        return f"SlackAdapter(name={self._name!r}, channel={self._config.channel!r})"

    def render(self, post: Post) -> SlackCall:
        """The Web API call for ``post``. Pure: the same post always gives the same call."""
        lifecycle = post.event.lifecycle
        label = post.label if lifecycle in _LABEL_ICON else None
        # The fallback text (notifications) leads with the label, unless the title already says it:
        # "Corrected result: …", not "Corrected: Corrected result: …". The blocks always show the label.
        said = label is not None and label.casefold() in post.title.casefold()
        prefix = f"{_mrkdwn(label, MAX_HEADER_TEXT)}: " if label and not said else ""
        room = MAX_TEXT - len(prefix)
        channel = self._config.channel
        if post.original_ref is not None and lifecycle in _LABEL_ICON:
            struck = lifecycle is Lifecycle.CANCEL
            return SlackCall(
                "chat.update",
                {
                    "channel": channel,
                    "ts": post.original_ref,
                    "text": prefix + (_struck(post.text, room) if struck else _mrkdwn(post.text, room)),
                    "blocks": _blocks(post, label=label, struck=struck),
                },
                fallback=self.render(replace(post, original_ref=None)),
            )
        # Without original_ref the original may never have reached this channel
        # (routed elsewhere, or dead): the correction or cancellation is a new post.
        body: dict[str, Any] = {
            "channel": channel,
            "text": prefix + _mrkdwn(post.text, room),
            "blocks": _blocks(post, label=label, struck=False),
            "unfurl_links": self._config.unfurl,
            "unfurl_media": self._config.unfurl,
            # chat.postMessage has no idempotency key: this lets a retry find the post it may already have made.
            "metadata": {"event_type": METADATA_EVENT_TYPE, "event_payload": {"delivery_id": post.delivery_id}},
        }
        if post.thread_ref is not None:
            body["thread_ts"] = post.thread_ref
            # A critical reply hidden in a thread is a missed critical: show it in the channel too.
            if post.event.severity is Severity.CRITICAL:
                body["reply_broadcast"] = True
        return SlackCall("chat.postMessage", body)

    async def send(self, payload: SlackCall) -> SendResult:
        """Call the Web API. Returns the message ``ts``; raises ``Retryable`` or ``Permanent``.

        A ``chat.postMessage`` whose previous attempt may have been posted is looked up
        first, and not posted again if found (see the module docstring).
        """
        delivery_id = _delivery_id(payload) if payload.method == "chat.postMessage" else None
        window = self._unsettled.get(delivery_id) if delivery_id is not None else None
        if delivery_id is not None and window is not None:
            found = await self._lookup(payload.body, delivery_id, window)
            if found.known:
                self._unsettled.pop(delivery_id, None)
            if found.ts is not None:
                log.info("slack.duplicate_avoided", channel=self._name, delivery_id=delivery_id, ts=found.ts)
                return SendResult(external_id=found.ts)
        started = self._clock()
        try:
            # Without the charset Slack answers with a missing_charset warning.
            response = await self._call(payload.method, _json_body(payload.body), "application/json; charset=utf-8")
        except Retryable:
            # A timeout or a broken connection says nothing about whether Slack posted.
            self._remember(delivery_id, started)
            raise
        try:
            result = self._result(payload, response)
        except _OriginalGone:
            if payload.fallback is None:
                raise
            # Retention or a person deleted the post: the correction is a new reply under its label.
            log.warning("slack.original_gone", channel=self._name, ts=payload.body.get("ts"))
            return replace(await self.send(payload.fallback), posted_anew=True)
        except DeliveryError:
            if _maybe_posted(response):
                self._remember(delivery_id, started)
            raise
        if delivery_id is not None:
            self._unsettled.pop(delivery_id, None)
        return result

    async def _call(self, method: str, content: bytes, content_type: str) -> httpx.Response:
        return await request(
            self._http,
            "POST",
            f"{self._config.base_url}/{method}",
            content=content,
            headers={
                "Authorization": f"Bearer {self._config.token.get_secret_value()}",
                "Content-Type": content_type,
            },
            timeout=self._config.timeout,
        )

    def _result(self, payload: SlackCall, response: httpx.Response) -> SendResult:
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

    def _remember(self, delivery_id: str | None, started: float) -> None:
        if delivery_id is None:
            return
        earlier = self._unsettled.pop(delivery_id, None)
        self._unsettled[delivery_id] = _Window(earlier.start if earlier else started, self._clock())
        while len(self._unsettled) > MAX_UNSETTLED:
            self._unsettled.popitem(last=False)

    async def _lookup(self, body: Mapping[str, Any], delivery_id: str, window: _Window) -> _Lookup:
        """Look for an earlier post of ``delivery_id``; never raises, since the post must go ahead anyway."""
        params = {
            "channel": self._config.channel,
            "limit": str(LOOKUP_LIMIT),
            "include_all_metadata": "true",
            "oldest": f"{max(window.start - CLOCK_SKEW, 0.0):.6f}",
            "latest": f"{window.end + CLOCK_SKEW:.6f}",
            "inclusive": "true",
        }
        thread = body.get("thread_ts")
        # Replies are not in conversations.history; a reply whose parent was deleted was posted
        # top-level (slack-go #1571), where conversations.history finds it.
        methods = ["conversations.history"]
        if isinstance(thread, str):
            methods.insert(0, "conversations.replies")
        method = methods[0]
        try:
            for method in methods:
                args = {**params, "ts": thread} if method == "conversations.replies" else params
                # Read methods take form arguments, not JSON (docs.slack.dev/apis/web-api).
                response = await self._call(
                    method, urlencode(args).encode("ascii"), "application/x-www-form-urlencoded"
                )
                answer = _lookup_answer(response)
                if isinstance(answer, list):
                    return _Lookup(known=True, ts=_posted_ts(answer, delivery_id))
                error = answer
                if error != "thread_not_found":
                    break
        except DeliveryError as exc:
            error = type(exc.__cause__).__name__ if exc.__cause__ is not None else type(exc).__name__
        except Exception as exc:  # boundary: the lookup only saves a duplicate and must never stop the post
            error = type(exc).__name__
        log.warning(
            "slack.dedup_lookup_failed", channel=self._name, method=method, delivery_id=delivery_id, error=error
        )
        return _Lookup(known=False)

    def _raise_api_error(self, method: str, error: object, response: httpx.Response, now: datetime) -> NoReturn:
        code = _error_code(error)
        log.warning("slack.api_error", channel=self._name, method=method, error=code)
        message = f"slack {method}: {code}"
        if code in _TRANSIENT_ERRORS:
            raise Retryable(message, defer=parse_retry_after(response.headers.get("Retry-After"), now))
        if method == "chat.update" and code in _ORIGINAL_GONE_ERRORS:
            raise _OriginalGone(message)
        raise Permanent(message, disable_channel=code in _CHANNEL_ERRORS)

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the runtime."""
        return None


def _error_code(error: object) -> str:
    # Slack's codes are snake_case; anything else may echo content back and is not logged.
    return error if isinstance(error, str) and _ERROR_CODE.fullmatch(error) else "unknown"


def _json_body(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _delivery_id(payload: SlackCall) -> str | None:
    metadata = payload.body.get("metadata")
    event_payload = metadata.get("event_payload") if isinstance(metadata, dict) else None
    delivery_id = event_payload.get("delivery_id") if isinstance(event_payload, dict) else None
    return delivery_id if isinstance(delivery_id, str) else None


def _maybe_posted(response: httpx.Response) -> bool:
    """Whether a failed ``chat.postMessage`` answered with ``response`` may still have been posted."""
    status = response.status_code
    if status >= 500 or status == 408:
        return True
    if not 200 <= status < 300:
        # 429 and the other 3xx/4xx: refused before anything was posted.
        return False
    try:
        data = response.json()
    except ValueError:
        # Not Slack's answer but a proxy's: it may have forwarded the request.
        return True
    return not isinstance(data, dict) or data.get("error") in _MAYBE_DONE_ERRORS


def _lookup_answer(response: httpx.Response) -> list[Any] | str:
    """The messages of a readable lookup answer, or an error code safe to log."""
    if not 200 <= response.status_code < 300:
        return f"http_{response.status_code}"
    try:
        data = response.json()
    except ValueError:
        return "not_json"
    if not isinstance(data, dict):
        return "unexpected_shape"
    if data.get("ok") is not True:
        return _error_code(data.get("error"))
    messages = data.get("messages")
    return messages if isinstance(messages, list) else "unexpected_shape"


def _posted_ts(messages: list[Any], delivery_id: str) -> str | None:
    """The ts of the earliest message in ``messages`` that the bridge posted for ``delivery_id``."""
    found = [
        message["ts"]
        for message in messages
        if isinstance(message, dict)
        and isinstance(message.get("ts"), str)
        and isinstance(metadata := message.get("metadata"), dict)
        and metadata.get("event_type") == METADATA_EVENT_TYPE
        and isinstance(event_payload := metadata.get("event_payload"), dict)
        and event_payload.get("delivery_id") == delivery_id
    ]
    # Slack ts are "<10-digit seconds>.<6-digit micros>": as strings they sort in time order.
    return min(found) if found else None


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
    icon = _LABEL_ICON.get(post.event.lifecycle)
    label_block = [_context(f"{icon} *{_mrkdwn(label, MAX_HEADER_TEXT)}*")] if label and icon else []
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
