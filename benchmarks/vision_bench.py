"""Vision benchmark on the CPU: preprocessing + encoder time per frame, and the
prefill time an image adds. Prints one JSON object.

    python benchmarks/vision_bench.py [--runs 3]

The encoder has SmolVLM-256M's vision shape (SigLIP 768 wide, 12 layers,
512 px tiles of 16 px patches, pixel shuffle 4 -> 64 tokens per tile) with
seeded random weights (no SmolVLM checkpoint can be downloaded here; the
cost does not depend on the values). The image's prefill cost is measured
on the real default decoder (SmolLM2-135M, the size of SmolVLM-256M's text
model): the same prompt with and without the image tokens of one frame.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from safetensors.numpy import save_file

from edgellm_ros.runtime.config import EngineConfig
from edgellm_ros.runtime.engine import Engine
from edgellm_ros.export.vision import export_vision
from edgellm_ros.loaders.vlm import load_vision
from edgellm_ros.synthetic import tiny_vlm as tv

VISION_256M = {**tv.TINY_VLM_VISION, "hidden_size": 768, "intermediate_size": 3072,
               "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 512,
               "patch_size": 16}
TEXT = {**tv.TINY_VLM_TEXT, "hidden_size": 576}


def write_folder(folder: str, engine_dir: str, split: bool) -> str:
    cfg = {**tv.TINY_VLM, "scale_factor": 4, "vision_config": VISION_256M, "text_config": TEXT}
    os.makedirs(folder, exist_ok=True)
    tv._dump(os.path.join(folder, "config.json"), cfg)
    tv._dump(os.path.join(folder, "preprocessor_config.json"), {
        **tv.TINY_VLM_PREPROCESSOR, "size": {"longest_edge": 2048}, "do_image_splitting": split,
        "max_image_size": {"longest_edge": 512}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    tv._dump(os.path.join(folder, "processor_config.json"), {**tv.TINY_VLM_PROCESSOR,
                                                             "image_seq_len": 64})
    save_file(tv.vision_tensors(cfg, 0), os.path.join(folder, "model.safetensors"))
    tv.write_vlm_tokenizer(folder, engine_dir)
    return folder


def timed(fn, runs):
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return round(statistics.median(out), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    from edgellm_ros.export.graph import WeightFile
    from edgellm_ros.loaders.vlm import save_vision_json
    from edgellm_ros.runtime.vision import VisionPipeline

    eng = Engine.load(EngineConfig(eagle_draft="", max_seq_len=2048), log=lambda m: None)
    frame = tv.synthetic_image(7, 480, 640)
    out = {"frame": "640x480 rgb8", "runs": a.runs}
    with tempfile.TemporaryDirectory() as tmp:
        for split in (False, True):
            folder = write_folder(os.path.join(tmp, f"m{split}"), eng.folder, split)
            vis, proc = load_vision(folder)
            wf = WeightFile(os.path.join(folder, "weights.data"))
            export_vision(vis, folder, wf)
            wf.close()
            save_vision_json(folder, vis.config, proc)
            pipe = VisionPipeline.from_folder(folder)
            pixels, layout = pipe.preprocess([frame])
            key = "split" if split else "single_tile"
            out[key] = {"tiles": int(layout.num_tiles), "image_tokens": int(layout.num_image_tokens),
                        "preprocess_s": timed(lambda: pipe.preprocess([frame]), a.runs)}
            out[key]["encoder_s"] = timed(lambda: pipe.encode(pixels), a.runs if not split else 1)
            # prefill the image's tokens adds on the 135M decoder (chunks of 512)
            dec = eng.decoder
            base = eng.tokenizer.encode("<|im_start|>user\nWhat do you see?<|im_end|>\n")
            n_img = int(layout.num_image_tokens)

            def prefill(ids):
                p = 0
                while p < len(ids):
                    n = min(dec.max_chunk, len(ids) - p)
                    dec.forward(p, ids[p:p + n])
                    p += n
            t_text = timed(lambda: prefill(base), a.runs)
            t_img = timed(lambda: prefill(base + [base[-2]] * n_img), a.runs)
            out[key]["prefill_added_s"] = round(t_img - t_text, 4)
            out[key]["per_frame_total_s"] = round(out[key]["preprocess_s"] + out[key]["encoder_s"]
                                                  + out[key]["prefill_added_s"], 3)
    eng.close()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
