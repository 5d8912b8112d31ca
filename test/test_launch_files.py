"""What launch/llm.launch.py and launch/vlm.launch.py describe, and that it works.

launch and launch_ros are not installable here (not on PyPI), so the launch
files are loaded against small stand-in modules that record every action.
The recorded description is then checked, and carried out by hand as
launch_ros would: the installed executable run with the described node name,
namespace, params file and remapping, then the described lifecycle
transitions requested through the node's lifecycle services, then a question.
"""

import importlib.util
import json
import os
import random
import subprocess
import sys
import types

import pytest
import rclpy
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from support import REPO, ros_client
from lifecycle_msgs.msg import Transition
from rclpy.context import Context

from edgellm_ros.ros.launch_description import (FETCH_VLM, find_vision_model,
                                                resolve_vision_model)
from edgellm_ros.ros.node import EdgeLLMNode


class Recorded:
    """A stand-in launch entity: keeps its arguments, compares by them."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __eq__(self, other):
        return type(self) is type(other) and (self.args, self.kwargs) == \
            (other.args, other.kwargs)

    def __repr__(self):
        return f"{type(self).__name__}{self.args}{self.kwargs}"


NAMES = {
    "launch": ["LaunchDescription"],
    "launch.actions": ["DeclareLaunchArgument", "EmitEvent", "LogInfo", "OpaqueFunction",
                       "RegisterEventHandler", "SetLaunchConfiguration"],
    "launch.conditions": ["IfCondition"],
    "launch.events": [],
    "launch.substitutions": ["LaunchConfiguration", "PathJoinSubstitution"],
    "launch_ros": [],
    "launch_ros.actions": ["LifecycleNode", "LifecycleTransition"],
    "launch_ros.event_handlers": ["OnStateTransition"],
    "launch_ros.events": [],
    "launch_ros.events.lifecycle": ["ChangeState"],
    "launch_ros.substitutions": ["FindPackageShare"],
}


def install_shims(monkeypatch, variant):
    """Install the stand-in modules; 'humble' has no LifecycleTransition."""
    classes = {}
    for module, names in NAMES.items():
        mod = types.ModuleType(module)
        for name in names:
            if name == "LifecycleTransition" and variant == "humble":
                continue
            classes[name] = type(name, (Recorded,), {})
            setattr(mod, name, classes[name])
        monkeypatch.setitem(sys.modules, module, mod)
    sys.modules["launch.events"].matches_action = lambda action: ("matches_action", action)
    return types.SimpleNamespace(variant=variant, **classes)


@pytest.fixture(params=["iron_or_newer", "humble"])
def shims(request, monkeypatch):
    return install_shims(monkeypatch, request.param)


def load(name):
    path = os.path.join(REPO, "launch", name)
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def entities(description, cls):
    return [e for e in description.args[0] if type(e) is cls]


def resolve(value, arguments, overrides):
    """Evaluate a recorded substitution the way launch would."""
    if isinstance(value, (list, tuple)):
        parts = [resolve(v, arguments, overrides) for v in value]
        return parts if isinstance(value, list) else tuple(parts)
    if isinstance(value, dict):
        return {k: resolve(v, arguments, overrides) for k, v in value.items()}
    kind = type(value).__name__
    if kind == "LaunchConfiguration":
        name = value.args[0]
        if name in overrides:
            return overrides[name]
        if "default_value" not in arguments[name].kwargs:
            raise KeyError(f"launch argument {name!r} is required")
        return resolve(arguments[name].kwargs["default_value"], arguments, overrides)
    if kind == "PathJoinSubstitution":
        return os.path.join(*resolve(value.args[0], arguments, overrides))
    if kind == "FindPackageShare":
        return get_package_share_directory(value.args[0])
    return value


def described_transitions(description, shims, node, overrides=None):
    """Transition ids the description requests after start, in order, with launch
    arguments ``overrides``: none when the autostart condition does not hold."""
    arguments = {a.args[0]: a for a in entities(description, shims.DeclareLaunchArgument)}
    overrides = overrides or {}
    if shims.variant == "humble":
        emit, = entities(description, shims.EmitEvent)
        handler, = entities(description, shims.RegisterEventHandler)
        first = emit.kwargs["event"]
        on_state = handler.args[0]
        assert first.kwargs["lifecycle_node_matcher"] == ("matches_action", node)
        assert on_state.kwargs["target_lifecycle_node"] is node
        assert on_state.kwargs["goal_state"] == "inactive" and on_state.kwargs["handle_once"]
        then = on_state.kwargs["entities"][0].kwargs["event"]
        holds = [condition_holds(e.kwargs.get("condition"), arguments, overrides)
                 for e in (emit, handler)]
        assert holds[0] == holds[1], "configure and activate must share the autostart condition"
        return [first.kwargs["transition_id"], then.kwargs["transition_id"]] if holds[0] else []
    transition, = entities(description, shims.LifecycleTransition)
    if not condition_holds(transition.kwargs.get("condition"), arguments, overrides):
        return []
    return list(transition.kwargs["transition_ids"])


def condition_holds(condition, arguments, overrides):
    """launch's IfCondition: true for 'true' / '1' (any case); no condition always holds."""
    if condition is None:
        return True
    assert type(condition).__name__ == "IfCondition", condition
    value = str(resolve(condition.args[0], arguments, overrides)).strip().lower()
    assert value in ("true", "false", "1", "0"), f"IfCondition on {value!r}"
    return value in ("true", "1")


