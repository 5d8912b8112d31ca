"""Serialized TensorRT engines in the engine folder: built at configure, rebuilt when stale.

Layout (beside the ONNX graphs of engine_dir.py)::

    trt/<graph>.plan       the engine of <graph>.onnx (build.build_engine); the
                           EAGLE draft's are trt/drafts/<draft export>/draft(_fc).plan
    trt/manifest.json      one entry per plan: what it was built from and for
    trt/timing.cache       full TensorRT's timing cache, shared by the builds

An entry records the TensorRT module and version, the GPU (name and compute
capability; for a TensorRT-RTX build on a machine with no GPU, the target
capability), the precision asked for and the one applied, the optimization
profiles' shapes, and the engine folder's source hash, export format and graph name.
A plan is rebuilt when any of those differ from what is wanted now, when the plan
file is missing or has another size, or when the entry is unreadable; the log says
which of them changed.

``tensorrt_availability`` is what ``backend: auto`` asks: full TensorRT importable and
a CUDA GPU present (TensorRT-RTX, which CI builds with, is not used to run).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ...errors import BackendUnavailable, ModelLoadError
from .build import (Profile, build_engine, decoder_profiles, draft_fc_profiles, draft_profiles,
                    import_tensorrt, is_rtx, vision_profiles, write_whole)

SUBDIR = "trt"
MANIFEST = "manifest.json"
#: Precision of the engines the runtime builds (full TensorRT; RTX keeps the graph's dtypes).
DEFAULT_PRECISION = "fp16"
#: Entry fields whose change makes a plan stale, in the order the log names them.
KEY_FIELDS = ("trt", "version", "gpu", "compute_capability", "precision", "profiles", "source_hash",
              "format", "graph")


def tensorrt_availability() -> Tuple[bool, str]:
    """Whether TensorRT can run here, and what was found or why not.

    (True, what was found) when full TensorRT imports and a CUDA GPU is
    present; else (False, every reason it cannot run).
    """
    from .cuda_rt import Device, gpu_count

    reasons: List[str] = []
    trt = None
    try:
        trt = import_tensorrt(prefer=("tensorrt",))
    except BackendUnavailable as exc:
        reasons.append(str(exc))
        try:
            rtx = import_tensorrt(prefer=("tensorrt_rtx_bindings",))
            reasons.append(f"({rtx.__name__} {getattr(rtx, '__version__', '?')} is installed: it builds "
                           "engines, the runtime needs full TensorRT)")
        except BackendUnavailable:
            pass
    n, why = gpu_count()
    if not n:
        reasons.append(f"no CUDA GPU: {why}")
    if reasons:
        return False, "; ".join(reasons)
    dev = Device.get(0)
    return True, (f"TensorRT {getattr(trt, '__version__', '?')} and {dev.name} "
                  f"(compute capability {dev.capability[0]}.{dev.capability[1]})")


def build_target(trt: Any) -> Dict[str, str]:
    """The GPU an engine is built for: the one present, or TensorRT-RTX's named target."""
    from .cuda_rt import Device, gpu_count

    n, why = gpu_count()
    if n:
        dev = Device.get(0)
        return {"gpu": dev.name, "compute_capability": f"{dev.capability[0]}.{dev.capability[1]}"}
    if is_rtx(trt):
        cc = os.environ.get("EDGELLM_TRT_COMPUTE_CAPABILITY", "SM86").upper()
        return {"gpu": "none (TensorRT-RTX build for a named target)", "compute_capability": cc}
    raise BackendUnavailable(f"{trt.__name__} needs a CUDA GPU to build engines: {why}")


def _normalise(profiles: Sequence[Profile]) -> List[Dict[str, List[List[int]]]]:
    """Profiles as JSON gives them back (tuples -> lists), so entries compare equal."""
    return json.loads(json.dumps([{k: [list(s) for s in v] for k, v in p.items()} for p in profiles]))


