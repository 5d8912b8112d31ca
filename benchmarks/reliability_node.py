"""The node process and its clients for benchmarks/reliability_bench.py.

``Node`` starts the real ``edgellm_node`` executable (as ``ros2 run`` does) in
its own namespace under an address-space limit, with a ``Client`` (an
EdgeLLMClient on its own rclpy Context, spun on a thread) that talks to it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import threading
import time
from typing import Any, Callable, Dict, Optional

import psutil


class Client:
    """EdgeLLMClient(s) on their own Context, spun on a thread (test/support.py's ros_client, as an object)."""

    def __init__(self, domain: int, namespace: str, n: int = 1, name: str = "rel_client"):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import MultiThreadedExecutor

        from edgellm_ros.ros.client import EdgeLLMClient

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.nodes = [rclpy.create_node(f"{name}{i}", context=self.context, namespace=namespace) for i in range(n)]
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        for nd in self.nodes:
            self.executor.add_node(nd)
        # the clients (an ActionClient each) exist before the executor spins: rclpy's
        # ActionClient is a waitable whose lock is made late in its __init__, and an
        # executor already spinning can ask it for its entities first (AttributeError)
        self.clients = [EdgeLLMClient(nd) for nd in self.nodes]
        self.c = self.clients[0]
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def close(self) -> None:
        import rclpy
        self.executor.shutdown(timeout_sec=5)
        self.spinner.join(timeout=10)
        for nd in self.nodes:
            nd.destroy_node()
        rclpy.try_shutdown(context=self.context)


class Node:
    """One edgellm_node process with a client of it; restartable."""

    count = 0

    def __init__(self, a: argparse.Namespace, tag: str, params: Optional[Dict[str, Any]] = None):
        Node.count += 1
        self.a, self.tag = a, f"{tag}{Node.count}"
        self.ns = f"/rel{os.getpid()}_{self.tag}"
        self.log_path = os.path.join(a.workdir, f"node_{self.tag}.log")
        from ament_index_python.packages import get_package_prefix
        exe = os.path.join(get_package_prefix("edgellm_ros"), "lib", "edgellm_ros", "edgellm_node")
        args = [exe, "--ros-args", "-r", f"__ns:={self.ns}", "-p", f"max_seq_len:={a.max_seq_len}"]
        # the hostile files and export folders live in the work folder: let the node read them,
        # so that they meet the file checks, not the path allow-list
        params = {"allowed_roots": ["default", a.workdir], **(params or {})}
        for k, v in params.items():
            args += ["-p", f"{k}:={json.dumps(v)}"]
        env = dict(os.environ, ROS_DOMAIN_ID=str(a.domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                   PYTHONUNBUFFERED="1")
        limit = int(a.node_memory_limit_gib * (1 << 30))

        def preexec() -> None:
            import resource
            if limit > 0:
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        with open(self.log_path, "w") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec)
        self.ps = psutil.Process(self.proc.pid)
        self.client = Client(a.domain, self.ns)
        self.c = self.client.c
        self.c.wait_for_node(timeout=60)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mib(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def log_text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def last_configure_error(self, since: int) -> str:
        lines = [ln for ln in self.log_text()[since:].splitlines() if "configure failed" in ln]
        return lines[-1].split("configure failed", 1)[1][:300] if lines else ""

    def up(self, active: bool = True) -> None:
        """Configure (and activate) with what the node has; raises when it does not."""
        if not self.c.transition("configure", timeout=self.a.configure_timeout):
            raise RuntimeError(f"configure failed: {self.last_configure_error(0)}")
        if active:
            if not self.c.transition("activate", timeout=30):
                raise RuntimeError("activate failed")
            self.c.wait_for_token_publisher()

    def signal_exit_s(self, signum: int, wait: float) -> Optional[float]:
        """Send signum; seconds until the process ended (None: still running after ``wait``)."""
        t0 = time.perf_counter()
        self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return None
        return round(time.perf_counter() - t0, 2)

    def stop(self) -> None:
        """End the process (SIGINT, then SIGKILL after 10 s) and the client."""
        if self.alive():
            if self.signal_exit_s(signal.SIGINT, 10) is None:
                self.proc.kill()
                self.proc.wait()
        self.client.close()


def answer_kind(res: Any) -> str:
    """A response or result: answered / clean_error / internal."""
    if res.success:
        return "answered"
    return "internal" if res.error_code == 9 or not res.message else "clean_error"


def timed(fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 3)


def probe_state(n: Node) -> Any:
    """Whether get_state answers within 2 s (the state, or False)."""
    try:
        return n.c.state(timeout=2.0)
    except TimeoutError:
        return False
