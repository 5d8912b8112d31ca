"""The default node pays for no feature it does not use: its parameters load the demo
adapter and the EAGLE draft (main graph decoder_eagle3_lora_int4_fused), yet with lora ""
and EAGLE off it decodes on the plain graph's session, with the same tokens as the LoRA
graph with zero adapters; an adapter or EAGLE moves it back to the main graph."""

from __future__ import annotations

import os

from edgellm_ros.runtime.config import GenerationRequest

NODE_PARAMETERS = {"max_seq_len": 512}
Q = "What should a robot do when it sees a person on the stairs?"


def test_default_node_runs_the_plain_session_with_lora_off_and_eagle_off(ros_graph, active):
    node = ros_graph.node
    eng = node._engine
    dec = eng.decoder
    assert eng.drafter is not None and dec.lora_slots, "the default parameters load the draft and the adapter"
    assert os.path.basename(dec.onnx_path) == "decoder_eagle3_lora_int4_fused.onnx"
    plain = active.ask(Q, max_new_tokens=32, top_k=1)
    assert plain.success, plain.message
    assert dec.runs_plain
    assert os.path.basename(dec._plain_session._model_path) == "decoder_int4_fused.onnx"
    req = GenerationRequest(prompt=Q, max_new_tokens=32, ignore_eos=True)
    ids_plain = eng.generate(req).token_ids
    dec.prefer_plain = False            # the same request on the LoRA/features graph, zero adapters
    try:
        lora = active.ask(Q, max_new_tokens=32, top_k=1)
        assert not dec.runs_plain
        ids_lora = eng.generate(req).token_ids
    finally:
        dec.prefer_plain = True
    assert lora.success and lora.text == plain.text
    assert ids_lora == ids_plain
    (r,) = active.set_parameters(lora="radiology")
    assert r.successful, r.reason
    try:
        assert active.ask(Q, max_new_tokens=8, top_k=1).success
        assert not dec.runs_plain and dec.active_adapter == "radiology"
    finally:
        (r,) = active.set_parameters(lora="")
    (r,) = active.set_parameters(eagle__enabled=True)
    assert r.successful, r.reason
    try:
        spec = active.ask(Q, max_new_tokens=32, top_k=1)
        assert not dec.runs_plain and dec.features
        assert spec.text == plain.text       # greedy EAGLE: the same answer
    finally:
        active.set_parameters(eagle__enabled=False)
    assert active.ask(Q, max_new_tokens=8, top_k=1).success and dec.runs_plain
