"""Expected outputs of the tiny seeded SmolVLM (Idefics3) checkpoint, computed by transformers.

    D=$(python -c 'from edgellm_ros.runtime.engine_dir import ensure_engine; print(ensure_engine(""))')
    /path/to/venv-with-torch-transformers-pillow/bin/python \\
        tools/reference/make_tiny_vlm_reference.py --tokenizer-from "$D"

(the first line in the project's venv: the default model's engine folder holds
the SmolLM2 tokenizer the tiny VLM's tokenizer is built on.)

Writes test/data/reference_tiny_vlm.json. The checkpoint is written by
edgellm_ros.synthetic.tiny_vlm with fixed seeds (the tests rebuild the same
bytes without torch; the json keeps the files' sha256 to prove it), the images
by tiny_vlm.synthetic_image. transformers runs on the CPU in float32 with the
PIL backend of the Idefics3 image processor (torchvision is not installed;
the PIL backend is the one that resamples with true LANCZOS, as the model was
trained). Recorded per case: the chat prompt, the processor's input_ids, its
pixel_values (as the uint8 values they were normalised from, a PNG in base64,
checked to reproduce them to 1e-6), rows/cols of the split, the encoder output
of the first tile, the image features after the connector
(``get_image_features``; all tiles of image_a, two of image_b) and the full
model's logits (last position: argmax, top 10, every 97th id, logsumexp;
argmax at every position).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import sys
import tempfile

import numpy as np
import PIL
import PIL.Image
import tokenizers
import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from edgellm_ros.synthetic.tiny_vlm import (  # noqa: E402
    PREPROCESS_IMAGES, TEST_IMAGES, TINY_VLM_PREPROCESSOR, synthetic_image, write_tiny_vlm)

QUESTION = "What is in this image?"
LOGIT_STRIDE = 97
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "data", "reference_tiny_vlm.json")


def pack_u8(arr: np.ndarray) -> dict:
    """uint8 [tiles, 3, S, S] as a grayscale PNG of [tiles * 3 * S, S], base64."""
    buf = io.BytesIO()
    flat = np.ascontiguousarray(arr.reshape(-1, arr.shape[-1]))
    PIL.Image.fromarray(flat).save(buf, format="PNG", optimize=True)
    return {"shape": list(arr.shape), "png_b64": base64.b64encode(buf.getvalue()).decode()}


def to_u8(pixel_values: np.ndarray) -> np.ndarray:
    """Invert rescale + normalise exactly (the values came from uint8); checked."""
    p = TINY_VLM_PREPROCESSOR
    mean = np.array(p["image_mean"], np.float64)[:, None, None]
    std = np.array(p["image_std"], np.float64)[:, None, None]
    u = (pixel_values.astype(np.float64) * std + mean) / p["rescale_factor"]
    u8 = np.rint(u).astype(np.int64)
    if np.abs(u - u8).max() > 1e-3 or u8.min() < 0 or u8.max() > 255:
        raise SystemExit("pixel_values are not normalised uint8 values")
    u8 = u8.astype(np.uint8)
    back = (u8.astype(np.float32) * np.float32(p["rescale_factor"])
            - mean.astype(np.float32)) / std.astype(np.float32)
    if np.abs(back - pixel_values).max() > 1e-6:
        raise SystemExit(f"uint8 reconstruction is off by {np.abs(back - pixel_values).max()}")
    return u8


def rounded(x: np.ndarray, decimals: int = 5) -> list:
    """Nested lists of x rounded in float64 (so the json holds short decimals)."""
    return np.round(np.asarray(x, np.float64), decimals).tolist()


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def logits_summary(row: np.ndarray) -> dict:
    top = np.argsort(-row)[:10]
    m = row.max()
    return {"argmax": int(row.argmax()), "top10_ids": top.tolist(), "top10": rounded(row[top]),
            "stride": LOGIT_STRIDE, "strided": rounded(row[::LOGIT_STRIDE]),
            "logsumexp": float(m + np.log(np.exp(row - m).sum()))}


def model_cases(proc, model, images) -> dict:
    """Prompt, ids, pixels, features and logits for image_a, image_b and both together."""
    cases, pix = {}, {}
    hidden = model.config.text_config.hidden_size
    for name, imgs in (("image_a", [images[0]]), ("image_b", [images[1]]),
                       ("two_images", [images[0], images[1]])):
        content = [{"type": "image"} for _ in imgs] + [{"type": "text", "text": QUESTION}]
        prompt = proc.apply_chat_template([{"role": "user", "content": content}],
                                          add_generation_prompt=True)
        inputs = proc(text=[prompt], images=[imgs], return_tensors="pt")
        split = proc.image_processor(images=[imgs], return_row_col_info=True)
        pv = inputs["pixel_values"][0].numpy()                          # [tiles, 3, S, S]
        with torch.no_grad():
            feats = model.model.get_image_features(
                pixel_values=inputs["pixel_values"],
                pixel_attention_mask=inputs["pixel_attention_mask"])
            logits = model(**inputs).logits[0].numpy()                   # [T, V]
        case = {"prompt": prompt, "input_ids": inputs["input_ids"][0].tolist(),
                "rows": split["rows"][0], "cols": split["cols"][0],
                "pixel_values_shape": list(pv.shape), "logits_last": logits_summary(logits[-1]),
                "argmax_all": logits.argmax(-1).tolist()}
        q = feats.pooler_output[0].numpy().reshape(pv.shape[0], -1, hidden)  # [tiles, Q, H]
        if name == "two_images":   # its tiles are image_a's then image_b's: not stored twice
            n_a = cases["image_a"]["pixel_values_shape"][0]
            if not (np.array_equal(pv[:n_a], pix["image_a"])
                    and np.array_equal(pv[n_a:], pix["image_b"])):
                raise SystemExit("two_images tiles are not image_a's then image_b's")
        else:
            pix[name] = pv
            case["pixel_u8"] = pack_u8(to_u8(pv))
            # all tiles of image_a; the first and the global tile of image_b
            keep = list(range(pv.shape[0])) if name == "image_a" else [0, pv.shape[0] - 1]
            case["image_features_tiles"] = keep
            case["image_features"] = rounded(q[keep])
        if name == "image_a":
            case["encoder_tile0"] = rounded(feats.last_hidden_state[0].numpy())  # [L, E]
        cases[name] = case
    return cases


def preprocess_cases(proc) -> dict:
    """The image processor alone on more shapes, with and without splitting."""
    out = {}
    runs = [(s, (True, False)) for s in PREPROCESS_IMAGES] + [(TEST_IMAGES[0], (False,))]
    for spec, flags in runs:
        img = synthetic_image(*spec)
        for split_flag in flags:
            r = proc.image_processor(images=[[img]], return_row_col_info=True,
                                     do_image_splitting=split_flag)
            pv = np.asarray(r["pixel_values"])[0]
            key = f"{spec[0]}_{spec[1]}x{spec[2]}_{'split' if split_flag else 'nosplit'}"
            out[key] = {"spec": list(spec), "do_image_splitting": split_flag,
                        "rows": r["rows"][0][0], "cols": r["cols"][0][0],
                        "pixel_u8": pack_u8(to_u8(pv))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer-from", required=True,
                    help="folder with the SmolLM2 tokenizer.json (the default engine folder)")
    args = ap.parse_args()
    torch.manual_seed(0)
    out = {"source": (
        f"transformers {transformers.__version__}, torch {torch.__version__}, "
        f"Pillow {PIL.__version__}, tokenizers {tokenizers.__version__}, CPU float32, "
        "Idefics3ForConditionalGeneration and AutoProcessor (Idefics3Processor, "
        "Idefics3ImageProcessorPil) from_pretrained(folder) on the seeded tiny checkpoint of "
        "edgellm_ros.synthetic.tiny_vlm.write_tiny_vlm(folder, tokenizer_from=<default engine "
        "folder>, seed=0); command: python tools/reference/make_tiny_vlm_reference.py "
        "--tokenizer-from <default engine folder>"),
        "question": QUESTION, "test_images": TEST_IMAGES, "preprocess_images": PREPROCESS_IMAGES}
    with tempfile.TemporaryDirectory() as d:
        write_tiny_vlm(d, args.tokenizer_from, seed=0)
        out["sha256"] = {f: sha256(os.path.join(d, f)) for f in sorted(os.listdir(d))}
        proc = transformers.AutoProcessor.from_pretrained(d)
        kind = type(proc.image_processor).__name__
        if kind != "Idefics3ImageProcessorPil":
            raise SystemExit(f"expected the PIL image processor, got {kind}")
        model, info = transformers.Idefics3ForConditionalGeneration.from_pretrained(
            d, dtype=torch.float32, output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        if bad:
            raise SystemExit(f"checkpoint names do not match transformers: {bad}")
        model.eval()
        out["cases"] = model_cases(proc, model, [synthetic_image(*s) for s in TEST_IMAGES])
        out["preprocess"] = preprocess_cases(proc)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f)
    print("wrote", os.path.abspath(OUT), os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
