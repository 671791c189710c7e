"""ONNX export: `export(model, example_input, path)` traces the eval forward into ONNX.

Needs the optional `onnx` package (`pip install 'needle-dlsys[onnx]'`, which also brings
`onnxruntime` to run the result); importing this module does not.
"""
from .export import ExportError, export, to_model_proto
from .graph import OPSET

__all__ = ["ExportError", "export", "to_model_proto", "OPSET"]
