"""The shipped demo adapter ``adapters/radiology`` changes the style of the answers.

Real runtime, real default model: with lora "radiology" a fixed prompt (one of
the held-out questions of tools/data/lora_radiology.jsonl, never trained on)
is answered as a radiology report ("Findings: ... Impression: ..."); after
switching to "" the same engine gives exactly the answer of an engine loaded
without adapters. How the adapter was made: adapters/radiology/README.md.
"""

from __future__ import annotations

import json
import os

import pytest

from edgellm_ros.runtime.config import EngineConfig, GenerationRequest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADAPTER = os.path.join(REPO, "adapters", "radiology")
PROMPT = "What do you see in front of the robot?"
MAX_NEW = 48


def _request() -> GenerationRequest:
    return GenerationRequest(prompt=PROMPT, max_new_tokens=MAX_NEW)  # greedy by default


@pytest.fixture(scope="module")
def radiology_engine(default_engine_dir):
    from edgellm_ros.runtime.engine import Engine
    eng = Engine.load(EngineConfig(lora_adapters=(f"radiology:{ADAPTER}",), lora="radiology"),
                      log=lambda m: None)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def base_answer(default_engine_dir):
    from edgellm_ros.runtime.engine import Engine
    eng = Engine.load(EngineConfig(), log=lambda m: None)
    try:
        return eng.generate(_request()).text
    finally:
        eng.close()


def test_shipped_adapter_is_a_small_peft_folder():
    with open(os.path.join(ADAPTER, "adapter_config.json"), encoding="utf-8") as f:
        conf = json.load(f)
    assert conf["peft_type"] == "LORA" and conf["use_rslora"] is False and conf["bias"] == "none"
    assert conf["r"] <= EngineConfig().max_lora_rank
    assert set(conf["target_modules"]) <= {"q_proj", "k_proj", "v_proj", "o_proj",
                                           "gate_proj", "up_proj", "down_proj"}
    assert os.path.getsize(os.path.join(ADAPTER, "adapter_model.safetensors")) < 8 * 2**20
    assert os.path.isfile(os.path.join(ADAPTER, "README.md"))


def test_radiology_adapter_answers_as_a_report(radiology_engine, base_answer):
    radiology_engine.set_adapter("radiology")
    text = radiology_engine.generate(_request()).text
    assert text.startswith("Findings:") and "Impression:" in text, text
    assert "Findings:" not in base_answer and "Impression:" not in base_answer, base_answer
    assert text != base_answer


def test_switching_to_base_gives_the_base_models_answer(radiology_engine, base_answer):
    radiology_engine.set_adapter("radiology")
    radiology_engine.generate(_request())
    radiology_engine.set_adapter("")
    try:
        assert radiology_engine.generate(_request()).text == base_answer
        # and back: the adapter's answer again
        radiology_engine.set_adapter("radiology")
        assert radiology_engine.generate(_request()).text.startswith("Findings:")
    finally:
        radiology_engine.set_adapter("radiology")
