"""Ratios, targets, findings and the printed table, computed from a run's results.

Every ratio is bridge ÷ contender, medians over runs of the same run, so ``2.0x`` on a
throughput means twice as fast and ``2.0x`` on a latency means twice as slow. The
targets are those of issue #5; they are figures to read, never assertions.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from typing import Any

__all__ = ["RATIO_FIGURES", "finish", "render"]

#: Figures compared between the bridge and every other contender (key in ``figures``, or ``peak_rss_mb``).
RATIO_FIGURES = (
    "ingest_adt.msg_s",
    "ingest_oru.msg_s",
    "ack_1conn.p50_ms",
    "ack_1conn.p99_ms",
    "ack_1conn.p999_ms",
    "ingest_adt.cpu_s_per_1k",
    "ingest_oru.cpu_s_per_1k",
    "peak_rss_mb",
)
BRIDGES = ("bridge-full", "bridge-normal")
BASELINES = ("echo", "python-hl7", "hl7apy", "medplum")


def _median(contender: dict[str, Any], figure: str) -> float:
    if figure == "peak_rss_mb":
        return float(contender["peak_rss_mb"])
    value = contender["figures"].get(figure, {}).get("median", math.nan)
    return float(value) if value is not None else math.nan


def _ratio(a: float, b: float) -> float | None:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return None
    return a / b


def _ratios(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    contenders = results["contenders"]
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for bridge in BRIDGES:
        ours = contenders.get(bridge)
        if not ours or ours["status"] != "ran":
            continue
        out[bridge] = {}
        for other in (*BASELINES, *(b for b in BRIDGES if b != bridge)):
            theirs = contenders.get(other)
            if not theirs or theirs["status"] != "ran":
                continue
            out[bridge][other] = {f: _ratio(_median(ours, f), _median(theirs, f)) for f in RATIO_FIGURES}
    return out


def _target(
    ident: str, text: str, measured: float | None, goal: str, met: Callable[[float], bool], note: str = ""
) -> dict[str, Any]:
    ok = None if measured is None or math.isnan(measured) else met(measured)
    return {"id": ident, "target": text, "goal": goal, "measured": measured, "met": ok, "note": note}


def _targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    ratios = results["ratios"].get("bridge-full", {})
    full = results["contenders"].get("bridge-full", {})

    def vs(other: str, figure: str) -> float | None:
        value = ratios.get(other, {}).get(figure)
        return None if value is None else float(value)

    out = []
    # (contender, name in the label, wanted ratio): the three ingest targets, for ADT and for ORU.
    ingest_goals = (
        ("medplum", "8 conn, fsync on: >= 1.0x Medplum Hl7Server", 1.0),
        ("python-hl7", ">= 10x python-hl7", 10.0),
        ("echo", ">= 25% of the echo ceiling", 0.25),
    )
    for other, label, wanted in ingest_goals:
        for kind in ("adt", "oru"):
            out.append(
                _target(
                    f"ingest_{kind}_vs_{other.replace('-', '_')}",
                    f"ingest {kind.upper()}{',' if other == 'medplum' else ':'} {label}",
                    vs(other, f"ingest_{kind}.msg_s"),
                    f">= {wanted:g}x",
                    functools.partial(operator.le, wanted),
                )
            )
    p99 = full.get("figures", {}).get("ack_1conn.p99_ms", {}).get("median") if full else None
    out.append(_target("ack_p99_1conn", "ACK p99, 1 connection (ms)", p99, "<= 1 ms", lambda x: x <= 1.0))
    e2e = next((e for e in results["e2e"] if e["contender"] == "bridge-full"), None)
    if e2e:
        achieved = e2e["achieved_msg_s"]["median"]
        note = (
            f"at {achieved:,.0f} msg/s achieved of {e2e['target_msg_s']:,.0f}, "
            f"{e2e['posts_per_message']['median'] * 100:.0f}% of messages posted"
        )
        out.append(
            _target(
                "e2e_p99",
                f"end to end p99 at a steady {e2e['target_msg_s']:,.0f} msg/s (ms)",
                e2e["e2e_p99_ms"]["median"],
                "<= 50 ms",
                lambda x: x <= 50.0,
                note,
            )
        )
    long_run = results.get("long_run")
    if long_run:
        note = f"{long_run['from_messages']:,.0f} -> {long_run['to_messages']:,.0f} messages (issue: 100k -> 1M)"
        out.append(
            _target(
                "rss_growth",
                "RSS growth over a long run (%)",
                long_run["rss_growth_pct"],
                "< 10%",
                lambda x: x < 10.0,
                note,
            )
        )
    return out


def _findings(results: dict[str, Any]) -> list[str]:
    found = []
    contenders = results["contenders"]
    for c in contenders.values():
        if c["status"] != "ran":
            continue
        if not c["persistent_connection"]:
            found.append(
                f"{c['label']}: answers one message per connection, then closes it. A sender that keeps its "
                "connection open, as MLLP senders do, gets no ACK for its second message. Measured here with a new "
                "connection per message; its latency includes the TCP connect."
            )
        if c["not_accepted"]:
            detail = ", ".join(f"{n} x {what}" for what, n in sorted(c["not_accepted"].items()))
            found.append(f"{c['label']}: ACKs other than AA/CA: {detail}.")
        if c["no_ack"]:
            found.append(f"{c['label']}: {c['no_ack']} sends got no ACK (connection closed or timed out).")
    echo = contenders.get("echo")
    if echo and echo["status"] == "ran":
        share = echo["figures"]["ingest_adt.client_cpu_share"]["median"]
        if share > 0.85:
            found.append(
                f"The echo ceiling is bounded by the load generator (one Python process at {share * 100:.0f}% of a "
                "core), not by the echo server: it is the ceiling of this client on this machine."
            )
    return found


def finish(results: dict[str, Any], command: str) -> dict[str, Any]:
    """Add the command, ratios, targets and findings to ``results`` (in place) and return it."""
    results["command"] = command
    results["ratios"] = _ratios(results)
    results["targets"] = _targets(results)
    results["findings"] = _findings(results)
    return results


# --- the printed table ---


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _cell(spread: dict[str, Any] | None, digits: int = 0) -> str:
    if not spread or spread.get("median") is None or math.isnan(spread["median"]):
        return "-"
    if spread["min"] == spread["max"]:
        return _num(spread["median"], digits)
    return f"{_num(spread['median'], digits)} [{_num(spread['min'], digits)}-{_num(spread['max'], digits)}]"


def _x(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if value < 100 else f"{value:,.0f}x"


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    s = results["settings"]
    lines: list[str] = []
    add = lines.append
    phase = f"{s['phase_seconds']} s" if s["phase_seconds"] else f"{s['phase_count']} msgs"
    add(
        f"ehr-bridge bench ({results['profile']}): {m['cores']} cores {m['cpu_model']}, Python {m['python']} "
        f"({m['event_loop']}), node {m['node'] or 'absent'}; load average {m['load_average_at_start']} at start"
    )
    add(
        f"medians of {s['runs']} runs [min-max]; each phase {phase} after {s['warmup_per_connection']} warm-up "
        f"msgs per connection; {results['duration_seconds']:.0f} s in all"
    )
    w = results["workloads"]
    add(
        f"messages ({w['adt']['source']}): ADT {w['adt']['distinct_messages']} distinct, {w['adt']['mean_bytes']:,} B "
        f"avg; ORU {w['oru']['distinct_messages']} distinct, {w['oru']['mean_bytes']:,} B avg, "
        f"{w['oru']['mean_obx']} OBX avg; mix 8 ADT : 2 ORU. Fresh MSH-10, MRN and visit per send."
    )
    add("")
    conns = s["connections"]
    add(
        f"ingest, MLLP -> ACK, {conns} connections            ADT msg/s              ORU msg/s"
        "     CPU s/1k ADT  CPU s/1k ORU  peak RSS MB"
    )
    contenders = results["contenders"]
    for c in contenders.values():
        if c["status"] != "ran":
            add(f"  {c['label']:<40} skipped: {c['reason']}")
            continue
        f = c["figures"]
        add(
            f"  {c['label']:<40} {_cell(f['ingest_adt.msg_s']):>22} {_cell(f['ingest_oru.msg_s']):>22}"
            f" {_num(f['ingest_adt.cpu_s_per_1k']['median'], 3):>12}"
            f" {_num(f['ingest_oru.cpu_s_per_1k']['median'], 3):>13}"
            f" {_num(c['peak_rss_mb'], 0):>12}"
        )
    add("")
    add("ACK latency, 1 connection, mix (ms)               p50                p99               p99.9")
    for c in contenders.values():
        if c["status"] != "ran":
            continue
        f = c["figures"]
        add(
            f"  {c['label']:<40} {_cell(f['ack_1conn.p50_ms'], 2):>16} {_cell(f['ack_1conn.p99_ms'], 2):>18}"
            f" {_cell(f['ack_1conn.p999_ms'], 2):>18}"
        )
    for bridge, others in results["ratios"].items():
        add("")
        add(f"{contenders[bridge]['label']} / each contender (throughput: higher is better; latency, CPU, RSS: lower)")
        names = list(others)
        add("  " + f"{'figure':<26}" + "".join(f"{contenders[o]['short']:>15}" for o in names))
        for figure in (
            "ingest_adt.msg_s",
            "ingest_oru.msg_s",
            "ack_1conn.p50_ms",
            "ack_1conn.p99_ms",
            "ingest_adt.cpu_s_per_1k",
            "ingest_oru.cpu_s_per_1k",
            "peak_rss_mb",
        ):
            add("  " + f"{figure:<26}" + "".join(f"{_x(others[o][figure]):>15}" for o in names))
    if results["e2e"]:
        add("")
        add(
            "end to end, send -> webhook sink receipt, steady rate over "
            f"{results['e2e'][0]['connections']} connections, mix (abnormal results are posted)"
        )
        add(
            "                                    target   achieved msg/s   posts/msg   e2e p50 ms   e2e p99 ms"
            "   ACK p99 ms   CPU share"
        )
        for e in results["e2e"]:
            add(
                f"  {contenders[e['contender']]['label']:<32} {e['target_msg_s']:>6,.0f}"
                f" {_cell(e['achieved_msg_s']):>16}"
                f" {_num(e['posts_per_message']['median'], 3):>11}"
                f" {_num(e['e2e_p50_ms']['median'], 1):>12} {_cell(e['e2e_p99_ms'], 1):>12}"
                f" {_num(e['ack_p99_ms']['median'], 2):>12} {_num(e['cpu_share']['median'], 2):>11}"
            )
    if results["delivery"]:
        add("")
        add("delivery path: signed webhook POSTs to the sink (WebhookAdapter.send)   posts/s          p99 ms")
        for row in results["delivery"]:
            p99 = row["p99_ms"]["median"] if row["p99_ms"] else None
            add(
                f"  {row['client']:<44} {row['concurrency']:>2} in flight"
                f" {_cell(row['posts_per_s']):>20} {_num(p99, 2):>10}"
            )
    long_run = results.get("long_run")
    if long_run:
        add("")
        pts = long_run["points"]
        add(
            f"long run (bridge FULL, {conns} connections, mix): {long_run['messages']:,} msgs"
            f" at {long_run['msg_s']:,.0f} msg/s;"
            f" RSS {pts[0]['rss_mb']:.1f} MB at {pts[0]['messages']:,.0f} -> {pts[-1]['rss_mb']:.1f} MB at "
            f"{pts[-1]['messages']:,.0f} = {long_run['rss_growth_pct']:+.1f}%"
        )
    add("")
    add("targets (issue #5; bridge synchronous=FULL)")
    for t in results["targets"]:
        mark = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        value = "-" if t["measured"] is None else f"{t['measured']:,.2f}"
        add(
            f"  {mark:<6} {t['target']:<58} {value:>10}  goal {t['goal']}{'  (' + t['note'] + ')' if t['note'] else ''}"
        )
    if results["findings"]:
        add("")
        add("findings")
        for finding in results["findings"]:
            add(f"  - {finding}")
    return "\n".join(lines)
