"""The launch description behind launch/llm.launch.py and launch/vlm.launch.py.

One ``edgellm_node`` as a launch_ros ``LifecycleNode`` that configures and
activates itself (``autostart:=false`` leaves that to your lifecycle
manager), with launch arguments:

- ``params_file``: the node's parameters (default: the package's
  config/edgellm.yaml);
- ``namespace``: the node's namespace (default: none, so /edgellm and /ask);
- ``image_topic``: what the node's ``image`` input is remapped to;
- ``autostart``: true = configure then activate at launch;
- ``model`` (vlm only): the vision-language model folder, given after the
  params file so it wins. Empty or left out: the newest SmolVLM / Idefics3
  snapshot in the Hugging Face cache (:func:`find_vision_model`); with none
  there the launch fails with one line naming the command that fetches one,
  rather than quietly starting the text-only default model.

The transitions use launch_ros ``LifecycleTransition`` (Iron and newer); on
Humble, which lacks it, the equivalent ChangeState event chain. launch and
launch_ros are imported only when a description is built: they come with a
ROS 2 install and are not on PyPI.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, List, Mapping, Optional

PACKAGE = "edgellm_ros"
EXECUTABLE = "edgellm_node"
NODE_NAME = "edgellm"
#: The node's image input (a relative name), remapped by ``image_topic``.
IMAGE_INPUT = "image"
DEFAULT_IMAGE_TOPIC = "camera/image_raw"  # relative: under a namespace, that robot's camera
#: What vlm.launch.py suggests when the Hugging Face cache holds no VLM.
FETCH_VLM = "huggingface-cli download HuggingFaceTB/SmolVLM-256M-Instruct"


def hf_hub_cache(env: Optional[Mapping[str, str]] = None) -> str:
    """The Hugging Face hub cache folder, as huggingface_hub finds it."""
    if env is None:
        env = os.environ
    if env.get("HF_HUB_CACHE"):
        return env["HF_HUB_CACHE"]
    if env.get("HF_HOME"):
        return os.path.join(env["HF_HOME"], "hub")
    cache = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "huggingface", "hub")


def _is_vision_model(folder: str) -> bool:
    """An Idefics3-layout (SmolVLM) snapshot with its weights."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    arch = " ".join(config.get("architectures") or [])
    return (config.get("model_type") == "idefics3" or "Idefics3" in arch) and \
        bool(glob.glob(os.path.join(folder, "*.safetensors")))


def find_vision_model(given: str = "", env: Optional[dict] = None) -> str:
    """The model folder for vlm.launch.py.

    ``given`` when not empty, else the most recently fetched SmolVLM / Idefics3
    snapshot of the Hugging Face cache.

    Raises FileNotFoundError with one line naming the command that fetches one.
    """
    if given.strip():
        return given
    hub = hf_hub_cache(env)
    found = [os.path.dirname(c) for c in
             glob.glob(os.path.join(hub, "models--*", "snapshots", "*", "config.json"))]
    found = [f for f in found if _is_vision_model(f)]
    if not found:
        raise FileNotFoundError(
            f"vlm.launch.py: no model:=<folder> given and no SmolVLM/Idefics3 model in the "
            f"Hugging Face cache ({hub}); fetch one with `{FETCH_VLM}` or pass model:=<folder>")
    return max(found, key=os.path.getmtime)


def resolve_vision_model(context: Any) -> List[Any]:
    """Set the ``model`` launch configuration to a real folder (an OpaqueFunction body)."""
    from launch.actions import LogInfo, SetLaunchConfiguration
    given = context.launch_configurations.get("model", "")
    model = find_vision_model(given)
    out: List[Any] = [SetLaunchConfiguration("model", model)]
    if model != given:
        out.insert(0, LogInfo(msg=f"vlm.launch.py: model:={model} (from the Hugging Face cache)"))
    return out


def lifecycle_startup(node: Any, node_name: List[Any], condition: Any) -> List[Any]:
    """Actions that configure, then activate, ``node`` once it is up."""
    from lifecycle_msgs.msg import Transition
    try:
        from launch_ros.actions import LifecycleTransition
    except ImportError:  # Humble: chain the two ChangeState events by hand
        from launch.actions import EmitEvent, RegisterEventHandler
        from launch.events import matches_action
        from launch_ros.event_handlers import OnStateTransition
        from launch_ros.events.lifecycle import ChangeState

        def change(transition_id: int) -> Any:
            return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                               transition_id=transition_id))
        return [
            RegisterEventHandler(OnStateTransition(
                target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
                entities=[change(Transition.TRANSITION_ACTIVATE)], handle_once=True),
                condition=condition),
            EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                        transition_id=Transition.TRANSITION_CONFIGURE),
                      condition=condition),
        ]
    return [LifecycleTransition(
        lifecycle_node_names=[node_name],
        transition_ids=[Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE],
        condition=condition)]


def generate(vision: bool = False) -> Any:
    """The LaunchDescription of one edgellm node (``vision``: the VLM variant)."""
    # ROS 2's launch (a robot's install); PyPI's unrelated 'launch' package has no such name
    from launch import LaunchDescription  # type: ignore[attr-defined]
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.conditions import IfCondition
    from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
    from launch_ros.actions import LifecycleNode
    from launch_ros.substitutions import FindPackageShare

    args = [
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare(PACKAGE), "config",
                                                "edgellm.yaml"]),
            description="YAML file with the node's parameters"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node, its topics and /ask"),
        DeclareLaunchArgument("image_topic", default_value=DEFAULT_IMAGE_TOPIC,
                              description="camera topic (sensor_msgs/Image) the node reads"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate the node at launch"),
    ]
    parameters: List[Any] = [LaunchConfiguration("params_file")]
    if vision:
        args.append(DeclareLaunchArgument(
            "model", default_value="",
            description="vision-language model folder (SmolVLM / Idefics3 layout); empty = "
                        "the newest SmolVLM in the Hugging Face cache"))
        args.append(OpaqueFunction(function=resolve_vision_model))
        parameters.append({"model": LaunchConfiguration("model")})
    node = LifecycleNode(
        package=PACKAGE, executable=EXECUTABLE, name=NODE_NAME,
        namespace=LaunchConfiguration("namespace"),
        parameters=parameters,
        remappings=[(IMAGE_INPUT, LaunchConfiguration("image_topic"))],
        output="screen", emulate_tty=True)
    startup = lifecycle_startup(
        node, [LaunchConfiguration("namespace"), "/" + NODE_NAME],
        IfCondition(LaunchConfiguration("autostart")))
    return LaunchDescription(args + [node] + startup)
