"""LoRA benchmark on the CPU: adapter switch latency and decode speed with/without.

    python benchmarks/lora_bench.py [--switches 1000] [--ros]

- switch latency, median and p99 over --switches switches alternating between
  "radiology" and "": (a) Engine.set_adapter (what the parameter callback
  calls), (b) the decoder's switch to the adapter's prebound IOBinding (all
  420 LoRA inputs bound once at configure) that the next request makes
  before it runs (decoder.set_adapter), and, with --ros, (c) from
  set_parameters on the real lifecycle node to the adapter being in effect;
- decode tokens/s, alternating over --rounds rounds (medians): the plain graph
  alone (an engine without adapters and draft), with one-row steps and with
  the two-row steps an engine with a draft runs (docs/EAGLE.md); the default node's engine
  (the demo adapter loaded, no EAGLE draft, so its graph is decoder_lora_<family>)
  with lora "", which runs the plain session over the same weights; the same
  engine forced onto its LoRA graph with "" (rank-1 zero slots, the cost the
  plain session removes); the LoRA graph with the adapter; a node's engine with
  the draft loaded too (eagle.draft "default": graph decoder_eagle3_lora_<family>)
  with lora "" and EAGLE off (the plain session, two-row steps); the features
  graph with EAGLE off (an engine with the draft and no adapters, forced onto it);
- resident memory: what the plain session adds to the default engine (its
  own ONNX Runtime session over the same weights file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import psutil
from cpu_bench import machine

from edgellm_ros.backends.onnxruntime import make_session
from edgellm_ros.runtime.config import EngineConfig, GenerationRequest
from edgellm_ros.runtime.engine import Engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADAPTER = "radiology:" + os.path.join(ROOT, "adapters", "radiology")


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def timed(fn, n):
    out = []
    for i in range(n):
        t = time.perf_counter_ns()
        fn(i)
        out.append((time.perf_counter_ns() - t) / 1e3)
    return {"median_us": round(statistics.median(out), 2), "p99_us": round(pct(out, 0.99), 2)}


def decode_tps(eng, plain=True):
    """Decode tokens/s of one greedy request; plain=False keeps the decoder on its main graph."""
    eng.decoder.prefer_plain = plain
    req = GenerationRequest(prompt="Describe what the robot sees.", max_new_tokens=64,
                            ignore_eos=True)
    return eng.generate(req).tokens_per_second


def ros_switch(n):
    import rclpy
    from rclpy.parameter import Parameter

    from edgellm_ros.ros.node import EdgeLLMNode
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = EdgeLLMNode(context=ctx, parameter_overrides=[
        Parameter("lora_adapters", Parameter.Type.STRING_ARRAY, [ADAPTER])])
    node.trigger_configure()
    names = ["radiology", ""]

    def switch(i):
        node.set_parameters([Parameter("lora", Parameter.Type.STRING, names[i % 2])])
        assert node._engine.adapter == names[i % 2]
    res = timed(switch, n)
    node.trigger_cleanup()
    node.destroy_node()
    rclpy.shutdown(context=ctx)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--switches", type=int, default=1000)
    ap.add_argument("--ros", action="store_true")
    ap.add_argument("--rounds", type=int, default=5, help="alternating decode rounds (medians)")
    a = ap.parse_args()
    plain = Engine.load(EngineConfig(eagle_draft=""), log=lambda m: None)
    feats = Engine.load(EngineConfig(eagle_draft="default"), log=lambda m: None)   # the draft, no adapters
    eng = Engine.load(EngineConfig(lora_adapters=(ADAPTER,)), log=lambda m: None)   # the default node's
    drafted = Engine.load(EngineConfig(lora_adapters=(ADAPTER,), eagle_draft="default"), log=lambda m: None)
    # what a second session over the plain graph adds (the one the decoder opened)
    before = rss_mib()
    extra = make_session(eng.decoder._plain_session._model_path)
    added = rss_mib() - before
    del extra
    names = ["radiology", ""]
    out = {
        "machine": machine(),
        "default_engine_graph": os.path.basename(eng.decoder.onnx_path),
        "plain_session": os.path.basename(eng.decoder._plain_session._model_path),
        "engine_with_draft_graph": os.path.basename(drafted.decoder.onnx_path),
        "engine_set_adapter": timed(lambda i: eng.set_adapter(names[i % 2]), a.switches),
        "decoder_select_adapter_binding": timed(
            lambda i: eng.decoder.set_adapter(names[i % 2]), a.switches),
    }
    eng.set_adapter("")

    def padded(step_rows):       # the plain engine with the two-row steps of an engine with a draft
        plain.decoder.set_row_padding(step_rows)
        return decode_tps(plain)

    rows = {"plain_graph": lambda: padded(False), "plain_graph_two_row_steps": lambda: padded(True),
            "default_engine_lora_off_eagle_off": lambda: decode_tps(eng),
            "default_engine_forced_on_its_lora_features_graph": lambda: decode_tps(eng, plain=False),
            "radiology": lambda: (eng.set_adapter("radiology"), decode_tps(eng), eng.set_adapter(""))[1],
            "engine_with_draft_lora_off_eagle_off": lambda: decode_tps(drafted),
            "features_graph_eagle_off": lambda: decode_tps(feats, plain=False)}
    tps: dict = {k: [] for k in rows}
    for r in range(a.rounds):
        order = list(rows)[r % len(rows):] + list(rows)[:r % len(rows)]
        for k in order:
            tps[k].append(rows[k]())
    med = {k: statistics.median(v) for k, v in tps.items()}
    out["decode_tokens_per_s"] = {k: round(v, 1) for k, v in med.items()}
    out["decode_over_plain_graph"] = {k: round(v / med["plain_graph"], 3) for k, v in med.items()}
    out["rss_mib_added_by_the_plain_session"] = round(added, 1)
    eng.decoder.prefer_plain = True
    plain.close()
    feats.close()
    drafted.close()
    eng.close()
    if a.ros:
        out["ros_set_parameters_to_in_effect"] = ros_switch(a.switches)
    out["switches"] = a.switches
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
