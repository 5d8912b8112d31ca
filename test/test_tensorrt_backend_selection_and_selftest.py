"""What this machine (CI: no GPU, no full TensorRT) says about the TensorRT backend.

backend auto falls back to ONNX Runtime and says why, an explicit tensorrt is refused
with the reasons, ``edgellm selftest`` names the missing GPU and TensorRT and exits 1,
and the CUDA kernels compile with NVRTC for Jetson Orin (sm_87) and the H100 (sm_90)
without a GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgellm_ros.backends.tensorrt import cuda_rt
from edgellm_ros.backends.tensorrt.cuda_kernels import KERNEL_NAMES, compile_kernels
from edgellm_ros.backends import resolve_backend
from edgellm_ros.errors import BackendError, BackendUnavailable


def test_auto_picks_onnxruntime_and_says_why():
    logs = []
    assert resolve_backend("auto", logs.append) == "onnxruntime"
    assert len(logs) == 1 and logs[0].startswith("backend auto -> onnxruntime: ")
    assert "tensorrt" in logs[0] and "no CUDA GPU" in logs[0]
    assert resolve_backend("onnxruntime", logs.append) == "onnxruntime" and len(logs) == 1


def test_explicit_tensorrt_is_refused_with_the_reasons():
    with pytest.raises(BackendUnavailable) as e:
        resolve_backend("tensorrt", lambda m: None)
    msg = str(e.value)
    assert "backend 'tensorrt' is unavailable" in msg and "No module named 'tensorrt'" in msg
    assert "no CUDA GPU" in msg and "libcuda" in msg


def test_engine_load_with_tensorrt_fails_before_loading_anything(tmp_path):
    from edgellm_ros.runtime.config import EngineConfig
    from edgellm_ros.runtime.engine import Engine
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        Engine.load(EngineConfig(backend="tensorrt", model=str(tmp_path / "none.gguf")), log=lambda m: None)


def test_missing_cuda_python_is_a_reason_not_a_crash(monkeypatch):
    monkeypatch.setattr(cuda_rt, "_CU", None)
    for name in ("cuda.bindings.driver", "cuda.cuda"):
        monkeypatch.setitem(sys.modules, name, None)    # makes the import fail
    with pytest.raises(BackendUnavailable, match="cuda-python cannot be imported"):
        cuda_rt.import_cuda()
    n, why = cuda_rt.gpu_count()
    assert n == 0 and "cuda-python cannot be imported" in why
    logs = []
    assert resolve_backend("auto", logs.append) == "onnxruntime" and "cuda-python" in logs[0]


def test_no_driver_gives_zero_devices_and_the_reason():
    n, why = cuda_rt.gpu_count()
    assert n == 0 and "libcuda" in why


@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])
def test_kernels_compile_with_nvrtc_for_orin_and_hopper(arch):
    cubin = compile_kernels(arch)
    assert cubin[:4] == b"\x7fELF"
    for name in KERNEL_NAMES:
        assert name.encode() in cubin


def test_a_kernel_compile_error_names_the_architecture_and_the_line():
    with pytest.raises(BackendError, match=r"sm_87.*error"):
        compile_kernels("sm_87", 'extern "C" __global__ void k() { undefined_thing(); }')


def test_selftest_reports_the_missing_gpu_and_exits_1():
    r = subprocess.run([sys.executable, "-m", "edgellm_ros.cli", "selftest"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    status = {c["check"]: (c["status"], c["detail"]) for c in report["checks"]}
    assert status["cuda_python"][0] == "PASS"
    assert status["gpu"][0] == "FAIL" and "no CUDA GPU found" in status["gpu"][1]
    assert status["tensorrt"][0] == "FAIL" and "JetPack" in status["tensorrt"][1]
    assert status["nvrtc"][0] == "PASS" and "sm_87" in status["nvrtc"][1]
    for name in ("embedding_kernel", "compaction_kernel", "cuda_graph", "trt_decode", "lora_switch",
                 "draft_engines", "vision_engine"):
        assert status[name] == ("SKIP", "needs a CUDA GPU"), name
    assert any(line.startswith("FAIL  gpu ") for line in lines)
    assert lines[-2].startswith("FAIL  selftest: 2 of 14 checks passed")
    assert "Traceback" not in r.stderr
