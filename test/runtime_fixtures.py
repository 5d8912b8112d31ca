"""Shared fixtures of the runtime tests: the real default model, loaded once."""

from __future__ import annotations

import json
import os

import pytest

DATA = os.path.join(os.path.dirname(__file__), "data")


def load_json(name: str):
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="session")
def default_weights():
    from edgellm_ros.loaders import load_model
    return load_model("")


@pytest.fixture(scope="session")
def reference_model(default_weights):
    from edgellm_ros.models.llama import LlamaReference
    return LlamaReference(default_weights)


@pytest.fixture(scope="session")
def default_engine_dir():
    """The engine folder of the default model, in the user cache (shared with ROS tests)."""
    from edgellm_ros.engine_dir import ensure_engine
    return ensure_engine("", "", log=lambda m: None)


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory, default_engine_dir):
    """The seeded tiny VLM folder (edgellm_ros.testing.tiny_vlm), written once per session."""
    from edgellm_ros.testing.tiny_vlm import write_tiny_vlm_once
    return write_tiny_vlm_once(str(tmp_path_factory.getbasetemp()), default_engine_dir)


@pytest.fixture(scope="session")
def tiny_vlm_loaded(tiny_vlm):
    """load_vlm(tiny_vlm): (decoder weights, vision weights, processor config)."""
    from edgellm_ros.loaders.vlm import load_vlm
    return load_vlm(tiny_vlm)


@pytest.fixture(scope="session")
def engine(default_engine_dir):
    from edgellm_ros.config import EngineConfig
    from edgellm_ros.engine import Engine
    eng = Engine.load(EngineConfig(max_seq_len=1024, prefill_chunk=256, quantization="none"),
                      log=lambda m: None)
    yield eng
    eng.close()
