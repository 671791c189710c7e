"""The reverse passes over the graph: topological order, the graph backward and the fast one.

Below the autograd: these functions walk `Value` nodes (their `op`, `inputs`, `cached_data`,
`requires_grad`) and call each op's `gradient` rule; they make no Tensor themselves except
constants of a node's own class. `autograd` builds the public functions (`backward`,
`gradients`, `partials`) on them.
"""
from __future__ import annotations

from typing import List

from .backend_ndarray import ArrayNode, NDArray
from .grad_mode import MODE as _MODE


def check_finite(op, data, where="forward"):
    arrays = data if isinstance(data, tuple) else (data,)
    for a in arrays:
        if a is not None and a.dtype.kind == "f" and not a.isfinite():
            what = {"forward": "an output",
                    "backward": "a gradient (in its backward)",
                    "backward-sum": "a gradient (its backward's partial summed with the "
                                    "other partials of the same input)"}[where]
            raise FloatingPointError(
                f"{op!r}: produced a non-finite value (nan or inf) in {what} of shape "
                f"{a.shape} (anomaly detection is on)")


LEAF_GRAD_HOOKS: List = []
"""`fn(leaf, grad)` calls made by the fast backward the moment a leaf's gradient (an NDArray) is
final, before `.grad` is assigned: data-parallel training starts each bucket's all-reduce
there, while the rest of the backward runs."""


class _TupleNode(tuple):
    """A tuple-valued node's value seen by the fast backward (see `ArrayNode`)."""

    def realize_cached_data(self):
        return self


def _tuple_node(node):
    """The fast backward's view of a tuple-valued `node` (`ArrayNode.of` makes the others)."""
    view = _TupleNode(node.cached_data)
    view.inputs = tuple([x.cached_data for x in node.inputs])
    view.needs_input_grad = tuple(x.requires_grad for x in node.inputs)
    return view


class _Partials(list):
    """The partial gradients a node has received so far in a fast backward (a list of its
    own type: a rule's value is never taken for one)."""

    __slots__ = ()


def _sum_partials(parts: list):
    """The sum of a node's partial gradients (NDArrays, or tuples of them for a tuple node)."""
    if isinstance(parts[0], tuple):
        return tuple(_sum_partials(list(column)) for column in zip(*parts))
    if len(parts) == 2:  # an operator: `needle.compile` can fuse it with its neighbours
        return parts[0] + parts[1]
    return parts[0].device.add_n(parts)


def reverse_pass_fast(output, out_grad: NDArray) -> dict:
    """Reverse pass on NDArrays; returns {leaf: gradient NDArray}.

    Each op's one `gradient` rule runs on the nodes' values (see `Op.array_rule`), so no
    Tensor and no graph is made."""
    saved = _MODE.grad_enabled
    _MODE.grad_enabled = False
    anomaly = _MODE.detect_anomaly  # a pass does not toggle it midway
    leaves = {}
    try:
        grads = {output: out_grad}
        pop, get, view_of = grads.pop, grads.get, ArrayNode.of
        for node in reversed(find_topo_sort([output], only_requiring_grad=True)):
            grad = pop(node, None)
            if grad is None:
                continue
            op = node.op
            if type(grad) is _Partials:  # the partials from each use of the node, summed once
                grad = _sum_partials(grad)
            if op is None:
                leaves[node] = grad
                for hook in LEAF_GRAD_HOOKS:
                    hook(node, grad)
                continue
            if op.array_rule:
                view = (_tuple_node(node) if type(node.cached_data) is tuple
                        else view_of(node))
                partials = op.gradient(grad, view)
                if type(partials) is not tuple:
                    partials = tuple(partials) if isinstance(partials, list) else (partials,)
            else:
                wrapped = type(node).make_const(grad)  # a constant Tensor or TensorTuple
                partials = [None if p is None else p.realize_cached_data()
                            for p in op.gradient_as_tuple(wrapped, node)]
            if anomaly:
                for p in partials:
                    if p is not None:
                        check_finite(op, p, "backward")
            for inp, partial in zip(node.inputs, partials):
                if partial is None or not inp.requires_grad:
                    continue
                prev = get(inp)
                if prev is None:
                    grads[inp] = partial
                elif anomaly:  # summed at once: an overflow names the op whose partial it was
                    grads[inp] = total = _sum_partials([prev, partial])
                    check_finite(op, total, "backward-sum")
                elif type(prev) is _Partials:
                    prev.append(partial)
                else:
                    grads[inp] = _Partials((prev, partial))
    finally:
        _MODE.grad_enabled = saved
    return leaves


def reverse_pass(output, out_grad, create_graph, assign, stop=None, rule_nodes=None):
    """Reverse pass building Tensors; returns {node: gradient}. `output` and `out_grad` may be
    sequences (several outputs seeded at once); the walk does not go past nodes in `stop`.
    `rule_nodes(order)`, when given and the gradients are graphs, maps the nodes of the walk
    (inputs first) to the nodes their rules see instead (autograd: copies that hold the leaves
    weakly), or returns None (every node is its own); partials still go to each node's own
    inputs."""
    saved = _MODE.grad_enabled
    _MODE.grad_enabled = create_graph and saved
    try:
        if isinstance(output, (list, tuple)):
            grads = {}
            for o, g in zip(output, out_grad):
                grads[o] = g if o not in grads else grads[o] + g
            roots = list(grads)
        else:
            grads = {output: out_grad}
            roots = [output]
        order = find_topo_sort(roots, only_requiring_grad=True, stop=stop)
        seen = rule_nodes(order) if rule_nodes is not None and _MODE.grad_enabled else None
        for node in reversed(order):
            grad = grads.get(node) if not assign else grads.pop(node, None)
            if grad is None:
                continue
            op = node.op
            if assign:
                # A non-leaf's gradient graph reaches the node's users, which hold the node:
                # keeping that graph on `node.grad` would make a reference cycle per node that
                # only the garbage collector frees. Leaves keep the graph (x.grad.backward()).
                node.grad = (grad if op is None
                             else type(grad).make_const(grad.realize_cached_data()))
            if op is None or (stop is not None and node in stop):
                continue
            partials = op.gradient_as_tuple(grad, node if seen is None else seen[node])
            for inp, partial in zip(node.inputs, partials):
                if partial is None or not inp.requires_grad:
                    continue
                prev = grads.get(inp)
                grads[inp] = partial if prev is None else prev + partial
        return grads
    finally:
        _MODE.grad_enabled = saved


def find_topo_sort(node_list: List, only_requiring_grad: bool = False,
                   stop=None) -> List:
    """All nodes reachable from `node_list`, inputs before users (post-order DFS, iterative).

    Children are visited left to right, each node once. With `only_requiring_grad`, the walk
    does not enter nodes that need no gradient; nodes in `stop` are visited but not entered.
    """
    visited = set()
    order = []
    stop = stop or ()
    for root in node_list:
        if root in visited:
            continue
        visited.add(root)
        stack = [(root, iter(root.inputs if root not in stop else ()))]
        push, pop, add, append = stack.append, stack.pop, visited.add, order.append
        while stack:
            node, children = stack[-1]
            for child in children:
                if child not in visited and (child.requires_grad or not only_requiring_grad):
                    add(child)
                    push((child, iter(child.inputs if child not in stop else ())))
                    break
            else:
                pop()
                append(node)
    return order
