"""Start the edgellm lifecycle node on a language model; it configures and activates itself.

    ros2 launch edgellm_ros llm.launch.py
    ros2 launch edgellm_ros llm.launch.py params_file:=/path/to/edgellm.yaml namespace:=robot1

Arguments: params_file, namespace, image_topic, autostart (see
edgellm_ros/ros/launch_description.py). The model comes from the params file
(default: the embedded SmolLM2-135M-Instruct).
"""

from edgellm_ros.ros.launch_description import generate


def generate_launch_description():
    return generate(vision=False)
