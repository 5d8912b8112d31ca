"""pip install of the runtime and its command line (``edgellm``), without ROS.

The ROS 2 package itself (interfaces, node, launch files) builds with colcon
and ament_cmake (CMakeLists.txt); see README.md. Installing with pip gives the
runtime, the ``edgellm`` command and the ROS-layer sources (usable once a ROS 2
environment provides rclpy and the generated edgellm_ros.msg/.srv).
"""

import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "edgellm_ros"


def requirements(name):
    """Requirement lines of requirements/<name>.txt (comments dropped)."""
    with open(os.path.join(HERE, "requirements", name), encoding="utf-8") as f:
        return [ln.split("#")[0].strip() for ln in f if ln.split("#")[0].strip()]


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, PACKAGE + ".*"]),
    python_requires=">=3.10",
    install_requires=requirements("runtime.txt"),
    # backend: remote (an OpenAI-compatible server) needs the openai client
    extras_require={"remote": requirements("remote.txt")},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch",
         sorted(os.path.join("launch", f) for f in os.listdir(os.path.join(HERE, "launch"))
                if f.endswith(".py"))),
        ("share/" + PACKAGE + "/config", ["config/edgellm.yaml"]),
    ] + [
        # shipped LoRA adapters, EAGLE drafts and reduced vocabularies, one data_files entry per folder
        ("share/" + PACKAGE + "/" + root, [os.path.join(root, f) for f in files])
        for top in ("adapters", "drafts", "vocab") if os.path.isdir(os.path.join(HERE, top))
        for root, _, files in sorted(os.walk(top)) if files
    ],
    entry_points={"console_scripts": ["edgellm = edgellm_ros.cli:main"]},
    zip_safe=False,
    maintainer="edgellm_ros maintainers",
    maintainer_email="edgellm-ros@example.com",
    description="A small LLM/VLM next to the perception stack: runtime, CLI and ROS 2 node",
    license="Apache-2.0",
)
