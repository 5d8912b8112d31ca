"""ONNX export of the graphs every backend runs."""
