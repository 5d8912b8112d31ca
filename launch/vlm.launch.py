"""Start the edgellm lifecycle node on a vision-language model reading a camera topic.

    ros2 launch edgellm_ros vlm.launch.py image_topic:=/cam/image
    ros2 launch edgellm_ros vlm.launch.py model:=/models/SmolVLM image_topic:=/cam/image

Arguments: model (default: the newest SmolVLM / Idefics3 model in the Hugging
Face cache; none there: the launch fails naming the command that fetches one),
params_file, namespace, image_topic, autostart (see
edgellm_ros/ros/launch_description.py).
"""

from edgellm_ros.ros.launch_description import generate


def generate_launch_description():
    return generate(vision=True)
