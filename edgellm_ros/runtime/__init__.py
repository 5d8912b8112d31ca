"""The runtime: generation, sampling, EAGLE, LoRA, vision and the engine that composes them (no rclpy)."""
