"""The README's and docs/BENCHMARKS.md's peer tables are benchmarks/peer_table.py's output (issue 23).

They must show the newest cpu_bench run of each machine in benchmarks/results,
with the CPU named and each runtime's quality (top-1 agreement, mean KL
against float32) beside its speed. A results file added without regenerating
the tables (``python benchmarks/peer_table.py --write README.md`` and
``--all --write docs/BENCHMARKS.md``) fails here; so does a table whose
quality column was borrowed from another variant.
"""

from __future__ import annotations

import json
import os
import sys

from support import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import peer_table  # noqa: E402


def _marked(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    return doc.split(peer_table.START, 1)[1].split(peer_table.END, 1)[0].strip()


def test_the_documents_hold_the_generated_tables():
    newest = peer_table.runs("cpu_bench")[-1][1]
    cpu = peer_table.machine_key(peer_table.cpu_of(newest))
    assert _marked(os.path.join(REPO, "README.md")) == peer_table.table(cpu), \
        "README.md: run python benchmarks/peer_table.py --write README.md"
    every = "\n\n".join(peer_table.table(c) for c in peer_table.machines())
    assert _marked(os.path.join(REPO, "docs", "BENCHMARKS.md")) == every, \
        "docs/BENCHMARKS.md: run python benchmarks/peer_table.py --all --write docs/BENCHMARKS.md"
    assert f"**{peer_table.cpu_of(newest)}**" in every


def test_quality_comes_from_the_same_variant_or_says_not_measured(tmp_path):
    speed = {"benchmark": "cpu_bench", "date": "2099-01-01", "commit": "abc1234", "command": "python cpu_bench.py",
             "machine": {"cpu": "Test CPU 9000"}, "settings": {"threads": 2, "rounds": 3},
             "runtimes": {
                 "ours[int4]": {"metrics": {"decode_tok_s": {"median": 100.0}},
                                "engine_config": {"quantization": "int4", "fused_ops": True, "int4_compute": "int8"}},
                 "ours[int4-sym+eagle]": {"metrics": {"decode_tok_s": {"median": 150.0}},
                                          "engine_config": {"quantization": "int4-sym", "fused_ops": True,
                                                            "int4_compute": "int8"},
                                          "agreement": {"leading_identical_vs_base": 7, "ids": "1 2 3 4 5 6 7 8"}},
                 "ort-genai-int4": {"metrics": {"decode_tok_s": {"median": 120.0}},
                                    "versions": {"onnxruntime-genai": "0.18.0"}},
                 "llama.cpp": {"metrics": {"decode_tok_s": {"median": 90.0}}, "version": "0.3.36"}},
             "ratios": {"best_peer": {"decode_tok_s": {"runtime": "ort-genai-int4"}},
                        "ours[int4]": {"decode_tok_s": {"ours_over_best": 0.83}, "prefill_tok_s":
                                       {"ours_over_best": 1.1}, "ttft_s": {"ours_over_best": 0.9}}}}
    quality = {"benchmark": "quality_bench", "date": "2099-01-01", "machine": {"cpu": "Test CPU 9000"},
               "variants": {"int4/fused/int8": {"top1_agreement": 0.965, "mean_kl": 0.0029},
                            "int4-sym/fused/int8": {"top1_agreement": 0.784, "mean_kl": 0.126},
                            "peer:ort-genai-int4": {"top1_agreement": 0.624, "mean_kl": 0.349}}}
    for name, data in (("2099-01-01_cpu_bench_test.json", speed), ("2099-01-01_quality_bench_test.json", quality)):
        (tmp_path / name).write_text(json.dumps(data))
    rows = {ln.split(" | ")[0]: ln for ln in peer_table.table("Test CPU", str(tmp_path)).splitlines()
            if ln.startswith("| ")}
    assert rows["| ours, `int4` (default; the GGUF's own Q4_1 blocks)"].endswith(
        "| 100.0 | 0.83; 1.10; 0.90 | 0.965 | 0.0029 |")
    eagle = [v for k, v in rows.items() if "int4-sym+eagle" in k][0]
    assert eagle.endswith("| 0.784 | 0.1260 |") and "7 of 8 tokens" in eagle       # its base's quality
    assert rows["| onnxruntime-genai 0.18.0, int4 (its builder's re-quantization) (the best peer)"].endswith(
        "| 120.0 |  | 0.624 | 0.3490 |")
    assert rows["| llama.cpp (llama-cpp-python 0.3.36), the Q4_1 GGUF"].endswith(
        "| 90.0 |  | not measured | not measured |")
