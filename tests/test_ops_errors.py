"""Errors that teach: shape errors name the op and the shapes when the Tensor is created, never
a NumPy message from deep inside; anomaly detection names the op that produced nan/inf."""
import re

import numpy as np
import pytest

import needle as ndl
from needle import autograd, ops

NUMPY_WORDS = re.compile(r"operands could not be broadcast|cannot reshape array|"
                         r"mismatch in its core dimension|AxisError|is out of bounds for array")


def _t(*shape):
    return ndl.Tensor(np.random.randn(*shape))


def _raises(fn, *words, exc=ValueError):
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    assert not NUMPY_WORDS.search(msg), msg
    assert type(info.value).__module__ != "numpy.exceptions", type(info.value)
    return msg


def test_matmul_inner_dimensions_differ():
    _raises(lambda: ops.matmul(_t(3, 4), _t(5, 2)), "matmul", "(3, 4)", "(5, 2)")
    _raises(lambda: _t(3, 4) @ _t(5, 2), "matmul", "(3, 4)", "(5, 2)")


def test_matmul_batch_dims_do_not_broadcast():
    _raises(lambda: ops.matmul(_t(2, 3, 4), _t(5, 4, 2)), "matmul", "(2, 3, 4)", "(5, 4, 2)")


def test_matmul_of_vector_or_scalar_is_a_clear_error_or_works():
    try:
        out = ops.matmul(_t(3, 4), _t(4))
    except ValueError as e:
        assert "matmul" in str(e)
    else:
        assert out.shape == (3,)


@pytest.mark.parametrize("fn, name", [(ops.add, "add"), (ops.multiply, "mul"),
                                      (ops.divide, "div"), (ops.power, "pow")])
def test_elementwise_mismatched_shapes(fn, name):
    msg = _raises(lambda: fn(_t(3, 4), _t(4, 3)), "(3, 4)", "(4, 3)")
    assert name in msg.lower(), msg


def test_operator_add_mismatched_shapes():
    msg = _raises(lambda: _t(2, 3) + _t(3, 2), "(2, 3)", "(3, 2)")
    assert "add" in msg.lower()


def test_reshape_to_wrong_size():
    _raises(lambda: ops.reshape(_t(3, 4), (5, 2)), "reshape", "(3, 4)", "(5, 2)")


@pytest.mark.parametrize("axes", [2, (0, 2), -3])
def test_summation_axis_out_of_range(axes):
    _raises(lambda: ops.summation(_t(3, 4), axes), "summation")


def test_logsumexp_axis_out_of_range():
    _raises(lambda: ops.logsumexp(_t(3, 4), 5), "logsumexp")


def test_broadcast_to_incompatible():
    _raises(lambda: ops.broadcast_to(_t(3, 2), (3, 3)), "broadcast_to", "(3, 2)", "(3, 3)")
    _raises(lambda: ops.broadcast_to(_t(2, 3), (3,)), "broadcast_to")


def test_transpose_and_permute_bad_axes():
    _raises(lambda: ops.transpose(_t(2, 3), (0, 2)), "transpose")
    _raises(lambda: ops.permute(_t(2, 3, 4), (0, 1)), "permute")


def test_stack_of_different_shapes():
    _raises(lambda: ops.stack([_t(2, 3), _t(3, 2)], 0), "stack")


def test_anomaly_detection_names_the_op():
    x = ndl.Tensor(np.array([-1.0, 1.0]))
    with autograd.detect_anomaly(), np.errstate(invalid="ignore"), \
            pytest.raises(FloatingPointError) as info:
        ops.log(x)
    assert "Log" in str(info.value) or "log" in str(info.value)
    # off again: nan passes through silently, as in NumPy
    with np.errstate(invalid="ignore"):
        y = ops.log(x)
    assert np.isnan(y.numpy()[0])


def test_anomaly_detection_in_backward():
    x = ndl.Tensor(np.array([0.0, 1.0]))
    y = ops.power_scalar(x, 0.5).sum()
    with autograd.detect_anomaly(), pytest.raises(FloatingPointError), \
            np.errstate(divide="ignore", invalid="ignore"):
        y.backward()


def test_anomaly_detection_in_lazy_mode():
    x = ndl.Tensor(np.array([-1.0, 1.0]))
    with autograd.lazy_mode():
        y = ops.log(x) * 2.0
    with autograd.detect_anomaly(), np.errstate(invalid="ignore"), \
            pytest.raises(FloatingPointError) as info:
        y.numpy()
    assert "og" in str(info.value)


def test_dilate_and_undilate_reject_out_of_range_axes():
    x = ndl.Tensor(np.ones((2, 3), dtype=np.float32))
    for fn in (ndl.dilate, ndl.undilate):
        with pytest.raises(ValueError) as info:
            fn(x, (0, 2), 1)
        msg = str(info.value)
        assert "dilate" in msg and "axis 2" in msg and "(2, 3)" in msg
    with pytest.raises(ValueError, match="dilation must be >= 0"):
        ndl.dilate(x, (0,), -1)


def test_fused_layer_op_errors_name_the_op_and_shapes():
    _raises(lambda: ops.linear(_t(4, 3), _t(5, 2)), "linear", "(4, 3)", "(5, 2)")
    _raises(lambda: ops.linear(_t(4, 3), _t(3, 2), _t(3)), "linear", "bias", "(3,)")
    _raises(lambda: ops.layer_norm(_t(2, 5), _t(4), _t(4)), "layer_norm", "(4,)", "(2, 5)")
    _raises(lambda: ops.layer_norm(_t(2, 5), _t(5)), "layer_norm", "together")
    _raises(lambda: ops.batch_norm_train(_t(2, 3, 4, 4), _t(4), _t(4), (0, 2, 3)),
            "batch_norm", "(4,)", "(2, 3, 4, 4)")
    _raises(lambda: ops.batch_norm_train(_t(2, 3), axes=(0, 5)), "batch_norm", "axis 5")
