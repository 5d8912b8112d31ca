"""The EAGLE draft's and the vision encoder's TensorRT plans in the engine folder: built from
draft.onnx / draft_fc.onnx / vision.onnx with profiles sized from the runtime's limits, reused
when current, rebuilt exactly when what they depend on changes.

Real builds with TensorRT-RTX on this machine's CPU (no GPU). Running the plans needs full
TensorRT and a GPU: test/gpu runs TrtDraft and the vision encoder with stand-in engines."""

from __future__ import annotations

import os

import pytest

from edgellm_ros.backends.tensorrt.build import import_tensorrt
from edgellm_ros.backends.tensorrt.engines import ensure_draft_plans, ensure_vision_plan, read_entries
from edgellm_ros.runtime.engine_dir import ensure_engine
from edgellm_ros.contract import read_manifest
from edgellm_ros.synthetic.tiny_models import TINY_LLAMA, write_random_draft, write_tiny_model

trt = import_tensorrt()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_engine_dir):
    from edgellm_ros.models.spec import ModelConfig
    d = tmp_path_factory.mktemp("draft_plans")
    model = write_tiny_model(str(d / "m"), TINY_LLAMA, tokenizer_from=default_engine_dir)
    folder = ensure_engine(model, str(d / "engine"), log=lambda m: None)
    return folder, ModelConfig.from_dict(read_manifest(folder)["model"]), d


def _export(tiny, layout, seed):
    from edgellm_ros.runtime.engine import export_draft_graphs, manifest_head
    from edgellm_ros.models.eagle import load_draft
    folder, mcfg, root = tiny
    ckpt = write_random_draft(str(root / f"{layout}-{seed}"), mcfg, layout, seed=seed, draft_vocab=64)
    cfg, weights = load_draft(ckpt, mcfg)
    sub = export_draft_graphs(cfg, weights, ckpt, folder, manifest_head(folder, mcfg))
    return cfg, os.path.relpath(sub, folder)


def test_eagle3_draft_plans_are_built_once_and_sized_from_the_limits(tiny):
    folder = tiny[0]
    cfg, sub = _export(tiny, "eagle3", 1)
    logs = []
    plans = ensure_draft_plans(folder, sub, cfg, 80, 6, log=logs.append)
    assert plans == {"draft": os.path.join(folder, "trt", sub, "draft.plan"),
                     "fc": os.path.join(folder, "trt", sub, "draft_fc.plan")}
    assert sum("building TensorRT engine" in m and "no engine built yet" in m for m in logs) == 2
    entries = read_entries(folder)
    draft, fc = entries[f"{sub}/draft"], entries[f"{sub}/draft_fc"]
    for e, path in ((draft, plans["draft"]), (fc, plans["fc"])):
        assert os.path.getsize(path) == e["size"] > 0 and e["trt"] == trt.__name__
    prof = draft["profiles"][0]
    assert prof["past_key"][2] == [1, 80, cfg.num_kv_heads, cfg.head_dim]
    assert prof["hidden_in"][2] == prof["inputs_embeds"][2] == [1, 6, cfg.hidden_size]
    assert prof["attention_mask"][2] == [1, 1, 6, 86] and prof["logits_index"][2] == [6]
    assert fc["profiles"][0]["features"][2] == [1, 6, cfg.feature_size]
    logs.clear()
    assert ensure_draft_plans(folder, sub, cfg, 80, 6, log=logs.append) == plans
    assert sum("is current" in m for m in logs) == 2 and not any("building" in m for m in logs)


def test_a_longer_cache_rebuilds_the_draft_step_only(tiny):
    folder = tiny[0]
    cfg, sub = _export(tiny, "eagle3", 1)
    ensure_draft_plans(folder, sub, cfg, 80, 6, log=lambda m: None)
    logs = []
    ensure_draft_plans(folder, sub, cfg, 96, 6, log=logs.append)
    assert [m for m in logs if "building" in m] == [
        f"building TensorRT engine {os.path.join(folder, 'trt', sub, 'draft.plan')}: profiles changed"]
    assert any("draft_fc.plan is current" in m for m in logs)
    logs.clear()
    ensure_draft_plans(folder, sub, cfg, 96, 8, log=logs.append)     # a wider step: both
    assert sum("profiles changed" in m for m in logs) == 2


def test_another_draft_gets_its_own_plans_and_eagle1_has_no_fc(tiny):
    folder = tiny[0]
    cfg1, sub1 = _export(tiny, "eagle3", 1)
    first = ensure_draft_plans(folder, sub1, cfg1, 80, 6, log=lambda m: None)
    cfg2, sub2 = _export(tiny, "eagle1", 2)
    assert sub2 != sub1
    logs = []
    plans = ensure_draft_plans(folder, sub2, cfg2, 80, 6, log=logs.append)
    assert set(plans) == {"draft"} and plans["draft"].startswith(os.path.join(folder, "trt", sub2))
    assert "hidden_in" in read_entries(folder)[f"{sub2}/draft"]["profiles"][0]
    assert os.path.isfile(first["draft"]) and os.path.isfile(first["fc"])
    logs.clear()
    ensure_draft_plans(folder, sub1, cfg1, 80, 6, log=logs.append)
    assert not any("building" in m for m in logs)


def test_vision_plan_is_built_once_and_rebuilt_for_more_tiles(tmp_path_factory, default_engine_dir):
    from edgellm_ros.loaders.vlm import read_vision_json
    from edgellm_ros.synthetic.tiny_vlm import write_tiny_vlm_once
    vlm = write_tiny_vlm_once(str(tmp_path_factory.getbasetemp()), default_engine_dir)
    folder = ensure_engine(vlm, str(tmp_path_factory.mktemp("vision_plans") / "engine"), log=lambda m: None)
    vcfg = read_vision_json(folder)[0]
    logs = []
    plan = ensure_vision_plan(folder, vcfg, 4, log=logs.append)
    entry = read_entries(folder)["vision"]
    assert plan == os.path.join(folder, "trt", "vision.plan") and os.path.getsize(plan) == entry["size"]
    assert entry["profiles"][0]["pixel_values"] == [[1, 3, 64, 64], [1, 3, 64, 64], [4, 3, 64, 64]]
    assert any("no engine built yet" in m for m in logs)
    logs.clear()
    ensure_vision_plan(folder, vcfg, 4, log=logs.append)
    assert any("is current" in m for m in logs) and not any("building" in m for m in logs)
    logs.clear()
    ensure_vision_plan(folder, vcfg, 8, log=logs.append)
    assert any("vision.plan: profiles changed" in m for m in logs)
    assert read_entries(folder)["vision"]["profiles"][0]["pixel_values"][2] == [8, 3, 64, 64]
    logs.clear()
    ensure_vision_plan(folder, vcfg, 8, precision="bf16", log=logs.append)
    assert any("precision: 'fp16' -> 'bf16'" in m for m in logs)
