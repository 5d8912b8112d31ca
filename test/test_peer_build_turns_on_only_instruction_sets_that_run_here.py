"""llama.cpp's build for the benchmark gets an instruction set only where it runs on this CPU (issue 23).

scripts/bench_peers_setup.sh used GGML_NATIVE, which compiles for everything
the CPU reports; a Xeon virtual machine that reported AMX without letting a
process use it killed llama.cpp with SIGILL. benchmarks/peer_cpu_flags.py must
not trust the reported flags alone: handed a CPU flag list that claims every
instruction set (as that Xeon claimed AMX), it must still turn on only what
really executes here, which on an honest machine is at most what
/proc/cpuinfo lists.
"""

from __future__ import annotations

import os
import shutil
import sys

from support import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import peer_cpu_flags as pcf  # noqa: E402


def test_flags_claimed_but_not_runnable_stay_off():
    assert shutil.which("cc"), "a C compiler is needed (llama-cpp-python compiles llama.cpp with it)"
    real = pcf.cpuinfo_flags()
    assert {"sse4_2", "avx2"} <= real, f"/proc/cpuinfo read wrongly: {sorted(real)[:20]}"
    claimed = {f for option in pcf.OPTIONS for f in option.cpuinfo}     # a CPU that claims everything
    found = pcf.probe(claimed, "cc")
    assert list(found) == [o.name for o in pcf.OPTIONS]
    wrongly_on = [o.name for o in pcf.OPTIONS if found[o.name]["on"] and not set(o.cpuinfo) <= real]
    assert not wrongly_on, f"turned on although this CPU cannot run them: {wrongly_on}: {found}"
    for name in ("GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C"):
        assert found[name] == {"on": True, "probe": "runs"}, (name, found[name])
    for o in pcf.OPTIONS:
        if not set(o.cpuinfo) <= real:   # the probe ran and said why not (SIGILL, AMX refused, ...)
            assert found[o.name]["probe"] != "runs" and not found[o.name]["probe"].startswith("not run"), found


def test_the_cmake_flags_say_native_off_and_every_option():
    found = pcf.probe(pcf.cpuinfo_flags(), "cc")
    flags = pcf.cmake_flags(found)
    assert "-DGGML_NATIVE=OFF" in flags and "-DGGML_NATIVE=ON" not in flags
    for o in pcf.OPTIONS:
        want = "ON" if found[o.name]["on"] else "OFF"
        assert f"-D{o.name}={want}" in flags
    assert "-DGGML_AMX_TILE=ON" not in flags or "amx_tile" in pcf.cpuinfo_flags()
