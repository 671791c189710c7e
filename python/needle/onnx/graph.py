"""A small builder over the `onnx` package's helpers: named values, initializers, nodes."""
from __future__ import annotations

import numpy as np

from ..errors import UserError

OPSET = 18


class ExportError(UserError, ValueError):
    """A model or op that the ONNX exporter cannot express."""


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError("needle.onnx needs the `onnx` package: pip install 'needle-dlsys[onnx]' "
                          "(or pip install onnx onnxruntime)") from None
    return onnx


class GraphBuilder:
    """Collects ONNX nodes and initializers; every value gets a fresh name."""

    def __init__(self):
        self.onnx = require_onnx()
        self.nodes, self.initializers = [], []
        self._count = 0

    def fresh(self, hint: str = "v") -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value, hint: str = "const", dtype=None) -> str:
        """An initializer holding `value` (a NumPy array or a Python number/list)."""
        arr = np.asarray(value, dtype=dtype)
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(
            np.ascontiguousarray(arr), name=name))
        return name

    def ints(self, values, hint: str = "ints") -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), hint)

    def node(self, op_type: str, inputs, n_out: int = 1, **attrs):
        """Add one node; returns its output name (or a list of names when n_out > 1)."""
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), outs,
                                                     name=self.fresh("n_" + op_type), **attrs))
        return outs[0] if n_out == 1 else outs
