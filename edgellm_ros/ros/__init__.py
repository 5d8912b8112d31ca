"""The ROS 2 layer: the lifecycle node, its parameters, a client and the demo.

Only this subpackage imports rclpy and the generated interfaces; the runtime
below it does not know ROS.
"""
