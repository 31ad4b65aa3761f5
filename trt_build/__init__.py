"""Model export (ONNX), parity checks, TensorRT engines and Triton repository generation."""
