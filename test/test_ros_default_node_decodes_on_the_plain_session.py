"""The node pays for no feature it does not use.

The default parameters load the demo adapter and no EAGLE draft: with lora "" the node
decodes one-row steps on the plain graph's session, with the same tokens as the LoRA graph
with zero adapters; an adapter moves it to the LoRA graph, and eagle.enabled is refused
with what to set. With a draft loaded (main graph decoder_eagle3_lora_int4_fused), lora ""
and EAGLE off still run the plain session, padded to two rows, and EAGLE gives the same
greedy answer."""

from __future__ import annotations

import os

from edgellm_ros.runtime.config import GenerationRequest

NODE_PARAMETERS = {"max_seq_len": 512}
Q = "What should a robot do when it sees a person on the stairs?"


def an_adapter_leaves_the_plain_session(active, dec):
    (r,) = active.set_parameters(lora="radiology")
    assert r.successful, r.reason
    try:
        assert active.ask(Q, max_new_tokens=8, top_k=1).success
        assert not dec.runs_plain and dec.active_adapter == "radiology"
    finally:
        (r,) = active.set_parameters(lora="")
    assert r.successful, r.reason


def test_default_node_loads_no_draft_and_decodes_one_row_steps_on_the_plain_session(ros_graph, active):
    eng = ros_graph.node._engine
    dec = eng.decoder
    assert eng.drafter is None and dec.lora_slots, "the default parameters load the adapter, no draft"
    assert not dec.row_padding
    assert os.path.basename(dec.onnx_path) == "decoder_lora_int4_fused.onnx"
    res = active.ask(Q, max_new_tokens=16, top_k=1)
    assert res.success, res.message
    assert dec.runs_plain
    assert os.path.basename(dec._plain_session._model_path) == "decoder_int4_fused.onnx"
    (r,) = active.set_parameters(eagle__enabled=True)
    assert not r.successful and "eagle.draft" in r.reason and "configure" in r.reason, r.reason
    an_adapter_leaves_the_plain_session(active, dec)
    assert active.ask(Q, max_new_tokens=8, top_k=1).success and dec.runs_plain


def test_a_node_with_a_draft_runs_the_plain_session_with_lora_off_and_eagle_off(ros_graph, active):
    node = ros_graph.node
    assert active.transition("deactivate") and active.transition("cleanup")
    (r,) = active.set_parameters(eagle__draft="default")
    assert r.successful, r.reason
    assert active.transition("configure") and active.transition("activate")
    active.wait_for_token_publisher()
    eng = node._engine
    dec = eng.decoder
    assert eng.drafter is not None and dec.lora_slots and dec.row_padding
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
    an_adapter_leaves_the_plain_session(active, dec)
    (r,) = active.set_parameters(eagle__enabled=True)
    assert r.successful, r.reason
    try:
        spec = active.ask(Q, max_new_tokens=32, top_k=1)
        assert not dec.runs_plain and dec.features
        assert spec.text == plain.text       # greedy EAGLE: the same answer
    finally:
        active.set_parameters(eagle__enabled=False)
    assert active.ask(Q, max_new_tokens=8, top_k=1).success and dec.runs_plain
