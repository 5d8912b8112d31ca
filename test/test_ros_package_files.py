"""The package metadata is valid and colcon installed what ROS 2 tools look for."""

import os
import runpy
from unittest import mock

from ament_index_python.packages import get_package_prefix, get_package_share_directory
from catkin_pkg.package import parse_package
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from support import REPO

from edgellm_ros.msg import Token
from edgellm_ros.srv import Ask


def test_package_xml_is_valid_format_3_ament_cmake():
    pkg = parse_package(REPO)
    pkg.validate()
    assert pkg.name == "edgellm_ros" and pkg.package_format == 3
    assert pkg.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in [g.name for g in pkg.member_of_groups]
    assert {"rclpy", "lifecycle_msgs", "launch_ros"} <= {d.name for d in pkg.exec_depends}


def test_colcon_installed_the_executable_launch_config_and_interfaces():
    prefix = get_package_prefix("edgellm_ros")
    share = get_package_share_directory("edgellm_ros")
    assert os.access(os.path.join(prefix, "lib", "edgellm_ros", "edgellm_node"), os.X_OK)
    for rel in ("package.xml", "launch/llm.launch.py", "launch/vlm.launch.py",
                "config/edgellm.yaml", "msg/Token.msg", "srv/Ask.srv", "vocab/smollm2-135m-instruct.json"):
        assert os.path.isfile(os.path.join(share, rel)), rel
    with open(os.path.join(prefix, "share", "ament_index", "resource_index",
                           "rosidl_interfaces", "edgellm_ros")) as f:
        assert set(f.read().split()) >= {"msg/Token.msg", "msg/ChatMessage.msg",
                                         "msg/Status.msg", "msg/GoalRejection.msg",
                                         "srv/Ask.srv", "action/Generate.action"}
    # one Python package: the generated interfaces beside our modules
    import edgellm_ros.msg
    installed = os.path.dirname(os.path.dirname(edgellm_ros.msg.__file__))
    assert installed.startswith(prefix)
    assert os.path.isfile(os.path.join(installed, "ros", "node.py"))


def test_interfaces_have_the_fields_of_the_contract():
    assert set(Ask.Request.get_fields_and_field_types()) == {
        "prompt", "system_prompt", "use_image", "image", "max_new_tokens", "temperature",
        "top_k", "top_p", "seed", "stop", "lora", "images", "messages", "json_schema", "grammar"}
    assert Ask.Request.get_fields_and_field_types()["image"] == "sensor_msgs/Image"
    assert set(Ask.Response.get_fields_and_field_types()) == {
        "success", "error_code", "message", "text", "request_id", "finish_reason",
        "prompt_tokens", "cached_tokens", "generated_tokens", "time_to_first_token",
        "tokens_per_second", "draft_steps", "drafted_tokens", "accepted_tokens",
        "mean_acceptance_length"}
    assert set(Token.get_fields_and_field_types()) == {
        "header", "request_id", "index", "text", "done", "finish_reason"}


def test_setup_py_installs_the_runtime_and_the_edgellm_command():
    with mock.patch("setuptools.setup") as setup:
        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            runpy.run_path(os.path.join(REPO, "setup.py"), run_name="__main__")
        finally:
            os.chdir(cwd)
    kw = setup.call_args.kwargs
    assert kw["entry_points"]["console_scripts"] == ["edgellm = edgellm_ros.cli:main"]
    # ranges (requirements/runtime.txt), so that pip install . takes any pinned set as
    # constraints: each set's pins (the development set and both robot sets) satisfy them
    assert "onnxruntime>=1.23.2" in kw["install_requires"]

    def pins_of(name):
        with open(os.path.join(REPO, "requirements", name), encoding="utf-8") as f:
            return dict((canonicalize_name(n), v) for n, v in
                        (ln.split("#")[0].strip().split("==") for ln in f if ln.split("#")[0].strip()))

    for name in ("constraints.txt", "jetpack6.txt", "jetpack7.txt"):
        pins = pins_of(name)
        for r in map(Requirement, kw["install_requires"]):
            assert pins[canonicalize_name(r.name)] in r.specifier, (name, str(r))
    # the remote extra: the development set and each robot set's remote file pin it
    assert [Requirement(r).name for r in kw["extras_require"]["remote"]] == ["openai"]
    for name in ("constraints.txt", "jetpack6-remote.txt", "jetpack7-remote.txt"):
        pins = pins_of(name)
        for r in map(Requirement, kw["extras_require"]["remote"]):
            assert pins[canonicalize_name(r.name)] in r.specifier, (name, str(r))
    assert {"edgellm_ros", "edgellm_ros.ros"} <= set(kw["packages"])
