"""Shared fixtures. ROS is imported lazily: runtime tests need none of it."""

from __future__ import annotations

import ast
import fnmatch
import itertools
import os
import random
import threading
from types import SimpleNamespace

import pytest
from support import REPO

_graphs = itertools.count()


_ROS_ENV = os.path.join(REPO, "install", "lib") in \
    os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
_ROS_TESTS = ("test_ros_*.py", "test_launch_*.py")
ROS_SKIP_REASON = "needs the ROS 2 environment: `source scripts/env.sh` (bash scripts/test.sh does it)"


class _RosTestFile(pytest.File):
    """A ROS test module outside the ROS environment: its tests, found without importing it
    (rclpy and the generated messages are not importable), each reported as skipped."""

    def collect(self):
        tree = ast.parse(self.path.read_text(encoding="utf-8"), str(self.path))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.name.startswith("test"):
                item = _RosTest.from_parent(self, name=node.name)
                item.lineno = node.lineno - 1
                item.add_marker(pytest.mark.skip(reason=ROS_SKIP_REASON))
                yield item


class _RosTest(pytest.Item):
    lineno = 0

    def runtest(self):
        pytest.skip(ROS_SKIP_REASON)

    def reportinfo(self):
        return self.path, self.lineno, self.name


def pytest_pycollect_makemodule(module_path, parent):
    # Outside the repository's ROS 2 environment (a runtime-only venv, say) the ROS tests
    # are reported as skipped with the reason; CI always runs them.
    if not _ROS_ENV and not os.environ.get("CI") and \
            any(fnmatch.fnmatch(module_path.name, p) for p in _ROS_TESTS):
        return _RosTestFile.from_parent(parent, path=module_path)
    return None


def pytest_report_header(config):
    if not _ROS_ENV:
        return ("ROS tests (test_ros_*, test_launch_*) are skipped: they need "
                "`source scripts/env.sh` (bash scripts/test.sh does it)")


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
    # made before the executor spins: an ActionClient seen half-constructed by a spinning
    # executor kills its thread ("'ActionClient' object has no attribute '_lock'")
    client = EdgeLLMClient(client_node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
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


@pytest.fixture(scope="module")
def active(ros_graph):
    """ros_graph's client, with the node configured and active and the token stream matched."""
    c = ros_graph.client
    assert c.transition("configure") and c.transition("activate")
    c.wait_for_token_publisher()
    return c


# --- the real default model and the seeded tiny VLM, loaded once per session ---

@pytest.fixture(scope="session")
def default_weights():
    from edgellm_ros.loaders import load_model
    return load_model("")


@pytest.fixture(scope="session")
def reference_model(default_weights):
    from edgellm_ros.models.llama import LlamaReference
    return LlamaReference(default_weights)


@pytest.fixture(scope="session")
def default_engine_dir():
    """The engine folder of the default model, in the user cache (shared with ROS tests)."""
    from edgellm_ros.runtime.engine_dir import ensure_engine
    return ensure_engine("", "", log=lambda m: None)


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory, default_engine_dir):
    """The seeded tiny VLM folder (edgellm_ros.synthetic.tiny_vlm), written once per session."""
    from edgellm_ros.synthetic.tiny_vlm import write_tiny_vlm_once
    return write_tiny_vlm_once(str(tmp_path_factory.getbasetemp()), default_engine_dir)


@pytest.fixture(scope="session")
def tiny_vlm_loaded(tiny_vlm):
    """load_vlm(tiny_vlm): (decoder weights, vision weights, processor config)."""
    from edgellm_ros.loaders.vlm import load_vlm
    return load_vlm(tiny_vlm)


@pytest.fixture(scope="session")
def engine(default_engine_dir):
    from edgellm_ros.runtime.config import EngineConfig
    from edgellm_ros.runtime.engine import Engine
    # float weights (EAGLE bit-exact there) with the shipped draft, for the EAGLE tests
    eng = Engine.load(EngineConfig(max_seq_len=1024, prefill_chunk=256, quantization="none",
                                   eagle_draft="default"), log=lambda m: None)
    yield eng
    eng.close()


# --- backend remote: a real OpenAI-compatible server (test/remote_support.py) ---

@pytest.fixture(scope="session")
def llama_server():
    """llama.cpp's server (llama-cpp-python) on the embedded GGUF, for the whole session."""
    from remote_support import LlamaServer
    server = LlamaServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fault_proxy(llama_server):
    """A recording, fault-injecting proxy in front of llama_server (its own per module)."""
    from remote_support import FaultProxy
    proxy = FaultProxy(("127.0.0.1", llama_server.port))
    yield proxy
    proxy.close()
