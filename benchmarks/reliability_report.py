"""Figures beside their goals for benchmarks/reliability_bench.py: tallies, percentiles, the summary rows.

    python benchmarks/reliability_report.py benchmarks/results/<date>_reliability_bench_<cpu>.json   # as markdown
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pct(values: List[float], q: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))], 3)


def tally(cases: Dict[str, Dict[str, Any]], kinds: tuple) -> Dict[str, Any]:
    counts = {k: sum(1 for c in cases.values() if c.get("outcome") == k) for k in kinds}
    return {"tried": sum(1 for c in cases.values() if c.get("outcome") != "not_run"), **counts, "cases": cases}


def summary(s: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Figures beside their goals."""
    rows: List[Dict[str, Any]] = []

    def row(figure: str, value: Any, goal: str, met: Optional[bool]) -> None:
        rows.append({"figure": figure, "value": value, "goal": goal, "met": met})
    if "bad_requests" in s:
        b = s["bad_requests"]
        row("bad requests: crashes", b["crash"], "0", b["crash"] == 0)
        row("bad requests: hangs", b["hang"], "0", b["hang"] == 0)
        row("bad requests: INTERNAL or no reason", b["internal"], "0", b["internal"] == 0)
        row("bad requests: answered as if fine (review)", b["answered"], "only the harmless ones", None)
        p = b["parameters"]
        row("bad parameters: accepted", p["accepted"], "0", p["accepted"] == 0)
    if "hostile_files" in s:
        h = s["hostile_files"]
        row("hostile files: crashes", h["crash"], "0", h["crash"] == 0)
        row("hostile files: hangs", h["hang"], "0", h["hang"] == 0)
        row("hostile files: accepted", h["accepted"], "0", h["accepted"] == 0)
        row("hostile files: recovered", f"{h['recovered']} of {h['tried']}", "all", h["recovered"] == h["tried"])
        row("hostile files: cache growth MiB (half-written engines)", h["cache_growth_mib"],
            "0 beyond complete engines", None)
    if "soak" in s:
        k = s["soak"]
        row("soak: lost or failed asks", k["asks"] - k["answered"], "0", k["asks"] == k["answered"])
        row("soak: RSS growth %", k["rss_growth_pct"], "< 1", k["rss_growth_pct"] is not None and
            k["rss_growth_pct"] < 1)
        row("soak: latency p50 / p99 s", [k["latency_s"]["p50"], k["latency_s"]["p99"]], "reported", None)
    if "concurrency" in s:
        for label in ("node_queue_size", "queue_holds_all"):
            c = s["concurrency"].get(label)
            if c:
                row(f"concurrency ({label}): lost", c["lost"], "0", c["lost"] == 0 and not c["crash"])
                row(f"concurrency ({label}): streams intact", f"{c['streams_intact']} of {c['answered']}", "all",
                    c["streams_intact"] == c["answered"])
    if "configure_cycles" in s:
        c = s["configure_cycles"]
        g = c.get("rss_growth_pct")
        row("configure/cleanup cycles: RSS growth %", g, "< 1", g is not None and g < 1 and c["failed"] == 0)
    if "signals" in s:
        for k, e in s["signals"].items():
            if not isinstance(e, dict):   # "seconds"
                continue
            ok = e.get("exit_s") is not None and e["exit_s"] <= 2.0
            row(f"{k}: exit seconds", e.get("exit_s", e.get("error")), "<= 2", ok)
            if "partial_left_behind" in e:
                row(f"{k}: partial engine left behind", e["partial_left_behind"], "false",
                    not e["partial_left_behind"])
            for who in ("ask_answered", "goal_answered", "configure_caller_answered"):
                if who in e:
                    row(f"{k}: {who.replace('_', ' ')}", e[who], "answered", bool(e[who]))
    return rows


def machine() -> Dict[str, Any]:
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "load_average_1m_before": round(os.getloadavg()[0], 2)}


def commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def markdown(result: Dict[str, Any]) -> str:
    """The summary as a markdown table (docs/RELIABILITY.md's figures)."""
    m = result["machine"]
    lines = [f"`{result['command']}` ({result['date']}, commit {result.get('commit')}, {m['cpu']}, "
             f"{m['logical_cpus']} CPUs, load average {m['load_average_1m_before']} before / "
             f"{m.get('load_average_1m_after')} after, {result['seconds']} s, "
             f"{result['node_restarts']} node restarts):",
             "", "| figure | value | goal | met |", "| --- | --- | --- | --- |"]
    for r in result["summary"]:
        met = {True: "yes", False: "**no**", None: "-"}[r["met"]]
        lines.append(f"| {r['figure']} | {r['value']} | {r['goal']} | {met} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys
    with open(sys.argv[1], encoding="utf-8") as f:
        print(markdown(json.load(f)))
