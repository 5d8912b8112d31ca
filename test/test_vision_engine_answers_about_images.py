"""A vision-language engine: exported once, images merged into the prompt, answers."""

from __future__ import annotations

import numpy as np
import pytest

from edgellm_ros.runtime.config import EngineConfig, GenerationRequest
from edgellm_ros.errors import ContextFull, InvalidRequest
from edgellm_ros.synthetic.tiny_vlm import synthetic_image, write_tiny_vlm_once


@pytest.fixture(scope="module")
def vlm_engine(tmp_path_factory, default_engine_dir):
    from edgellm_ros.runtime.engine import Engine
    folder = write_tiny_vlm_once(str(tmp_path_factory.getbasetemp()), default_engine_dir)
    eng = Engine.load(EngineConfig(model=folder, engine_dir=str(tmp_path_factory.mktemp("vlm_engine")),
                                   max_seq_len=256, prefill_chunk=32, split_images=True),
                      log=lambda m: None)
    yield eng
    eng.close()


def _first_logits(eng, req):
    ids, prefix = eng.generator.build_prompt(req)
    row, _ = eng.generator.prefill(ids, prefix)
    return ids, row.copy()


def test_an_image_request_is_answered_and_deterministic(vlm_engine):
    img = synthetic_image(1, 48, 80)
    req = GenerationRequest(prompt="What do you see?", images=(img,), max_new_tokens=8)
    a, b = vlm_engine.generate(req), vlm_engine.generate(req)
    assert a.generated_tokens > 0 and a.token_ids == b.token_ids
    assert a.prompt_tokens > 16  # the image's tokens count in the prompt


def test_different_images_give_different_logits(vlm_engine):
    ids1, l1 = _first_logits(vlm_engine, GenerationRequest(prompt="Describe.", images=(
        synthetic_image(1, 64, 64),)))
    ids2, l2 = _first_logits(vlm_engine, GenerationRequest(prompt="Describe.", images=(
        synthetic_image(2, 64, 64),)))
    _, l1b = _first_logits(vlm_engine, GenerationRequest(prompt="Describe.", images=(
        synthetic_image(1, 64, 64),)))
    assert ids1 == ids2
    assert np.array_equal(l1, l1b) and np.abs(l1 - l2).max() > 1e-4


def test_two_images_in_one_request(vlm_engine):
    res = vlm_engine.generate(GenerationRequest(prompt="Compare.", max_new_tokens=4, images=(
        synthetic_image(1, 64, 64), synthetic_image(2, 40, 90))))
    one = vlm_engine.generate(GenerationRequest(prompt="Compare.", max_new_tokens=4, images=(
        synthetic_image(1, 64, 64),)))
    assert res.prompt_tokens > one.prompt_tokens


def test_images_that_do_not_fit_are_refused(vlm_engine):
    big = tuple(synthetic_image(i, 120, 120) for i in range(6))
    with pytest.raises(ContextFull, match="max_seq_len"):
        vlm_engine.generate(GenerationRequest(prompt="Many.", images=big))


def test_a_text_only_model_refuses_images(engine):
    with pytest.raises(InvalidRequest, match="no vision encoder"):
        engine.generate(GenerationRequest(prompt="see?", images=(synthetic_image(0, 8, 8),)))


def test_a_malformed_image_array_is_refused():
    with pytest.raises(InvalidRequest, match="RGB uint8"):
        GenerationRequest(prompt="x", images=(np.zeros((4, 4), np.uint8),))


def test_split_images_false_encodes_one_tile_per_image(vlm_engine, tmp_path):
    from edgellm_ros.runtime.engine import Engine
    eng = Engine.load(EngineConfig(model=vlm_engine.config.model, engine_dir=vlm_engine.folder,
                                   max_seq_len=256, prefill_chunk=32, split_images=False),
                      log=lambda m: None)
    try:
        req = GenerationRequest(prompt="See?", images=(synthetic_image(1, 100, 120),),
                                max_new_tokens=2)
        one = eng.generate(req)
        tiled = vlm_engine.generate(req)
        assert one.prompt_tokens < tiled.prompt_tokens
    finally:
        eng.close()
