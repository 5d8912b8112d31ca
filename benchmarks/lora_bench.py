"""LoRA benchmark on the CPU: adapter switch latency and decode speed with/without.

    python benchmarks/lora_bench.py [--switches 1000] [--ros]

- switch latency, median and p99 over --switches switches alternating between
  "radiology" and "": (a) Engine.set_adapter (what the parameter callback
  calls), (b) the decoder's switch to the adapter's prebound IOBinding (all
  420 LoRA inputs bound once at configure) that the next request makes
  before it runs (decoder.set_adapter), and, with --ros, (c) from
  set_parameters on the real lifecycle node to the adapter being in effect;
- decode tokens/s of the plain graph, of the LoRA graph with "" (rank-1 zero
  slots), and with the adapter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from edgellm_ros.runtime.config import EngineConfig, GenerationRequest
from edgellm_ros.runtime.engine import Engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADAPTER = "radiology:" + os.path.join(ROOT, "adapters", "radiology")


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


def decode_tps(eng, runs=3):
    req = GenerationRequest(prompt="Describe what the robot sees.", max_new_tokens=64,
                            ignore_eos=True)
    return round(statistics.median(eng.generate(req).tokens_per_second for _ in range(runs)), 1)


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
    a = ap.parse_args()
    plain = Engine.load(EngineConfig(eagle_draft=""), log=lambda m: None)
    tps_plain = decode_tps(plain)
    plain.close()
    eng = Engine.load(EngineConfig(eagle_draft="", lora_adapters=(ADAPTER,)), log=lambda m: None)
    names = ["radiology", ""]
    out = {
        "engine_set_adapter": timed(lambda i: eng.set_adapter(names[i % 2]), a.switches),
        "decoder_select_adapter_binding": timed(
            lambda i: eng.decoder.set_adapter(names[i % 2]), a.switches),
        "decode_tokens_per_s_plain_graph": tps_plain,
    }
    eng.set_adapter("")
    out["decode_tokens_per_s_lora_graph_base"] = decode_tps(eng)
    eng.set_adapter("radiology")
    out["decode_tokens_per_s_radiology"] = decode_tps(eng)
    eng.close()
    if a.ros:
        out["ros_set_parameters_to_in_effect"] = ros_switch(a.switches)
    out["switches"] = a.switches
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
