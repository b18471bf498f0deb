"""The HTTP client each outbound channel delivers through.

The runtime builds one per channel with :func:`delivery_client` and hands it to
the adapter in its :class:`~bridge.channels.AdapterContext`; adapters never build
their own. Deliveries overlap (``delivery.max_in_flight``), and httpx's own
transport slows down once several requests are in flight (encode/httpx#3215), so
the client is the httpx API on an aiohttp transport.
"""

from __future__ import annotations

import ssl
from functools import cache

import httpx
from httpx_aiohttp import HttpxAiohttpClient

__all__ = ["delivery_client"]


@cache
def _tls_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~35 ms; one verifying context serves every channel of the process.
    return httpx.create_ssl_context()


def delivery_client() -> httpx.AsyncClient:
    """A client for one channel's deliveries: the httpx API on an aiohttp transport.

    httpx 0.28 on its own transport (httpcore) spends its time in connection-pool
    bookkeeping once requests overlap (encode/httpx#3215). Measured on loopback with
    ``python -m bench.delivery``: at 4 signed webhook POSTs in flight (the default
    ``delivery.max_in_flight``) about 1.1k/s with httpcore against 3k/s here, and at 16
    about 0.5k/s with a p99 near 150 ms against 2.6k/s. Only the transport changes:
    status mapping and errors are still httpx's, and
    :func:`adapters.outbound.http.request` still never follows redirects and sets
    the timeout of every request. Proxies from the environment (``HTTPS_PROXY``,
    ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) apply as httpx reads them: each
    proxy is mounted as an aiohttp transport that sends through it. The caller
    owns the client and closes it.
    """
    return HttpxAiohttpClient(verify=_tls_context(), limits=httpx.Limits(max_connections=100))
