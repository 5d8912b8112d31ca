"""Start the edgellm lifecycle node on a vision-language model reading a camera topic.

    ros2 launch edgellm_ros vlm.launch.py model:=/models/SmolVLM image_topic:=/cam/image

Arguments: model (required), params_file, namespace, image_topic, autostart
(see edgellm_ros/ros/launch_description.py).
"""

from edgellm_ros.ros.launch_description import generate


def generate_launch_description():
    return generate(vision=True)
