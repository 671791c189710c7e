"""Fused ops: ops that keep forward state, and their backward as one graph node.

A fused op (conv, the norms, attention, the RNN layers, softmax cross-entropy, linear) keeps
what its forward computed (an im2col matrix, statistics, probabilities, gates) and has two
backward bodies: `backward_arrays`, the fast kernel that reuses that state, and
`gradient_composed`, the same derivative built from ops. Its `gradient` is written once, here:
one `FusedBackward` node whose `compute` is the fast kernel (so the default graph backward
costs what `backward(create_graph=False)` costs) and whose own `gradient` differentiates the
composed rule (so second and higher derivatives work). On the fast path the same `gradient`
runs on NDArrays and `FusedBackward(...)(...)` is the kernel call itself.
"""
from __future__ import annotations

from ..autograd import (
    Tensor, TensorOp, TensorTuple, TensorTupleOp, Value, enable_grad, is_grad_enabled, partials,
)
from .ops_shape import promote_pair


class _FusedRule:
    """The one `gradient` of a fused op (see `FusedOp`)."""

    __slots__ = ()
    array_rule = True

    def backward_arrays(self, out_grad, inputs: tuple, needs: tuple) -> tuple:
        """The fast backward on NDArrays: one gradient per input (None where `needs` is
        False), reusing what `compute` kept."""
        raise NotImplementedError

    def gradient_composed(self, out_grad, *inputs) -> tuple:
        """The same partial adjoints built from ops, as a function of the inputs alone (what
        second derivatives differentiate). Tensors in, Tensors out; None for an input that has
        no gradient."""
        raise NotImplementedError

    def gradient(self, out_grad, node):
        needs = node.needs_input_grad
        parts = iter(FusedBackward(self, needs)(out_grad, *node.inputs))
        return tuple(next(parts) if n else None for n in needs)


class FusedBackward(TensorTupleOp):
    """The gradient of a fused op as one node (PyTorch's `convolution_backward` is the model).

    Inputs: (out_grad, *forward inputs); value: the gradients of the inputs that need one.
    `compute` is the forward op's fast kernel, so the default graph backward costs what the
    fast path costs; `gradient` differentiates the forward op's composed rule, so second and
    higher derivatives work.
    """

    __slots__ = ("forward", "needs")
    array_rule = True

    def __init__(self, forward, needs: tuple):
        self.forward = forward
        self.needs = needs

    def __repr__(self):
        return f"{self.forward!r}Backward"

    def compute(self, out_grad, *inputs):
        grads = self.forward.backward_arrays(out_grad, inputs, self.needs)
        return tuple(g for g, n in zip(grads, self.needs) if n)

    def gradient(self, out_grad, node):
        def rule(g, *inputs):
            parts = self.forward.gradient_composed(g, *inputs)
            return [p for p, n in zip(parts, self.needs) if n]

        return vjp_of(rule, node, out_grad)


def vjp_of(fn, node, cotangent):
    """Partial adjoints of `fn` at `node.inputs` contracted with `cotangent`, by the graph.

    `fn(*inputs)` returns a list of Tensors (one per entry of the tuple `cotangent`). On
    Tensors the partials are graphs (the reverse pass stops at the inputs, so each partial is
    the direct one); on the fast path's NDArrays, `fn` runs on fresh leaves and the partials
    are NDArrays."""
    if isinstance(node, Value):
        # The composed rule must be recorded even when the caller's backward does not
        # record (create_graph=False): its graph is what the partials are taken of.
        create = is_grad_enabled()
        with enable_grad():
            outs = fn(*node.inputs)
            return partials(outs, list(cotangent), node.inputs, create_graph=create)
    with enable_grad():
        leaves = [(TensorTuple if isinstance(x, tuple) else Tensor).make_const(
            x, requires_grad=n) for x, n in zip(node.inputs, node.needs_input_grad)]
        outs = fn(*leaves)
        cots = [Tensor.make_const(c) for c in cotangent]
        grads = partials(outs, cots, leaves, create_graph=False)
    return tuple(None if g is None else g.realize_cached_data() for g in grads)




class FusedOp(_FusedRule, TensorOp):
    """A single-output op with a fused backward that reuses forward state (conv, the norms,
    attention, softmax cross-entropy, linear). Subclasses write `compute`,
    `backward_arrays` (the fast kernel) and `gradient_composed` (the rule as ops); `gradient`
    is shared: one `FusedBackward` node."""

    __slots__ = ()


class FusedTupleOp(_FusedRule, TensorTupleOp):
    """`FusedOp` for ops whose value is a tuple (the RNN layers: outputs and final states)."""

    __slots__ = ()




class Linear(FusedOp):
    """x @ weight + bias as one op: x (..., in), weight (in, out), bias (out,) or (1, out)
    (course layout), or x @ weight without a bias. The forward adds the bias in place into the
    product; the backward sums the output gradient over its rows for the bias gradient."""

    __slots__ = ()

    def compute(self, x, w, b=None):
        if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
            raise ValueError(f"linear: input of shape {x.shape} does not match weight of shape "
                             f"{w.shape} (in_features, out_features)")
        if b is not None and b.size != w.shape[1]:
            raise ValueError(f"linear: bias of shape {b.shape} for {w.shape[1]} outputs")
        if x.dtype != w.dtype:  # promote as the elementwise ops do (float64 x, float32 w)
            x, w = promote_pair(x, w)
        out = x.reshape((-1, w.shape[0])) @ w
        if b is not None:
            out += b.reshape((w.shape[1],))
        return out.reshape(x.shape[:-1] + (w.shape[1],))

    def backward_arrays(self, g, inputs, needs):
        x, w = inputs[0], inputs[1]
        n_in, n_out = w.shape
        g2 = g.reshape((-1, n_out))
        gx = (g2 @ w.transpose()).reshape(x.shape) if needs[0] else None
        gw = x.reshape((-1, n_in)).transpose() @ g2 if needs[1] else None
        if len(inputs) == 2:
            return gx, gw
        gb = None
        if needs[2]:
            gb = g2.sum((0,)).reshape(inputs[2].shape)
        return gx, gw, gb

    def gradient_composed(self, g, x, w, b=None):
        n_in, n_out = w.shape
        g2 = g.reshape((-1, n_out))
        gx = (g2 @ w.transpose()).reshape(x.shape)
        gw = x.reshape((-1, n_in)).transpose() @ g2
        if b is None:
            return gx, gw
        return gx, gw, g2.sum((0,)).reshape(b.shape)


def linear(x, weight, bias=None):
    """x @ weight + bias in one op (see `Linear`)."""
    return Linear()(x, weight) if bias is None else Linear()(x, weight, bias)
