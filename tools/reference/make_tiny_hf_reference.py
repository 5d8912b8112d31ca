"""Expected logits of the tiny seeded HF checkpoints, computed by transformers.

    python tools/reference/make_tiny_hf_reference.py   # in a venv with torch + transformers

Writes test/data/reference_tiny_hf.json: for each tiny config (Llama, Qwen2
with q/k/v biases, Llama-3 rope scaling) the logits transformers computes for
fixed token ids. The weights are written by edgellm_ros.synthetic.tiny_models
with fixed seeds, so the tests rebuild the same files without torch.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from edgellm_ros.synthetic.tiny_models import TINY_LLAMA, TINY_LLAMA3, TINY_QWEN2, write_tiny_model  # noqa: E402

IDS = [5, 17, 200, 3, 99, 42, 7, 128, 255, 0, 64, 31]


def main() -> None:
    out = {"source": f"transformers {transformers.__version__}, torch {torch.__version__}, CPU float32, "
                     "AutoModelForCausalLM.from_pretrained(folder) on the seeded tiny checkpoints; "
                     "command: python tools/reference/make_tiny_hf_reference.py",
           "ids": IDS, "cases": {}}
    for name, cfg in (("llama", TINY_LLAMA), ("qwen2", TINY_QWEN2), ("llama3", TINY_LLAMA3)):
        with tempfile.TemporaryDirectory() as d:
            write_tiny_model(d, cfg, seed=0)
            model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
            with torch.no_grad():
                logits = model(torch.tensor([IDS])).logits[0].numpy()
        out["cases"][name] = {"logits_last": np.round(logits[-1], 6).tolist(),
                              "argmax": logits.argmax(-1).tolist(),
                              "logits_first": np.round(logits[0], 6).tolist()}
    path = os.path.join(os.path.dirname(__file__), "..", "..", "test", "data", "reference_tiny_hf.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f)
    print("wrote", os.path.abspath(path))


if __name__ == "__main__":
    main()
