"""One function per needle op class: the ONNX nodes that compute the same value.

Each converter gets the graph builder `g`, the op, the ONNX names of the op's inputs, the
traced node (for shapes and dtypes) and the input Tensors; it returns the output name (or a
list of names for ops that return a TensorTuple).
"""
from __future__ import annotations

import numpy as np

from .graph import ExportError


def _dtype(node):
    return np.dtype(str(node.realize_cached_data().dtype))


def _elementwise(onnx_op):
    def convert(g, op, names, node, inputs):
        return g.node(onnx_op, names)
    return convert


def _scalar(onnx_op, reverse=False):
    def convert(g, op, names, node, inputs):
        s = g.const(np.asarray(op.scalar, dtype=_dtype(inputs[0])), "scalar")
        return g.node(onnx_op, [s, names[0]] if reverse else [names[0], s])
    return convert


def _reshape(g, op, names, node, inputs):
    return g.node("Reshape", [names[0], g.ints(node.shape, "shape")])


def _permute(g, op, names, node, inputs):
    return g.node("Transpose", [names[0]], perm=[int(a) % len(node.shape) for a in op.axes])


def _transpose(g, op, names, node, inputs):
    n = len(node.shape)
    i, j = (n - 2, n - 1) if op.axes is None else (op.axes[0] % n, op.axes[1] % n)
    perm = list(range(n))
    perm[i], perm[j] = perm[j], perm[i]
    return g.node("Transpose", [names[0]], perm=perm)


def _broadcast(g, op, names, node, inputs):
    return g.node("Expand", [names[0], g.ints(node.shape, "shape")])


def _axes_of(axes, ndim):
    if axes is None:
        return list(range(ndim))
    if isinstance(axes, int):
        axes = (axes,)
    return [int(a) % ndim for a in axes]


def _reduce(onnx_op):
    def convert(g, op, names, node, inputs):
        ndim = len(inputs[0].shape)
        axes = _axes_of(op.axes, ndim)
        return g.node(onnx_op, [names[0], g.ints(axes, "axes")],
                      keepdims=int(bool(getattr(op, "keepdims", False))))
    return convert


def _softmax(onnx_op):
    def convert(g, op, names, node, inputs):
        axes = _axes_of(op.axes, len(node.shape))
        if len(axes) != 1:
            raise ExportError(f"ONNX export: {type(op).__name__} over axes {op.axes} (only one "
                              f"axis is supported)")
        return g.node(onnx_op, names, axis=axes[0])
    return convert


def _linear(g, op, names, node, inputs):
    out = g.node("MatMul", names[:2])
    return g.node("Add", [out, names[2]]) if len(names) > 2 else out


def _conv(g, op, names, node, inputs):
    w = g.node("Transpose", [names[1]], perm=[3, 2, 0, 1])  # (K, K, Cin, Cout) -> OIHW
    k = int(inputs[1].shape[0])
    x = names[0] if op.nchw else g.node("Transpose", [names[0]], perm=[0, 3, 1, 2])
    p = int(op.padding)
    out = g.node("Conv", [x, w] + names[2:3], kernel_shape=[k, k], strides=[op.stride] * 2,
                 pads=[p] * 4)
    return out if op.nchw else g.node("Transpose", [out], perm=[0, 2, 3, 1])


def _maxpool(g, op, names, node, inputs):
    return g.node("MaxPool", names, kernel_shape=[op.kernel] * 2, strides=[op.stride] * 2,
                  pads=[op.padding] * 4)


def _avgpool(g, op, names, node, inputs):
    return g.node("AveragePool", names, kernel_shape=[op.kernel] * 2, strides=[op.stride] * 2,
                  pads=[op.padding] * 4, count_include_pad=1)


def _pad(g, op, names, node, inputs):
    lo = [lo for lo, _ in op.axes]
    hi = [hi for _, hi in op.axes]
    return g.node("Pad", [names[0], g.ints(lo + hi, "pads")], mode="constant")


def _dilate(g, op, names, node, inputs):
    """`dilation` zeros after every element along each axis: unsqueeze, pad, reshape."""
    x, shape = names[0], list(inputs[0].shape)
    d = int(op.dilation)
    for ax in sorted(int(a) % len(shape) for a in op.axes):
        if d == 0:
            break
        x = g.node("Unsqueeze", [x, g.ints([ax + 1])])
        rank = len(shape) + 1
        pads = [0] * (2 * rank)
        pads[rank + ax + 1] = d
        x = g.node("Pad", [x, g.ints(pads, "pads")], mode="constant")
        shape[ax] *= d + 1
        x = g.node("Reshape", [x, g.ints(shape, "shape")])
    return x


def _layer_norm(g, op, names, node, inputs):
    d = int(inputs[0].shape[-1])
    dt = _dtype(inputs[0])
    if len(names) == 1:
        scale, bias = g.const(np.ones(d, dt), "ones"), g.const(np.zeros(d, dt), "zeros")
    else:
        scale = g.node("Reshape", [names[1], g.ints([d])])
        bias = g.node("Reshape", [names[2], g.ints([d])])
    return g.node("LayerNormalization", [names[0], scale, bias], axis=-1, epsilon=op.eps)


def _attention(g, op, names, node, inputs):
    q, k, v = names
    n = len(inputs[0].shape)
    perm = list(range(n))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    dt = _dtype(inputs[0])
    scores = g.node("MatMul", [q, g.node("Transpose", [k], perm=perm)])
    scores = g.node("Mul", [scores, g.const(np.asarray(op._scale(inputs[0].shape), dt))])
    if op.mask is not None:
        scores = g.node("Add", [scores, g.const(op.mask.numpy().astype(dt), "mask")])
    return g.node("MatMul", [g.node("Softmax", [scores], axis=-1), v])


