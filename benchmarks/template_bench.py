"""What bounding chat templates costs: the worker process against rendering in-process.

Prints one JSON object: the worker's start (the probe render at configure),
and the median time per render and per request prompt (runtime/chat.py's
render_prompt: the conversation, the system-part probe and one prefix per
user message) of the default model's template, through the bounded worker
(runtime/chat_template.py) and through jinja2 in this process (what the
runtime did before issue 22, unbounded), for a one-message request and a
6-message conversation. Not a test; docs/RUNTIME.md ("Hostile files") has
the figures.

    python benchmarks/template_bench.py [--renders 300] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import subprocess
import time

from edgellm_ros.runtime.chat import render_prompt
from edgellm_ros.runtime.chat_template import TemplateRenderer, compile_template
from edgellm_ros.runtime.config import ChatMessage, GenerationRequest
from edgellm_ros.runtime.engine_dir import ensure_engine
from edgellm_ros.runtime.tokenizer import Tokenizer


class InProcess:
    """The unbounded renderer this benchmark compares against (jinja2 in this process)."""

    def __init__(self, source: str):
        self.template = compile_template(source)

    def render(self, context):
        return self.template.render(**context)

    def close(self):
        pass


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--renders", type=int, default=300)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    folder = ensure_engine("", "", log=lambda m: None)
    tok = Tokenizer.from_hf_folder(folder)
    one = GenerationRequest(prompt="What should a robot do near stairs?", max_new_tokens=1)
    conv = GenerationRequest(messages=(
        ChatMessage("system", "You are a careful robot."), ChatMessage("user", "Where are the stairs?"),
        ChatMessage("assistant", "Ahead, ten metres."), ChatMessage("user", "Is the door open?"),
        ChatMessage("assistant", "Yes."), ChatMessage("user", "Then go through it slowly.")), max_new_tokens=1)
    msgs = [{"role": "user", "content": "What should a robot do near stairs?"}]
    starts = []
    for _ in range(5):
        r = TemplateRenderer(tok.chat_template)
        t0 = time.perf_counter()
        r.render({"messages": msgs, "add_generation_prompt": True})
        starts.append((time.perf_counter() - t0) * 1000)
        r.close()
    out = {"cpu": _cpu(), "renders": a.renders,
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip(),
           "worker_start_ms_median": round(statistics.median(starts), 1)}
    for name, renderer in (("worker", tok._renderer), ("in_process", InProcess(tok.chat_template))):
        tok._renderer = renderer
        ctx = {"messages": msgs, "add_generation_prompt": True, "bos_token": "", "eos_token": ""}
        out[name] = {
            "render_ms": _median_ms(lambda: tok._renderer.render(ctx), a.renders),
            "request_prompt_ms": _median_ms(lambda: render_prompt(tok, None, one, 2048), a.renders),
            "conversation_prompt_ms": _median_ms(lambda: render_prompt(tok, None, conv, 2048), a.renders // 3),
        }
    for key in ("render_ms", "request_prompt_ms", "conversation_prompt_ms"):
        out[f"added_{key}"] = round(out["worker"][key] - out["in_process"][key], 4)
    tok.close()
    print(json.dumps(out, indent=1))
    if a.out:
        pathlib.Path(a.out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
