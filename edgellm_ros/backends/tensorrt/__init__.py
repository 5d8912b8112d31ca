"""The TensorRT backend: engines built from the exported ONNX graphs, run through cuda-python."""
