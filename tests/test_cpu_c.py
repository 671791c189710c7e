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
    b = rng.standard_normal(32).astype(np.float32)
    results = []
    for lib in (cpu_c.library(), None):
        monkeypatch.setattr(cpu_c, "library", lambda lib=lib: lib)
        xt, wt, bt = ndl.Tensor(x), ndl.Tensor(w), ndl.Tensor(b)
        y = ndl.ops.conv_nchw(xt, wt, bt, stride=1, padding=1)
        assert (y.op._saved[1].ndim == 4) == (lib is not None)  # padded input vs im2col
        (y * y).sum().backward()  # the bias gradient in the weight gradient's pass, or not
        results.append([y.numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()])
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


def test_batch_norm_statistics_stay_accurate_far_from_zero():
    """One pass of float64 sums, shifted by the first row: a mean 1e4 times the spread
    still gives the variance to float32 rounding (an unshifted E[x^2] - E[x]^2 would not)."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((4096, 16)) * 0.01 + 100.0).astype(np.float32)
    dev = ndl.cpu()
    y, mean, rstd, var = dev._batch_norm_fwd(x, None, None, 1e-5, (0,))
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(var, x.astype(np.float64).var(axis=0), rtol=1e-4)


def test_pool_runs_every_block_and_serves_a_second_thread():
    """The C pool's blocks cover the range; a job asked for while another thread's runs is
    done alone on the asking thread (and still done)."""
    import threading

    lib = cpu_c.library()
    assert lib.pool_noop(1000, 2) in (1, 2)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(1 << 18).astype(np.float32)
    results = []

    def work():
        for _ in range(50):
            results.append(np.array_equal(ndl.cpu().relu(ndl.NDArray(x)).numpy(),
                                          np.maximum(x, 0)))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 150 and all(results)


def test_pool_works_in_a_forked_child():
    """A forked child has no pool workers; its first parallel kernel starts new ones."""
    import os

    x = np.arange(1 << 18, dtype=np.float32) - 1000.0
    ndl.cpu().relu(ndl.NDArray(x))  # the parent's workers exist now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        ok = np.array_equal(ndl.cpu().relu(ndl.NDArray(x)).numpy(), np.maximum(x, 0))
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("layout", ["c", "t", "sliced"])
def test_relu_and_its_gradient_equal_numpy(layout):
    rng = np.random.default_rng(6)
    base = rng.standard_normal((64, 9, 9, 16)).astype(np.float32)
    base[0, 0, 0, :4] = [np.nan, -0.0, np.inf, -np.inf]
    if layout == "c":
        x = base
    elif layout == "t":  # an NCHW view of NHWC memory, as a conv's output
        x = base.transpose(0, 3, 1, 2)
    else:  # not dense: the NumPy kernel
        x = base[:, ::2]
    g = rng.standard_normal(x.shape).astype(np.float32)
    dev = ndl.cpu()
    y = dev.relu(ndl.NDArray(x) if layout != "t" else
                 ndl.NDArray(base).permute((0, 3, 1, 2)))
    np.testing.assert_array_equal(y.numpy(), np.maximum(x, 0))
    gy = ndl.NDArray(g)
    dx = dev.relu_grad(gy, y).numpy()
    np.testing.assert_array_equal(dx, np.where(np.maximum(x, 0) > 0, g, 0))
    out = dev.empty(x.shape)  # the out= form the compiler's memory plan uses
    assert dev.relu_grad(gy, y, out=out) is out
    np.testing.assert_array_equal(out.numpy(), dx)


@pytest.mark.parametrize("a_shape,b_shape,ta,tb", [
    ((300, 200), (200, 150), False, False), ((300, 200), (200, 150), True, False),
    ((300, 200), (200, 150), False, True), ((3, 400, 20), (20, 300), False, False),
    ((4, 5, 70, 30), (4, 5, 30, 60), False, False), ((4, 5, 70, 30), (4, 5, 30, 60), True, True),
    ((1, 640), (640, 2000), False, False), ((20000, 64), (64, 1), False, False)])
def test_matrix_products_equal_numpy(a_shape, b_shape, ta, tb):
    """Needle's threaded products (NumPy's BLAS sgemm, one call per block of rows or columns)
    for row- and column-major operands, batches and matrices times a batch."""
    rng = np.random.default_rng(7)

    def make(shape, transposed):
        a = rng.standard_normal(shape).astype(np.float32)
        if transposed:  # the same values through a view with the last two axes swapped
            return np.swapaxes(np.ascontiguousarray(np.swapaxes(a, -1, -2)), -1, -2)
        return a

    a, b = make(a_shape, ta), make(b_shape, tb)
    assert a.size * b.shape[-1] >= cpu_c._MIN_PARALLEL_GEMM  # the threaded products
    got = (ndl.NDArray(a) @ ndl.NDArray(b)).numpy()
    np.testing.assert_allclose(got, np.matmul(a, b), rtol=1e-5, atol=1e-4)
    out = np.empty(got.shape, np.float32)
    assert ndl.cpu()._mm(a, b, out=out) is out
    np.testing.assert_array_equal(out, got)


class _RecordingLibrary:
    """Stands in for the C library: records the sgemm `blas.connect` hands it."""

    def __init__(self):
        self.configured = []

    def blas_configure(self, address, ilp64):
        self.configured.append((address, ilp64))


def test_blas_choice(monkeypatch):
    """NEEDLE_BLAS picks the sgemm: a bad value and a missing MKL are errors naming the fix;
    `openblas` hands over NumPy's OpenBLAS (set to one thread)."""
    from needle.backend_ndarray import blas

    monkeypatch.setenv("NEEDLE_BLAS", "atlas")
    with pytest.raises(ValueError, match="NEEDLE_BLAS='atlas': expected one of auto, mkl"):
        blas.connect(_RecordingLibrary())
    monkeypatch.setenv("NEEDLE_BLAS", "mkl")
    monkeypatch.setattr(blas, "_mkl", lambda: None)
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[mkl\]'"):
        blas.connect(_RecordingLibrary())
    saved = dict(blas._STATE)
    try:
        monkeypatch.setenv("NEEDLE_BLAS", "openblas")
        fake = _RecordingLibrary()
        if blas._openblas() is None:
            pytest.skip("NumPy has no OpenBLAS here")
        assert blas.connect(fake) and len(fake.configured) == 1
        assert blas.name().startswith("OpenBLAS")
    finally:
        blas._STATE.update(saved)


