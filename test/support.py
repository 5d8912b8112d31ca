"""Helpers the tests import by name (fixtures live in conftest.py, which tests never import).

REPO, the golden reference files under test/data (written by tools/reference/*.py),
the memory this process's allocators hold, a client of an edgellm_node subprocess, and a
watcher of a node's /rosout lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(__file__), "data")


def load_json(name: str):
    """A reference file of test/data, parsed."""
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return json.load(f)


def heap_in_use() -> tuple:
    """(bytes this process's malloc has handed out and not had back, Python's small-object
    blocks in use), after a full garbage collection. Unlike RSS, neither hides an allocation
    behind free memory the heap already holds, nor moves when the heap returns pages."""
    import ctypes
    import gc
    import sys

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    gc.collect()
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()                       # glibc >= 2.33, every arena
    return info.uordblks + info.hblkhd, sys.getallocatedblocks()


@contextlib.contextmanager
def ros_client(domain: int, namespace: str, name: str = "test_client"):
    """An EdgeLLMClient on a node of its own Context (domain ``domain``), spun on a thread:
    for tests that talk to an edgellm_node subprocess."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    from edgellm_ros.ros.client import EdgeLLMClient

    context = Context()
    rclpy.init(context=context, domain_id=domain)
    cn = rclpy.create_node(name, context=context, namespace=namespace)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(cn)
    # made before the executor spins: an ActionClient seen half-constructed by a spinning
    # executor kills its thread ("'ActionClient' object has no attribute '_lock'")
    client = EdgeLLMClient(cn)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        client.wait_for_node()
        yield client
    finally:
        executor.shutdown()
        spinner.join(timeout=10)
        cn.destroy_node()
        rclpy.shutdown(context=context)


class RosoutWatcher:
    """Collects a ros_graph node's log lines from /rosout (on the graph's client node)."""

    def __init__(self, graph):
        self.name = graph.node.get_logger().name
        self.lines = []
        self.cond = threading.Condition()
        from rcl_interfaces.msg import Log
        self.sub = graph.client_node.create_subscription(Log, "/rosout", self._on_log, 100)

    def _on_log(self, msg):
        if msg.name == self.name:
            with self.cond:
                self.lines.append(msg.msg)
                self.cond.notify_all()

    def wait_for(self, *words, timeout=10.0):
        def found():
            return any(all(w in line for w in words) for line in self.lines)
        with self.cond:
            assert self.cond.wait_for(found, timeout), (words, self.lines)


@contextlib.contextmanager
def node_process(log_path, *ros_args: str, env=None, name: str = "test_client"):
    """``edgellm_node`` as ``ros2 run`` starts it, in a namespace and domain of its own, its
    output in ``log_path``; yields (process, client, namespace). Killed at the end if alive."""
    import random
    import subprocess

    from ament_index_python.packages import get_package_prefix

    ns = f"/n{os.getpid()}_{random.randint(0, 99999)}"
    exe = os.path.join(get_package_prefix("edgellm_ros"), "lib", "edgellm_ros", "edgellm_node")
    domain = random.randint(1, 101)
    env = dict(os.environ, **(env or {}), ROS_DOMAIN_ID=str(domain),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    with open(log_path, "w") as out:
        proc = subprocess.Popen([exe, "--ros-args", "-r", f"__ns:={ns}", *ros_args],
                                env=env, stdout=out, stderr=out)
    try:
        with ros_client(domain, ns, name) as client:
            yield proc, client, ns
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for_line(log_path, text: str, timeout: float = 30.0) -> None:
    """Wait until ``text`` is in the file ``log_path``; AssertionError with the log if not."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            if text in f.read():
                return
        time.sleep(0.05)
    with open(log_path, encoding="utf-8", errors="replace") as f:
        raise AssertionError(f"{text!r} not in the node's log:\n{f.read()}")
