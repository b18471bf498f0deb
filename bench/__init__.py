"""Benchmarks for ehr-bridge: ``make bench`` (``python -m bench``) measures the bridge against the raw MLLP
ceiling and the servers a site would pick instead, in one run; docs/performance.md reads the results.

Also runnable alone: ``python -m bench.delivery`` (the webhook delivery path per HTTP client),
``python -m bench.profile`` (py-spy on the bridge under load) and ``python -m bench.hl7_reader``
(the lazy ER7 reader against python-hl7's parse).
"""
