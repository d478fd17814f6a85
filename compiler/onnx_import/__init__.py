"""ONNX import: an ONNX model read into a kiln Graph (converters in convert.py)."""