def read_entries(folder: str) -> Dict[str, Dict[str, Any]]:
    try:
        with open(os.path.join(folder, SUBDIR, MANIFEST), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_entries(folder: str, entries: Mapping[str, Any]) -> None:
    write_whole(os.path.join(folder, SUBDIR, MANIFEST), json.dumps(entries, indent=1).encode("utf-8"))


def stale_reasons(entry: Optional[Mapping[str, Any]], wanted: Mapping[str, Any], plan_path: str) -> List[str]:
    """Why the plan must be (re)built; [] when it is current."""
    if not isinstance(entry, Mapping):
        return ["no engine built yet"]
    out = [f"{k}: {entry.get(k)!r} -> {wanted[k]!r}" if k != "profiles" else "profiles changed"
           for k in KEY_FIELDS if entry.get(k) != wanted[k]]
    if not os.path.isfile(plan_path):
        out.append(f"{plan_path} is missing")
    elif os.path.getsize(plan_path) != entry.get("size"):
        out.append(f"{plan_path} has {os.path.getsize(plan_path)} bytes, the entry says {entry.get('size')}")
    return out


def ensure_plan(folder: str, graph: str, profiles: Sequence[Profile], precision: str = DEFAULT_PRECISION,
                log: Callable[[str], object] = print, trt: Any = None,
                target: Optional[Mapping[str, str]] = None) -> Tuple[str, Dict[str, Any]]:
    """The plan of ``<folder>/<graph>.onnx`` for these profiles: reused when current, else built.

    Returns (plan path, its manifest entry). ``target`` overrides build_target (tests).
    """
    from ...contract import read_manifest

    trt = trt or import_tensorrt()
    folder_manifest = read_manifest(folder)
    if folder_manifest is None:
        raise ModelLoadError(f"{folder}: manifest.json is unreadable, cannot build TensorRT engines")
    target = dict(target or build_target(trt))
    wanted = {"trt": trt.__name__, "version": str(getattr(trt, "__version__", "?")),
              "gpu": target["gpu"], "compute_capability": target["compute_capability"],
              "precision": precision, "profiles": _normalise(profiles),
              "source_hash": folder_manifest.get("source_hash"), "format": folder_manifest.get("format"),
              "graph": graph}
    plan = os.path.join(folder, SUBDIR, graph + ".plan")
    entries = read_entries(folder)
    reasons = stale_reasons(entries.get(graph), wanted, plan)
    if not reasons:
        log(f"TensorRT engine {plan} is current ({wanted['trt']} {wanted['version']}, "
            f"{wanted['gpu']}, {precision})")
        return plan, entries[graph]
    log(f"building TensorRT engine {plan}: " + "; ".join(reasons))
    os.makedirs(os.path.join(folder, SUBDIR), exist_ok=True)
    cc = target["compute_capability"] if is_rtx(trt) and target["compute_capability"].startswith("SM") else ""
    info = build_engine(os.path.join(folder, graph + ".onnx"), plan, profiles, precision,
                        timing_cache=os.path.join(folder, SUBDIR, "timing.cache"), log=log,
                        compute_capability=cc, trt=trt)
    entry = {**wanted, "applied_precision": info["precision"], "size": info["size"],
             "build_seconds": info["seconds"]}
    entries = read_entries(folder)
    entries[graph] = entry
    _write_entries(folder, entries)
    return plan, entry


def ensure_decoder_plan(folder: str, graph: str, max_seq_len: int, max_chunk: int, max_lora_rank: int,
                        precision: str = DEFAULT_PRECISION, log: Callable[[str], object] = print,
                        trt: Any = None, target: Optional[Mapping[str, str]] = None) -> Tuple[str, Dict[str, Any]]:
    """ensure_plan for a decoder variant, its profiles sized from the runtime's limits."""
    from ...contract import read_manifest

    manifest = read_manifest(folder) or {}
    entry = manifest.get("graphs", {}).get(graph)
    if entry is None:
        raise ModelLoadError(f"{folder}: the manifest has no graph {graph!r}")
    rank = max_lora_rank if entry.get("lora_modules") else 0
    profiles = decoder_profiles(entry, manifest["model"], max_seq_len, max_chunk, rank)
    return ensure_plan(folder, graph, profiles, precision, log, trt, target)


def ensure_draft_plans(folder: str, draft_sub: str, draft_cfg: Any, max_seq_len: int, max_chunk: int,
                       precision: str = DEFAULT_PRECISION, log: Callable[[str], object] = print, trt: Any = None,
                       target: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Plans of an EAGLE draft exported under ``<folder>/<draft_sub>`` (engine.py's drafts/...).

    ``draft`` (the step: its KV cache holds ``max_seq_len`` rows, T up to ``max_chunk``) and,
    for EAGLE-3, ``fc`` (features -> hidden, T up to ``max_chunk``). The draft export folder's
    name carries the draft checkpoint's hash, so another draft is another plan.
    Returns {"draft": plan path, "fc": plan path (EAGLE-3 only)}.
    """
    out = {}
    graph = f"{draft_sub}/draft"
    out["draft"] = ensure_plan(folder, graph, draft_profiles(draft_cfg, max_seq_len, max_chunk),
                               precision, log, trt, target)[0]
    if draft_cfg.layout == "eagle3":
        out["fc"] = ensure_plan(folder, f"{draft_sub}/draft_fc", draft_fc_profiles(draft_cfg, max_chunk),
                                precision, log, trt, target)[0]
    return out


def ensure_vision_plan(folder: str, vision_cfg: Any, max_tiles: int, precision: str = DEFAULT_PRECISION,
                       log: Callable[[str], object] = print, trt: Any = None,
                       target: Optional[Mapping[str, str]] = None) -> str:
    """The plan of the folder's vision.onnx, for runs of 1 to ``max_tiles`` tiles."""
    return ensure_plan(folder, "vision", vision_profiles(vision_cfg, max_tiles), precision, log, trt, target)[0]
