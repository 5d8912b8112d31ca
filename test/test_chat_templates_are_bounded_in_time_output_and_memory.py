"""A model's chat template cannot hang the node or exhaust its memory (issue 22, defect 1).

The issue's reproductions, with the real default model and its tokenizer:
the nested range(100000) loop and the 100 KB-string memory bomb fail
configure (the probe render) within seconds with the reason; a template that
loops on one request only fails that request with TemplateLimitExceeded (an
INVALID_REQUEST) and the next request is answered; one operation asking for
10 GB ends in the renderer's memory cap, not in the node.
"""

from __future__ import annotations

import time

import pytest

from edgellm_ros.errors import InvalidRequest, ModelLoadError, TemplateLimitExceeded
from edgellm_ros.runtime.chat_template import RENDER_TIMEOUT_S, TemplateRenderer
from edgellm_ros.runtime.config import ChatMessage, EngineConfig, GenerationRequest
from edgellm_ros.runtime.engine import Engine
from edgellm_ros.runtime.tokenizer import Tokenizer
from edgellm_ros.synthetic.hostile import (LOOP_ON_REQUEST_TEMPLATE, LOOP_TEMPLATE, MEMORY_BOMB_TEMPLATE,
                                           ONE_OP_BOMB_TEMPLATE, engine_with_template)

USER = [{"role": "user", "content": "hi"}]
#: A bounded render answers within the timeout plus a worker restart on a loaded machine.
BOUND_S = RENDER_TIMEOUT_S + 8.0


def _config(folder: str) -> EngineConfig:
    return EngineConfig(engine_dir=folder, max_seq_len=256, prefill_chunk=128, quantization="none",
                        fused_ops=False)


def _timed(fn):
    t0 = time.monotonic()
    try:
        fn()
    except Exception as exc:   # noqa: BLE001 - the test inspects what came out
        return exc, time.monotonic() - t0
    return None, time.monotonic() - t0


@pytest.mark.parametrize("template, reason", [
    (LOOP_TEMPLATE, f"did not finish within {RENDER_TIMEOUT_S:g} s"),
    (MEMORY_BOMB_TEMPLATE, "output passed"),
    (ONE_OP_BOMB_TEMPLATE, "MiB of memory"),
])
def test_the_issues_templates_stop_within_seconds_with_the_reason(template, reason):
    r = TemplateRenderer(template)
    try:
        exc, took = _timed(lambda: r.render({"messages": USER, "add_generation_prompt": True}))
        assert isinstance(exc, TemplateLimitExceeded), exc
        assert reason in str(exc) and took < BOUND_S, (str(exc), took)
        assert isinstance(exc, InvalidRequest)   # the node answers INVALID_REQUEST with the message
    finally:
        r.close()


def test_the_renderer_answers_again_after_a_stopped_render():
    r = TemplateRenderer(LOOP_ON_REQUEST_TEMPLATE)
    try:
        with pytest.raises(TemplateLimitExceeded):
            r.render({"messages": [{"role": "user", "content": "loop"}], "add_generation_prompt": True})
        text = r.render({"messages": USER, "add_generation_prompt": True})
        assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    finally:
        r.close()


def test_output_bound_grows_with_the_messages_not_with_the_template():
    long = "word " * 200_000   # 1 MB of user text renders: a legitimate long prompt
    r = TemplateRenderer(LOOP_ON_REQUEST_TEMPLATE)
    try:
        assert long in r.render({"messages": [{"role": "user", "content": long}], "add_generation_prompt": True})
    finally:
        r.close()


@pytest.mark.parametrize("template", [LOOP_TEMPLATE, MEMORY_BOMB_TEMPLATE])
def test_configure_fails_on_the_probe_render_with_the_reason(template, tmp_path, default_engine_dir):
    folder = engine_with_template(str(tmp_path / "engine"), default_engine_dir, template)
    exc, took = _timed(lambda: Engine.load(_config(folder), log=lambda m: None))
    assert isinstance(exc, ModelLoadError), exc
    assert "chat template fails a one-message probe render" in str(exc) and folder in str(exc)
    assert took < 60, took


def test_a_request_whose_render_loops_fails_and_the_next_is_answered(tmp_path, default_engine_dir):
    folder = engine_with_template(str(tmp_path / "engine"), default_engine_dir, LOOP_ON_REQUEST_TEMPLATE)
    eng = Engine.load(_config(folder), log=lambda m: None)
    try:
        exc, took = _timed(lambda: eng.generate(GenerationRequest(
            messages=(ChatMessage("user", "loop"),), max_new_tokens=4)))
        assert isinstance(exc, TemplateLimitExceeded) and took < BOUND_S, (exc, took)
        res = eng.generate(GenerationRequest(prompt="Say hi.", max_new_tokens=4))
        assert res.token_ids and res.prompt_tokens > 0
    finally:
        eng.close()


def test_a_template_that_does_not_compile_fails_at_load(default_engine_dir):
    tok = Tokenizer.from_hf_folder(default_engine_dir)
    try:
        with pytest.raises(ModelLoadError, match="chat template does not compile"):
            Tokenizer(tok._backend, "<|im_start|>", "<|im_end|>", "{% for %}")
    finally:
        tok.close()


PARENT = ("import sys\nfrom edgellm_ros.runtime.chat_template import TemplateRenderer\n"
          "r = TemplateRenderer(sys.argv[1], timeout_s=600)\n"
          "r._proc = r._start()\nprint(r._proc.pid, flush=True)\n"
          "r.render({'messages': [{'role': 'user', 'content': 'loop'}], 'add_generation_prompt': True})\n")


def test_a_worker_whose_node_is_killed_mid_render_ends_too():
    import os
    import signal
    import subprocess
    import sys
    parent = subprocess.Popen([sys.executable, "-c", PARENT, LOOP_ON_REQUEST_TEMPLATE],
                              stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    time.sleep(1.0)   # the worker is looping now
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{worker}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in "ZX":   # exited (a zombie nobody reaped)
                    return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    raise AssertionError("the template worker outlived its killed parent by 15 s")