def _embedding(g, op, names, node, inputs, *, ids_name):
    idx = g.node("Cast", [ids_name], to=g.onnx.TensorProto.INT64)
    return g.node("Gather", [names[0], idx], axis=0)


def _stack(g, op, names, node, inputs):
    axis = int(op.axis) % len(node.shape)
    if names and isinstance(names[0], list):  # stack(make_tuple(...))
        names = names[0]
    parts = [g.node("Unsqueeze", [n, g.ints([axis])]) for n in names]
    return g.node("Concat", parts, axis=axis)


def _concatenate(g, op, names, node, inputs):
    if names and isinstance(names[0], list):
        names = names[0]
    return g.node("Concat", names, axis=int(op.axis) % len(node.shape))


def _getitem(g, op, names, node, inputs):
    index = op.index if isinstance(op.index, tuple) else (op.index,)
    shape = inputs[0].shape
    starts, ends, axes, steps, drop = [], [], [], [], []
    for ax, ix in enumerate(index):
        if isinstance(ix, slice):
            a, b, s = ix.indices(shape[ax])
            starts.append(a), ends.append(b), axes.append(ax), steps.append(s)
        elif isinstance(ix, (int, np.integer)):
            i = int(ix) % shape[ax]
            starts.append(i), ends.append(i + 1), axes.append(ax), steps.append(1)
            drop.append(ax)
        else:
            raise ExportError(f"ONNX export: indexing with {type(ix).__name__} is not "
                              f"supported (slices and ints are)")
    out = g.node("Slice", [names[0], g.ints(starts), g.ints(ends), g.ints(axes),
                           g.ints(steps)])
    return g.node("Reshape", [out, g.ints(node.shape, "shape")]) if drop else out


def _gate_rows(blocks, h):
    """Row indices that reorder gate blocks of height h into `blocks` order."""
    return np.concatenate([np.arange(b * h, (b + 1) * h) for b in blocks]).astype(np.int64)


def _recurrent(kind):
    # ONNX gate orders: LSTM i, o, f, c; GRU z, r, h; needle (PyTorch's): i, f, g, o; r, z, n
    order = {"RNN": [0], "LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2]}[kind]

    def convert(g, op, names, node, inputs):
        xw = inputs[0]
        h = int(inputs[1].shape[0])
        gates = len(order)
        dt = _dtype(xw)
        rows = _gate_rows(order, h)
        eye = np.eye(gates * h, dtype=dt)[rows]  # X (T, B, G*H) is already projected
        w = g.const(eye[None], "W")
        r = g.node("Gather", [g.node("Transpose", [names[1]], perm=[1, 0]), g.ints(rows)],
                   axis=0)
        r = g.node("Unsqueeze", [r, g.ints([0])])
        if kind == "GRU":
            rb = g.node("Gather", [names[2], g.ints(rows)], axis=0)
            b = g.node("Concat", [g.const(np.zeros(gates * h, dt)), rb], axis=0)
            b = g.node("Unsqueeze", [b, g.ints([0])])
            states = names[3:4]
        else:
            b = g.const(np.zeros((1, 2 * gates * h), dt), "B")
            states = names[2:]
        init = [g.node("Unsqueeze", [s, g.ints([0])]) for s in states]
        attrs = dict(hidden_size=h)
        if kind == "RNN":
            attrs["activations"] = ["Tanh" if op.nonlinearity == "tanh" else "Relu"]
        if kind == "GRU":
            attrs["linear_before_reset"] = 1
        n_out = 3 if kind == "LSTM" else 2
        outs = g.node(kind, [names[0], w, r, b, ""] + init, n_out=n_out, **attrs)
        y = g.node("Squeeze", [outs[0], g.ints([1])])
        return [y] + [g.node("Squeeze", [o, g.ints([0])]) for o in outs[1:]]
    return convert


CONVERTERS = {
    "EWiseAdd": _elementwise("Add"), "EWiseMul": _elementwise("Mul"),
    "EWiseDiv": _elementwise("Div"), "EWisePow": _elementwise("Pow"),
    "Negate": _elementwise("Neg"), "ReLU": _elementwise("Relu"), "Tanh": _elementwise("Tanh"),
    "Sigmoid": _elementwise("Sigmoid"), "Exp": _elementwise("Exp"), "Log": _elementwise("Log"),
    "Sqrt": _elementwise("Sqrt"), "MatMul": _elementwise("MatMul"),
    "Maximum": _elementwise("Max"),
    "AddScalar": _scalar("Add"), "MulScalar": _scalar("Mul"), "DivScalar": _scalar("Div"),
    "PowerScalar": _scalar("Pow"), "ScalarPower": _scalar("Pow", reverse=True),
    "Reshape": _reshape, "Permute": _permute, "Transpose": _transpose,
    "BroadcastTo": _broadcast, "Summation": _reduce("ReduceSum"), "Max": _reduce("ReduceMax"),
    "LogSumExp": _reduce("ReduceLogSumExp"), "Softmax": _softmax("Softmax"),
    "LogSoftmax": _softmax("LogSoftmax"), "Linear": _linear, "Conv": _conv,
    "MaxPool2d": _maxpool, "AvgPool2d": _avgpool, "Pad": _pad, "Dilate": _dilate,
    "LayerNorm": _layer_norm, "ScaledDotProductAttention": _attention, "Stack": _stack,
    "Concatenate": _concatenate, "GetItem": _getitem, "RNNLayer": _recurrent("RNN"),
    "LSTMLayer": _recurrent("LSTM"), "GRULayer": _recurrent("GRU"),
}