def transition_targets(description, shims, overrides):
    """Full names of the nodes the LifecycleTransition addresses, substitutions joined."""
    arguments = {a.args[0]: a for a in entities(description, shims.DeclareLaunchArgument)}
    transition, = entities(description, shims.LifecycleTransition)
    names = resolve(transition.kwargs["lifecycle_node_names"], arguments, overrides)
    return ["".join(n) if isinstance(n, list) else n for n in names]


def node_full_name(node, arguments, overrides):
    ns = resolve(node.kwargs["namespace"], arguments, overrides).rstrip("/")
    return f"{ns}/{node.kwargs['name']}"


@pytest.mark.parametrize("name", ["llm.launch.py", "vlm.launch.py"])
def test_launch_describes_a_self_starting_lifecycle_node(shims, name):
    d = load(name)
    arguments = {a.args[0]: a for a in entities(d, shims.DeclareLaunchArgument)}
    expected = {"params_file", "namespace", "image_topic", "autostart"}
    assert set(arguments) == expected | ({"model"} if name.startswith("vlm") else set())
    assert all(a.kwargs["description"] for a in arguments.values())
    node, = entities(d, shims.LifecycleNode)
    kw = node.kwargs
    assert (kw["package"], kw["executable"], kw["name"]) == \
        ("edgellm_ros", "edgellm_node", "edgellm")
    assert kw["namespace"] == shims.LaunchConfiguration("namespace")
    assert kw["remappings"] == [("image", shims.LaunchConfiguration("image_topic"))]
    assert kw["parameters"][0] == shims.LaunchConfiguration("params_file")
    assert described_transitions(d, shims, node) == \
        [Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE]
    # the node starts before its transitions are requested
    order = [type(e).__name__ for e in d.args[0]]
    assert order.index("LifecycleNode") < min(
        i for i, n in enumerate(order) if n in ("LifecycleTransition", "EmitEvent"))
    defaults = resolve({k: shims.LaunchConfiguration(k) for k in expected}, arguments, {})
    assert defaults["params_file"] == os.path.join(
        get_package_share_directory("edgellm_ros"), "config", "edgellm.yaml")
    assert os.path.isfile(defaults["params_file"])
    assert defaults["namespace"] == "" and defaults["autostart"] == "true"
    if name.startswith("vlm"):
        assert kw["parameters"][1] == {"model": shims.LaunchConfiguration("model")}
        assert resolve(shims.LaunchConfiguration("model"), arguments, {}) == ""
        # the model is resolved (from the Hugging Face cache when empty) before the node
        opaque, = entities(d, shims.OpaqueFunction)
        assert order.index("OpaqueFunction") < order.index("LifecycleNode")
        assert opaque.kwargs["function"] is resolve_vision_model


def _snapshot(hub, repo, model_type="idefics3", weights=True):
    folder = hub / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abc"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    if weights:
        (folder / "model.safetensors").write_bytes(b"")
    return str(folder)


