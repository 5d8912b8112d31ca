"""The engine folder: exported graphs, manifest, tokenizer and embeddings.

Layout::

    manifest.json        model config, graph I/O, dtype, source hash, versions
    decoder.onnx         the decoder graph (export/decoder.py)
    decoder_lora.onnx    the same with LoRA inputs on every projection
    decoder_eagle3.onnx, decoder_eagle3_lora.onnx
                         the same two whose hidden_states are EAGLE-3 features
                         (the outputs of manifest["feature_layers"] concatenated)
    weights.data         the weights those four graphs reference
    decoder*_int4[_fused].onnx, weights_int4[_fused].data, ...
                         other graph families (quantization x fused ops), the
                         same four variants each, exported when first needed
    decoder*[...]_v<digest8>.onnx, weights[...]_v<digest8>.data, vocab_<digest>.json
                         a family whose LM head keeps the token ids of
                         vocab_<digest>.json only (runtime/vocab.py)
    embeddings.npy       [V, H] float32 token embeddings (looked up by the runtime)
    tokenizer.json, tokenizer_config.json

The folder is rebuilt when its manifest is missing or unreadable, when the
source's hash differs, or when the export format changed; otherwise reused.
Exports go to a staging sibling folder that is renamed into place under a
lock (runtime/staging.py), so an interrupted or failed export never leaves a
half-written engine behind, and two processes sharing a cache export once.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import ModelLoadError
from ..contract import MANIFEST, decoder_io_names, read_manifest
from ..loaders.files import check_model_files, folder_files, open_regular, read_bounded
from ..models.eagle import default_target_layers
from ..models.spec import PROJECTIONS
from .staging import OWNER, commit, folder_lock, publish, remove_abandoned, staging_folder
from .vocab import VocabReduction

#: Bump when the folder layout changes. Changes of the exporting code are caught
#: by exporter_digest() as well, so a graph edit never meets a stale folder.
EXPORT_FORMAT = 8
#: Source files whose content decides the exported graphs (relative to the package).
EXPORTER_SOURCES = ("export/decoder.py", "export/draft.py", "export/graph.py", "export/vision.py", "models/quant.py",
                    "export/calibration.py", "export/layers.py", "export/lm_head.py", "export/projections.py",
                    "models/llama.py",
                    "loaders/gguf.py", "loaders/hf.py", "loaders/vlm.py", "runtime/engine_dir.py",
                    "contract.py")


def exporter_digest() -> str:
    """sha256 (16 hex digits) of the code that writes the graphs."""
    h = hashlib.sha256()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for rel in EXPORTER_SOURCES:
        with open(os.path.join(root, rel), "rb") as f:
            h.update(rel.encode() + b"\0" + f.read())
    return h.hexdigest()[:16]


def family_suffix(quantization: str = "none", fused: bool = False, vocab: str = "") -> str:
    """The graph family's file-name suffix: "" for the float plain-op family, else e.g. "_int4_fused".

    vocab: the digest of a vocabulary reduction (VocabReduction.digest), "_v" + its first
    8 digits; "" = the whole head.
    """
    return ("" if quantization == "none" else "_" + quantization.replace("-", "_")) + \
        ("_fused" if fused else "") + (f"_v{vocab[:8]}" if vocab else "")


def graph_name(lora: bool, eagle3: bool, quantization: str = "none", fused: bool = False,
               vocab: str = "") -> str:
    """File stem of the decoder variant."""
    return "decoder" + ("_eagle3" if eagle3 else "") + ("_lora" if lora else "") + \
        family_suffix(quantization, fused, vocab)


def source_hash(path: str) -> str:
    """sha256 of a model file, or of every file of a model folder (names included)."""
    h = hashlib.sha256()
    files = folder_files(path) if os.path.isdir(path) else [path]
    for fp in files:
        h.update(os.path.relpath(fp, os.path.dirname(path)).encode())
        with open_regular(fp) as f:   # a FIFO or /dev/zero would never end
            for block in read_bounded(f, os.fstat(f.fileno()).st_size):
                h.update(block)
    return h.hexdigest()


def default_engine_dir(source: str, digest: str) -> str:
    base = os.environ.get("EDGELLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgellm_ros")
    name = os.path.splitext(os.path.basename(source.rstrip("/")))[0]
    return os.path.join(base, "engines", f"{name}-{digest[:12]}")


def is_current(folder: str, digest: str, feature_layers: Optional[Sequence[int]] = None) -> bool:
    m = read_manifest(folder)
    if not m or m.get("source_hash") != digest or m.get("format") != EXPORT_FORMAT \
            or m.get("exporter") != exporter_digest():
        return False
    return feature_layers is None or list(m.get("feature_layers", [])) == list(feature_layers)


def load_tokenizer_for(weights: Any) -> Any:
    """The tokenizer that came with a loaded model (GGUF metadata or HF folder)."""
    from .tokenizer import Tokenizer

    kind, src = weights.tokenizer_source
    if kind == "gguf":
        return Tokenizer.from_gguf_metadata(src)
    if kind == "hf":
        return Tokenizer.from_hf_folder(src)
    raise ModelLoadError(f"{weights.source}: no tokenizer found")


def export_family(weights: Any, out_dir: str, layers: Sequence[int], quantization: str,
                  fused: bool, rope_rows: int = 0, vocab: Optional[VocabReduction] = None) -> Dict[str, Any]:
    """Write the four decoder variants (LoRA x EAGLE-3) of one family; their manifest entries.

    rope_rows: positions the fused graphs' rotary tables must cover (max_seq_len + EAGLE rows).
    vocab: the kept ids of a reduced LM head, written beside the graphs as its file_name.
    """
    # the exporter (and onnx) is imported only when something is exported
    from ..export.calibration import CALIBRATION_SHA256, calibration_ids, input_mean_squares
    from ..export.decoder import export_decoder
    from ..export.graph import WeightFile
    from ..export.layers import rope_table_rows
    from ..export.projections import Requantizer

    calibration: Dict[str, Any] = {}

    def calibrate() -> Dict[str, Any]:
        try:
            ids = calibration_ids(load_tokenizer_for(weights), weights.config.vocab_size)
        except ModelLoadError:   # no tokenizer: plain round to nearest
            return {}
        if not len(ids):
            return {}
        calibration.update(text_sha256=CALIBRATION_SHA256, tokens=len(ids))
        return input_mean_squares(weights, ids)

    requant = Requantizer(calibrate)
    graphs = {}
    digest = vocab.digest if vocab is not None else ""
    suffix = family_suffix(quantization, fused, digest)
    data = f"weights{suffix}.data"
    if vocab is not None:
        with open(os.path.join(out_dir, vocab.file_name), "w", encoding="utf-8") as f:
            f.write(vocab.canonical_json())
    wf = WeightFile(os.path.join(out_dir, data))
    try:
        for lora in (False, True):
            for eagle3 in (False, True):
                name = graph_name(lora, eagle3, quantization, fused, digest)
                mods = PROJECTIONS if lora else ()
                info: Dict[str, Any] = {}
                export_decoder(weights, out_dir, wf, name=name, lora_modules=mods,
                               feature_layers=layers if eagle3 else (),
                               quantization=quantization, fused=fused, info=info, requant=requant,
                               rope_rows=rope_rows, vocab=vocab.ids if vocab is not None else None)
                graphs[name] = {"file": f"{name}.onnx", "weights_file": data,
                                "dtype": "float32", "quantization": quantization, "fused": fused,
                                "weight_origins": info["weight_origins"],
                                "rope_rows": rope_table_rows(rope_rows) if fused else 0,
                                "lora_modules": list(mods),
                                "feature_layers": layers if eagle3 else [],
                                **decoder_io_names(weights.config.num_layers, mods,
                                                   info["head_rows"])}
                if vocab is not None:
                    graphs[name]["vocab_reduction"] = vocab.manifest_entry()
                if calibration:   # the activation-weighted INT4 scales came from this text
                    graphs[name]["calibration"] = dict(calibration)
    finally:
        wf.close()
    return graphs


def _load_source(source: str) -> Tuple[Any, Any, Any]:
    """(decoder weights, vision weights or None, processor config or None) of a model."""
    from ..loaders import load_model
    from ..loaders.vlm import is_vlm_folder, load_vlm

    if is_vlm_folder(source):
        return load_vlm(source)
    return load_model(source), None, None


def _family_missing(manifest: Dict[str, Any], quantization: str, fused: bool, rope_rows: int,
                    vocab: str = "") -> bool:
    entry = manifest.get("graphs", {}).get(graph_name(False, False, quantization, fused, vocab))
    return entry is None or (fused and int(entry.get("rope_rows", 0)) < rope_rows)


def ensure_family(folder: str, quantization: str, fused: bool,
                  log: Callable[[str], object] = print, rope_rows: int = 0,
                  source: str = "", vocab: Optional[VocabReduction] = None) -> Dict[str, Any]:
    """Add a graph family to a current engine folder when it lacks it; return the manifest.

    A fused family whose rotary tables cover fewer than ``rope_rows`` positions
    is exported again with enough rows. Files are written into a staging
    folder and moved in, the manifest last, under the folder's lock.
    source: where the model is now (ensure_engine checked its hash against the
    manifest); "" = the path the manifest recorded at export, which is gone
    once the model has moved. vocab: the family whose LM head keeps those ids
    (one family per set).
    """
    digest = vocab.digest if vocab is not None else ""
    manifest = read_manifest(folder)
    if manifest is None:
        raise ModelLoadError(f"{folder}: manifest.json is unreadable")
    if not _family_missing(manifest, quantization, fused, rope_rows, digest):
        return manifest
    with folder_lock(folder):
        manifest = read_manifest(folder)   # another process may have added it meanwhile
        if manifest is None:
            raise ModelLoadError(f"{folder}: manifest.json is unreadable")
        if not _family_missing(manifest, quantization, fused, rope_rows, digest):
            return manifest
        t0 = time.perf_counter()
        log(f"exporting the {quantization}{' fused' if fused else ''} decoder graphs"
            f"{f' with the {vocab.size}-token LM head of {vocab.source}' if vocab is not None else ''} into {folder}")
        weights = _load_source(source or manifest["source"])[0]
        with staging_folder(folder, "family") as tmp:
            graphs = export_family(weights, tmp, manifest["feature_layers"], quantization, fused, rope_rows,
                                   vocab)
            manifest["graphs"].update(graphs)
            part = os.path.join(tmp, MANIFEST)
            with open(part, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1)
            with commit():   # all moved, the manifest last, or none (a process leaving)
                for name in os.listdir(tmp):
                    if name not in (OWNER, MANIFEST):
                        os.replace(os.path.join(tmp, name), os.path.join(folder, name))
                os.replace(part, os.path.join(folder, MANIFEST))
            origins = graphs[graph_name(False, False, quantization, fused, digest)]["weight_origins"]
            log(f"{len(graphs)} graphs written in {time.perf_counter() - t0:.1f} s "
                f"(weights per graph: {origins or 'float32'})")
    return manifest


def check_feature_layers(layers: Sequence[int], num_layers: int, origin: str) -> None:
    """Raise ModelLoadError naming ``origin`` (the draft config) when a feature layer is not a layer."""
    if len(layers) != 3 or any(type(i) is not int or not 0 <= i < num_layers for i in layers):
        raise ModelLoadError(f"{origin or 'feature_layers'}: target_layer_ids = {list(layers)} must be three "
                             f"layer indices of the model's {num_layers} layers (0 to {num_layers - 1})")


def export_engine(source: str, folder: str, digest: str,
                  log: Callable[[str], object] = print,
                  feature_layers: Optional[Sequence[int]] = None,
                  layers_origin: str = "") -> Dict[str, Any]:
    """Load the model at ``source`` and write a complete engine folder.

    Everything is written into a staging sibling of ``folder`` and renamed
    into place once complete (runtime/staging.py); a failure or an
    interruption leaves nothing behind. Call with ``folder_lock(folder)`` held.
    """
    from ..loaders.vlm import save_vision_json

    t0 = time.perf_counter()
    log(f"exporting {source} -> {folder}")
    weights, vision, proc = _load_source(source)
    tokenizer = load_tokenizer_for(weights)
    layers = list(feature_layers if feature_layers is not None
                  else default_target_layers(weights.config.num_layers))
    check_feature_layers(layers, weights.config.num_layers, layers_origin)
    log(f"loaded weights in {time.perf_counter() - t0:.1f} s; writing ONNX")
    parent = os.path.dirname(os.path.abspath(folder))
    remove_abandoned(parent, "old")
    with staging_folder(parent, "export") as tmp:
        graphs = export_family(weights, tmp, layers, "none", False)
        if vision is not None:
            from ..export.graph import WeightFile
            from ..export.vision import export_vision, vision_io_names
            wf = WeightFile(os.path.join(tmp, "weights_vision.data"))
            try:
                export_vision(vision, tmp, wf)
            finally:
                wf.close()
            graphs["vision"] = {"file": "vision.onnx", "dtype": "float32", **vision_io_names()}
        if vision is not None:
            save_vision_json(tmp, vision.config, proc)
        np.save(os.path.join(tmp, "embeddings.npy"), weights.tensors["embed_tokens.weight"])
        if "lm_head.weight" in weights.tensors:  # untied: EAGLE-1 drafts read the base head
            np.save(os.path.join(tmp, "lm_head.npy"), weights.tensors["lm_head.weight"])
        tokenizer.save_hf_folder(tmp)
        manifest = {
            "format": EXPORT_FORMAT,
            "exporter": exporter_digest(),
            "source": source,
            "source_hash": digest,
            "model": weights.config.to_dict(),
            "graphs": graphs,
            "feature_layers": layers,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        publish(tmp, folder)
    log(f"engine written in {time.perf_counter() - t0:.1f} s")
    return manifest


def ensure_engine(model: str, engine_dir: str = "", log: Callable[[str], object] = print,
                  feature_layers: Optional[Sequence[int]] = None, layers_origin: str = "") -> str:
    """Return an up-to-date engine folder for ``model``, exporting when needed.

    The model's files are checked (regular, headers matching their sizes)
    before they are hashed. ``layers_origin`` names the file ``feature_layers``
    came from (an EAGLE draft's config.json) in errors.
    """
    from ..loaders import resolve_model_source

    source = resolve_model_source(model)
    check_model_files(source)   # regular files whose headers match their sizes, before any read
    digest = source_hash(source)
    folder = os.path.abspath(os.path.expanduser(engine_dir)) if engine_dir else \
        default_engine_dir(source, digest)
    if is_current(folder, digest, feature_layers):
        log(f"engine {folder} is current")
        return folder
    known = read_manifest(folder)
    if feature_layers is not None and known and known.get("source_hash") == digest:
        try:   # the model is known: check the draft's layers before loading it again
            num_layers = int(known["model"]["num_layers"])
        except (KeyError, TypeError, ValueError):
            num_layers = 0
        if num_layers:
            check_feature_layers(feature_layers, num_layers, layers_origin)
    with folder_lock(folder):   # a second process exporting the same folder waits here
        if is_current(folder, digest, feature_layers):
            log(f"engine {folder} is current (exported by another process)")
            return folder
        if os.path.exists(folder) and not os.path.exists(os.path.join(folder, MANIFEST)) \
                and os.listdir(folder):
            raise ModelLoadError(
                f"engine_dir {folder} exists, is not empty and holds no {MANIFEST}: "
                "refusing to overwrite it")
        export_engine(source, folder, digest, log, feature_layers, layers_origin)
    return folder
