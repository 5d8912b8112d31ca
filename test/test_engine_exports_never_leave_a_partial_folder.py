"""An export interrupted at any point leaves no engine folder, and its leftovers are removed
by the next export; two processes exporting one folder both get a complete one (issue 22, defect 5).

Real exports in real subprocesses, interrupted while they write: SIGINT
(KeyboardInterrupt unwinds, the staging folder and the lock file go), a
process leaving with ``os._exit`` as edgellm_node does at a signal's deadline
(staging.discard_owned removes both first), SIGKILL (nothing unwinds: the
staging folder stays, and the next export removes it because its writer's
lock is free).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from edgellm_ros.contract import MANIFEST, read_manifest
from edgellm_ros.runtime.engine_dir import ensure_engine
from edgellm_ros.runtime.staging import folder_lock
from edgellm_ros.synthetic.tiny_models import TINY_LLAMA, write_tiny_model

#: Big enough that writing its graphs takes a while on a busy 2-core machine.
MEDIUM = {**TINY_LLAMA, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 6,
          "vocab_size": 32000}
EXPORT = ("import sys\nfrom edgellm_ros.runtime.engine_dir import ensure_engine\n"
          "print(ensure_engine(sys.argv[1], sys.argv[2], log=lambda m: print(m, flush=True)), flush=True)\n")
#: What edgellm_node does at a signal's deadline: the export runs in a thread, the process
#: calls discard_owned and leaves with os._exit (ros/process.py _leave).
LEAVE = ("import os, sys, threading\n"
         "from edgellm_ros.runtime import staging\n"
         "from edgellm_ros.runtime.engine_dir import ensure_engine\n"
         "threading.Thread(target=ensure_engine, args=sys.argv[1:3], daemon=True).start()\n"
         "sys.stdin.readline()\n"
         "print('discarded', staging.discard_owned(), flush=True)\n"
         "os._exit(0)\n")


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
    assert os.listdir(tmp_path) == [], "no engine folder, staging folder or lock file"


def test_leaving_with_os_exit_mid_export_leaves_nothing(model, tmp_path):
    out = str(tmp_path / "engine")
    proc = subprocess.Popen([sys.executable, "-c", LEAVE, model, out], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_until_writing(proc, str(tmp_path))
    assert os.path.exists(out + ".lock")
    text = proc.communicate("leave\n", timeout=60)[0]
    assert proc.returncode == 0 and "discarded 2" in text, text   # the staging folder and the lock
    assert os.listdir(tmp_path) == [], "no engine folder, staging folder or lock file"


def test_folder_lock_excludes_and_its_last_holder_removes_the_file(tmp_path):
    """Threads take the lock in turn (each open is its own flock); the file is removed by
    every holder, so a waiter that wakes on a removed file must start over on the new one."""
    folder, counter = str(tmp_path / "engine"), tmp_path / "count"
    counter.write_text("0")
    inside = []

    def bump() -> None:
        for _ in range(15):
            with folder_lock(folder):
                inside.append(1)
                assert len(inside) == 1, "two holders at once"
                n = int(counter.read_text())
                time.sleep(0.001)
                counter.write_text(str(n + 1))
                inside.pop()

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert int(counter.read_text()) == 60
    assert not os.path.exists(folder + ".lock")


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
    assert not os.path.exists(out + ".lock")