def test_describe_names_threads_kernels_and_blas():
    from needle.backend_ndarray import blas

    dev = ndl.cpu()
    saved = dev.get_num_threads()
    try:
        dev.set_num_threads(1)
        line = dev.describe()
        assert line.startswith("cpu: 1 thread, C kernels, matrix products by ")
        assert line.endswith(blas.name() or "NumPy's matmul")
    finally:
        dev.set_num_threads(saved)


def test_products_equal_numpy_with_mkl():
    """With the `mkl` extra installed, products through MKL's sgemm (sequential, split by
    needle's threads) equal NumPy's as OpenBLAS's do; the library is set back after."""
    from needle.backend_ndarray import blas

    mkl, openblas = blas._mkl(), blas._openblas()
    if mkl is None or openblas is None or not cpu_c._GEMM[0]:
        pytest.skip("the mkl package is not installed (pip install -e '.[mkl]')")
    lib, saved = cpu_c.library(), dict(blas._STATE)
    rng = np.random.default_rng(11)
    cases = [(rng.standard_normal((300, 200)), rng.standard_normal((200, 5000))),
             (rng.standard_normal((3000, 64)), rng.standard_normal((700, 64)).T),
             (rng.standard_normal((8, 4, 100, 32)), rng.standard_normal((8, 4, 32, 100)))]
    try:
        for gemm, ilp64, _ in (mkl, openblas):
            lib.blas_configure(gemm, int(ilp64))
            for a, b in cases:
                a, b = a.astype(np.float32), b.astype(np.float32)
                got = (ndl.NDArray(a) @ ndl.NDArray(b)).numpy()
                np.testing.assert_allclose(got, np.matmul(a, b), rtol=1e-5, atol=1e-4)
    finally:
        blas._STATE.update(saved)
        assert blas.connect(lib)


def test_batched_products_of_permuted_views_equal_numpy():
    """Attention's products: (B, H, T, d) heads that are permuted views of (B, T, H, d)
    memory (their leading axes do not fold into one stride), each matrix read in place."""
    rng = np.random.default_rng(8)
    q = rng.standard_normal((4, 64, 4, 32)).astype(np.float32).transpose(0, 2, 1, 3)
    k = rng.standard_normal((4, 64, 4, 32)).astype(np.float32).transpose(0, 2, 3, 1)
    w = rng.standard_normal((32, 700)).astype(np.float32)
    for a, b in ((q, k), (q, w), (q[:, ::2], k[:, ::2])):
        assert a.size * b.shape[-1] >= cpu_c._MIN_PARALLEL_GEMM  # the threaded products
        got = (ndl.NDArray(a) @ ndl.NDArray(b)).numpy()
        np.testing.assert_allclose(got, np.matmul(a, b), rtol=1e-5, atol=1e-4)


