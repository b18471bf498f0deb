"""The delivery path before and after: concurrent signed webhook POSTs to the local sink, per HTTP client.

The webhook adapter sends through the ``httpx.AsyncClient`` of its context. This
measures :meth:`WebhookAdapter.send` (sign, POST, map the status) at a given number of
sends in flight, for each client the bridge could use:

* ``httpx (shared, default pool)``: the client the runtime builds and shares between
  channels, on httpx's own transport (httpcore). This is *before*.
* ``httpx + aiohttp transport``: the same httpx API over :func:`bridge.http.delivery_client`,
  the client the runtime now builds for each channel. This is *after*.

Run alone with ``python -m bench.delivery``; ``make bench`` includes it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from adapters.outbound.webhook import WebhookAdapter, WebhookConfig, WebhookRequest
from bench.contenders import SECRET
from bench.process import ServerProcess, ServerSpec
from bench.stats import quantile
from bridge.channels import AdapterContext
from bridge.http import delivery_client

__all__ = ["CLIENTS", "DeliveryResult", "measure"]

#: Sends in flight: the bridge's default ``delivery.max_in_flight``, and the 16 of encode/httpx#3215.
CONCURRENCY = (4, 16)


def _shared_default() -> httpx.AsyncClient:
    # What bridge/runtime.py builds and hands to every channel.
    return httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=5.0))


CLIENTS: dict[str, Callable[[], httpx.AsyncClient]] = {
    "httpx (shared, default pool)": _shared_default,
    "httpx + aiohttp transport (per channel)": delivery_client,
}


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    client: str
    concurrency: int
    sends: int
    seconds: float
    latencies: list[float]
    failures: int

    @property
    def rate(self) -> float:
        return self.sends / self.seconds if self.seconds > 0 else 0.0


def _body(n: int) -> bytes:
    # Shaped like a CloudEvent the bridge posts (about 1.5 KB), with an origin the sink can read.
    data = {"origin": {"control_id": f"DLV{n:08d}"}, "note": "x" * 1200}
    return json.dumps({"specversion": "1.0", "type": "result.final", "data": data}).encode()


async def _run(make: Callable[[], httpx.AsyncClient], url: str, concurrency: int, seconds: float) -> DeliveryResult:
    client = make()
    config = WebhookConfig(type="webhook", url=url, secret=SECRET)
    adapter = WebhookAdapter(config, AdapterContext(name="bench", http=client, store=None))
    latencies: list[float] = []
    failures = 0
    counter = iter(range(1 << 40))

    async def worker(deadline: float) -> None:
        nonlocal failures
        while time.perf_counter() < deadline:
            n = next(counter)
            t0 = time.perf_counter()
            try:
                await adapter.send(WebhookRequest(webhook_id=f"msg_{n}", body=_body(n)))
            except Exception:  # boundary: a failed send is counted, the run goes on
                failures += 1
                continue
            latencies.append(time.perf_counter() - t0)

    try:
        # Warm-up: connections opened, first-use costs paid.
        await asyncio.gather(*(worker(time.perf_counter() + min(0.2, seconds)) for _ in range(concurrency)))
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await client.aclose()
    return DeliveryResult("", concurrency, len(latencies), elapsed, latencies, failures)


async def measure(sink_port: int, seconds: float, runs: int) -> list[list[DeliveryResult]]:
    """For each client and concurrency, ``runs`` results; clients alternate so drift hits both alike."""
    url = f"http://127.0.0.1:{sink_port}/hook"
    out: list[list[DeliveryResult]] = []
    for concurrency in CONCURRENCY:
        for name, make in CLIENTS.items():
            out.append([])
            for _ in range(runs):
                result = await _run(make, url, concurrency, seconds)
                out[-1].append(replace(result, client=name))
            # The sink keeps every body until asked; empty it between cells.
            async with httpx.AsyncClient() as admin:
                await admin.get(f"http://127.0.0.1:{sink_port}/receipts")
    return out


def summarise(cells: list[list[DeliveryResult]]) -> list[dict[str, Any]]:
    """One row per client and concurrency: medians over runs, with min and max."""
    rows = []
    for cell in cells:
        rates = [r.rate for r in cell]
        p99s = [quantile(r.latencies, 0.99) * 1000 for r in cell if r.latencies]
        rows.append(
            {
                "client": cell[0].client,
                "concurrency": cell[0].concurrency,
                "posts_per_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
                "p99_ms": {"median": statistics.median(p99s), "min": min(p99s), "max": max(p99s)} if p99s else None,
                "failures": sum(r.failures for r in cell),
            }
        )
    return rows


def main() -> None:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="ehr-bridge-bench-") as workdir:
        sink = ServerSpec("sink", (sys.executable, "-m", "bench.sink"))
        with ServerProcess(sink, Path(workdir)) as server:
            cells = uvloop.run(measure(server.port, seconds=2.0, runs=3))
    for row in summarise(cells):
        p99 = row["p99_ms"]["median"] if row["p99_ms"] else float("nan")
        print(
            f"{row['client']:<42} {row['concurrency']:>3} in flight"
            f" {row['posts_per_s']['median']:>9,.0f} posts/s  p99 {p99:8.2f} ms  failures {row['failures']}"
        )


if __name__ == "__main__":
    main()
