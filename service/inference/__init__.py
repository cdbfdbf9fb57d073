"""Model loading, adapters and ONNX Runtime sessions."""
