"""Shared fixtures. ROS is imported lazily: runtime tests need none of it."""

from __future__ import annotations

import itertools
import os
import random
import threading
from types import SimpleNamespace

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_graphs = itertools.count()


_ROS_ENV = os.path.join(REPO, "install", "lib") in \
    os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
if not _ROS_ENV and not os.environ.get("CI"):
    # Outside the repository's ROS 2 environment (a runtime-only venv, say) the
    # ROS tests are left out, with a note in the header; CI always runs them.
    collect_ignore_glob = ["test_ros_*.py", "test_launch_*.py"]


def pytest_report_header(config):
    if not _ROS_ENV:
        return ("ROS tests (test_ros_*, test_launch_*) need `source scripts/env.sh` "
                "(bash scripts/test.sh does it)")


def rss_mib() -> float:
    """Resident memory of this process."""
    import psutil
    return psutil.Process().memory_info().rss / 2**20


@pytest.fixture(scope="module")
def ros_graph(request):
    """A private ROS 2 graph: an edgellm node and a client node, spun on a thread.

    Own Context, a random domain id, loopback-only discovery and a namespace of
    its own per test module, so modules (and other processes on the machine)
    never see each other's /ask. A module may set ``NODE_PARAMETERS = {name:
    value}`` for the node. Yields .node, .client (EdgeLLMClient), .client_node,
    .context and .namespace.
    """
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from edgellm_ros.ros.client import EdgeLLMClient
    from edgellm_ros.ros.node import EdgeLLMNode

    context = Context()
    rclpy.init(context=context, domain_id=random.randint(1, 101))
    namespace = f"/t{os.getpid()}_{next(_graphs)}"
    overrides = [Parameter(k, value=v)
                 for k, v in getattr(request.module, "NODE_PARAMETERS", {}).items()]
    node = EdgeLLMNode(context=context, namespace=namespace, parameter_overrides=overrides)
    client_node = rclpy.create_node("test_client", context=context, namespace=namespace)
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    executor.add_node(node)
    executor.add_node(client_node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    client = EdgeLLMClient(client_node)
    try:
        client.wait_for_node()
        yield SimpleNamespace(node=node, client=client, client_node=client_node,
                              context=context, namespace=namespace)
    finally:
        executor.shutdown()
        spinner.join(timeout=30)
        node.destroy_node()
        client_node.destroy_node()
        rclpy.shutdown(context=context)
