"""Constrained generation (json_schema, grammar) on the real default model.

The proof of issue 21: 100 answers sampled at temperature 0.8 for each robot
schema of test/data/robot_schemas.json all parse and validate with
``jsonschema``; a greedy answer that already satisfies its schema is the same
token for token with the constraint; malformed input is InvalidRequest with
llguidance's message; EAGLE (the shipped draft) and LoRA (the demo adapter)
answers validate too.

Run time (2 shared cores): the 300 sampled answers are requested with the
schemas tightened (validated against the data's own): compact JSON
(``x-guidance`` whitespace_flexible false: no indentation tokens), numbers
with at most 2 decimals (``multipleOf`` 0.01: at temperature 0.8 the model
sometimes writes digits until max_new_tokens, a JSON number having no length
limit), at most 2 objects in the list (the prompt names two; up to 8 the model
repeats objects to the limit), which puts answers at about 12-20 tokens
(yes/no, action) and ~45 (object list).
"""

from __future__ import annotations

import json
import os
import re

import jsonschema
import pytest

from edgellm_ros.errors import InvalidRequest
from edgellm_ros.runtime.config import EngineConfig, GenerationRequest, SamplingConfig
from edgellm_ros.runtime.speculative import EagleConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(REPO, "test", "data", "robot_schemas.json"), encoding="utf-8") as f:
    SCHEMAS = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
SAMPLES = 100
# prompts whose unconstrained greedy answer (default engine) already satisfies the schema
ALREADY_VALID = [
    ("yes_no", 'Is the door open? Reply only with JSON like {"answer": "yes", "confidence": 0.9}.'),
    ("yes_no", 'Answer in JSON with keys "answer" ("yes" or "no") and "confidence" (0 to 1): '
               'is the floor wet?'),
    ("action", 'Reply only with JSON like {"action": "pick", "target": "cup"}. Command: stop the robot.'),
]


def _bounded(node):
    """The schema with every number written with at most 2 decimals (multipleOf 0.01)."""
    if isinstance(node, dict):
        out = {k: _bounded(v) for k, v in node.items()}
        return dict(out, multipleOf=0.01) if out.get("type") == "number" else out
    return node


def _compact(name: str) -> dict:
    """The data's schema, tightened for run time: compact JSON, numbers with 2 decimals
    at most (at 0.8 the model sometimes writes digits until max_new_tokens), and at
    most 2 objects in the object list."""
    schema = dict(_bounded(SCHEMAS[name]["schema"]), **{"x-guidance": {"whitespace_flexible": False}})
    if name == "object_list":
        schema["properties"] = dict(schema["properties"], objects=dict(
            schema["properties"]["objects"], maxItems=2))
    return schema


def _valid(text: str, schema: dict) -> None:
    jsonschema.validate(json.loads(text), schema)


@pytest.fixture(scope="module")
def int4_engine(default_engine_dir):
    """The default engine (int4 weights, shipped EAGLE draft loaded)."""
    from edgellm_ros.runtime.engine import Engine
    eng = Engine.load(EngineConfig(max_seq_len=512, eagle_draft="default"), log=lambda m: None)
    yield eng
    eng.close()


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_100_sampled_answers_parse_and_validate(int4_engine, name):
    schema = _compact(name)
    text = json.dumps(schema)
    for seed in range(SAMPLES):
        res = int4_engine.generate(GenerationRequest(
            prompt=SCHEMAS[name]["prompt"], json_schema=text, max_new_tokens=160,
            sampling=SamplingConfig(temperature=0.8, seed=seed)))
        assert res.finish_reason == "stop", (seed, res.text)
        _valid(res.text, SCHEMAS[name]["schema"])   # the data's schema
        assert len(json.loads(res.text).get("objects", ())) <= 2


@pytest.mark.parametrize("name, prompt", ALREADY_VALID)
def test_a_greedy_answer_that_already_validates_is_unchanged(int4_engine, name, prompt):
    free = int4_engine.generate(GenerationRequest(prompt=prompt, max_new_tokens=64))
    _valid(free.text, SCHEMAS[name]["schema"])      # the premise
    bound = int4_engine.generate(GenerationRequest(prompt=prompt, max_new_tokens=64,
                                                   json_schema=json.dumps(SCHEMAS[name]["schema"])))
    assert bound.token_ids == free.token_ids and bound.text == free.text


