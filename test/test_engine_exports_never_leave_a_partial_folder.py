"""An export interrupted at any point leaves no engine folder, and its leftovers are removed
by the next export; two processes exporting one folder both get a complete one (issue 22, defect 5).

Real exports in real subprocesses, interrupted while they write: SIGINT
(KeyboardInterrupt unwinds, the staging folder goes), SIGKILL (nothing
unwinds: the staging folder stays, and the next export removes it because
its writer's lock is free).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from edgellm_ros.contract import MANIFEST, read_manifest
from edgellm_ros.runtime.engine_dir import ensure_engine
from edgellm_ros.synthetic.tiny_models import TINY_LLAMA, write_tiny_model

#: Big enough that writing its graphs takes a while on a busy 2-core machine.
MEDIUM = {**TINY_LLAMA, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 6,
          "vocab_size": 32000}
EXPORT = ("import sys\nfrom edgellm_ros.runtime.engine_dir import ensure_engine\n"
          "print(ensure_engine(sys.argv[1], sys.argv[2], log=lambda m: print(m, flush=True)), flush=True)\n")


@pytest.fixture(scope="module")
def model(tmp_path_factory, default_engine_dir):
    return write_tiny_model(str(tmp_path_factory.mktemp("medium") / "model"), MEDIUM,
                            tokenizer_from=default_engine_dir)


def _export(model: str, out: str) -> "subprocess.Popen[str]":
    return subprocess.Popen([sys.executable, "-c", EXPORT, model, out], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _staging(parent: str):
    return [n for n in os.listdir(parent) if n.startswith((".export-", ".old-"))]


def _wait_until_writing(proc, parent: str, timeout: float = 120.0) -> str:
    """The staging folder once the export has written a graph into it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the export ended before it could be interrupted: {proc.stdout.read()}"
        for name in _staging(parent):
            try:
                if any(f.endswith(".onnx") or f.endswith(".data") for f in os.listdir(os.path.join(parent, name))):
                    return name
            except FileNotFoundError:
                pass
        time.sleep(0.01)
    raise AssertionError("the export never started writing")


def test_sigint_mid_export_leaves_nothing(model, tmp_path):
    out = str(tmp_path / "engine")
    proc = _export(model, out)
    _wait_until_writing(proc, str(tmp_path))
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0 and "KeyboardInterrupt" in text, text
    assert not os.path.exists(out) and _staging(str(tmp_path)) == []


def test_sigkill_leftovers_are_removed_by_the_next_export(model, tmp_path):
    out = str(tmp_path / "engine")
    proc = _export(model, out)
    left = _wait_until_writing(proc, str(tmp_path))
    proc.kill()
    proc.wait(timeout=30)
    assert not os.path.exists(out) and left in _staging(str(tmp_path)), "a SIGKILLed export leaves its staging folder"
    assert ensure_engine(model, out, log=lambda m: None) == out
    assert read_manifest(out) is not None and _staging(str(tmp_path)) == []


def test_two_processes_exporting_one_folder_both_get_it_whole(model, tmp_path):
    out = str(tmp_path / "engine")
    first, second = _export(model, out), _export(model, out)
    texts = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], texts
    assert sum("engine written" in t for t in texts) == 1, texts   # one exported, the other waited
    assert any("exported by another process" in t for t in texts), texts
    manifest = read_manifest(out)
    assert manifest is not None and all(os.path.exists(os.path.join(out, g["file"]))
                                        for g in manifest["graphs"].values())
    assert os.path.exists(os.path.join(out, MANIFEST)) and _staging(str(tmp_path)) == []
