"""Trace a needle model's eval-mode forward and write it as an ONNX graph.

Tracing runs the forward once on `example_input` with only the input (and the embedding
tables, whose lookups carry the input's ids inside the op) requiring grad, so the recorded
graph holds exactly the nodes that depend on the input; everything else (parameters, BatchNorm
running statistics folded into scales, masks, positional tables) is a constant and becomes an
ONNX initializer. Each recorded node is converted by `converters.CONVERTERS`; an op without a
converter is an error naming it. Shapes are those of the example input (a fixed batch size).
"""
from __future__ import annotations

import os

import numpy as np

from ..autograd import Tensor, TensorTuple, enable_grad, find_topo_sort
from ..nn import Embedding, Module
from .converters import CONVERTERS, _embedding
from .graph import OPSET, ExportError, GraphBuilder, require_onnx

__all__ = ["ExportError", "export", "to_model_proto"]


def _flatten(out):
    if out is None:
        return []
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, TensorTuple):
        return [out[i] for i in range(len(out))]
    return [out]


def _trace(model: Module, example):
    data = example.realize_cached_data() if isinstance(example, Tensor) else None
    if data is None:
        example = Tensor(np.asarray(example))
        data = example.realize_cached_data()
    x = Tensor.make_const(data, requires_grad=True)
    params = model.parameters()
    saved = [p.requires_grad for p in params]
    tables = {id(m.weight) for m in model.modules_list() if isinstance(m, Embedding)}
    was_training = model.training
    try:
        for p in params:
            p.requires_grad = id(p) in tables
        model.eval()
        with enable_grad():
            outputs = _flatten(model(x))
    finally:
        for p, r in zip(params, saved):
            p.requires_grad = r
        model.train(was_training)
    if not outputs:
        raise ExportError(f"ONNX export: {type(model).__name__}.forward returned no tensors")
    return x, outputs


def to_model_proto(model: Module, example_input, *, input_name: str = "input",
                   output_names=None, opset: int = OPSET):
    """The ONNX ModelProto of `model`'s eval forward on `example_input` (checked)."""
    onnx = require_onnx()
    x, outputs = _trace(model, example_input)
    ids = x.realize_cached_data().numpy()
    g = GraphBuilder()
    names = {id(x): input_name}
    tuple_names = {}
    for node in find_topo_sort(outputs):
        if id(node) in names:
            continue
        if node.op is None:  # a constant: parameters, buffers, folded subexpressions
            names[id(node)] = g.const(node.realize_cached_data().numpy(), "init")
            continue
        kind = type(node.op).__name__
        inputs = list(node.inputs)
        in_names = []
        for t in inputs:
            if id(t) not in names and id(t) not in tuple_names:
                raise ExportError(f"ONNX export: input of {kind} was not traced")
            in_names.append(names.get(id(t)) or tuple_names[id(t)])
        if kind == "TupleGetItem":
            names[id(node)] = in_names[0][node.op.index]
            continue
        if kind == "MakeTensorTuple":
            tuple_names[id(node)] = in_names
            continue
        if kind == "EmbeddingLookup":
            if tuple(node.op.ids.shape) != tuple(ids.shape) or not np.array_equal(
                    node.op.ids.numpy(), ids.astype(node.op.ids.numpy().dtype)):
                raise ExportError("ONNX export: an Embedding looked up ids other than the "
                                  "model's input")
            names[id(node)] = _embedding(g, node.op, in_names, node, inputs,
                                         ids_name=input_name)
            continue
        conv = CONVERTERS.get(kind)
        if conv is None:
            raise ExportError(f"ONNX export: op {kind} (in {type(model).__name__}) has no ONNX "
                              f"converter; supported: {', '.join(sorted(CONVERTERS))}")
        out = conv(g, node.op, in_names, node, inputs)
        if isinstance(out, list):
            tuple_names[id(node)] = out
        else:
            names[id(node)] = out
    if output_names is None:
        output_names = ["output"] + [f"output_{i}" for i in range(1, len(outputs))]
    if len(output_names) != len(outputs):
        raise ExportError(f"ONNX export: {len(outputs)} outputs but {len(output_names)} "
                          f"output_names")
    helper = onnx.helper
    graph_outputs = []
    for out, oname in zip(outputs, output_names):
        g.nodes.append(helper.make_node("Identity", [names[id(out)]], [oname]))
        dt = helper.np_dtype_to_tensor_dtype(np.dtype(str(out.dtype)))
        graph_outputs.append(helper.make_tensor_value_info(oname, dt, list(out.shape)))
    in_dt = helper.np_dtype_to_tensor_dtype(np.dtype(str(x.dtype)))
    graph = helper.make_graph(g.nodes, type(model).__name__, [
        helper.make_tensor_value_info(input_name, in_dt, list(x.shape))], graph_outputs,
        initializer=g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="needle")
    proto.ir_version = min(proto.ir_version, 10)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export(model: Module, example_input, path, **kwargs) -> str:
    """Write `model`'s eval-mode forward on `example_input` to the ONNX file `path`.

    The graph is checked with `onnx.checker` (shape inference included) before it is
    written; returns the path. Keyword arguments go to `to_model_proto` (`input_name`,
    `output_names`, `opset`)."""
    onnx = require_onnx()
    proto = to_model_proto(model, example_input, **kwargs)
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(folder, exist_ok=True)
    onnx.save(proto, os.fspath(path))
    return os.fspath(path)