def test_without_the_constraint_the_answer_does_not_validate(int4_engine):
    """The control: what the constraint changes (the data's prompt, greedy)."""
    sch = SCHEMAS["yes_no"]
    free = int4_engine.generate(GenerationRequest(prompt=sch["prompt"], max_new_tokens=48))
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        _valid(free.text, sch["schema"])
    bound = int4_engine.generate(GenerationRequest(prompt=sch["prompt"], max_new_tokens=48,
                                                   json_schema=json.dumps(sch["schema"])))
    _valid(bound.text, sch["schema"])


@pytest.mark.parametrize("fields, message", [
    (dict(json_schema='{"type": "objec"}'), "json_schema rejected by llguidance: .*objec"),
    (dict(json_schema='{"type": '), "json_schema is not JSON"),
    (dict(grammar="start: foo\nfoo: bar"), "bar"),
    (dict(grammar="/[0-9/"), "regex|parse|unclosed|\\["),
])
def test_malformed_schema_or_grammar_is_invalid_request_with_the_library_message(
        int4_engine, fields, message):
    with pytest.raises(InvalidRequest, match=message):
        int4_engine.generate(GenerationRequest(prompt="Hi", max_new_tokens=4, **fields))


def test_a_regex_grammar_is_matched_and_ends_the_answer_even_with_ignore_eos(int4_engine):
    for seed in range(3):
        res = int4_engine.generate(GenerationRequest(
            prompt="How many wheels does the robot have?", grammar="/[0-9]{1,2} wheels/",
            ignore_eos=True, max_new_tokens=16, sampling=SamplingConfig(temperature=0.8, seed=seed)))
        assert res.finish_reason == "stop" and re.fullmatch(r"[0-9]{1,2} wheels", res.text), res.text


def test_constrained_eagle_greedy_equals_constrained_plain_and_samples_validate(engine):
    """The float engine (EAGLE exact there) with the shipped draft; draft tokens the grammar
    forbids are never committed (the matcher would raise ConstraintError)."""
    name, sch = "action", SCHEMAS["action"]
    req = GenerationRequest(prompt=sch["prompt"], max_new_tokens=48, json_schema=json.dumps(sch["schema"]))
    plain = engine.generate(req)
    engine.set_eagle(EagleConfig(enabled=True))
    try:
        spec = engine.generate(req)
        sampled = [engine.generate(GenerationRequest(
            prompt=sch["prompt"], max_new_tokens=64, json_schema=json.dumps(_compact(name)),
            sampling=SamplingConfig(temperature=0.8, seed=s))) for s in range(8)]
    finally:
        engine.set_eagle(EagleConfig())
    _valid(plain.text, sch["schema"])
    assert spec.token_ids == plain.token_ids and spec.eagle.drafts > 0
    assert spec.eagle.mean_acceptance_length > 1.0      # drafts were accepted under the mask
    for res in sampled:
        assert res.finish_reason == "stop", res.text
        _valid(res.text, sch["schema"])


def test_constrained_lora_answers_validate(default_engine_dir):
    from edgellm_ros.runtime.engine import Engine
    adapter = os.path.join(REPO, "adapters", "radiology")
    eng = Engine.load(EngineConfig(lora_adapters=(f"radiology:{adapter}",), lora="radiology",
                                   max_seq_len=512, eagle_draft=""), log=lambda m: None)
    try:
        for name in ("yes_no", "action"):
            sch = SCHEMAS[name]
            for seed in (None, 0, 1):
                sampling = SamplingConfig() if seed is None else SamplingConfig(temperature=0.8, seed=seed)
                res = eng.generate(GenerationRequest(prompt=sch["prompt"], max_new_tokens=64,
                                                     json_schema=json.dumps(_compact(name)),
                                                     sampling=sampling))
                assert res.finish_reason == "stop", res.text
                _valid(res.text, sch["schema"])
        free = eng.generate(GenerationRequest(prompt=SCHEMAS["yes_no"]["prompt"], max_new_tokens=24))
        assert not free.text.lstrip().startswith("{")   # the adapter writes reports, not JSON
    finally:
        eng.close()
