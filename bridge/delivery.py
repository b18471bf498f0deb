"""Delivery: workers that claim due deliveries per channel, send them and record the outcome.

The worker owns attempts, backoff, dead letters and channel disabling;
adapters only render and send, raising ``Retryable(defer=...)`` or
``Permanent`` (the arq model, STYLE.md). Order within a thread key comes from
the store's claim, which hands out only the oldest open delivery per thread;
different threads go in parallel, up to ``max_in_flight`` per channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace

import structlog

from bridge import metrics
from bridge.channels import OutboundAdapter, PhiLevel, Post, SendResult
from bridge.compose import Templates, compose, redact
from bridge.config import DeliveryConfig
from bridge.errors import ConfigError, Permanent, Retryable
from bridge.events import Lifecycle, Severity
from bridge.logs import error_fields
from bridge.store import ClaimedDelivery, Store

__all__ = [
    "ChannelWorker",
    "Dispatcher",
    "RateLimiter",
    "RetryPolicy",
    "alert_for",
    "also_struck",
    "edited_in_place",
    "recorded_send",
]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded; ``Retry-After`` is a floor, never shortened."""

    max_attempts: int = 10
    initial: float = 1.0
    max_delay: float = 600.0
    multiplier: float = 2.0
    jitter: float = 0.3

    @classmethod
    def from_config(cls, cfg: DeliveryConfig, *, max_attempts: int | None = None) -> RetryPolicy:
        return cls(
            max_attempts=max_attempts or cfg.max_attempts,
            initial=cfg.initial_backoff,
            max_delay=cfg.max_backoff,
            multiplier=cfg.multiplier,
            jitter=cfg.jitter,
        )

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts

    def delay(self, attempt: int, *, defer: float | None = None, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        try:
            base = min(self.max_delay, self.initial * self.multiplier ** max(0, attempt - 1))
        except OverflowError:
            # ~1000+ attempts (a week of retries at the cap) overflow the power; the cap applies there.
            base = self.max_delay
        wait = base * (1.0 - self.jitter * rand())
        return max(wait, defer) if defer is not None else wait


class RateLimiter:
    """Spaces sends at most ``rate`` per second (Slack: one message per second per channel)."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._clock = clock
        self._sleep = sleep

    async def acquire(self) -> None:
        if not self.interval:
            return
        # Reserve the next slot before sleeping, so concurrent callers queue up one interval apart.
        now = self._clock()
        wait = self._next - now
        self._next = max(now, self._next) + self.interval
        if wait > 0:
            await self._sleep(wait)


def alert_for(post: Post, shown: Severity | None) -> Post | None:
    """The reply that makes a correction heard, when editing the post alone would not; else None.

    An edit notifies nobody. A correction that edits a post (``post.original_ref``) must also
    alert when it is more severe than ``shown``, the severity of what the post shows now: a
    potassium corrected from 4.0 to 6.9 is a new critical value. A post that already shows a
    critical value was alerted when it did (as a critical post, or by an earlier correction's
    alert): a correction from one critical value to another, or the same correction sent
    again, edits it without a second alert. Not knowing what the post shows, a critical
    correction alerts. The alert is the same post as a new message in the thread
    (``original_ref`` dropped, ``thread_ref`` kept). A correction to a lower severity (critical
    to normal) only edits. When the adapter answers that the original was gone and it posted the
    correction anew instead (``SendResult.posted_anew``), that post is the alert: nothing more.

    The worker sends the edit alone and records it with ``alert=True``
    (:meth:`bridge.store.Store.mark_delivered`): the store then creates, in the same write, the
    alert's own delivery (``<delivery id>.alert``), claimed next in the thread, so it is sent
    after the edit, never before (a reply must not alert to a value the post does not show yet).
    It has its own attempts, external id and dead letter: a failing alert leaves the edit
    delivered, ``dlq replay`` sends the alert alone, and the recorded alert shadows the edited
    post, so later corrections edit it and a withdrawal strikes it along with that post
    (:func:`also_struck`). Claimed, the alert delivery has no ``original_ref`` and so is a plain
    new post of the correction; this function gives None for it.
    """
    if post.original_ref is None or post.event.lifecycle is not Lifecycle.CORRECT:
        return None
    severity = post.event.severity
    if shown is None and severity is not Severity.CRITICAL:
        return None
    if shown is not None and severity.rank <= shown.rank:
        return None
    return replace(post, original_ref=None)


def also_struck(post: Post, claimed: ClaimedDelivery) -> list[Post]:
    """The other posts a correction or cancellation changes besides ``post.original_ref``: the same post, one per post.

    A withdrawal strikes every post the channel made of its subject (``claimed.original_refs``:
    the preliminary critical post as well as the final one) and the alerts shadowing them, each by
    an edit in the same delivery, after the latest. A correction edits the latest post and the
    alerts shadowing it (an earlier correction's "Corrected ... 6.9" reply then shows the new
    value too). An adapter that cannot edit (``post.original_ref`` None) posts once.
    """
    if post.original_ref is None or post.event.lifecycle not in (Lifecycle.CORRECT, Lifecycle.CANCEL):
        return []
    return [replace(post, original_ref=ref) for ref in claimed.original_refs if ref != post.original_ref]


def edited_in_place(post: Post, result: SendResult) -> bool:
    """Whether sending ``post`` changed the post it corrects or cancels, rather than making a new one.

    A correction or cancellation with ``original_ref`` edits that post, unless the adapter says
    it ``posted_anew``: it found the original gone (deleted, past retention) and posted the
    correction as a new reply in the thread, under the label.
    """
    return (
        post.original_ref is not None
        and post.event.lifecycle in (Lifecycle.CORRECT, Lifecycle.CANCEL)
        and not result.posted_anew
    )


def recorded_send(post: Post, result: SendResult, *, threads: bool) -> tuple[str | None, bool]:
    """What the store records of a sent ``post``: its external id, and whether it starts its thread in the channel.

    A correction or cancellation of a post the channel holds (``original_ref``) changes that post
    in place: it keeps the original's id (Slack's chat.update answers with the same ts), so what
    later resolves to it finds the post that is there, and it starts no thread. Anything else is
    a new post under the id the adapter reports (a correction too, when the adapter posted it
    anew because the original was gone: the store then counts it as the channel's own post of
    the subject, which later corrections edit); with ``threads`` (the adapter threads) and no
    thread to reply in, it is the thread's first post.
    """
    if post.original_ref is not None and edited_in_place(post, result):
        return post.original_ref, False
    return result.external_id, threads and post.thread_ref is None


class ChannelWorker:
    """Claims and sends the deliveries of one channel."""

    def __init__(
        self,
        name: str,
        adapter: OutboundAdapter,
        store: Store,
        *,
        policy: RetryPolicy,
        templates: Templates,
        phi: PhiLevel,
        locale: str = "en",
        kind: str | None = None,
        poll_interval: float = 0.5,
        max_in_flight: int = 4,
        rate_per_sec: float | None = None,
    ) -> None:
        self.name = name
        self.adapter = adapter
        self.store = store
        self.policy = policy
        self.templates = templates
        self.phi = phi
        #: Language of the wording, and the channel kind (adapter type) whose template overrides apply.
        self.locale = locale
        self.kind = kind
        if locale not in templates.locales:
            raise ConfigError(
                f"no templates for locale {locale!r} (known: {', '.join(sorted(templates.locales))})",
                path=f"channels.{name}.locale",
            )
        self.poll_interval = poll_interval
        self.max_in_flight = max_in_flight
        self.limiter = RateLimiter(adapter.rate_per_sec if rate_per_sec is None else rate_per_sec)
        #: Keys the pseudonyms of thread and dedup keys in what channels see; set by the runtime from the store.
        self.hash_key: bytes | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Claim as many due deliveries as there is room in flight; each send runs as its own task.

        A slow send holds up only its own thread (the store hands out one open
        delivery per thread key), not the other encounters of the channel.
        """
        in_flight: set[asyncio.Task[None]] = set()
        while not self._stopping:
            self._wake.clear()
            room = self.max_in_flight - len(in_flight)
            claimed = await self._claim(room) if room > 0 else []
            for delivery in claimed:
                task = asyncio.create_task(self._deliver_logged(delivery), name=f"deliver:{delivery.id}")
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                task.add_done_callback(lambda _: self._wake.set())
            if claimed and len(claimed) == room:
                await asyncio.sleep(0)  # let the sends start before claiming again
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
        if in_flight:
            # Let sends under way finish and be recorded; what does not is reclaimed at the next start.
            await asyncio.wait(in_flight, timeout=10)

    async def _claim(self, limit: int) -> list[ClaimedDelivery]:
        try:
            return await self.store.claim(self.name, now=time.time(), limit=limit)
        except Exception as exc:  # boundary: a store hiccup must not end the worker
            log.error("delivery.claim_failed", channel=self.name, error=type(exc).__name__)
            return []

    async def _deliver_logged(self, claimed: ClaimedDelivery) -> None:
        try:
            await self.deliver(claimed)
        except Exception as exc:  # the store failed while recording; the delivery stays in flight until reclaimed
            log.error("delivery.record_failed", channel=self.name, delivery_id=claimed.id, error=type(exc).__name__)

    def post_for(self, claimed: ClaimedDelivery) -> Post:
        event = claimed.event
        title, summary, facts = compose(event, self.phi, self.templates, locale=self.locale, kind=self.kind)
        return Post(
            delivery_id=claimed.id,
            channel=self.name,
            event=redact(event, self.phi, hash_key=self.hash_key),
            title=title,
            summary=summary,
            facts=facts,
            thread_ref=claimed.thread_ref if self.adapter.supports_threads else None,
            original_ref=claimed.original_ref if self.adapter.supports_update else None,
            label=self.templates.label(event.lifecycle, self.locale),
        )

    async def deliver(self, claimed: ClaimedDelivery) -> None:
        """Send one claimed delivery and record what happened. Only a store failure while recording escapes."""
        fields = {
            "channel": self.name,
            "event_id": claimed.event.id,
            "delivery_id": claimed.id,
            "attempt": claimed.attempts,
        }
        started = time.perf_counter()
        try:
            post = self.post_for(claimed)
            payload = self.adapter.render(post)
            alerts = alert_for(post, claimed.original_severity) is not None
            strikes = [self.adapter.render(p) for p in also_struck(post, claimed)]
            await self.limiter.acquire()
            result = await self.adapter.send(payload)
            for strike in strikes:
                # Idempotent edits: a retry after one of them failed strikes them all again, harmlessly.
                await self.limiter.acquire()
                await self.adapter.send(strike)
        except Retryable as exc:
            await self._retry(claimed, str(exc), exc.defer, fields)
            return
        except Permanent as exc:
            await self._dead(claimed, str(exc), fields)
            if exc.disable_channel:
                count = await self.store.disable_channel(self.name, reason=str(exc))
                log.error("delivery.channel_disabled", **fields, reason=str(exc), dead_letters=count)
            return
        except Exception as exc:  # boundary: an adapter bug is retried, then dead-lettered, with its type kept
            log.error("delivery.adapter_failed", **fields, **error_fields(exc))
            await self._retry(claimed, f"internal error: {type(exc).__name__}", None, fields)
            return
        finally:
            metrics.DELIVERY_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        external_id, thread_root = recorded_send(post, result, threads=self.adapter.supports_threads)
        # The alert goes as a delivery of its own, created with this outcome (see alert_for).
        alerted = alerts and edited_in_place(post, result)
        # One write: the delivered mark and its "disclosed" audit row commit together, and the single
        # writer thread that also commits intake (ahead of the next ACK) runs one job, not two.
        await self.store.mark_delivered(
            claimed.id,
            external_id=external_id,
            thread_root=thread_root,
            audit_detail=f"phi={self.phi.value}",
            alert=alerted,
        )
        metrics.DELIVERIES.labels(self.name, "delivered").inc()
        log.info(
            "delivery.delivered",
            **fields,
            outcome="delivered",
            external_id=result.external_id,
            alerted=alerted,
        )

    async def _retry(
        self, claimed: ClaimedDelivery, error: str, defer: float | None, fields: dict[str, object]
    ) -> None:
        if self.policy.exhausted(claimed.attempts):
            await self._dead(claimed, f"attempts exhausted: {error}", fields)
            return
        delay = self.policy.delay(claimed.attempts, defer=defer)
        await self.store.mark_retry(claimed.id, next_attempt_at=time.time() + delay, error=error)
        metrics.DELIVERIES.labels(self.name, "retry").inc()
        log.warning("delivery.retry", **fields, outcome="retry", retry_in=round(delay, 3), error=error)

    async def _dead(self, claimed: ClaimedDelivery, error: str, fields: dict[str, object]) -> None:
        await self.store.mark_dead(claimed.id, error=error)
        await self.store.audit("delivery.dead", channel=self.name, event_id=claimed.event.id, detail=error[:200])
        metrics.DELIVERIES.labels(self.name, "dead").inc()
        log.error("delivery.dead", **fields, outcome="dead", error=error)


class Dispatcher:
    """Runs one worker per channel and wakes them when intake commits."""

    def __init__(self, workers: dict[str, ChannelWorker]) -> None:
        self.workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self, channels: Iterable[str]) -> None:
        for name in channels:
            worker = self.workers.get(name)
            if worker is not None:
                worker.wake()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(w.run(), name=f"delivery:{n}") for n, w in self.workers.items()]

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    async def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