def _base():
    """The device's kernels below the C ones (NumPy, with the Python row threads)."""
    return super(cpu_c.CKernels, ndl.cpu())


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "rsub", "rdiv"])
def test_large_elementwise_operators_equal_numpy_bit_for_bit(op):
    rng = np.random.default_rng(9)
    base = rng.standard_normal((64, 16, 40, 3)).astype(np.float32) + 3.0
    a = base.transpose(0, 3, 1, 2)  # a permuted view: the C kernel walks its memory order
    b = (rng.standard_normal(base.shape).astype(np.float32) + 3.0).transpose(0, 3, 1, 2)
    fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
          "rsub": lambda x, y: y - x, "rdiv": lambda x, y: y / x}[op]
    assert a.size >= 1 << 15
    dev = ndl.cpu()
    for other in ((b, 2.5) if op in ("add", "sub", "mul", "div") else (2.5,)):
        got = dev._ewise(op, a, other)
        assert got is not None and got.strides == a.strides
        np.testing.assert_array_equal(got, fn(a, other))
    x = ndl.NDArray(base.copy())
    x += 1.5
    x *= ndl.NDArray(base)
    np.testing.assert_array_equal(x.numpy(), (base + np.float32(1.5)) * base)
    if op in ("add", "sub", "mul", "div"):  # a row vector (a bias) broadcast over the rows
        row = rng.standard_normal(3).astype(np.float32) + 3.0
        np.testing.assert_array_equal(dev._ewise(op, base, row), fn(base, row))
        y = ndl.NDArray(base.copy())
        y += ndl.NDArray(row.reshape(1, 3))
        np.testing.assert_array_equal(y.numpy(), base + row)


@pytest.mark.parametrize("k,scale", [(1, 0.5), (2, 0.5), (3, 1.0), (4, 0.25)])
def test_scaled_sums_equal_numpy_bit_for_bit(k, scale):
    """Device.sum_scaled (a data-parallel reduce): one C pass, equal to the NumPy kernel's
    additions in order and its scaling, also when `out` is one of the terms."""
    rng = np.random.default_rng(12)
    arrays = [rng.standard_normal(70_001).astype(np.float32) for _ in range(k)]
    expected = arrays[0].copy()
    for a in arrays[1:]:
        expected = expected + a
    expected = expected * np.float32(scale)
    dev = ndl.cpu()
    for kernels in (dev, _base()):
        out = ndl.NDArray(np.empty_like(arrays[0]))
        got = kernels.sum_scaled([ndl.NDArray(a) for a in arrays], scale, out)
        assert got is out
        np.testing.assert_array_equal(out.numpy(), expected)
        terms = [ndl.NDArray(a.copy()) for a in arrays]
        kernels.sum_scaled(terms, scale, terms[-1])  # in place into the last term
        np.testing.assert_array_equal(terms[-1].numpy(), expected)


def test_softmax_cross_entropy_equals_numpy_kernel():
    rng = np.random.default_rng(10)
    z = (rng.standard_normal((300, 1000)) * 5).astype(np.float32)
    labels = rng.integers(0, 1000, 300).astype(np.float32)  # as the course feeds them
    dev, base = ndl.cpu(), _base()
    loss, lse = dev._softmax_cross_entropy_fwd(z, labels)
    want_loss, want_lse = base._softmax_cross_entropy_fwd(z, labels)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-6)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    np.testing.assert_allclose(dev._softmax_cross_entropy_bwd(z, labels, lse, 0.7),
                               base._softmax_cross_entropy_bwd(z, labels, want_lse, 0.7),
                               rtol=1e-5, atol=1e-9)
    with pytest.raises(IndexError):  # an out-of-range label: the NumPy kernel's own error
        dev._softmax_cross_entropy_fwd(z, np.full(300, 1000.0, np.float32))


def test_softmax_rows_equal_numpy_kernel():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((7, 33, 130)).astype(np.float32) * 4
    x[0, 0] = -np.inf  # no mass: zeros
    x[0, 1, :5] = -1e9  # a causal mask's entries
    dev, base = ndl.cpu(), _base()
    got = dev.softmax(ndl.NDArray(x), (2,)).numpy()
    np.testing.assert_allclose(got, base.softmax(ndl.NDArray(x), (2,)).numpy(), rtol=1e-5,
                               atol=1e-8)
    assert not got[0, 0].any() and np.isfinite(got).all()


