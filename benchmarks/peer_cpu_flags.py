"""The llama.cpp CMake flags for the instruction sets this machine can actually run (issue 23).

    python benchmarks/peer_cpu_flags.py            # prints the -DGGML_... flags on one line
    python benchmarks/peer_cpu_flags.py --json     # what each probe found

scripts/bench_peers_setup.sh builds llama-cpp-python with these flags instead
of GGML_NATIVE: a native build asks the compiler for everything the CPU
*reports*, and an Intel Xeon virtual machine that reports AMX but does not let
a process use it killed llama.cpp with SIGILL (docs/BENCHMARKS.md). Each of
ggml's x86 instruction-set options is turned on only when

1. /proc/cpuinfo lists every CPU flag the option compiles for, and
2. a small C program compiled with the option's compiler flags and executing
   one of its instructions exits 0 here (for AMX, after asking the kernel for
   the tile data state with arch_prctl(ARCH_REQ_XCOMP_PERM), as ggml does).

An option whose probe cannot be compiled (an old compiler) is off. Standard
library only: it runs before any venv exists. Not an x86-64 machine: no flags
(llama.cpp's defaults for that architecture, GGML_NATIVE off).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, Iterable, List, NamedTuple, Tuple

_HEAD = "#include <immintrin.h>\n#include <stdio.h>\n#include <string.h>\n"
_AMX_SETUP = """#include <sys/syscall.h>
#include <unistd.h>
static int amx_ready(void) {  /* ggml's ggml_amx_init: tile data needs the kernel's permission */
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
}
static void tiles(void) {  /* palette 1, tiles 0-2 of 16 rows x 64 bytes */
    unsigned char cfg[64];
    memset(cfg, 0, sizeof cfg);
    cfg[0] = 1;
    for (int t = 0; t < 3; t++) { cfg[16 + 2 * t] = 64; cfg[48 + t] = 16; }
    _tile_loadconfig(cfg);
}
"""


class Option(NamedTuple):
    """One ggml CMake option, the CPU flags it needs, its compiler flags and a probe body."""

    name: str
    cpuinfo: Tuple[str, ...]   # every one must be in /proc/cpuinfo's flags
    cflags: Tuple[str, ...]    # as ggml-cpu/CMakeLists.txt compiles for the option
    body: str                  # main()'s body; `v` is a volatile int the compiler cannot know


_AVX512 = ("-mavx512f", "-mavx512cd", "-mavx512vl", "-mavx512dq", "-mavx512bw")
#: ggml's options (llama-cpp-python 0.3.36's vendored ggml), least to most demanding.
OPTIONS: Tuple[Option, ...] = (
    Option("GGML_SSE42", ("sse4_2",), ("-msse4.2",), "return (int)_mm_crc32_u32(v, 7u) == 12345;"),
    Option("GGML_AVX", ("avx",), ("-mavx",),
           "__m256 a = _mm256_set1_ps((float)v); a = _mm256_add_ps(a, a); return _mm256_cvtss_f32(a) < 0;"),
    Option("GGML_AVX2", ("avx2",), ("-mavx2",),
           "__m256i a = _mm256_set1_epi32(v); a = _mm256_add_epi32(a, a);"
           " return _mm256_extract_epi32(a, 3) == 12345;"),
    Option("GGML_BMI2", ("bmi2",), ("-mbmi2",), "return (int)_pdep_u32((unsigned)v, 0xf0f0u) == 12345;"),
    Option("GGML_FMA", ("fma",), ("-mfma",),
           "__m256 a = _mm256_set1_ps((float)v); a = _mm256_fmadd_ps(a, a, a); return _mm256_cvtss_f32(a) < 0;"),
    Option("GGML_F16C", ("f16c",), ("-mf16c",),
           "__m128i h = _mm_set1_epi16((short)v); __m256 f = _mm256_cvtph_ps(h); return _mm256_cvtss_f32(f) < 0;"),
    Option("GGML_AVX_VNNI", ("avx_vnni",), ("-mavx2", "-mavxvnni"),
           "__m256i a = _mm256_set1_epi32(v); a = _mm256_dpbusd_avx_epi32(a, a, a);"
           " return _mm256_extract_epi32(a, 0) == 12345;"),
    Option("GGML_AVX512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"), _AVX512,
           "__m512i a = _mm512_set1_epi32(v); a = _mm512_add_epi8(a, a);"
           " return _mm512_reduce_add_epi32(a) == 12345;"),
    Option("GGML_AVX512_VBMI", ("avx512vbmi",), _AVX512 + ("-mavx512vbmi",),
           "__m512i a = _mm512_set1_epi32(v); a = _mm512_permutexvar_epi8(a, a);"
           " return _mm512_reduce_add_epi32(a) == 12345;"),
    Option("GGML_AVX512_VNNI", ("avx512_vnni",), _AVX512 + ("-mavx512vnni",),
           "__m512i a = _mm512_set1_epi32(v); a = _mm512_dpbusd_epi32(a, a, a);"
           " return _mm512_reduce_add_epi32(a) == 12345;"),
    Option("GGML_AVX512_BF16", ("avx512_bf16",), _AVX512 + ("-mavx512bf16",),
           "__m512 a = _mm512_set1_ps((float)v); __m256bh b = _mm512_cvtneps_pbh(a);"
           " return _mm256_extract_epi16((__m256i)b, 0) == 12345;"),
    Option("GGML_AMX_TILE", ("amx_tile",), ("-mamx-tile",),
           "if (!amx_ready()) return 3; tiles(); _tile_zero(0); _tile_release(); return v == 12345;"),
    Option("GGML_AMX_INT8", ("amx_tile", "amx_int8"), ("-mamx-tile", "-mamx-int8"),
           "if (!amx_ready()) return 3; tiles(); _tile_zero(0); _tile_zero(1); _tile_zero(2);"
           " _tile_dpbssd(0, 1, 2); _tile_release(); return v == 12345;"),
    Option("GGML_AMX_BF16", ("amx_tile", "amx_bf16"), ("-mamx-tile", "-mamx-bf16"),
           "if (!amx_ready()) return 3; tiles(); _tile_zero(0); _tile_zero(1); _tile_zero(2);"
           " _tile_dpbf16ps(0, 1, 2); _tile_release(); return v == 12345;"),
)
#: llama.cpp for the CPU only; the instruction sets come from the probes.
BASE_FLAGS = ("-DGGML_NATIVE=OFF", "-DGGML_CUDA=OFF", "-DGGML_VULKAN=OFF", "-DGGML_METAL=OFF", "-DGGML_HIP=OFF",
              "-DGGML_SYCL=OFF", "-DGGML_BLAS=OFF", "-DLLAMA_CURL=OFF")


def cpuinfo_flags(path: str = "/proc/cpuinfo") -> set:
    """The flags of the first processor in /proc/cpuinfo (empty where unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def run_probe(option: Option, cc: str, workdir: str) -> str:
    """'runs', or why not ('compile failed: ...', 'killed by signal N', 'exit N')."""
    src = os.path.join(workdir, option.name + ".c")
    exe = os.path.join(workdir, option.name)
    amx = option.name.startswith("GGML_AMX")
    with open(src, "w", encoding="ascii") as f:
        f.write(_HEAD + (_AMX_SETUP if amx else "")
                + "int main(void) {\n    volatile int v = 5;\n    " + option.body + "\n}\n")
    comp = subprocess.run([cc, "-O1", *option.cflags, src, "-o", exe], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if comp.returncode:
        return "compile failed: " + " ".join(comp.stdout.split())[:200]
    try:
        proc = subprocess.run([exe], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    except subprocess.TimeoutExpired:
        return "timed out"
    if proc.returncode < 0:
        return f"killed by signal {-proc.returncode}"
    if proc.returncode == 3 and amx:
        return "exit 3: the kernel refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM)"
    return "runs" if proc.returncode == 0 else f"exit {proc.returncode}"


def probe(flags: Iterable[str], cc: str) -> Dict[str, Dict[str, object]]:
    """Per option: the missing CPU flags, the run probe's outcome and whether it is on."""
    have = set(flags)
    out: Dict[str, Dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="edgellm_isa_") as tmp:
        for option in OPTIONS:
            missing = [f for f in option.cpuinfo if f not in have]
            outcome = "not run: /proc/cpuinfo lacks " + ",".join(missing) if missing else run_probe(option, cc, tmp)
            out[option.name] = {"on": outcome == "runs", "probe": outcome}
    return out


def cmake_flags(found: Dict[str, Dict[str, object]]) -> List[str]:
    """BASE_FLAGS and one -D<option>=ON|OFF per probed option."""
    return list(BASE_FLAGS) + [f"-D{name}={'ON' if r['on'] else 'OFF'}" for name, r in found.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print each probe's outcome as JSON")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"), help="the C compiler (default: $CC or cc)")
    a = ap.parse_args()
    if platform.machine().lower() not in ("x86_64", "amd64"):
        found: Dict[str, Dict[str, object]] = {}
    elif shutil.which(a.cc) is None:
        sys.exit(f"peer_cpu_flags: the C compiler {a.cc!r} is not on PATH")
    else:
        found = probe(cpuinfo_flags(), a.cc)
    flags = cmake_flags(found) if found else list(BASE_FLAGS)
    if a.json:
        print(json.dumps({"machine": platform.machine(), "options": found, "cmake_args": " ".join(flags)}, indent=1))
    else:
        print(" ".join(flags))


if __name__ == "__main__":
    main()
