"""Reliability benchmark of the node (issue 22): prints one JSON object of figures beside their goals.

    source scripts/env.sh
    python benchmarks/reliability_bench.py [--quick] [--sections bad_requests,hostile_files,...]
                                           [--asks 1000] [--cycles 100] [--out FILE] [--strict]

Runs the real ``edgellm_node`` executable (as ``ros2 run`` does) on the
embedded default model and talks to it through real rclpy clients
(edgellm_ros.ros.client), in its own ROS domain ($ROS_DOMAIN_ID) and
namespaces. The node runs under an address-space limit (--node-memory-limit-gib,
default 8) so that a hostile file that makes it allocate without bound fails
with MemoryError instead of taking the machine. Sections (each with a time
bound, --section-timeout; --quick shrinks every size):

- ``bad_requests``: every request in benchmarks/reliability_requests.py, through
  /ask and a few through ~/generate, and requests while unconfigured and inactive:
  tried / clean error (success false, a code other than INTERNAL, a message) /
  answered / internal / crash (the process died) / hang (no answer within
  --hang-timeout); the seconds each took and the node's RSS growth over them.
  Then the bad parameters: tried / refused with a reason / accepted.
- ``hostile_files``: each file of benchmarks/hostile_files.py set as ``model``,
  ``lora_adapters`` or ``eagle.draft``, then configure: clean failure / accepted
  (then one /ask) / hang / crash, the configure error's text, and recovered = the
  good parameters back, configure, activate and an /ask answers on the same process.
  A hung or crashed node is restarted for the next case. The cache's growth
  (half-written engine folders) is reported.
- ``soak``: --asks sequential /ask calls: answered, RSS growth (after the first
  10% against the end), p50/p99 latency.
- ``concurrency``: --clients client nodes x --per-client simultaneous asks, once
  with the node's queue_size and once with a queue that holds them all:
  answered / rejected with a reason / lost, and whether every answered request's
  Token stream equals its text (contiguous indices, one done).
- ``configure_cycles``: --cycles configure/cleanup cycles, RSS after each cleanup:
  warm-up = the median of cycles 2-11 against the first, growth = the median of
  the last ten against the median of cycles 2-11 (WARMUP_CYCLES, SPAN; every
  cycle's RSS is in the JSON).
- ``signals``: SIGINT and SIGTERM during a generation with a goal waiting, and
  SIGINT during an export (engine_dir in a scratch folder): seconds to exit
  (goal 2), callers answered, exit status, child processes and files left behind,
  and whether get_state answered while configure ran.

Goals: 0 crashes, 0 hangs, 0 lost, RSS growth < 1%, exit within 2 s. The JSON
goes to stdout and to benchmarks/results/<date>_reliability_bench_<cpu>.json
(--out to choose, --out '' for stdout only). Exit status 0 unless the bench
itself failed; --strict: 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import hostile_files  # noqa: E402
import reliability_requests  # noqa: E402
from reliability_node import Client, Node, answer_kind, probe_state, timed  # noqa: E402
from reliability_report import commit, machine, pct, summary, tally  # noqa: E402

SECTIONS = ("bad_requests", "hostile_files", "soak", "concurrency", "configure_cycles", "signals")
GOOD = {"model": "", "lora_adapters": ["radiology:adapters/radiology"], "eagle.draft": "default", "engine_dir": ""}
STORY = "Tell me a long story about a robot."
#: What rclpy prints when the middleware could not deliver a service response.
DROPPED = "failed to send response (timeout)"
#: Configure/cleanup cycles before RSS growth is measured (the first loads the libraries).
WARMUP_CYCLES = 1
#: Cycles whose median RSS is compared: cycles 2-11 against the last ten (--quick: 2-5, last 4).
SPAN = 10


def log(msg: str) -> None:
    print(f"[reliability_bench] {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.node: Optional[Node] = None
        self.restarts = 0

    # -- the shared node ------------------------------------------------------------
    def fresh(self, active: bool = True) -> Node:
        if self.node is not None:
            self.node.stop()
        self.node = Node(self.a, "main")
        if active:
            self.node.up()
        return self.node

    def deadline(self) -> float:
        return time.monotonic() + self.a.section_timeout

    def try_request(self, n: Node, send: Callable[[], Any]) -> Dict[str, Any]:
        """One request with the hang bound: its outcome, code, message and seconds."""
        rss0 = n.rss_mib()
        t0 = time.perf_counter()
        try:
            res = send()
        except TimeoutError:
            out: Dict[str, Any] = {"outcome": "hang" if n.alive() else "crash"}
        else:
            out = {"outcome": answer_kind(res) if n.alive() else "crash", "code": int(res.error_code),
                   "message": res.message[:160]}
            if res.success:
                out["generated_tokens"] = int(res.generated_tokens)
        out["seconds"] = round(time.perf_counter() - t0, 2)
        if n.alive():
            out["rss_delta_mib"] = round(n.rss_mib() - rss0, 1)
        elif out["outcome"] != "crash":
            out["outcome"] = "crash"
        return out

    def after_failure(self, entry: Dict[str, Any]) -> Node:
        """A hung or crashed node: how SIGINT ends it, then a fresh active node."""
        n = self.node
        assert n is not None
        if n.alive():
            entry["sigint_exit_s"] = n.signal_exit_s(signal.SIGINT, 2.0)
        else:
            entry["exit_status"] = n.proc.returncode
        if n.alive():
            n.proc.kill()
        self.restarts += 1
        return self.fresh()

    # -- sections --------------------------------------------------------------------
    def bad_requests(self) -> Dict[str, Any]:
        a = self.a
        n = self.fresh(active=False)
        cases: Dict[str, Dict[str, Any]] = {}
        hang = a.hang_timeout
        cases["ask_while_unconfigured"] = self.try_request(n, lambda: n.c.ask("hi", timeout=hang))
        n.up(active=False)
        cases["ask_while_inactive"] = self.try_request(n, lambda: n.c.ask("hi", timeout=hang))
        cases["goal_while_inactive"] = self.try_request(n, lambda: n.c.generate("hi", timeout=hang))
        assert n.c.transition("activate")
        n.c.wait_for_token_publisher()
        rss0 = n.rss_mib()
        matrix: List[tuple] = [(k, "ask", v) for k, v in reliability_requests.requests().items()]
        matrix += [(k, "goal", v) for k, v in reliability_requests.goals().items()]
        if a.quick:
            keep = {"empty_prompt", "prompt_5MB", "unknown_adapter", "top_p_nan", "stop_100000_strings",
                    "json_schema_not_json", "image_unknown_encoding", "goal_unknown_adapter"}
            matrix = [m for m in matrix if m[0] in keep]
        end = self.deadline()
        for name, kind, fields in matrix:
            if time.monotonic() > end:
                cases[name] = {"outcome": "not_run", "why": "section time bound"}
                continue
            fields = dict(fields)
            prompt = fields.pop("prompt", "")
            send = (lambda: n.c.ask(prompt, timeout=hang, **fields)) if kind == "ask" else \
                (lambda: n.c.generate(prompt, timeout=hang, **fields))
            entry = self.try_request(n, send)
            cases[name] = entry
            log(f"bad request {name}: {entry['outcome']} {entry.get('message', '')[:80]!r} ({entry['seconds']} s)")
            if entry["outcome"] in ("hang", "crash"):
                n = self.after_failure(entry)
                rss0 = n.rss_mib()
        out = tally(cases, ("clean_error", "answered", "internal", "crash", "hang", "not_run"))
        out["rss_growth_mib_over_the_matrix"] = round(n.rss_mib() - rss0, 1)
        out["slowest"] = sorted(((c.get("seconds", 0), k) for k, c in cases.items()), reverse=True)[:5]
        out["parameters"] = self.bad_parameters(n)
        return out

    def bad_parameters(self, n: Node) -> Dict[str, Any]:
        cases: Dict[str, Dict[str, Any]] = {}
        items = list(reliability_requests.PARAMETERS.items())
        if self.a.quick:
            items = items[:6]
        for name, (param, value) in items:
            before = n.c.get_parameters(param)[0]
            try:
                res = n.c.set_parameters(**{param.replace(".", "__"): value})[0]
            except TimeoutError:
                cases[name] = {"outcome": "hang"}
                continue
            entry = {"outcome": "accepted" if res.successful else ("refused" if res.reason else "refused_no_reason"),
                     "reason": res.reason[:160]}
            if res.successful:   # put it back for the next cases
                n.c.set_parameters(**{param.replace(".", "__"): before})
            cases[name] = entry
        return tally(cases, ("refused", "refused_no_reason", "accepted", "hang"))

    def hostile_files(self) -> Dict[str, Any]:
        a = self.a
        n = self.fresh(active=False)
        cache = os.environ.get("EDGELLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgellm_ros")
        cache0 = tree_bytes(cache)
        names = list(hostile_files.CASES) if not a.quick else list(hostile_files.QUICK)
        cases: Dict[str, Dict[str, Any]] = {}
        end = self.deadline()
        scratch = os.path.join(a.workdir, "hostile")
        os.makedirs(scratch, exist_ok=True)
        for name in names:
            family, make = hostile_files.CASES[name]
            if time.monotonic() > end:
                cases[name] = {"family": family, "outcome": "not_run", "why": "section time bound"}
                continue
            params, ask = make(scratch)
            entry: Dict[str, Any] = {"family": family}
            cases[name] = entry
            mark = len(n.log_text())
            res = n.c.set_parameters(**{k.replace(".", "__"): v for k, v in params.items()})
            if not all(r.successful for r in res):
                entry.update(outcome="clean_failure", stage="parameter refused",
                             error=" ".join(r.reason for r in res)[:300])
            else:
                values = [x for v in params.values() for x in (v if isinstance(v, list) else [v])]
                names = [os.path.basename(str(x).split(":", 1)[-1].rstrip("/")) for x in values]
                entry.update(self.hostile_configure(n, mark, ask, names))
            log(f"hostile {name}: {entry['outcome']} {entry.get('error', '')[:100]!r}")
            if entry["outcome"] in ("hang", "crash") or entry.get("ask", {}).get("outcome") in ("hang", "crash"):
                n = self.after_failure(entry)
                n.c.transition("deactivate")
                n.c.transition("cleanup")
                entry["recovered"] = False
                entry["restarted"] = True
                continue
            entry["recovered"] = self.recover(n)
        out = tally(cases, ("clean_failure", "accepted", "hang", "crash", "not_run"))
        out["recovered"] = sum(1 for c in cases.values() if c.get("recovered"))
        out["accepted_and_answered"] = sorted(k for k, c in cases.items() if c.get("ask", {}).get("outcome")
                                              == "answered")
        out["error_names_the_file"] = sum(1 for c in cases.values() if c.get("error_names_the_file"))
        out["cache_growth_mib"] = round((tree_bytes(cache) - cache0) / 2**20, 1)
        return out

    def hostile_configure(self, n: Node, mark: int, ask: Dict[str, Any], names: List[str]) -> Dict[str, Any]:
        try:
            ok, secs = timed(lambda: n.c.transition("configure", timeout=self.a.configure_hang_timeout))
        except TimeoutError:
            get_state = probe_state(n)
            return {"outcome": "hang" if n.alive() else "crash", "get_state_answers": get_state}
        if not n.alive():
            return {"outcome": "crash", "exit_status": n.proc.returncode}
        if not ok:
            err = n.last_configure_error(mark)
            return {"outcome": "clean_failure", "seconds": secs, "error": err,
                    "error_names_the_file": any(name in err for name in names)}
        out: Dict[str, Any] = {"outcome": "accepted", "seconds": secs}
        n.c.transition("activate")
        ask = dict(ask)
        prompt = ask.pop("prompt")
        out["ask"] = self.try_request(n, lambda: n.c.ask(prompt, timeout=self.a.hang_timeout, **ask))
        return out

    def recover(self, n: Node) -> bool:
        """Good parameters back, configure, activate, one /ask; back to unconfigured."""
        c = n.c
        for label in ("deactivate", "cleanup"):
            if c.state() in (("active",) if label == "deactivate" else ("inactive",)):
                c.transition(label)
        c.set_parameters(**{k.replace(".", "__"): v for k, v in GOOD.items()})
        try:
            n.up()
            ok = c.ask("Say hi.", max_new_tokens=4, timeout=self.a.hang_timeout).success
        except (RuntimeError, TimeoutError):
            ok = False
        for label in ("deactivate", "cleanup"):
            c.transition(label)
        return ok

    def soak(self) -> Dict[str, Any]:
        a = self.a
        n = self.fresh()
        lat: List[float] = []
        failed: Dict[str, int] = {}
        rss: List[float] = []
        end = self.deadline()
        warm = max(1, a.asks // 10)
        for i in range(a.asks):
            if time.monotonic() > end:
                break
            try:
                res, secs = timed(lambda: n.c.ask(f"Name a colour ({i}).", max_new_tokens=8, timeout=a.hang_timeout))
            except TimeoutError:
                failed["hang"] = failed.get("hang", 0) + 1
                n = self.after_failure({})
                continue
            if res.success:
                lat.append(secs)
            else:
                failed[res.message[:60]] = failed.get(res.message[:60], 0) + 1
            if (i + 1) % warm == 0 or i + 1 == a.asks:
                rss.append(n.rss_mib())
        growth = 100 * (rss[-1] - rss[0]) / rss[0] if len(rss) >= 2 else None
        return {"asks": a.asks, "answered": len(lat), "failed": failed, "truncated": len(lat) + sum(failed.values())
                < a.asks, "rss_mib_after_first_10pct": round(rss[0], 1) if rss else None,
                "rss_mib_end": round(rss[-1], 1) if rss else None,
                "rss_mib_every_10pct": [round(r, 1) for r in rss],
                "rss_growth_pct": round(growth, 2) if growth is not None else None,
                "latency_s": {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": round(max(lat), 3) if lat else None}}

    def concurrency(self) -> Dict[str, Any]:
        a = self.a
        n = self.fresh()
        out: Dict[str, Any] = {"clients": a.clients, "per_client": a.per_client}
        default_queue = n.c.get_parameters("queue_size")[0]
        for label, queue in (("node_queue_size", default_queue), ("queue_holds_all", a.clients * a.per_client)):
            n.c.set_parameters(queue_size=queue)
            mark = len(n.log_text())
            pool = Client(a.domain, n.ns, a.clients, name=f"burst_{label}_")
            try:
                for c in pool.clients:
                    c.wait_for_node()
                    c.wait_for_token_publisher()
                futures = [(c, c.ask_async(f"Count to {k + 3}.", max_new_tokens=12))
                           for c in pool.clients for k in range(a.per_client)]
                res = {"queue_size": queue, "answered": 0, "rejected": {}, "lost": 0, "streams_intact": 0}
                for c, fut in futures:
                    try:
                        r = c.result(fut, timeout=a.hang_timeout + 10 * len(futures))
                    except TimeoutError:
                        res["lost"] += 1
                        continue
                    if r.success:
                        res["answered"] += 1
                        toks = c.tokens(r.request_id, timeout=10)
                        ok = ("".join(t.text for t in toks) == r.text and [t.index for t in toks] ==
                              list(range(len(toks))) and sum(t.done for t in toks) == 1)
                        res["streams_intact"] += ok
                    else:
                        key = f"code {r.error_code}: " + (r.message[:50] or "no reason")
                        res["rejected"][key] = res["rejected"].get(key, 0) + 1
                res["crash"] = not n.alive()
                # a lost call whose answer the node did send: Fast DDS dropped the response
                # because the new client's reply reader was not matched yet (rmw_fastrtps waits
                # max_blocking_time, 100 ms by default; rclpy warns once per process)
                res["node_saw_response_dropped"] = DROPPED in n.log_text()[mark:]
            finally:
                pool.close()
            out[label] = res
            if res["crash"]:
                break
        n.c.set_parameters(queue_size=default_queue)
        return out

    def configure_cycles(self) -> Dict[str, Any]:
        a = self.a
        n = self.fresh(active=False)
        rss: List[float] = []
        secs: List[float] = []
        end = self.deadline()
        failures = 0
        for _ in range(a.cycles):
            if time.monotonic() > end:
                break
            t0 = time.perf_counter()
            try:
                ok = n.c.transition("configure", timeout=a.configure_timeout) and n.c.transition("cleanup")
            except TimeoutError:
                ok = False
            failures += not ok
            secs.append(time.perf_counter() - t0)
            rss.append(n.rss_mib())
        out: Dict[str, Any] = {"cycles": len(rss), "asked": a.cycles, "failed": failures,
                               "seconds_per_cycle": round(statistics.median(secs), 2) if secs else None}
        span = min(SPAN, (len(rss) - WARMUP_CYCLES) // 2)   # --quick's 10 cycles: 4
        if span >= 3:
            # medians of SPAN cycles: single readings scatter by a few MiB (and spike by 10-50 for
            # a cycle), which floors and single samples mistake for growth; a leak moves the median
            base = statistics.median(rss[WARMUP_CYCLES:WARMUP_CYCLES + span])
            late = statistics.median(rss[-span:])
            out["rss_warmup_mib"] = round(base - rss[0], 1)
            out["rss_growth_pct"] = round(100 * (late - base) / base, 2)
            out["rss_median_mib"] = [round(base, 1), round(late, 1)]
        out["rss_mib_per_cycle"] = [round(r, 1) for r in rss]
        return out

    def signals(self) -> Dict[str, Any]:
        if self.node is not None:
            self.node.stop()
            self.node = None
        out: Dict[str, Any] = {}
        for sig in (signal.SIGINT,) if self.a.quick else (signal.SIGINT, signal.SIGTERM):
            out[f"{sig.name}_mid_generation"] = self.signal_mid_generation(sig)
        out["SIGINT_mid_export"] = self.signal_mid_export()
        return out

    def signal_mid_generation(self, sig: signal.Signals) -> Dict[str, Any]:
        n = Node(self.a, f"sig{sig.name}")
        try:
            n.up()
            started = threading.Event()
            n.c.on_token = lambda m: started.set()
            call = n.c.ask_async(STORY, max_new_tokens=400)
            if not started.wait(self.a.hang_timeout):
                return {"error": "the generation did not start"}
            goal = n.c.generate_async("Say hi.", max_new_tokens=4)
            goal.accepted()
            answers: Dict[str, Any] = {}
            wait = self.a.signal_wait + 5

            def answer(label: str, get: Callable[[], Any]) -> None:
                try:
                    r = get()
                    answers[label] = f"code {r.error_code}: {r.message[:80]}"
                except TimeoutError:
                    answers[label] = False
            waiters = [threading.Thread(target=answer, args=("ask", lambda: n.c.result(call, timeout=wait))),
                       threading.Thread(target=answer, args=("goal", lambda: goal.result(timeout=wait)))]
            for t in waiters:   # the goal's get_result request goes out before the signal
                t.start()
            time.sleep(0.5)
            children = n.ps.children(recursive=True)
            exit_s = n.signal_exit_s(sig, self.a.signal_wait)
            entry: Dict[str, Any] = {"exit_s": exit_s, "exit_status": n.proc.poll()}
            for t in waiters:
                t.join(timeout=wait + 5)
            entry.update({f"{k}_answered": answers.get(k, False) for k in ("ask", "goal")})
            if exit_s is None:
                n.proc.kill()
                n.proc.wait()
            entry["children_left"] = [c.pid for c in children if c.is_running() and c.status() != "zombie"]
            return entry
        finally:
            n.stop()

    def signal_mid_export(self) -> Dict[str, Any]:
        export = os.path.join(self.a.workdir, "export")
        shutil.rmtree(export, ignore_errors=True)
        os.makedirs(export)
        n = Node(self.a, "export", {"engine_dir": os.path.join(export, "engine")})
        try:
            answered: List[Any] = []
            t = threading.Thread(target=lambda: answered.append(
                n.c.transition("configure", timeout=self.a.signal_wait + 60)), daemon=True)
            t.start()
            t_end = time.monotonic() + 120
            while "exporting" not in n.log_text() and time.monotonic() < t_end and n.alive():
                time.sleep(0.1)
            if "exporting" not in n.log_text():
                return {"error": "the export did not start within 120 s"}
            time.sleep(1.0)
            entry: Dict[str, Any] = {"get_state_answers_while_configuring": probe_state(n)}
            exit_s = n.signal_exit_s(signal.SIGINT, self.a.signal_wait)
            entry.update(exit_s=exit_s, exit_status=n.proc.poll())
            if exit_s is None:
                n.proc.kill()
                n.proc.wait()
            t.join(timeout=5)
            entry["configure_caller_answered"] = bool(answered)
            left = [os.path.relpath(os.path.join(d, f), export) for d, _, fs in os.walk(export) for f in fs]
            complete = os.path.exists(os.path.join(export, "engine", "manifest.json"))
            entry.update(files_left=len(left), bytes_left=tree_bytes(export), export_completed=complete,
                         partial_left_behind=bool(left) and not complete, examples=left[:5])
            return entry
        finally:
            n.stop()
            shutil.rmtree(export, ignore_errors=True)


def tree_bytes(path: str) -> int:
    total = 0
    for d, _, fs in os.walk(path):
        for f in fs:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes and short bounds (the smoke test's)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    ap.add_argument("--asks", type=int, default=None, help="soak asks (default 1000; --quick 10)")
    ap.add_argument("--cycles", type=int, default=None, help="configure/cleanup cycles (default 100; --quick 10)")
    ap.add_argument("--clients", type=int, default=None, help="concurrent client nodes (default 10; --quick 2)")
    ap.add_argument("--per-client", type=int, default=None, help="simultaneous asks each (default 5; --quick 2)")
    ap.add_argument("--hang-timeout", type=float, default=None,
                    help="seconds without an answer that count as a hang (default 60; --quick 20)")
    ap.add_argument("--section-timeout", type=float, default=None,
                    help="time bound of each section, seconds (default 1800; --quick 240)")
    ap.add_argument("--configure-timeout", type=float, default=600.0, help="a good configure (first one exports)")
    ap.add_argument("--configure-hang-timeout", type=float, default=None,
                    help="seconds a configure with a hostile file may take before it counts as a hang "
                    "(default 180; --quick 90)")
    ap.add_argument("--signal-wait", type=float, default=30.0, help="seconds to wait for an exit before SIGKILL")
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--node-memory-limit-gib", type=float, default=8.0, help="the node's RLIMIT_AS; 0 = none")
    ap.add_argument("--domain", type=int, default=int(os.environ.get("ROS_DOMAIN_ID") or random.randint(1, 101)))
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/<date>_reliability_bench_"
                    "<cpu>.json; '' = none)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    a = ap.parse_args()
    q = a.quick
    for name, full, quick in (("asks", 1000, 10), ("cycles", 100, 10), ("clients", 10, 2), ("per_client", 5, 2),
                              ("hang_timeout", 60.0, 20.0), ("configure_hang_timeout", 180.0, 90.0),
                              ("section_timeout", 1800.0, 240.0)):
        if getattr(a, name) is None:
            setattr(a, name, quick if q else full)
    sections = [s for s in a.sections.split(",") if s]
    for s in sections:
        if s not in SECTIONS:
            ap.error(f"unknown section {s!r}; known: {', '.join(SECTIONS)}")
    a.workdir = tempfile.mkdtemp(prefix="reliability_bench_")
    # SIGTERM (kill, a CI timeout) unwinds through the finally below, which ends the node processes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(a)
    result: Dict[str, Any] = {
        "benchmark": "reliability_bench (issue 22)", "date": datetime.date.today().isoformat(), "commit": commit(),
        "machine": machine(), "command": " ".join(["python", "benchmarks/reliability_bench.py", *sys.argv[1:]]),
        "settings": {k: getattr(a, k) for k in ("quick", "asks", "cycles", "clients", "per_client",
                                                "hang_timeout", "configure_hang_timeout", "section_timeout",
                                                "max_seq_len", "node_memory_limit_gib")},
        "goals": {"crashes": 0, "hangs": 0, "lost": 0, "rss_growth_pct_below": 1.0, "signal_exit_s_at_most": 2.0},
        "sections": {}}
    t_all = time.perf_counter()
    try:
        for s in sections:
            log(f"section {s}")
            t0 = time.perf_counter()
            try:
                result["sections"][s] = getattr(bench, s)()
            except Exception as exc:  # the bench's own failure: reported, the other sections go on
                result["sections"][s] = {"bench_error": f"{type(exc).__name__}: {exc}"}
                log(f"section {s} failed: {type(exc).__name__}: {exc}")
            result["sections"][s]["seconds"] = round(time.perf_counter() - t0, 1)
    finally:
        if bench.node is not None:
            bench.node.stop()
        if not any(f.startswith("node_") and "Traceback" in open(os.path.join(a.workdir, f)).read()
                   for f in os.listdir(a.workdir) if f.endswith(".log")):
            shutil.rmtree(a.workdir, ignore_errors=True)
        else:
            result["node_logs_kept"] = a.workdir
    ok_sections = {k: v for k, v in result["sections"].items() if "bench_error" not in v}
    try:
        result["summary"] = summary(ok_sections)
    except Exception as exc:  # the figures are still written
        result["summary"], result["summary_error"] = [], f"{type(exc).__name__}: {exc}"
        log(f"summary failed: {result['summary_error']}")
    result["goals_missed"] = [r["figure"] for r in result["summary"] if r["met"] is False]
    result["node_restarts"] = bench.restarts
    result["seconds"] = round(time.perf_counter() - t_all, 1)
    result["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=1, default=str)
    out = a.out
    if out is None:
        cpu = result["machine"]["cpu"].split()
        tag = "epyc" if "EPYC" in cpu else ("xeon" if "Xeon" in " ".join(cpu) else platform.machine())
        out = os.path.join(HERE, "results", f"{result['date']}_reliability_bench_{tag}.json")
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        log(f"written: {out}")
    print(text)
    errors = [k for k, v in result["sections"].items() if "bench_error" in v]
    errors += ["summary"] if "summary_error" in result else []
    sys.exit(2 if errors else (1 if a.strict and result["goals_missed"] else 0))


if __name__ == "__main__":
    main()
