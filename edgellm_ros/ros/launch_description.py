"""The launch description behind launch/llm.launch.py and launch/vlm.launch.py.

One ``edgellm_node`` as a launch_ros ``LifecycleNode`` that configures and
activates itself (``autostart:=false`` leaves that to your lifecycle
manager), with launch arguments:

- ``params_file``: the node's parameters (default: the package's
  config/edgellm.yaml);
- ``namespace``: the node's namespace (default: none, so /edgellm and /ask);
- ``image_topic``: what the node's ``image`` input is remapped to;
- ``autostart``: true = configure then activate at launch;
- ``model`` (vlm only, required): the vision-language model folder, given
  after the params file so it wins.

The transitions use launch_ros ``LifecycleTransition`` (Iron and newer); on
Humble, which lacks it, the equivalent ChangeState event chain. launch and
launch_ros are imported only when a description is built: they come with a
ROS 2 install and are not on PyPI.
"""

from __future__ import annotations

from typing import Any, List

PACKAGE = "edgellm_ros"
EXECUTABLE = "edgellm_node"
NODE_NAME = "edgellm"
#: The node's image input (a relative name), remapped by ``image_topic``.
IMAGE_INPUT = "image"
DEFAULT_IMAGE_TOPIC = "/camera/image_raw"


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
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument
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
            "model", description="vision-language model folder (SmolVLM / Idefics3 layout)"))
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
