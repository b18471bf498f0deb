"""Benchmarks for ehr-bridge, run with ``python -m bench`` (``make bench``); each module has ``run()``."""
