"""The README's demo: start the node, ask it one question, stream the answer.

    python -m edgellm_ros.ros.demo ["What should a robot do near stairs?"]

It runs ``edgellm_node`` in a child process (as ``ros2 run`` would), drives it
through its lifecycle services as a lifecycle manager would (configure,
activate), calls /ask, prints the Token messages of /edgellm/tokens as they
arrive and then the statistics of the response, and finally takes the node to
finalized (deactivate, cleanup, shutdown), after which the child exits. Exit
status 0 when the question was answered.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from typing import List, Optional

import rclpy
from rclpy.executors import SingleThreadedExecutor

from .client import EdgeLLMClient

DEFAULT_QUESTION = "What should a robot do near stairs?"


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edgellm-demo", description=__doc__.split("\n")[0])
    p.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--params-file", default="",
                   help="parameters of the node (default: the node's defaults)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds allowed for configure (the first run exports the model)")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    a = _parse(argv)
    cmd = [sys.executable, "-m", "edgellm_ros.ros.node"]
    if a.params_file:
        cmd += ["--ros-args", "--params-file", a.params_file]
    node_proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    rclpy.init(args=[])
    client_node = rclpy.create_node("edgellm_demo")
    executor = SingleThreadedExecutor()
    executor.add_node(client_node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    def show(msg) -> None:
        sys.stdout.write(msg.text)
        sys.stdout.flush()

    client = EdgeLLMClient(client_node, on_token=show)
    ok = False
    try:
        client.wait_for_node(timeout=60.0)
        print("[demo] configuring the node (the first run on a machine also exports "
              "the model: ~15 s)", file=sys.stderr)
        if not client.transition("configure", timeout=a.timeout):
            print("[demo] configure failed: see the node's log above", file=sys.stderr)
            return 1
        if not client.transition("activate"):
            print("[demo] activate failed", file=sys.stderr)
            return 1
        client.wait_for_token_publisher()
        print(f"Q: {a.question}\nA: ", end="", flush=True)
        res = client.ask(a.question, max_new_tokens=a.max_new_tokens)
        if res.success:
            client.tokens(res.request_id)  # the whole stream has been printed
        print()
        if not res.success:
            print(f"[demo] /ask failed (error_code {res.error_code}): {res.message}",
                  file=sys.stderr)
            return 1
        print(f"[stats] request {res.request_id}: {res.prompt_tokens} prompt tokens, "
              f"{res.generated_tokens} generated (finish: {res.finish_reason}), "
              f"first token after {res.time_to_first_token:.2f} s, "
              f"{res.tokens_per_second:.1f} tokens/s")
        ok = True
    except TimeoutError as exc:
        print(f"[demo] {exc}", file=sys.stderr)
    finally:
        try:
            for label in ("deactivate", "cleanup", "shutdown"):
                client.transition(label, timeout=60.0)
        except TimeoutError:
            pass
        try:
            node_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node_proc.terminate()
            node_proc.wait(timeout=30)
        executor.shutdown()
        spinner.join(timeout=10)
        client_node.destroy_node()
        rclpy.try_shutdown()
    return 0 if ok and node_proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
