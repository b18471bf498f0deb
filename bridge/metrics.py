"""Prometheus metrics: counts and latencies labelled by identifiers, never by content."""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ACK_SECONDS",
    "CHANNEL_DISABLED",
    "DELIVERIES",
    "DELIVERY_SECONDS",
    "MESSAGES",
    "ack_seconds",
    "messages",
]

#: Inbound HL7 messages by listener and outcome (accepted, duplicate, unmapped, rejected, store_failed).
MESSAGES = Counter("ehr_bridge_messages_total", "Inbound HL7 messages", ["listener", "outcome"])

#: Time from a payload's arrival at intake to its ACK being ready (after the durable commit).
ACK_SECONDS = Histogram(
    "ehr_bridge_ack_seconds",
    "Intake time to ACK, commit included",
    ["listener"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

#: Delivery attempts by channel and outcome (delivered, retry, dead).
DELIVERIES = Counter("ehr_bridge_deliveries_total", "Delivery attempts", ["channel", "outcome"])

#: Time a send to a channel took.
DELIVERY_SECONDS = Histogram("ehr_bridge_delivery_seconds", "Outbound send duration", ["channel"])

#: 1 while a channel is disabled (410, revoked token, unknown channel): its deliveries go straight to dead letters.
CHANNEL_DISABLED = Gauge("ehr_bridge_channel_disabled", "Channel disabled after a permanent error", ["channel"])


# The labelled series of the per-message metrics, looked up once per label values instead of per message
# (``labels()`` takes a lock and builds a key). Listeners and outcomes are few: the caches stay small.


@functools.cache
def messages(listener: str, outcome: str) -> Counter:
    """``MESSAGES`` for one listener and outcome."""
    return MESSAGES.labels(listener, outcome)


@functools.cache
def ack_seconds(listener: str) -> Histogram:
    """``ACK_SECONDS`` for one listener."""
    return ACK_SECONDS.labels(listener)
