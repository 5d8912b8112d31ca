"""LoRA adapters in PEFT format, preloaded once and switched by rebinding.

An adapter folder holds ``adapter_config.json`` (r, lora_alpha, target_modules,
use_rslora, optional layers_to_transform) and ``adapter_model.safetensors``
(``...layers.{i}.self_attn.q_proj.lora_A.weight`` [r, in] and ``lora_B``
[out, r]). We keep per module the graph's inputs directly:
``a = lora_A^T`` [in, r] and ``b = scale * lora_B^T`` [r, out], with
scale = alpha / r (alpha / sqrt(r) with rsLoRA). Modules an adapter does not
touch bind shared rank-1 zero tensors, which add exactly zero.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import numpy as np

from ..contract import module_shapes
from ..errors import ModelLoadError, UnknownAdapter
from ..loaders.files import safetensors_header
from ..loaders.jsonfile import read_json_object
from ..models.spec import PROJECTIONS, ModelConfig

_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.lora_([AB])(?:\.\w+)?\.weight$")


@dataclass
class LoraAdapter:
    """One adapter: graph-ready (a [in, r], b [r, out]) per (layer, module)."""

    name: str
    path: str
    rank: int
    weights: Dict[Tuple[int, str], Tuple[np.ndarray, np.ndarray]]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.weights.values())


#: Largest |scale| (alpha / r, or alpha / sqrt(r) with rsLoRA) an adapter may have;
#: real adapters use 0.5 to 16, a larger one is a typo or a corrupt file.
MAX_LORA_SCALE = 1e4
#: Largest adapter_config.json read.
MAX_ADAPTER_CONFIG_BYTES = 1 << 20


def adapter_scale(name: str, path: str, conf: Dict[str, Any], max_rank: int) -> Tuple[int, float]:
    """(rank, scale) of an adapter_config.json, each field checked; ModelLoadError names the field."""
    where = f"adapter {name!r}: {path}"
    r = conf.get("r")
    if type(r) is not int or not 1 <= r <= max_rank:
        raise ModelLoadError(f"{where}: field r = {r!r} is not an integer in [1, max_lora_rank={max_rank}]")
    alpha = conf.get("lora_alpha", r)
    if type(alpha) not in (int, float) or not math.isfinite(alpha):
        raise ModelLoadError(f"{where}: field lora_alpha = {alpha!r} must be a finite number")
    rslora = conf.get("use_rslora", False)
    if type(rslora) is not bool:
        raise ModelLoadError(f"{where}: field use_rslora = {rslora!r} must be true or false")
    scale = alpha / math.sqrt(r) if rslora else alpha / r
    if not abs(scale) <= MAX_LORA_SCALE:
        raise ModelLoadError(f"{where}: field lora_alpha = {alpha!r} gives scale {scale:g} "
                             f"(r={r}{', rsLoRA' if rslora else ''}); |scale| must be at most {MAX_LORA_SCALE:g}")
    return r, scale


def _finite(where: str, what: str, arr: np.ndarray) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ModelLoadError(f"{where}: {what} holds {int(bad.sum())} non-finite value(s), "
                             f"the first {float(arr[at])!r} at {at}")


def load_adapter(name: str, path: str, cfg: ModelConfig, max_rank: int,
                 modules: Sequence[str] = PROJECTIONS) -> LoraAdapter:
    """Read and validate one PEFT folder against the model and the graph's slots.

    Every field and value is checked (rank, a finite alpha and scale, finite
    tensors whose shapes match the model) before the adapter is used; a
    ModelLoadError names the adapter, the file, the field and the value.
    """
    from safetensors.numpy import load_file

    conf_path = os.path.join(path, "adapter_config.json")
    st_path = os.path.join(path, "adapter_model.safetensors")
    for p in (conf_path, st_path):
        if not os.path.lexists(p):
            raise ModelLoadError(f"adapter {name!r}: {p} is missing")
    try:
        conf = read_json_object(conf_path, max_bytes=MAX_ADAPTER_CONFIG_BYTES)
    except ModelLoadError as exc:
        raise ModelLoadError(f"adapter {name!r}: {exc}") from exc
    r, scale = adapter_scale(name, conf_path, conf, max_rank)
    try:
        safetensors_header(st_path, "adapter weights")   # regular, offsets match the size
        raw = load_file(st_path)
    except Exception as exc:
        raise ModelLoadError(f"adapter {name!r}: {st_path} is unreadable ({exc})") from exc
    pairs: Dict[Tuple[int, str], Dict[str, np.ndarray]] = {}
    for key, arr in raw.items():
        m = _KEY.search(key)
        if m is None:
            raise ModelLoadError(f"adapter {name!r}: {st_path}: tensor {key!r} is not a LoRA A/B weight")
        layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ModelLoadError(f"adapter {name!r}: {st_path}: tensor {key!r} has dtype {arr.dtype}, "
                                 "not a float type")
        pairs.setdefault((layer, module), {})[ab] = np.asarray(arr, dtype=np.float32)
    shapes = module_shapes(cfg)
    weights: Dict[Tuple[int, str], Tuple[np.ndarray, np.ndarray]] = {}
    for (layer, module), ab in sorted(pairs.items()):
        where = f"adapter {name!r}: {st_path}: layers.{layer}.{module}"
        if module not in modules:
            raise ModelLoadError(f"{where}: the graph has no LoRA slot for {module} "
                                 f"(exported modules: {', '.join(modules)})")
        if not 0 <= layer < cfg.num_layers:
            raise ModelLoadError(f"{where}: the model has {cfg.num_layers} layers")
        if set(ab) != {"A", "B"}:
            raise ModelLoadError(f"{where}: lora_A and lora_B must both be present")
        n_in, n_out = shapes[module]
        a, b = ab["A"], ab["B"]
        if a.shape != (r, n_in) or b.shape != (n_out, r):
            raise ModelLoadError(
                f"{where}: shapes A{tuple(a.shape)} B{tuple(b.shape)} do not match "
                f"A({r}, {n_in}) B({n_out}, {r})")
        _finite(where, "lora_A", a)
        _finite(where, "lora_B", b)
        with np.errstate(over="ignore"):
            scaled = (b * scale).T.astype(np.float32)
        _finite(where, f"lora_B x scale {scale:g}", scaled)
        weights[(layer, module)] = (np.ascontiguousarray(a.T), np.ascontiguousarray(scaled))
    if not weights:
        raise ModelLoadError(f"adapter {name!r}: {st_path} holds no LoRA weights")
    return LoraAdapter(name=name, path=path, rank=r, weights=weights)


class LoraRegistry:
    """Adapters loaded at configure, by name ("" is the base model)."""

    def __init__(self, adapters: Iterable[LoraAdapter] = ()):
        # names are unique and well-formed: EngineConfig checked lora_adapters
        self.adapters: Dict[str, LoraAdapter] = {ad.name: ad for ad in adapters}

    @property
    def names(self) -> List[str]:
        return sorted(self.adapters)

    def check(self, name: str) -> str:
        """Return name when it is "" or loaded; else UnknownAdapter listing the loaded ones.

        The one "is it loaded" check, made where a name enters the engine
        (Engine.set_adapter, Engine.generate).
        """
        if name != "" and name not in self.adapters:
            loaded = ", ".join(self.names) or "none"
            raise UnknownAdapter(f"unknown LoRA adapter {name!r}; loaded adapters: {loaded}")
        return name


def merged_weights(tensors: Dict[str, np.ndarray], adapter: LoraAdapter) -> Dict[str, np.ndarray]:
    """Base weights with W + scale * B @ A merged in (the test oracle)."""
    out = dict(tensors)
    for (layer, module), (a, b) in adapter.weights.items():
        group = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
        key = f"layers.{layer}.{group}.{module}.weight"
        out[key] = tensors[key] + (a @ b).T  # [out, in]
    return out