def test_layer_norm_and_adam_equal_numpy_kernels():
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((513, 96)) * 3 + 7).astype(np.float32)
    w, b = rng.standard_normal(96).astype(np.float32), rng.standard_normal(96).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dev, base = ndl.cpu(), _base()
    for weight, bias in ((w, b), (None, None)):
        y, mean, rstd = dev._layer_norm_fwd(x, weight, bias, 1e-5)
        y0, mean0, rstd0 = base._layer_norm_fwd(x, weight, bias, 1e-5)
        for got, want in ((y, y0), (mean, mean0), (rstd, rstd0)):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
        for got, want in zip(dev._layer_norm_bwd(dy, x, mean, rstd, weight),
                             base._layer_norm_bwd(dy, x, mean0, rstd0, weight)):
            if want is None:
                assert got is None
            else:
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for decoupled in (False, True):
        states = []
        for kernels in (dev, base):
            wt, g = x.copy(), dy.copy()
            m, v = np.zeros_like(wt), np.zeros_like(wt)
            for step in (1, 2, 3):
                kernels._adam_update(wt, g, m, v, 1e-2, 0.9, 0.999, 1e-8, step, 1e-2,
                                     decoupled)
            states.append((wt, m, v))
        for got, want in zip(*states):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("momentum,weight_decay,nesterov", [
    (0.0, 0.0, False), (0.0, 1e-2, False), (0.9, 0.0, False), (0.9, 1e-2, True)])
def test_sgd_equals_numpy_kernel(momentum, weight_decay, nesterov):
    rng = np.random.default_rng(15)
    w0 = rng.standard_normal((300, 70)).astype(np.float32)
    grads = [rng.standard_normal(w0.shape).astype(np.float32) for _ in range(3)]
    states = []
    for kernels in (ndl.cpu(), _base()):
        w, u = w0.copy(), (np.zeros_like(w0) if momentum else None)
        for g in grads:
            kernels._sgd_update(w, g, u, 0.1, momentum, weight_decay, nesterov)
        states.append((w, u))
    np.testing.assert_allclose(states[0][0], states[1][0], rtol=1e-6, atol=1e-6)
    if momentum:
        np.testing.assert_allclose(states[0][1], states[1][1], rtol=1e-6, atol=1e-6)


def test_embedding_scatter_equals_numpy_kernel():
    rng = np.random.default_rng(13)
    ids = rng.integers(0, 50, (40, 9))  # many repeats
    g = rng.standard_normal((40, 9, 64)).astype(np.float32)
    dev, base = ndl.cpu(), _base()
    got = dev.embedding_scatter(ndl.NDArray(g), ndl.NDArray(ids, dtype="int64"), 50).numpy()
    want = base.embedding_scatter(ndl.NDArray(g), ndl.NDArray(ids, dtype="int64"), 50).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps,batch,hid", [(7, 32, 64), (5, 13, 24)])
def test_lstm_time_loops_equal_numpy_kernels(steps, batch, hid):
    """The C time loops (each thread its batch rows through every step; a register-blocked
    product for the recurrent weight, or BLAS when 4H is not a multiple of 16) against the
    NumPy loops, outputs and every gradient, with and without the last-state gradients."""
    rng = np.random.default_rng(14)

    def mk(*shape, scale=1.0):
        return ndl.NDArray((rng.standard_normal(shape) * scale).astype(np.float32))

    xw, w, h0, c0 = mk(steps, batch, 4 * hid), mk(hid, 4 * hid, scale=0.3), mk(batch, hid), \
        mk(batch, hid)
    dev, base = ndl.cpu(), _base()
    fwd, fwd0 = dev.lstm_fwd(xw, w, h0, c0), base.lstm_fwd(xw, w, h0, c0)
    for a, b in zip(fwd, fwd0):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=2e-6)
    g_h, g_hl, g_cl = mk(steps, batch, hid), mk(batch, hid), mk(batch, hid)
    for last in ((g_hl, g_cl), (None, None)):
        for a, b in zip(dev.lstm_bwd(g_h, *last, *fwd, w, h0, c0),
                        base.lstm_bwd(g_h, *last, *fwd0, w, h0, c0)):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def test_tanh_grad_equals_numpy_kernel():
    rng = np.random.default_rng(16)
    y = np.tanh(rng.standard_normal((64, 9, 9, 16)).astype(np.float32)).transpose(0, 3, 1, 2)
    g = rng.standard_normal((64, 9, 9, 16)).astype(np.float32).transpose(0, 3, 1, 2)
    dev, base = ndl.cpu(), _base()
    assert y.size >= cpu_c._MIN_PARALLEL
    np.testing.assert_allclose(dev.tanh_grad(ndl.NDArray(g), ndl.NDArray(y)).numpy(),
                               base.tanh_grad(ndl.NDArray(g), ndl.NDArray(y)).numpy(),
                               rtol=1e-6, atol=1e-6)



