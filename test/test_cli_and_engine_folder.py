"""`edgellm generate` streams an answer; `edgellm export` reuses a current engine folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgellm_ros.runtime.engine_dir import ensure_engine
from edgellm_ros.contract import MANIFEST, read_manifest
from edgellm_ros.errors import ModelLoadError
from edgellm_ros.synthetic.tiny_models import TINY_LLAMA, write_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "edgellm_ros.cli", *args], capture_output=True,
                          text=True, timeout=600, env=env)


def test_generate_streams_the_answer_and_prints_stats(default_engine_dir):
    # float32 INT4 compute: the GGUF's exact numbers, so the float path's answer (with int8
    # activations the first token is a near tie here: "The" 25.33 vs "L" 25.24 in float32)
    r = _cli("generate", "What is the capital of France?", "--max-new-tokens", "16",
             "--int4-compute", "float32")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    stats = json.loads(r.stderr.strip().splitlines()[-1])
    assert stats["finish_reason"] == "stop" and stats["generated_tokens"] == 8


def test_generate_reports_bad_input_without_a_traceback():
    r = _cli("generate", "hi", "--max-new-tokens", "0")
    assert r.returncode == 2
    assert "max_new_tokens" in r.stderr and "Traceback" not in r.stderr
    r = _cli("generate", "hi", "--model", "/no/such/file.gguf")
    assert r.returncode == 2 and "/no/such/file.gguf" in r.stderr


def test_export_writes_once_and_reuses_while_the_hash_matches(tmp_path, default_engine_dir):
    model = write_tiny_model(str(tmp_path / "m"), TINY_LLAMA, tokenizer_from=default_engine_dir)
    out = str(tmp_path / "engine")
    logs = []
    ensure_engine(model, out, log=logs.append)
    assert any("exporting" in m for m in logs)
    m1 = read_manifest(out)
    for f in ("decoder.onnx", "decoder_lora.onnx", "weights.data", "embeddings.npy",
              "tokenizer.json", MANIFEST):
        assert os.path.exists(os.path.join(out, f)), f
    logs.clear()
    ensure_engine(model, out, log=logs.append)
    assert any("is current" in m for m in logs) and not any("exporting" in m for m in logs)
    write_tiny_model(model, TINY_LLAMA, seed=1)  # new weights: stale
    logs.clear()
    ensure_engine(model, out, log=logs.append)
    assert any("exporting" in m for m in logs)
    assert read_manifest(out)["source_hash"] != m1["source_hash"]
    r = _cli("export", "--model", model, "--engine-dir", out)
    assert r.returncode == 0 and r.stdout.strip() == out and "is current" in r.stderr


def test_a_foreign_non_empty_engine_dir_is_not_overwritten(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(ModelLoadError, match="refusing"):
        ensure_engine("", str(tmp_path))
    assert (tmp_path / "mine.txt").read_text() == "precious"


@pytest.mark.parametrize("quantization,fused", [("none", False), ("int4", True)])
def test_a_corrupt_engine_graph_is_a_clear_load_error(tmp_path, default_engine_dir,
                                                      quantization, fused):
    from edgellm_ros.runtime.config import EngineConfig
    from edgellm_ros.runtime.engine import Engine
    from edgellm_ros.runtime.engine_dir import ensure_family, graph_name
    model = write_tiny_model(str(tmp_path / "m"), TINY_LLAMA, tokenizer_from=default_engine_dir)
    out = str(tmp_path / "engine")
    ensure_engine(model, out, log=lambda m: None)
    ensure_family(out, quantization, fused, log=lambda m: None)
    name = graph_name(False, False, quantization, fused) + ".onnx"
    with open(os.path.join(out, name), "r+b") as f:
        f.truncate(100)
    with pytest.raises(ModelLoadError, match=name):
        Engine.load(EngineConfig(model=model, engine_dir=out, quantization=quantization,
                                 fused_ops=fused), log=lambda m: None)


def test_a_change_of_the_exporting_code_makes_the_folder_stale(tmp_path, default_engine_dir,
                                                               monkeypatch):
    """A graph edit without an EXPORT_FORMAT bump must not meet an old folder (it once did)."""
    from edgellm_ros.runtime import engine_dir
    model = write_tiny_model(str(tmp_path / "m"), TINY_LLAMA, tokenizer_from=default_engine_dir)
    out = str(tmp_path / "engine")
    ensure_engine(model, out, log=lambda m: None)
    assert read_manifest(out)["exporter"] == engine_dir.exporter_digest()
    monkeypatch.setattr(engine_dir, "exporter_digest", lambda: "0123456789abcdef")
    logs = []
    ensure_engine(model, out, log=logs.append)
    assert any("exporting" in m for m in logs)
    assert read_manifest(out)["exporter"] == "0123456789abcdef"


def test_a_moved_model_still_gets_new_graph_families(tmp_path, default_engine_dir):
    """The manifest records where the model was at export; after a move (same files, same
    hash: the folder is current) a new family is exported from where it is now. It used to
    fail with "model path ... does not exist"."""
    import shutil

    from edgellm_ros.runtime.config import EngineConfig
    from edgellm_ros.runtime.engine import Engine
    old = write_tiny_model(str(tmp_path / "a" / "m"), TINY_LLAMA, tokenizer_from=default_engine_dir)
    out = str(tmp_path / "engine")
    ensure_engine(old, out, log=lambda m: None)
    new = str(tmp_path / "b" / "m")
    shutil.move(old, new)
    engine = Engine.load(EngineConfig(model=new, engine_dir=out, quantization="int4", fused_ops=True,
                                      max_seq_len=64, prefill_chunk=32), log=lambda m: None)
    engine.close()
    assert "decoder_int4_fused" in read_manifest(out)["graphs"]
