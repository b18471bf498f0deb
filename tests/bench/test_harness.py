"""Smoke test of ``make bench``: a tiny run (about 200 messages per contender) gives well-formed results.

No timing is asserted: the figures of so short a run mean nothing. What is checked is
that every contender that can run here ran, that the results have the shape the table,
``bench/results/latest.json`` and docs/performance.md rely on, and that a baseline whose
runtime is absent is skipped with its reason (Medplum needs node and ``make bench``'s npm ci;
the test never installs it).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from bench.__main__ import _clean
from bench.harness import PHASES, PROFILES, run
from bench.report import RATIO_FIGURES, finish, render

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return finish(run(PROFILES["smoke"], log=lambda line: None), "pytest smoke")


def _is_spread(value: Any) -> bool:
    return isinstance(value, dict) and {"median", "min", "max", "runs"} <= set(value)


def test_results_survive_json_without_nan(results: dict[str, Any]) -> None:
    text = json.dumps(_clean(results), allow_nan=False)
    assert json.loads(text)["schema"] == 1


def test_machine_and_settings_are_recorded_beside_the_numbers(results: dict[str, Any]) -> None:
    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["python"] and "cpu_model" in machine
    assert results["settings"]["runs"] == 1 and results["settings"]["connections"] == 8
    assert {"adt", "oru", "mix"} == set(results["workloads"])


@pytest.mark.parametrize("key", ["echo", "bridge-full", "bridge-normal"])
def test_the_ceiling_and_both_bridges_always_run_every_phase(results: dict[str, Any], key: str) -> None:
    contender = results["contenders"][key]
    assert contender["status"] == "ran" and contender["persistent_connection"] is True
    for phase, _, _ in PHASES:
        messages = contender["figures"][f"{phase}.messages"]
        assert _is_spread(messages) and messages["median"] > 0
        assert _is_spread(contender["figures"][f"{phase}.msg_s"])
    assert contender["peak_rss_mb"] > 0


@pytest.mark.parametrize(("key", "persistent"), [("python-hl7", True), ("hl7apy", False), ("medplum", True)])
def test_each_baseline_runs_or_is_skipped_with_its_reason(results: dict[str, Any], key: str, persistent: bool) -> None:
    contender = results["contenders"][key]
    if contender["status"] == "skipped":
        assert contender["reason"]
        pytest.skip(f"{key}: {contender['reason']}")
    assert contender["persistent_connection"] is persistent
    assert contender["figures"]["ingest_adt.messages"]["median"] > 0
    ratios = results["ratios"]["bridge-full"][key]
    assert set(ratios) == set(RATIO_FIGURES)
    assert ratios["ingest_adt.msg_s"] is not None and ratios["ingest_adt.msg_s"] > 0


def test_one_message_per_connection_is_reported_as_a_finding(results: dict[str, Any]) -> None:
    if results["contenders"]["hl7apy"]["status"] == "skipped":
        pytest.skip("hl7apy did not run")
    assert any("one message per connection" in finding for finding in results["findings"])


def test_end_to_end_pairs_webhook_posts_with_their_messages(results: dict[str, Any]) -> None:
    assert {e["contender"] for e in results["e2e"]} == {"bridge-full", "bridge-normal"}
    for e2e in results["e2e"]:
        assert e2e["posts"]["median"] > 0, "the webhook channel posted nothing"
        assert 0 < e2e["posts_per_message"]["median"] < 1
        assert e2e["e2e_p50_ms"]["median"] > 0


def test_delivery_path_is_measured_before_and_after(results: dict[str, Any]) -> None:
    clients = {row["client"] for row in results["delivery"]}
    assert len(clients) == 2
    assert all(row["posts_per_s"]["median"] > 0 and row["failures"] == 0 for row in results["delivery"])


def test_long_run_samples_resident_memory(results: dict[str, Any]) -> None:
    long_run = results["long_run"]
    assert len(long_run["points"]) == 10
    assert long_run["to_messages"] > long_run["from_messages"]
    assert math.isfinite(long_run["rss_growth_pct"])


def test_every_target_is_evaluated_and_the_table_prints(results: dict[str, Any]) -> None:
    targets = {t["id"]: t for t in results["targets"]}
    assert {"ingest_adt_vs_echo", "ingest_oru_vs_python_hl7", "ack_p99_1conn", "e2e_p99", "rss_growth"} <= set(targets)
    assert all(t["met"] in (True, False, None) for t in targets.values())
    table = render(results)
    assert "ingest, MLLP -> ACK" in table and "targets (issue #5" in table