@pytest.mark.parametrize("shape,k,stride,pad,channels_last", [
    ((4, 3, 9, 9), 2, 2, 0, False), ((4, 32, 12, 12), 2, 2, 0, True),
    ((2, 5, 7, 8), 3, 2, 1, False), ((2, 70, 7, 8), 3, 1, 1, True), ((1, 1, 5, 5), 3, 3, 1, False)])
def test_max_pool_and_its_scatter_equal_numpy_kernels(shape, k, stride, pad, channels_last):
    """Values, first-maximum indices (ties, NaN) and the gradient scatter (overlapping windows
    sum) of the C kernels against the NumPy kernels, on NCHW memory and on NCHW views of
    channels-last memory (whose results stay channels-last)."""
    from needle.backend_ndarray.device import Device
    dev = ndl.cpu()
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0, 0, :3] = 1.0  # a tie: the first maximum wins
    x[-1, -1, -1, -1] = np.nan  # NaN is the maximum of its window
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    a = dev._wrap(x)
    out, idx = dev.max_pool2d(a, k, stride, pad)
    ref_out, ref_idx = Device.max_pool2d(dev, a, k, stride, pad)
    np.testing.assert_array_equal(out.numpy(), ref_out.numpy())
    np.testing.assert_array_equal(idx.numpy(), ref_idx.numpy())
    assert (out._array.strides[1] == 4) == channels_last  # the layout of the input
    gn = rng.standard_normal(out.shape).astype(np.float32)
    for g in (dev._wrap(gn), dev._wrap(np.ascontiguousarray(gn.transpose(0, 2, 3, 1))
                                       .transpose(0, 3, 1, 2))):
        dx = dev.scatter_flat(g, idx, shape)
        np.testing.assert_allclose(dx.numpy(), Device.scatter_flat(dev, g, idx, shape).numpy(),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(IndexError, match="scatter_flat"):
        dev.scatter_flat(g, dev._wrap(idx.numpy() + x.size), shape)



@pytest.mark.parametrize("shape,axes", [
    ((2048, 300), (0,)), ((2048, 300), 0), ((16, 128, 64), (0, 1)), ((40000, 3), (0,)),
    ((64, 1000), 1), ((3, 20000), (0,)), ((128, 100), (0,)), ((5, 7, 3), (0, 1))])
def test_sums_over_leading_axes_equal_numpy(shape, axes):
    """NDArray.sum over leading axes of a float32 array runs the device's kernel (large: the
    C column sums, blocks of rows on the pool; small: a product with ones), into a given
    array too (what a compiled plan replays); other axes stay NumPy's. All within float32
    rounding of float64."""
    x = np.random.default_rng(17).standard_normal(shape).astype(np.float32)
    got = ndl.NDArray(x).sum(axes)
    want = x.astype(np.float64).sum(axis=axes)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-4)
    k = 1 if isinstance(axes, int) else len(axes)
    if axes in (0, tuple(range(k))):
        out = np.empty(want.shape, np.float32)
        assert ndl.cpu()._sum_leading(x, k, out=out) is out
        np.testing.assert_array_equal(out, got.numpy())  # the same kernel, the same bits


def test_scatter_flat_with_indices_across_batch_rows():
    """The C scatter runs batch rows in parallel when each index falls in its own row (a max
    pool's gradient); indices aimed at other rows (any gather's adjoint) are added after, on
    one thread: the sum must still be NumPy's, repeated indices included."""
    from needle.backend_ndarray.device import Device
    dev = ndl.cpu()
    rng = np.random.default_rng(19)
    shape = (4, 8, 32, 32)  # 32768 elements: the parallel path
    size = int(np.prod(shape))
    g = dev._wrap(rng.standard_normal((4, 8, 16, 16)).astype(np.float32))
    idx = rng.integers(0, size, (4, 8, 16, 16)).astype(np.int64)
    idx[0, 0, 0, :4] = idx[0, 0, 0, 0]  # repeated
    idx[1] = rng.integers(0, size // 4, (8, 16, 16))  # row 1 aimed at row 0
    got = dev.scatter_flat(g, dev._wrap(idx), shape).numpy()
    want = Device.scatter_flat(dev, g, dev._wrap(idx), shape).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
