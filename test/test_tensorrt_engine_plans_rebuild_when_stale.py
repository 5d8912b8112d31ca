"""TensorRT plans in the engine folder are built once and rebuilt exactly when stale.

Real builds with TensorRT-RTX on this machine's CPU (no GPU: the entry names the RTX
target capability). Running a plan needs full TensorRT and a GPU: not done here."""

from __future__ import annotations

import json
import os

import pytest

from edgellm_ros.backends.tensorrt.build import import_tensorrt
from edgellm_ros.backends.tensorrt.engines import ensure_decoder_plan, read_entries, stale_reasons
from edgellm_ros.runtime.engine_dir import ensure_engine
from edgellm_ros.synthetic.tiny_models import TINY_LLAMA, write_tiny_model

trt = import_tensorrt()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, default_engine_dir):
    d = tmp_path_factory.mktemp("plans")
    model = write_tiny_model(str(d / "m"), TINY_LLAMA, tokenizer_from=default_engine_dir)
    return ensure_engine(model, str(d / "engine"), log=lambda m: None)


def _plan(folder, logs, **kw):
    args = {"max_seq_len": 64, "max_chunk": 9, "max_lora_rank": 8, "log": logs.append, **kw}
    return ensure_decoder_plan(folder, args.pop("graph", "decoder_lora"), **args)


def test_plan_is_built_once_and_records_what_it_was_built_for(tiny_folder):
    logs = []
    plan, entry = _plan(tiny_folder, logs)
    assert plan == os.path.join(tiny_folder, "trt", "decoder_lora.plan") and os.path.getsize(plan) == entry["size"]
    assert any("building TensorRT engine" in m and "no engine built yet" in m for m in logs)
    assert entry["trt"] == trt.__name__ and entry["version"] == trt.__version__
    assert entry["compute_capability"] == os.environ.get("EDGELLM_TRT_COMPUTE_CAPABILITY", "SM86").upper()
    assert entry["gpu"].startswith("none") and entry["precision"] == "fp16"
    assert entry["applied_precision"] == "as-graph"      # RTX is strongly typed
    prof = entry["profiles"][0]
    assert prof["past_key.0"][2][1] == 64 and prof["inputs_embeds"][2][1] == 9
    assert prof["lora.0.q_proj.a"][2][1] == 8
    assert read_entries(tiny_folder)["decoder_lora"] == entry
    mtime = os.path.getmtime(plan)
    logs.clear()
    assert _plan(tiny_folder, logs)[1] == entry
    assert any("is current" in m for m in logs) and not any("building" in m for m in logs)
    assert os.path.getmtime(plan) == mtime


@pytest.mark.parametrize("change,reason", [
    ({"precision": "bf16"}, "precision: 'fp16' -> 'bf16'"),
    ({"max_seq_len": 96}, "profiles changed"),
    ({"max_lora_rank": 4}, "profiles changed"),
    ({"target": {"gpu": "Orin (nvgpu)", "compute_capability": "SM86"}}, "gpu: 'none"),
])
def test_a_changed_input_rebuilds_and_says_why(tiny_folder, change, reason):
    logs = []
    _plan(tiny_folder, logs)
    logs.clear()
    _, entry = _plan(tiny_folder, logs, **change)
    assert any("building TensorRT engine" in m and reason in m for m in logs), logs
    for k in ("precision",):
        if k in change:
            assert entry[k] == change[k]


def test_another_tensorrt_version_or_a_damaged_plan_rebuilds(tiny_folder):
    logs = []
    plan, entry = _plan(tiny_folder, logs)
    path = os.path.join(tiny_folder, "trt", "manifest.json")
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    entries["decoder_lora"]["version"] = "10.3.0"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    logs.clear()
    _plan(tiny_folder, logs)
    assert any("version: '10.3.0' -> " + repr(trt.__version__) in m for m in logs), logs
    with open(plan, "ab") as f:
        f.write(b"x")
    logs.clear()
    _plan(tiny_folder, logs)
    assert any("has " in m and "the entry says" in m for m in logs), logs
    os.remove(plan)
    logs.clear()
    _plan(tiny_folder, logs)
    assert any("is missing" in m for m in logs) and os.path.isfile(plan)
    with open(path, "w", encoding="utf-8") as f:
        f.write("{not json")
    logs.clear()
    _plan(tiny_folder, logs)
    assert any("no engine built yet" in m for m in logs)


def test_stale_reasons_is_empty_only_for_a_matching_entry(tmp_path):
    plan = tmp_path / "p.plan"
    plan.write_bytes(b"1234")
    wanted = {k: 1 for k in ("trt", "version", "gpu", "compute_capability", "precision", "profiles",
                             "source_hash", "format", "graph")}
    assert stale_reasons({**wanted, "size": 4}, wanted, str(plan)) == []
    assert stale_reasons({**wanted, "size": 4, "graph": 2}, wanted, str(plan)) == ["graph: 2 -> 1"]
    assert stale_reasons(None, wanted, str(plan)) == ["no engine built yet"]
