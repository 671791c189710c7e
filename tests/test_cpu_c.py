"""The CPU device's C kernels (cpu_c.py): direct convolution, im2col/col2im, batch norm, against
PyTorch and against the NumPy kernels they replace."""
import numpy as np
import pytest
import torch

import needle as ndl
from needle.backend_ndarray import cpu_c

pytestmark = pytest.mark.skipif(cpu_c.library() is None, reason="no working C compiler")


@pytest.mark.parametrize("n,h,cin,cout,k,stride,pad", [
    (3, 9, 16, 32, 3, 1, 1), (2, 10, 32, 16, 3, 2, 1), (2, 7, 1, 16, 3, 1, 1),
    (2, 8, 16, 48, 5, 1, 2), (3, 6, 32, 32, 1, 1, 0), (2, 9, 16, 16, 3, 2, 0),
    (1, 5, 3, 32, 3, 3, 1)])
def test_direct_conv_matches_torch(n, h, cin, cout, k, stride, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, cin, h, h)).astype(np.float32)
    w = rng.standard_normal((k, k, cin, cout)).astype(np.float32) * 0.2
    b = rng.standard_normal(cout).astype(np.float32)
    xt, wt, bt = ndl.Tensor(x), ndl.Tensor(w), ndl.Tensor(b)
    y = ndl.ops.conv_nchw(xt, wt, bt, stride=stride, padding=pad)
    g = rng.standard_normal(y.shape).astype(np.float32)
    (y * ndl.Tensor(g)).sum().backward()
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w.transpose(3, 2, 0, 1).copy(), requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride, pad)
    (ty * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(wt.grad.numpy(), tw.grad.numpy().transpose(2, 3, 1, 0),
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(bt.grad.numpy(), tb.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_direct_conv_equals_numpy_kernels(monkeypatch):
    """Same op, C kernels and the NumPy (im2col + matmul) kernels: equal to float rounding."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 16, 12, 12)).astype(np.float32)
    w = rng.standard_normal((3, 3, 16, 32)).astype(np.float32) * 0.1
    results = []
    for lib in (cpu_c.library(), None):
        monkeypatch.setattr(cpu_c, "library", lambda lib=lib: lib)
        xt, wt = ndl.Tensor(x), ndl.Tensor(w)
        y = ndl.ops.conv_nchw(xt, wt, stride=1, padding=1)
        assert (y.op._saved[1].ndim == 4) == (lib is not None)  # padded input vs im2col
        (y * y).sum().backward()
        results.append([y.numpy(), xt.grad.numpy(), wt.grad.numpy()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride,pad,c", [(1, 1, 16), (2, 1, 3), (2, 0, 8), (1, 2, 1)])
def test_im2col_col2im_equal_numpy(stride, pad, c):
    dev = ndl.cpu()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 9, 9, c)).astype(np.float32)
    ho = (9 + 2 * pad - 3) // stride + 1
    cols = np.empty((3, ho, ho, 3, 3, c), np.float32)
    ref = np.empty_like(cols)
    dev._im2col_into(x, cols, stride, pad, pad)
    super(cpu_c.CKernels, dev)._im2col_into(x, ref, stride, pad, pad)
    np.testing.assert_array_equal(cols, ref)
    d = rng.standard_normal(cols.shape).astype(np.float32)
    dx, dref = np.empty_like(x), np.empty_like(x)
    dev._col2im(d, dx, stride, pad)
    super(cpu_c.CKernels, dev)._col2im(d, dref, stride, pad)
    np.testing.assert_allclose(dx, dref, rtol=1e-5, atol=1e-5)


def test_batch_norm_c_matches_torch():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 16, 5, 5)).astype(np.float32) * 3 + 1
    # channels-last memory, as a conv's output is: the C kernels' layout
    xt = ndl.Tensor(x.transpose(0, 2, 3, 1).copy()).permute((0, 3, 1, 2))
    bn = ndl.nn.BatchNorm2d(16)
    y = bn(xt)
    g = rng.standard_normal(y.shape).astype(np.float32)
    (y * ndl.Tensor(g)).sum().backward()
    tx = torch.tensor(x, requires_grad=True)
    tbn = torch.nn.BatchNorm2d(16)
    ty = tbn(tx)
    (ty * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(bn.weight.grad.numpy(), tbn.weight.grad.numpy(), rtol=1e-4,
                               atol=1e-3)
    # the course's running variance averages the biased batch variance (torch: unbiased)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.9 + 0.1 * x.var(axis=(0, 2, 3)),
                               rtol=1e-5)
