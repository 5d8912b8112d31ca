"""What the TensorRT backend says on the machine the tests run on, whatever it has.

The expectations follow what is present (a CUDA GPU, full TensorRT), found
here once: without both, backend auto falls back to ONNX Runtime and says
why, an explicit tensorrt is refused with the reasons and ``edgellm
selftest`` names the missing GPU / TensorRT and exits 1; with both, they are
used. The CUDA kernels compile with NVRTC for Jetson Orin (sm_87) and the
H100 (sm_90) with or without a GPU. CI has neither GPU nor full TensorRT."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgellm_ros.backends.tensorrt import cuda_rt
from edgellm_ros.backends.tensorrt.build import import_tensorrt
from edgellm_ros.backends.tensorrt.cuda_kernels import KERNEL_NAMES, compile_kernels
from edgellm_ros.backends import resolve_backend
from edgellm_ros.errors import BackendError, BackendUnavailable, EdgeLLMError

GPUS, NO_GPU_WHY = cuda_rt.gpu_count()
try:
    import_tensorrt(prefer=("tensorrt",))
    NO_TRT_WHY = ""
except BackendUnavailable as exc:
    NO_TRT_WHY = str(exc)
TRT_RUNS = GPUS > 0 and not NO_TRT_WHY


def test_auto_picks_tensorrt_only_with_a_gpu_and_full_tensorrt_and_says_why():
    logs = []
    got = resolve_backend("auto", logs.append)
    assert got == ("tensorrt" if TRT_RUNS else "onnxruntime")
    assert len(logs) == 1 and logs[0].startswith(f"backend auto -> {got}: ")
    assert ("no CUDA GPU" in logs[0]) == (GPUS == 0), logs[0]
    assert (NO_TRT_WHY in logs[0]) if NO_TRT_WHY else "TensorRT" in logs[0], logs[0]
    assert resolve_backend("onnxruntime", logs.append) == "onnxruntime" and len(logs) == 1


@pytest.mark.skipif(TRT_RUNS, reason="this machine has a CUDA GPU and full TensorRT")
def test_explicit_tensorrt_is_refused_with_the_reasons():
    with pytest.raises(BackendUnavailable) as e:
        resolve_backend("tensorrt", lambda m: None)
    msg = str(e.value)
    assert "backend 'tensorrt' is unavailable" in msg
    if NO_TRT_WHY:
        assert "No module named 'tensorrt'" in msg or NO_TRT_WHY in msg
    if GPUS == 0:
        assert "no CUDA GPU" in msg and NO_GPU_WHY in msg


def test_engine_load_with_tensorrt_fails_before_loading_anything(tmp_path):
    from edgellm_ros.runtime.config import EngineConfig
    from edgellm_ros.runtime.engine import Engine
    with pytest.raises(BackendUnavailable if not TRT_RUNS else EdgeLLMError,
                       match="tensorrt" if not TRT_RUNS else "none.gguf"):
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


def test_gpu_count_gives_the_devices_or_the_reason():
    n, why = cuda_rt.gpu_count()
    assert n == GPUS >= 0
    if n == 0:
        assert why and ("libcuda" in why or "no device" in why or "cuda-python" in why), why
    else:
        assert why == "" and cuda_rt.Device.get(0).name


@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])
def test_kernels_compile_with_nvrtc_for_orin_and_hopper(arch):
    cubin = compile_kernels(arch)
    assert cubin[:4] == b"\x7fELF"
    for name in KERNEL_NAMES:
        assert name.encode() in cubin


def test_a_kernel_compile_error_names_the_architecture_and_the_line():
    with pytest.raises(BackendError, match=r"sm_87.*error"):
        compile_kernels("sm_87", 'extern "C" __global__ void k() { undefined_thing(); }')


def test_selftest_reports_the_gpu_it_finds_and_exits_1_unless_every_check_passes():
    r = subprocess.run([sys.executable, "-m", "edgellm_ros.cli", "selftest"], capture_output=True,
                       text=True, timeout=300)
    lines = r.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    status = {c["check"]: (c["status"], c["detail"]) for c in report["checks"]}
    failed = [name for name, (st, _) in status.items() if st != "PASS"]
    assert r.returncode == (1 if failed else 0), r.stderr
    assert lines[-2].startswith(f"{'FAIL' if failed else 'PASS'}  selftest: "
                                f"{len(status) - len(failed)} of {len(status)} checks passed")
    assert status["cuda_python"][0] == "PASS"
    assert status["nvrtc"][0] == "PASS"
    gpu_checks = ("embedding_kernel", "compaction_kernel", "cuda_graph", "trt_decode", "lora_switch",
                  "draft_engines", "vision_engine")
    if GPUS == 0:
        assert status["gpu"][0] == "FAIL" and "no CUDA GPU found" in status["gpu"][1]
        assert "sm_87" in status["nvrtc"][1]
        for name in gpu_checks:
            assert status[name] == ("SKIP", "needs a CUDA GPU"), name
        assert any(line.startswith("FAIL  gpu ") for line in lines)
    else:
        assert status["gpu"][0] == "PASS" and cuda_rt.Device.get(0).name in status["gpu"][1]
        for name in gpu_checks:
            assert status[name] != ("SKIP", "needs a CUDA GPU"), name
    if NO_TRT_WHY:
        assert status["tensorrt"][0] == "FAIL" and "JetPack" in status["tensorrt"][1]
    else:
        assert status["tensorrt"][0] == "PASS"
    assert "Traceback" not in r.stderr
