"""Files that never end or lie about their size are refused before a byte of data is read
(issue 22, defect 2).

A model.safetensors that is a symlink to /dev/zero made configure hash
forever; a FIFO blocks open() itself. Each case here must end within
seconds with CorruptModelError naming the file and what is wrong; each runs
in a thread so that the bug, were it back, fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import threading

import pytest

from edgellm_ros.errors import CorruptModelError, ModelLoadError
from edgellm_ros.loaders import default_model_path, load_model
from edgellm_ros.loaders.files import gguf_tensor_extents, safetensors_header
from edgellm_ros.runtime.engine_dir import ensure_engine, source_hash
from edgellm_ros.runtime.lora import load_adapter
from edgellm_ros.models.spec import ModelConfig
from edgellm_ros.contract import read_manifest
from edgellm_ros.synthetic import hostile

LIMIT_S = 30.0


def _within(fn, limit: float = LIMIT_S):
    """fn()'s exception (None if it returned); fails when fn is still running after ``limit``."""
    out = {}

    def run():
        try:
            fn()
        except BaseException as exc:   # noqa: BLE001
            out["exc"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), f"still running after {limit} s (reading a file that never ends?)"
    return out.get("exc")


def _engine(model: str, tmp_path) -> BaseException:
    return _within(lambda: ensure_engine(model, str(tmp_path / "engine"), log=lambda m: None))


def test_a_model_symlinked_to_dev_zero_is_refused(tmp_path):
    folder = hostile.dev_zero_model(str(tmp_path / "zero"))
    exc = _engine(folder, tmp_path)
    assert isinstance(exc, CorruptModelError), exc
    assert "model.safetensors" in str(exc) and "character device" in str(exc) and "/dev/zero" in str(exc)
    assert not os.path.exists(tmp_path / "engine")


def test_a_gguf_symlinked_to_dev_zero_is_refused(tmp_path):
    path = hostile.dev_zero_gguf(str(tmp_path / "zero.gguf"))
    exc = _engine(path, tmp_path)
    assert isinstance(exc, CorruptModelError) and "zero.gguf" in str(exc) and "/dev/zero" in str(exc), exc
    exc = _within(lambda: source_hash(path))
    assert isinstance(exc, CorruptModelError), exc


def test_a_fifo_is_refused_without_blocking(tmp_path):
    folder = hostile.fifo_model(str(tmp_path / "fifo"))
    exc = _engine(folder, tmp_path)
    assert isinstance(exc, CorruptModelError) and "a FIFO" in str(exc), exc


def test_a_truncated_safetensors_is_refused_by_its_header(tmp_path):
    folder = hostile.truncated_safetensors_model(str(tmp_path / "cut"))
    exc = _engine(folder, tmp_path)
    assert isinstance(exc, CorruptModelError), exc
    assert "model.safetensors" in str(exc) and "data_offsets" in str(exc) and "past the data buffer" in str(exc)


def test_a_header_length_larger_than_the_file_is_refused(tmp_path):
    folder = hostile.lying_header_model(str(tmp_path / "liar"))
    exc = _within(lambda: safetensors_header(os.path.join(folder, "model.safetensors")))
    assert isinstance(exc, CorruptModelError) and "header length 1099511627776" in str(exc), exc


def test_bytes_after_the_last_tensor_are_refused(tmp_path):
    folder = hostile.hf_config_model(str(tmp_path / "tail"))
    with open(os.path.join(folder, "model.safetensors"), "ab") as f:
        f.write(b"\0" * 4096)
    exc = _within(lambda: load_model(folder))
    assert isinstance(exc, CorruptModelError) and "does not match its header" in str(exc), exc


def test_a_truncated_gguf_names_the_first_tensor_past_the_end(tmp_path):
    path = hostile.truncated_gguf(str(tmp_path / "cut.gguf"), default_model_path())
    exc = _within(lambda: gguf_tensor_extents(path))
    assert isinstance(exc, CorruptModelError), exc
    assert "cut.gguf" in str(exc) and "token_embd.weight" in str(exc) and "past the end" in str(exc)


def test_the_default_gguf_passes_the_check_with_every_tensor():
    extents = gguf_tensor_extents(default_model_path())
    assert len(extents) == 272 and extents[0][0] == "token_embd.weight"
    assert max(start + n for _, start, n in extents) <= os.path.getsize(default_model_path())


def test_adapter_files_that_never_end_are_refused(tmp_path, default_engine_dir):
    cfg = ModelConfig.from_dict(read_manifest(default_engine_dir)["model"])
    folder = hostile.adapter_with_config(str(tmp_path / "zero"), cfg)
    st = os.path.join(folder, "adapter_model.safetensors")
    os.remove(st)
    os.symlink("/dev/zero", st)
    exc = _within(lambda: load_adapter("zero", folder, cfg, max_rank=8))
    assert isinstance(exc, ModelLoadError) and "'zero'" in str(exc) and "character device" in str(exc), exc
    conf = os.path.join(folder, "adapter_config.json")
    os.remove(conf)
    os.mkfifo(conf)
    exc = _within(lambda: load_adapter("fifo", folder, cfg, max_rank=8))
    assert isinstance(exc, ModelLoadError) and "a FIFO" in str(exc), exc


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_draft_files_that_never_end_are_refused(name, tmp_path, default_engine_dir):
    from edgellm_ros.models.eagle import load_draft
    cfg = ModelConfig.from_dict(read_manifest(default_engine_dir)["model"])
    folder = hostile.draft_with_config(str(tmp_path / "draft"), cfg)
    os.remove(os.path.join(folder, name))
    os.symlink("/dev/zero", os.path.join(folder, name))
    exc = _within(lambda: load_draft(folder, cfg))
    assert isinstance(exc, ModelLoadError) and name in str(exc) and "/dev/zero" in str(exc), exc
