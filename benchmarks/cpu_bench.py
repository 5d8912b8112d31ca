"""CPU benchmark against the peer runtimes (issue 8): prints one JSON object.

    bash scripts/bench_peers_setup.sh      # once: .venv-peers (llama.cpp, onnxruntime-genai) + peer models
    python benchmarks/cpu_bench.py [--rounds 9] [--ours none,int4,int4+eagle] [--out FILE]

Runtimes, each in its own long-lived worker process (benchmarks/bench_worker.py)
so that their thread pools never compete; only one computes at any time:

- ``ours[<variant>]``: edgellm_ros' Engine (the repository's .venv); a variant is
  an ``EngineConfig.quantization`` value ("none", "int4", ...) with an optional
  "+eagle" (EAGLE-3 with the shipped draft, greedy, so the same tokens) and
  "/field=value" settings of other EngineConfig fields. A
  variant this checkout cannot load (no ``quantization`` field yet, say) is
  reported as skipped;
- ``llama.cpp`` / ``llama.cpp-flash-attn``: llama-cpp-python on the GGUF file as
  is, flash attention off (its default) / on;
- ``ort-genai-int4`` / ``ort-genai-fp32``: onnxruntime-genai on models made by
  its builder from the same GGUF (benchmarks/peer_models.py).
The peers run in .venv-peers. A requested peer that cannot run (not
installed, its model not built, its library failing to load or dying
mid-run) fails the benchmark: exit status 3, the reason on stderr and in the
JSON's ``error``; it never compares against fewer peers than were asked for
(ask for fewer with --peers).

Workload, the same token ids everywhere (made once by our tokenizer: the chat
template around one question, and a plain text cut at exactly --prefill-tokens):
greedy, --threads threads, end tokens ignored. Each round runs every runtime
once, in an order rotated every round, after --warmup uncounted rounds:

- ``ttft_s``: time to the first token of the chat prompt (46 tokens), nothing
  cached (our prompt cache is off, llama.cpp's prefix reuse is reset,
  onnxruntime-genai's generator is rewound to 0);
- ``decode_tok_s``: --new-tokens generated after it, rate after the first token;
- ``prefill_tok_s``: prompt tokens / time to the first token of the long prompt.

The machine may be shared: a run during which other processes took more than
--max-foreign of the CPU (from /proc/stat, less the worker's and the driver's
own CPU time) is repeated once the machine is quiet again (--retries).

Reported per runtime and metric: median, min and max over --rounds; the ratios
of every ``ours`` variant to the best peer (medians) with the issue's goals;
and the agreement of each runtime's greedy ids with our float path (leading
identical tokens; never fails the run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "bench_worker.py")
QUESTION = "Explain in a few sentences how a mobile robot plans a path through a warehouse."
#: llama.cpp runs with and without flash attention (off is llama-cpp-python's default; on was
#: faster here): the best peer is the better of the two.
PEERS = ("llama.cpp", "llama.cpp-flash-attn", "ort-genai-int4", "ort-genai-fp32")
#: metric -> which way is better
METRICS = {"decode_tok_s": "higher", "prefill_tok_s": "higher", "ttft_s": "lower"}


def log(msg: str) -> None:
    print(f"[cpu_bench] {msg}", file=sys.stderr, flush=True)


def venv_python(name: str) -> str:
    return os.path.join(ROOT, name, "bin", "python")


class Worker:
    """A runtime's process; one JSON command in, one JSON line out."""

    def __init__(self, name: str, kind: str, python: str, spec: Dict[str, Any]):
        self.name, self.kind, self.spec = name, kind, spec
        env = dict(os.environ)
        if kind != "ours":
            env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen([python, WORKER, kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=ROOT)
        self.info: Dict[str, Any] = {}
        self.metrics: Dict[str, Dict[str, float]] = {}
        self.rounds: List[Dict[str, Any]] = []
        self.disturbed = 0  # runs repeated because other processes took the CPU
        self.status = "starting"

    def call(self, obj: Dict[str, Any]) -> Dict[str, Any]:
        try:
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError) as exc:
            return {"ok": False, "error": f"worker died ({exc})"}
        if not line:
            return {"ok": False, "error": f"worker exited with code {self.proc.wait()}"}
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.call({"cmd": "quit"})
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def peer_folders(a: argparse.Namespace, wanted: List[str]) -> Dict[str, Any]:
    """Build (once) and locate the peers' model files; {"error": ...} when impossible."""
    builds = [p for p in wanted if p.startswith("ort-genai-")]
    cmd = [a.ours_python, os.path.join(HERE, "peer_models.py"), "--peers-python", a.peers_python,
           "--model", a.model, "--only", ",".join(builds)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if proc.returncode:
        return {"error": f"peer models could not be built (exit {proc.returncode}; see stderr)"}
    return json.loads(proc.stdout)


def system_busy_s() -> float:
    """CPU seconds all processors spent busy since boot (/proc/stat; 0 where unavailable)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait; no guest


def process_cpu_s(pid: int) -> float:
    """CPU seconds of one process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured_call(w: "Worker", job: Dict[str, Any]) -> Dict[str, Any]:
    """One round of one runtime, with the CPU time other processes took meanwhile."""
    t0, busy0, own0, me0 = time.perf_counter(), system_busy_s(), process_cpu_s(w.proc.pid), time.process_time()
    res = w.call(job)
    wall = time.perf_counter() - t0
    foreign = (system_busy_s() - busy0) - (process_cpu_s(w.proc.pid) - own0) - (time.process_time() - me0)
    res["foreign_cpu_share"] = max(foreign, 0.0) / (wall * (os.cpu_count() or 1))
    return res


def wait_quiet(max_share: float, timeout: float) -> float:
    """Wait (1 s windows, nothing of ours running) until others use at most max_share of the CPU."""
    t_end = time.perf_counter() + timeout
    while True:
        t0, busy0 = time.perf_counter(), system_busy_s()
        time.sleep(1.0)
        share = (system_busy_s() - busy0) / ((time.perf_counter() - t0) * (os.cpu_count() or 1))
        if share <= max_share or time.perf_counter() > t_end:
            return share


def summary(values: List[float], digits: int) -> Dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def leading_equal(a: List[int], b: List[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def exact_int4(w: Worker) -> bool:
    """Our int4 graph with float32 compute: the GGUF's own blocks, exact products (config.py)."""
    cfg = w.info.get("engine_config", {})
    return w.kind == "ours" and cfg.get("quantization") == "int4" and cfg.get("int4_compute") == "float32"


def agreement(w: Worker, by_name: Dict[str, Worker], reference: Optional[Worker]) -> Dict[str, Any]:
    """Greedy ids of the first counted round against our float path (and EAGLE's own base)."""
    ids = w.rounds[0]["ids"]
    out: Dict[str, Any] = {"identical_in_every_round": all(r["ids"] == ids for r in w.rounds),
                           "ids": " ".join(map(str, ids))}
    if reference is not None and reference is not w:
        ref = reference.rounds[0]
        out.update({"reference": reference.name, "leading_identical": leading_equal(ids, ref["ids"]),
                    "of": len(ref["ids"]), "prefill_first_token_equal": w.rounds[0]["prefill_first_id"]
                    == ref["prefill_first_id"]})
    variant = w.spec.get("variant", "")
    if variant.endswith("+eagle"):  # greedy EAGLE must reproduce its base variant exactly
        # the base: the same variant with the draft loaded and EAGLE off (two-row steps);
        # without it, the variant with no draft (one-row steps), which may part at a near-tie
        q, _, rest = variant[:-len("+eagle")].partition("/")
        exact = by_name.get(f"ours[{'/'.join(filter(None, [q, 'eagle_draft=default', rest]))}]")
        base = exact if exact is not None and exact.rounds else by_name.get(f"ours[{variant[:-len('+eagle')]}]")
        out["expected_identical"] = base is exact
        if base is not None and base.rounds:
            out["base"] = base.name
            out["leading_identical_vs_base"] = leading_equal(ids, base.rounds[0]["ids"])
            out["agrees"] = out["leading_identical_vs_base"] == len(ids) if base is exact else None
            if base is not exact:
                out["note"] = ("compared with the variant without a draft (one-row steps): it may part "
                               "at a near-tie; the exact base is <q>/eagle_draft=default")
        else:
            out["agrees"] = None
            out["note"] = "its base variant was not measured"
    elif w is reference:  # the float path: deterministic, so every round gives the same ids
        out["expected_identical"] = True
        out["agrees"] = out["identical_in_every_round"]
    elif exact_int4(w) and "leading_identical" in out:
        out["expected_identical"] = True
        out["agrees"] = out["leading_identical"] == len(ids)
    else:
        out["expected_identical"] = False
        out["note"] = {"llama.cpp": "Q4_1 weights with Q8 activations: close, not bit-equal",
                       "ort-genai-int4": "weights re-quantized to int4 (symmetric, block 32)",
                       "ort-genai-fp32": "the same float weights, other kernels: rounding differs"}.get(
            w.kind if w.kind == "llama.cpp" else w.name,
            "quantized graph: equal to the float path only where its arithmetic is exact")
    return out


def ratios(workers: List[Worker], eagle_goal: float) -> Dict[str, Any]:
    peers = [w for w in workers if w.kind != "ours" and w.status == "ok"]
    ours = [w for w in workers if w.kind == "ours" and w.status == "ok"]
    if not peers:
        return {"note": "no peer was measured"}
    best: Dict[str, Any] = {}
    for m, sense in METRICS.items():
        pick = max if sense == "higher" else min
        b = pick(peers, key=lambda w: w.metrics[m]["median"])
        best[m] = {"runtime": b.name, "median": b.metrics[m]["median"]}
    out: Dict[str, Any] = {"best_peer": best}
    for w in ours:
        eagle = w.spec["variant"].endswith("+eagle")
        entry = {}
        for m, sense in METRICS.items():
            value = w.metrics[m]["median"] / best[m]["median"]
            goal = (eagle_goal if eagle else 1.0) if m == "decode_tok_s" else 1.0
            met = value >= goal if sense == "higher" else value <= goal
            entry[m] = {"ours_over_best": round(value, 3), "goal": f"{'>=' if sense == 'higher' else '<='} {goal}",
                        "met": met}
        out[w.name] = entry
    return out


def machine() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_1m_before": round(os.getloadavg()[0], 2)}


def fail_for_peers(result: Dict[str, Any], missing: Dict[str, str], skipped: Dict[str, str],
                   workers: List[Worker]) -> None:
    """A requested peer cannot run: say which and why, print the JSON, exit 3."""
    for w in workers:
        w.close()
    for name, why in missing.items():
        log(f"error: requested peer {name} cannot run: {why}")
    result.update(error="requested peers cannot run: " + ", ".join(missing) + " (see peers_failed); "
                  "nothing is compared against fewer peers than asked for (--peers picks fewer)",
                  peers_failed=missing, skipped=skipped)
    print(json.dumps(result, indent=1))
    sys.exit(3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=1, help="uncounted rounds first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--prompt-tokens", type=int, default=46, help="expected length of the chat prompt")
    ap.add_argument("--question", default=QUESTION, help="the user message of the chat prompt")
    ap.add_argument("--ours", default="none,int4,int4/eagle_draft=default,int4+eagle",
                    help="our variants: an EngineConfig.quantization value, '+eagle' adds EAGLE, "
                    "'/field=value' sets another EngineConfig field (e.g. int4/int4_compute=float32)")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"subset of {','.join(PEERS)} ('' = none)")
    ap.add_argument("--eagle", default="2,4,8,0.2", help="EAGLE drafting_top_k,drafting_step,verify_tree_size"
                    "[,confidence_threshold] (default: the runtime's defaults; no threshold given = 0)")
    ap.add_argument("--eagle-goal", type=float, default=1.5, help="decode ratio goal of the +eagle variants")
    ap.add_argument("--model", default="", help="GGUF file ('' = the embedded default)")
    ap.add_argument("--ours-python", default=venv_python(".venv") if os.path.exists(venv_python(".venv"))
                    else sys.executable)
    ap.add_argument("--peers-python", default=venv_python(".venv-peers"))
    ap.add_argument("--pause", type=float, default=0.2, help="seconds of quiet between two runtimes")
    ap.add_argument("--max-foreign", type=float, default=0.05,
                    help="a run during which other processes took more of the CPU than this share is repeated")
    ap.add_argument("--retries", type=int, default=3, help="repeats of a disturbed run (the last one counts)")
    ap.add_argument("--quiet-timeout", type=float, default=120.0,
                    help="seconds to wait for a quiet machine before a repeat")
    ap.add_argument("--out", default="", help="also write the JSON to this file")
    a = ap.parse_args()
    if a.rounds < 1 or a.new_tokens < 2:
        ap.error("--rounds must be >= 1 and --new-tokens >= 2")
    variants = [v.strip() for v in a.ours.split(",") if v.strip()]
    peers = [p.strip() for p in a.peers.split(",") if p.strip()]
    for p in peers:
        if p not in PEERS:
            ap.error(f"unknown peer {p!r}; known: {', '.join(PEERS)}")
    eagle = a.eagle.split(",")
    if len(eagle) not in (3, 4):
        ap.error("--eagle takes top_k,step,tree[,threshold]")
    top_k, step, tree = (int(x) for x in eagle[:3])
    threshold = float(eagle[3]) if len(eagle) == 4 else 0.0
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    result: Dict[str, Any] = {"benchmark": "cpu_bench (issue 8)", "date": time.strftime("%Y-%m-%d"),
                              "recorded": time.strftime("%Y-%m-%dT%H:%M:%S"),   # orders runs of a day
                              "commit": git.stdout.strip() or None,
                              "command": " ".join(["python", "benchmarks/cpu_bench.py", *sys.argv[1:]]),
                              "machine": machine(), "settings": {
        "threads": a.threads, "rounds": a.rounds, "warmup_rounds": a.warmup, "new_tokens": a.new_tokens,
        "prefill_tokens": a.prefill_tokens, "greedy": True, "ignore_eos": True, "question": a.question,
        "eagle": {"drafting_top_k": top_k, "drafting_step": step, "verify_tree_size": tree,
                  "confidence_threshold": threshold}}}
    skipped: Dict[str, str] = {}
    workers: List[Worker] = []
    for v in variants:
        workers.append(Worker(f"ours[{v}]", "ours", a.ours_python, {
            "variant": v, "threads": a.threads, "model": a.model,
            "eagle_top_k": top_k, "eagle_step": step, "eagle_tree": tree, "eagle_threshold": threshold}))
    missing: Dict[str, str] = {}  # requested peers that cannot run: the run fails
    if peers and not os.path.exists(a.peers_python):
        missing.update({p: f"{a.peers_python} is missing: run bash scripts/bench_peers_setup.sh" for p in peers})
    folders = peer_folders(a, peers) if peers and not missing else {}
    for p in peers:
        if p in missing:
            continue
        if p.startswith("ort-genai-") and p not in folders:
            missing[p] = folders.get("error", "no model folder")
            continue
        kind = "llama.cpp" if p.startswith("llama.cpp") else "ort-genai"
        workers.append(Worker(p, kind, a.peers_python, {
            "threads": a.threads, "gguf": folders.get("gguf"), "folder": folders.get(p),
            "flash_attn": p == "llama.cpp-flash-attn"}))
    # load one at a time (each load computes: graph optimisation, exports), the peers first:
    # a peer that cannot run ends the benchmark before ours spend minutes loading
    for w in sorted(workers, key=lambda w: w.kind == "ours"):
        if missing:
            break
        log(f"loading {w.name}")
        r = w.call({"cmd": "load", "spec": w.spec})
        if r.get("ok"):
            w.status, w.info = "ok", r["info"]
        else:
            w.status = "skipped" if "skipped" in r else "failed"
            (skipped if w.kind == "ours" else missing)[w.name] = r.get("skipped") or r.get("error")
            w.close()
    if missing:
        fail_for_peers(result, missing, skipped, workers)
    active = [w for w in workers if w.status == "ok"]
    ours = [w for w in active if w.kind == "ours"]
    if not ours:
        result["error"] = "no variant of our runtime could be loaded"
        result["skipped"] = skipped
        print(json.dumps(result, indent=1))
        sys.exit(1)
    prompts = ours[0].call({"cmd": "prompts", "question": a.question, "prefill_tokens": a.prefill_tokens})
    chat_ids, prefill_ids = prompts["chat"]["ids"], prompts["prefill"]["ids"]
    result["settings"].update({"prompt_tokens": len(chat_ids), "prompt_ids": " ".join(map(str, chat_ids)),
                               "prefill_prompt_tokens": len(prefill_ids)})
    if len(chat_ids) != a.prompt_tokens or len(prefill_ids) != a.prefill_tokens:
        log(f"warning: prompts are {len(chat_ids)} / {len(prefill_ids)} tokens, "
            f"expected {a.prompt_tokens} / {a.prefill_tokens}")
    result["machine"]["others_cpu_share_at_start"] = round(wait_quiet(a.max_foreign, a.quiet_timeout), 3)
    job = {"cmd": "round", "chat": prompts["chat"], "prefill": prompts["prefill"], "new_tokens": a.new_tokens}
    for r in range(a.warmup + a.rounds):
        order = active[r % len(active):] + active[:r % len(active)]
        for w in order:
            if w.status != "ok":
                continue
            for attempt in range(a.retries + 1):  # a round another process disturbed is run again
                res = measured_call(w, job)
                if not res.get("ok") or res["foreign_cpu_share"] <= a.max_foreign or attempt == a.retries:
                    break
                log(f"{w.name}: other processes took {res['foreign_cpu_share']:.0%} of the CPU; "
                    "waiting for a quiet machine, then again")
                w.disturbed += 1
                wait_quiet(a.max_foreign, a.quiet_timeout)
            if not res.get("ok"):
                w.status = "failed"
                (skipped if w.kind == "ours" else missing)[w.name] = f"round {r}: {res.get('error')}"
                log(f"{w.name} failed: {res.get('error')}")
                continue
            if r >= a.warmup:
                w.rounds.append(res)
            log(f"round {r - a.warmup + 1 if r >= a.warmup else 'warm-up'} {w.name}: "
                f"ttft {res['ttft_s']:.4f} s, decode {res['decode_tok_s']:.1f} tok/s, "
                f"prefill {res['prefill_tok_s']:.1f} tok/s (others {res['foreign_cpu_share']:.0%})")
            time.sleep(a.pause)
    for w in workers:
        w.close()
    measured = [w for w in workers if w.status == "ok" and w.rounds]
    by_name = {w.name: w for w in measured}
    reference = by_name.get("ours[none]")
    runtimes: Dict[str, Any] = {}
    for w in measured:
        w.metrics = {"decode_tok_s": summary([r["decode_tok_s"] for r in w.rounds], 1),
                     "prefill_tok_s": summary([r["prefill_tok_s"] for r in w.rounds], 1),
                     "ttft_s": summary([r["ttft_s"] for r in w.rounds], 4)}
        entry = {"metrics": w.metrics, "rounds": len(w.rounds), "agreement": agreement(w, by_name, reference),
                 "runs_repeated_for_foreign_load": w.disturbed,
                 "foreign_cpu_share_max": round(max(r["foreign_cpu_share"] for r in w.rounds), 3), **w.info}
        if "eagle" in w.rounds[0]:
            acc = [r["eagle"]["mean_acceptance_length"] for r in w.rounds]
            entry["eagle_mean_acceptance_length"] = round(statistics.median(acc), 3)
        runtimes[w.name] = entry
    result["runtimes"] = runtimes
    result["skipped"] = skipped
    result["ratios"] = ratios(measured, a.eagle_goal)
    result["agreement_problems"] = [n for n, e in runtimes.items()
                                    if e["agreement"].get("expected_identical") and not e["agreement"].get("agrees")]
    result["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    if missing:  # a peer died mid-run: the figures lack it
        fail_for_peers(result, missing, skipped, workers)
    text = json.dumps(result, indent=1)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
