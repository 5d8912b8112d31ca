"""``edgellm selftest``: what a Jetson user runs first, to check the TensorRT backend.

Each check prints one line, PASS / FAIL / SKIP with what it saw, and a JSON object
closes the output. Checks that need something missing (cuda-python, a GPU,
TensorRT) are skipped with the reason. Exit code 0 when every check passed, 1
otherwise (a failure, or a check that could not run).

1. cuda-python, the GPU, full TensorRT (what ``backend: auto`` looks for);
2. NVRTC compiles the kernels (for the GPU's capability, or for sm_87 without one);
3. on the GPU, against NumPy: the embedding lookup, the EAGLE KV compaction
   (kv_cache.KVCache is the oracle), the device KV snapshot / restore, a CUDA graph
   of those kernels replayed with new inputs;
4. with TensorRT: the default model's decoder engines are built (or reused) in its
   engine folder; TensorRT decode vs the ONNX Runtime CPU decoder on the same prompt
   (logits max-abs-diff, greedy token agreement), the LoRA switch, and decode steps
   as CUDA graphs against the same steps without graphs;
5. with TensorRT: the EAGLE draft's engines (draft step and fc; the shipped draft of the
   default model, else a random EAGLE-3 draft) and the vision encoder's engine (the model's,
   or for the default text model a tiny SmolVLM-layout encoder with fixed seeds) built in
   the engine folder and run against ONNX Runtime on the same inputs.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .errors import EdgeLLMError, ModelLoadError

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


class _Report:
    def __init__(self, out: Callable[[str], object]):
        self.out = out
        self.checks: List[Dict[str, Any]] = []

    def add(self, name: str, status: str, detail: str, **data: Any) -> bool:
        self.checks.append({"check": name, "status": status, "detail": detail, **data})
        self.out(f"{status}  {name:<18} {detail}")
        return status == PASS

    def run(self, name: str, fn: Callable[[], Any], needs: Optional[str] = None) -> bool:
        """Run fn() -> (detail, data) or detail; an exception is a FAIL; ``needs`` a SKIP reason."""
        if needs:
            return self.add(name, SKIP, needs)
        t0 = time.perf_counter()
        try:
            res = fn()
        except (EdgeLLMError, AssertionError, ValueError, RuntimeError, OSError) as exc:
            return self.add(name, FAIL, f"{type(exc).__name__}: {exc}")
        detail, data = res if isinstance(res, tuple) else (res, {})
        return self.add(name, PASS, detail, seconds=round(time.perf_counter() - t0, 3), **data)


def _kernel_checks(rep: _Report, device: Any) -> None:
    from .backends.tensorrt.cuda_kernels import device_kernels
    from .backends.tensorrt.cuda_kv import DeviceKVCache
    from .backends.tensorrt.cuda_rt import DeviceBuffer, GraphCache, PinnedBuffer, Stream
    from .backends.kv_cache import KVCache

    stream = Stream()
    rng = np.random.default_rng(0)
    k = device_kernels(device)

    def embedding() -> str:
        for dt in (np.float32, np.float16):
            table = rng.standard_normal((4096, 576)).astype(dt)
            ids = rng.integers(0, 4096, 64)
            out = DeviceBuffer.empty((64, 576), dt)
            k.gather_rows(DeviceBuffer.from_host(table), DeviceBuffer.from_host(ids).ptr, 64, out.ptr, stream)
            stream.synchronize()
            if not np.array_equal(out.download(), table[ids]):
                raise AssertionError(f"{np.dtype(dt).name} rows differ from NumPy")
        return "64 rows of a [4096, 576] table, float32 and float16: equal to NumPy"

    def compaction() -> str:
        L, S, KVH, D = 30, 512, 3, 64
        host = KVCache(L, S, KVH, D)
        for b in host.keys + host.values:
            b[...] = rng.standard_normal(b.shape)
        dev = DeviceKVCache(device, stream, L, S, KVH, D)
        dev.load_host(host.keys, host.values)
        for P in (0, 100, 400):
            src = P + np.sort(rng.choice(np.arange(1, 33), 9, replace=False))
            host.move_rows(src, P + 1)
            dev.move_rows(src, P + 1)
        keys, values = dev.to_host()
        bad = [i for i, (a, b) in enumerate(zip(keys + values, host.keys + host.values)) if not np.array_equal(a, b)]
        dev.close()
        if bad:
            raise AssertionError(f"buffers {bad} differ from KVCache.move_rows")
        return f"{2 * L} buffers [{S}, {KVH}, {D}], 3 compactions in one launch each: equal to KVCache.move_rows"

    def snapshot() -> str:
        dev = DeviceKVCache(device, stream, 4, 128, 3, 64)
        keys = [rng.standard_normal((128, 3, 64)).astype(np.float32) for _ in range(4)]
        dev.load_host(keys, keys)
        snap = dev.snapshot(50)
        dev.load_host([np.zeros_like(x) for x in keys], [np.zeros_like(x) for x in keys])
        n = dev.restore(snap)
        back = dev.to_host()[0]
        dev.close()
        if n != 50 or not all(np.array_equal(b[:50], a[:50]) and not b[50:].any() for a, b in zip(keys, back)):
            raise AssertionError("restored rows differ from the snapshot")
        return "50 rows of 4 layers: restored bit-exact"

    def graph() -> str:
        table = rng.standard_normal((100, 64)).astype(np.float32)
        dt = DeviceBuffer.from_host(table)
        ids_h, ids_d = PinnedBuffer((8,), np.int64), DeviceBuffer.empty((8,), np.int64)
        out_d, out_h = DeviceBuffer.empty((8, 64), np.float32), PinnedBuffer((8, 64), np.float32)

        def ops(s: Any) -> None:
            ids_d.upload(ids_h.array, s)
            k.gather_rows(dt, ids_d.ptr, 8, out_d.ptr, s)
            out_d.download(out_h.array, s)

        cache = GraphCache(stream, log=lambda m: None)
        for _ in range(10):
            ids = rng.integers(0, 100, 8)
            ids_h.array[...] = ids
            if not cache.run("g", ops):
                raise AssertionError("the graph was not captured")
            stream.synchronize()
            if not np.array_equal(out_h.array, table[ids]):
                raise AssertionError("a replay returned stale rows")
        cache.clear()
        return "captured once, replayed 10 times with new ids: every result equal to NumPy"

    rep.run("embedding_kernel", embedding)
    rep.run("compaction_kernel", compaction)
    rep.run("kv_snapshot", snapshot)
    rep.run("cuda_graph", graph)


def _engine_checks(rep: _Report, model: str, engine_dir: str, max_seq_len: int, log: Callable[[str], object],
                   needs: Optional[str]) -> None:
    names = ("engine_build", "trt_decode", "lora_switch", "trt_cuda_graphs")
    if needs:
        for n in names + AUX_CHECKS:
            rep.run(n, lambda: "", needs)
        return
    from .backends.onnxruntime import OrtBackend
    from .backends.tensorrt.decoder import TrtDecoder
    from .backends.tensorrt.engines import ensure_decoder_plan
    from .runtime.engine_dir import ensure_engine
    from .contract import read_manifest
    from .contract import module_shapes
    from .models.spec import ModelConfig
    from .runtime.tokenizer import Tokenizer

    folder = ensure_engine(model, engine_dir, log)
    manifest = read_manifest(folder) or {}
    mcfg = ModelConfig.from_dict(manifest["model"])
    emb = np.load(f"{folder}/embeddings.npy")
    chunk = 64
    plans: Dict[str, str] = {}

    def build() -> Any:
        out = []
        for g in ("decoder", "decoder_lora"):
            plan, entry = ensure_decoder_plan(folder, g, max_seq_len, chunk, 8, log=log)
            plans[g] = plan
            out.append(f"{g} ({entry['precision']}, {entry['size'] >> 20} MiB)")
        return "built or current: " + ", ".join(out), {"folder": folder}

    if not rep.run("engine_build", build):
        for n in names[1:]:
            rep.run(n, lambda: "", "needs the engines (engine_build failed)")
        _draft_and_vision_checks(rep, model, folder, mcfg, emb, max_seq_len, chunk, log)
        return
    tok = Tokenizer.from_hf_folder(folder)
    ids = tok.encode("<|im_start|>user\nWhat should a robot do near stairs?<|im_end|>\n<|im_start|>assistant\n")
    steps = 24

    def greedy(dec: Any, tokens: Optional[List[int]] = None) -> Any:
        """Teacher-forced on ``tokens`` when given, else greedy: (tokens, logits rows)."""
        rows = [dec.forward(0, ids)[0].copy()]
        out: List[int] = []
        for i in range(steps):
            out.append(int(np.argmax(rows[-1])) if tokens is None else tokens[i])
            rows.append(dec.forward(len(ids) + i, [out[-1]])[0].copy())
        return out, np.stack(rows)

    cpu = OrtBackend(log=log)     # the reference every TensorRT result is compared with

    def ort(graph: str, slots: Any = ()) -> Any:
        return cpu.open_decoder(folder, graph, mcfg, emb, max_seq_len, chunk, slots, 8)

    def trt(graph: str, slots: Any = (), graphs: bool = False) -> Any:
        return TrtDecoder.from_plan(plans[graph], mcfg, emb, max_seq_len, chunk, slots, log=log, cuda_graphs=graphs)

    def compare(a: Any, b: Any, tokens: List[int]) -> Dict[str, float]:
        ta, la = greedy(a, tokens)
        tb, lb = greedy(b, tokens)
        agree = float(np.mean(np.argmax(la, -1) == np.argmax(lb, -1)))
        return {"max_abs_diff": float(np.abs(la - lb).max()), "greedy_agreement": agree}

    def decode() -> Any:
        ref = ort("decoder")
        tokens, _ = greedy(ref)
        dec = trt("decoder")
        m = compare(ref, dec, tokens)
        dec.close()
        if m["greedy_agreement"] < 0.9:
            raise AssertionError(f"greedy tokens agree on {m['greedy_agreement']:.0%} of {steps + 1} rows, "
                                 f"max |diff| {m['max_abs_diff']:.3g}")
        return (f"{len(ids)}-token prompt + {steps} steps vs ONNX Runtime: greedy agreement "
                f"{m['greedy_agreement']:.0%}, max |logit diff| {m['max_abs_diff']:.3g}"), m

    def lora() -> Any:
        shapes = module_shapes(mcfg)
        # every LoRA input of the graph is bound (the adapter's, else rank-1 zeros); the adapter has q and v
        slots = [(i, m) for i in range(mcfg.num_layers) for m in manifest["graphs"]["decoder_lora"]["lora_modules"]]
        r = np.random.default_rng(1)
        weights = {(i, m): (r.standard_normal((shapes[m][0], 8)).astype(np.float32) * 0.05,
                            r.standard_normal((8, shapes[m][1])).astype(np.float32) * 0.05)
                   for i in range(mcfg.num_layers) for m in ("q_proj", "v_proj")}
        ref, dec = ort("decoder_lora", slots), trt("decoder_lora", slots)
        for d in (ref, dec):
            d.add_adapter("selftest", weights)
        tokens, _ = greedy(ref)
        out = {}
        for name in ("selftest", "", "selftest"):
            for d in (ref, dec):
                d.set_adapter(name)
            out[name or "base"] = compare(ref, dec, tokens)
        dec.set_adapter("")
        base = dec.forward(0, ids)[0].copy()
        dec.set_adapter("selftest")
        shift = float(np.abs(dec.forward(0, ids)[0] - base).max())
        dec.close()
        worst = min(v["greedy_agreement"] for v in out.values())
        if worst < 0.9 or shift == 0.0:
            raise AssertionError(f"agreement {out}, adapter shift {shift}")
        return (f"rank-8 adapter on q/v of every layer, switched base <-> adapter: agreement >= {worst:.0%}, "
                f"the adapter moves the logits by {shift:.3g}"), {"runs": out}

    def graphs() -> Any:
        plain, dec = trt("decoder"), trt("decoder", graphs=True)
        tokens, _ = greedy(plain)
        m = compare(plain, dec, tokens)
        caps, reps, failed = dec.graphs.captures, dec.graphs.replays, dict(dec.graphs.failed)
        plain.close()
        dec.close()
        if failed or not reps or m["greedy_agreement"] < 1.0:
            raise AssertionError(f"captures {caps}, replays {reps}, failures {failed}, {m}")
        return f"{caps} graphs captured, {reps} replays; same greedy tokens as plain steps", {
            "captures": caps, "replays": reps, **m}

    rep.run("trt_decode", decode)
    rep.run("lora_switch", lora)
    rep.run("trt_cuda_graphs", graphs)
    _draft_and_vision_checks(rep, model, folder, mcfg, emb, max_seq_len, chunk, log)


#: The checks of _draft_and_vision_checks, in order.
AUX_CHECKS = ("draft_engines", "vision_engine")


def _draft_and_vision_checks(rep: _Report, model: str, folder: str, mcfg: Any, emb: np.ndarray,
                             max_seq_len: int, chunk: int, log: Callable[[str], object]) -> None:
    """The EAGLE draft's and the vision encoder's engines against ONNX Runtime, same inputs."""
    from .backends.onnxruntime import OrtBackend
    from .backends.tensorrt import TrtBackend
    from .contract import MASK_VALUE
    from .loaders.vlm import read_vision_json

    rng = np.random.default_rng(2)
    cpu, gpu = OrtBackend(log=log), TrtBackend(log)
    own = os.path.join(folder, "selftest")           # what these checks write, reused by the next run
    ids = rng.integers(3, mcfg.vocab_size, 24).tolist()

    def draft() -> Any:
        from .runtime.engine import export_draft_graphs, manifest_head
        from .models.eagle import load_draft
        from .runtime.resources import resolve_draft

        path, what = resolve_draft("default", model), "the shipped EAGLE-3 draft"
        if not path:
            from .synthetic.tiny_models import write_random_draft
            path, what = os.path.join(own, "random_draft"), "a random EAGLE-3 draft"
            if not os.path.isfile(os.path.join(path, "config.json")):
                write_random_draft(path, mcfg, "eagle3", seed=0)
        cfg, weights = load_draft(path, mcfg)
        sub = export_draft_graphs(cfg, weights, path, folder, manifest_head(folder, mcfg))
        vocab = cfg.draft_vocab_size if cfg.layout == "eagle3" else cfg.vocab_size
        draft_sub = os.path.relpath(sub, folder)
        step, fc = gpu.open_draft(folder, draft_sub, cfg, vocab, emb, max_seq_len, chunk, None)
        ref, ref_fc = cpu.open_draft(folder, draft_sub, cfg, vocab, emb, max_seq_len, chunk, None)
        n = len(ids) - 4
        feats = rng.standard_normal((n, cfg.feature_size)).astype(np.float32)
        hidden = feats
        if fc is not None:
            assert ref_fc is not None       # both backends open the fc of an EAGLE-3 draft
            hidden = fc(feats)
            want = ref_fc(feats)
            fc_diff = float(np.abs(hidden - want).max())
        mask = np.full((4, n + 4), MASK_VALUE, np.float32)     # 4 sibling tree nodes after the prompt
        mask[:, :n] = 0.0
        mask[np.arange(4), n + np.arange(4)] = 0.0
        rows = []
        for d in (ref, step):
            d.hidden_in_buffer(n)[...] = hidden
            a = d.forward(0, ids[:n], logits_rows="all").copy()
            d.hidden_in_buffer(4)[...] = d.hidden[n - 1]
            b = d.forward(n, ids[n:], positions=np.full(4, n), mask=mask, logits_rows="all")
            rows.append(np.concatenate([a, b]))
        step.close()
        top4 = np.argsort(-rows[0], -1)[:, :4]
        in_top4 = float(np.mean([t in k for t, k in zip(np.argmax(rows[1], -1), top4)]))
        m = {"max_abs_diff": float(np.abs(rows[0] - rows[1]).max()), "top1_in_ort_top4": in_top4}
        if fc is not None:
            m["fc_max_abs_diff"] = fc_diff
            fc.close()
        if in_top4 < 1.0:
            raise AssertionError(f"TensorRT's top-1 is outside ONNX Runtime's top-4 on {1 - in_top4:.0%} of rows, {m}")
        return (f"{what}: {n}-token catch-up + a 4-node tree step vs ONNX Runtime: top-1 within ONNX Runtime's "
                f"top-4 on every row, max |logit diff| {m['max_abs_diff']:.3g}"), m

    def vision() -> Any:
        from .runtime.engine_dir import ensure_engine

        vfolder, what = folder, "the model's vision encoder"
        if read_vision_json(folder) is None:
            from .synthetic.tiny_vlm import write_tiny_vlm_once
            vlm = write_tiny_vlm_once(own, folder)
            vfolder, what = ensure_engine(vlm, os.path.join(own, "tiny_vlm_engine"), log), "a tiny SmolVLM encoder"
        configs = read_vision_json(vfolder)
        if configs is None:
            raise ModelLoadError(f"{vfolder} has no vision.json: no vision encoder to check")
        vcfg = configs[0]
        enc = gpu.open_vision(vfolder, vcfg, 4)
        px = rng.standard_normal((6, vcfg.num_channels, vcfg.image_size, vcfg.image_size)).astype(np.float32)
        got = enc(px)
        enc.close()
        ref_enc = cpu.open_vision(vfolder, vcfg, 4)
        want = ref_enc(px)
        ref_enc.close()
        a, b = got.reshape(-1, got.shape[-1]), want.reshape(-1, want.shape[-1])
        cos = float(np.min(np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)))
        m = {"max_abs_diff": float(np.abs(got - want).max()), "min_cosine": cos}
        if cos < 0.99:
            raise AssertionError(f"image embeddings differ from ONNX Runtime's: {m}")
        return (f"{what}: 6 tiles in runs of up to 4 vs ONNX Runtime: min cosine {cos:.4f}, "
                f"max |diff| {m['max_abs_diff']:.3g}"), m

    rep.run("draft_engines", draft)
    rep.run("vision_engine", vision, needs=None if read_vision_json(folder) is not None or not model
            else "the model has no vision encoder")


def run_selftest(model: str = "", engine_dir: str = "", max_seq_len: int = 256,
                 out: Callable[[str], object] = print, log: Callable[[str], object] = lambda m: None) -> int:
    """Run every check; print the lines and the JSON; return the exit code."""
    from .backends.tensorrt.cuda_kernels import compile_kernels
    from .backends.tensorrt.cuda_rt import Device, bindings_version, gpu_count, import_cuda
    from .backends.tensorrt.build import import_tensorrt

    rep = _Report(out)
    cuda_ok = rep.run("cuda_python", lambda: f"cuda-python {bindings_version()}" if import_cuda() else "")
    n, why = gpu_count() if cuda_ok else (0, "cuda-python is missing")
    device = None
    if n:
        device = Device.get(0)
        rep.add("gpu", PASS, f"{device.name}, compute capability {device.capability[0]}.{device.capability[1]}, "
                f"{device.total_memory >> 20} MiB, driver {device.driver_version}", device=device.info())
    else:
        rep.add("gpu", FAIL, f"no CUDA GPU found: {why}")

    def tensorrt() -> str:
        try:
            trt = import_tensorrt(prefer=("tensorrt",))
        except EdgeLLMError as exc:
            try:
                rtx = import_tensorrt(prefer=("tensorrt_rtx_bindings",))
                found = f"; {rtx.__name__} {getattr(rtx, '__version__', '?')} is installed, it only builds engines"
            except EdgeLLMError:
                found = ""
            raise type(exc)(f"{exc}{found}; on a Jetson TensorRT comes with JetPack (python3-libnvinfer; "
                            "a venv needs --system-site-packages to see it)") from exc
        return f"{trt.__name__} {getattr(trt, '__version__', '?')}"
    trt_ok = rep.run("tensorrt", tensorrt)
    arch = device.sm if device is not None else "sm_87"
    rep.run("nvrtc", lambda: f"kernels compiled for {arch} ({len(compile_kernels(arch))} bytes of cubin)"
            + ("" if device is not None else " (no GPU: Jetson Orin's capability)"),
            needs=None if cuda_ok else "needs cuda-python")
    no_gpu = None if device is not None else "needs a CUDA GPU"
    if device is not None:
        _kernel_checks(rep, device)
    else:
        for name in ("embedding_kernel", "compaction_kernel", "kv_snapshot", "cuda_graph"):
            rep.run(name, lambda: "", no_gpu)
    _engine_checks(rep, model, engine_dir, max_seq_len, log,
                   no_gpu or (None if trt_ok else "needs full TensorRT (import tensorrt)"))
    failed = [c["check"] for c in rep.checks if c["status"] != PASS]
    summary = {"passed": len(rep.checks) - len(failed), "not_passed": failed, "checks": rep.checks}
    out(("PASS" if not failed else "FAIL") + f"  selftest: {summary['passed']} of {len(rep.checks)} checks passed")
    out(json.dumps(summary))
    return 0 if not failed else 1