def test_vlm_launch_finds_a_smolvlm_in_the_hf_cache_or_names_the_fetch_command(
        tmp_path, monkeypatch):
    shims = install_shims(monkeypatch, "iron_or_newer")
    for var in ("HF_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    hub = tmp_path / "hub"
    _snapshot(hub, "HuggingFaceTB/SmolLM2-135M-Instruct", model_type="llama")  # text-only
    _snapshot(hub, "someone/SmolVLM-no-weights", weights=False)
    context = types.SimpleNamespace(launch_configurations={"model": ""})
    # model:="" (or no model) with no VLM in the cache fails, naming the fetch command
    with pytest.raises(FileNotFoundError) as err:
        resolve_vision_model(context)
    line = str(err.value)
    assert "\n" not in line and FETCH_VLM in line and str(hub) in line
    assert FETCH_VLM == "huggingface-cli download HuggingFaceTB/SmolVLM-256M-Instruct"
    vlm = _snapshot(hub, "HuggingFaceTB/SmolVLM-256M-Instruct")
    log, chosen = resolve_vision_model(context)
    assert chosen == shims.SetLaunchConfiguration("model", vlm)
    assert type(log) is shims.LogInfo and vlm in log.kwargs["msg"]
    # a given model is used as is
    context.launch_configurations["model"] = "/models/mine"
    assert resolve_vision_model(context) == [shims.SetLaunchConfiguration("model", "/models/mine")]
    assert find_vision_model("", {"HF_HUB_CACHE": str(hub)}) == vlm


@pytest.mark.parametrize("name", ["llm.launch.py", "vlm.launch.py"])
@pytest.mark.parametrize("autostart, expected", [
    ("true", [Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE]),
    ("True", [Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE]),
    ("false", []), ("0", [])])
def test_autostart_decides_whether_the_transitions_are_requested(shims, name, autostart, expected):
    d = load(name)
    node, = entities(d, shims.LifecycleNode)
    assert described_transitions(d, shims, node, {"autostart": autostart, "model": "/m"}) == expected
    conditioned = [e for e in d.args[0] if type(e).__name__ in
                   ("LifecycleTransition", "EmitEvent", "RegisterEventHandler")]
    assert conditioned and all(e.kwargs.get("condition") == shims.IfCondition(
        shims.LaunchConfiguration("autostart")) for e in conditioned), conditioned


@pytest.mark.parametrize("name", ["llm.launch.py", "vlm.launch.py"])
@pytest.mark.parametrize("namespace", ["", "/robot1", "/fleet/robot2"])
def test_transitions_address_the_launched_node_by_its_full_name(monkeypatch, name, namespace):
    shims = install_shims(monkeypatch, "iron_or_newer")   # Humble matches the action itself
    d = load(name)
    arguments = {a.args[0]: a for a in entities(d, shims.DeclareLaunchArgument)}
    node, = entities(d, shims.LifecycleNode)
    overrides = {"namespace": namespace, "model": "/m"}
    want = node_full_name(node, arguments, overrides)
    assert want == f"{namespace}/edgellm"
    assert transition_targets(d, shims, overrides) == [want]


def test_the_described_launch_runs_and_answers(monkeypatch):
    # One run is enough: both variants describe the same node and transitions.
    shims = install_shims(monkeypatch, "iron_or_newer")
    d = load("llm.launch.py")
    arguments = {a.args[0]: a for a in entities(d, shims.DeclareLaunchArgument)}
    node, = entities(d, shims.LifecycleNode)
    ns = f"/launch_{os.getpid()}"
    kw = resolve(node.kwargs, arguments, {"namespace": ns, "image_topic": "/cam/rgb"})
    exe = os.path.join(get_package_prefix(kw["package"]), "lib", kw["package"], kw["executable"])
    assert os.access(exe, os.X_OK), exe
    cmd = [exe, "--ros-args", "-r", f"__node:={kw['name']}", "-r", f"__ns:={kw['namespace']}"]
    for p in kw["parameters"]:
        cmd += ["--params-file", p]
    for src, dst in kw["remappings"]:
        cmd += ["-r", f"{src}:={dst}"]
    domain = random.randint(1, 101)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    proc = subprocess.Popen(cmd, env=env)
    try:
        with ros_client(domain, ns, "launch_test_client") as c:
            labels = {Transition.TRANSITION_CONFIGURE: "configure",
                      Transition.TRANSITION_ACTIVATE: "activate"}
            target, = transition_targets(d, shims, {"namespace": ns})
            assert (target.rsplit("/", 1)[1], target.rsplit("/", 1)[0]) in \
                _node_names(c.node), f"no node {target} in the graph"
            for tid in described_transitions(d, shims, node):
                assert c.transition(labels[tid])
            assert c.state() == "active"
            # the node runs with the packaged params file (the defaults)
            assert c.get_parameters("max_new_tokens", "queue_size") == [256, 8]
            res = c.ask("Say hi.", max_new_tokens=4)
            assert res.success, res.message
            assert c.transition("shutdown")
            assert proc.wait(timeout=30) == 0             # finalized: the executable exits
    finally:
        if proc.poll() is None:
            proc.kill()


def _node_names(node, timeout=10.0):
    """(name, namespace) of the graph's nodes, once the edgellm node is discovered."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        names = node.get_node_names_and_namespaces()
        if any(n == "edgellm" for n, _ in names) or time.monotonic() > deadline:
            return names
        time.sleep(0.1)


def test_a_params_file_loads_into_the_node(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("/**:\n  ros__parameters:\n    max_new_tokens: 7\n"
                    "    system_prompt: 'Be terse.'\n"
                    "    sampling:\n      top_k: 5\n      seed: 42\n    max_seq_len: 300\n")
    context = Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(path)],
               domain_id=random.randint(1, 101))
    try:
        node = EdgeLLMNode(context=context, namespace=f"/pf_{os.getpid()}")
        values = {n: node.get_parameter(n).value for n in
                  ("max_new_tokens", "system_prompt", "sampling.top_k", "sampling.seed",
                   "max_seq_len", "queue_size")}
        assert values == {"max_new_tokens": 7, "system_prompt": "Be terse.",
                          "sampling.top_k": 5, "sampling.seed": 42, "max_seq_len": 300,
                          "queue_size": 8}
        assert node._defaults.sampling.seed == 42 and node._defaults.max_new_tokens == 7
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
