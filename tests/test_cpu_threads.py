"""The CPU device's row-parallel kernels give the one-thread kernels' numbers."""
import numpy as np
import pytest

import needle as ndl
from needle.backend_ndarray import cpu


@pytest.fixture
def threads():
    dev = cpu()
    saved = dev.get_num_threads()

    def use(n):
        dev.set_num_threads(n)

    yield use
    dev.set_num_threads(saved)


def _nd(a):
    return ndl.NDArray(a, device=cpu())


def _both(threads, fn):
    threads(1)
    one = fn()
    threads(3)  # three blocks: uneven row counts per block
    many = fn()
    return one, many


def test_softmax_cross_entropy_rows_in_blocks(threads):
    rng = np.random.default_rng(0)
    z = _nd((rng.standard_normal((301, 1000)) * 3).astype(np.float32))
    y = _nd(rng.integers(0, 1000, 301).astype(np.int64))
    dev = cpu()
    one, many = _both(threads, lambda: dev.softmax_cross_entropy_fwd(z, y))
    np.testing.assert_array_equal(one[0].numpy(), many[0].numpy())
    np.testing.assert_array_equal(one[1].numpy(), many[1].numpy())
    g1, g2 = _both(threads, lambda: dev.softmax_cross_entropy_bwd(z, y, one[1], 0.5))
    np.testing.assert_array_equal(g1.numpy(), g2.numpy())
    # and against the definition
    zn, yn = z.numpy().astype(np.float64), y.numpy()
    p = np.exp(zn - zn.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(one[0].numpy(), -np.log(p[np.arange(301), yn]).mean(),
                               rtol=1e-5)
    p[np.arange(301), yn] -= 1
    np.testing.assert_allclose(g1.numpy(), p * 0.5 / 301, rtol=1e-4, atol=1e-9)


def test_layer_norm_rows_in_blocks(threads):
    rng = np.random.default_rng(1)
    x = _nd(rng.standard_normal((7, 97, 512)).astype(np.float32))
    dy = _nd(rng.standard_normal((7, 97, 512)).astype(np.float32))
    w = _nd(rng.standard_normal(512).astype(np.float32))
    b = _nd(rng.standard_normal(512).astype(np.float32))
    dev = cpu()
    f1, f2 = _both(threads, lambda: dev.layer_norm_fwd(x, w, b))
    # row means are BLAS matrix-vector products: rounding may depend on the block start
    for a, c in zip(f1, f2):
        np.testing.assert_allclose(a.numpy(), c.numpy(), rtol=1e-5, atol=2e-6)
    b1, b2 = _both(threads, lambda: dev.layer_norm_bwd(dy, x, f1[1], f1[2], w))
    np.testing.assert_allclose(b1[0].numpy(), b2[0].numpy(), rtol=1e-5, atol=2e-6)
    for a, c in zip(b1[1:], b2[1:]):  # sums over every row: block partial sums added
        np.testing.assert_allclose(a.numpy(), c.numpy(), rtol=1e-5, atol=1e-4)
    nb1, nb2 = _both(threads, lambda: dev.layer_norm_bwd(dy, x, f1[1], f1[2]))
    np.testing.assert_allclose(nb1[0].numpy(), nb2[0].numpy(), rtol=1e-5, atol=2e-6)
    assert nb2[1] is None and nb2[2] is None


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_update_in_blocks(threads, decoupled):
    rng = np.random.default_rng(2)
    shape = (700, 600)
    start = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    start[2] = np.abs(start[2])
    g = _nd(rng.standard_normal(shape).astype(np.float32))
    results = []
    for n in (1, 2):
        threads(n)
        w, m, v = (_nd(a.copy()) for a in start)
        cpu().adam_update(w, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 3, 1e-2, decoupled)
        results.append([a.numpy() for a in (w, m, v)])
    for a, c in zip(*results):
        np.testing.assert_array_equal(a, c)


def test_thread_count_is_checked(threads):
    with pytest.raises(ValueError, match="at least 1 thread"):
        cpu().set_num_threads(0)


def test_row_scatter_equals_add_at():
    """The CPU device sums sorted runs of ids; NumPy's `add.at` is the reference (equal up to
    the rounding of a different summation order within a run)."""
    rng = np.random.default_rng(3)
    for n_ids, vocab in ((2048, 10000), (2048, 128), (1, 5), (0, 4)):
        ids = rng.integers(0, vocab, n_ids).astype(np.int64)
        values = rng.standard_normal((n_ids, 16)).astype(np.float32)
        expected = np.zeros((vocab, 16), np.float32)
        np.add.at(expected, ids, values)
        got = cpu().embedding_scatter(_nd(values), _nd(ids), vocab).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (2, 0)])
def test_conv_windows_in_blocks_of_images(threads, stride, padding):
    """im2col and its adjoint split the batch across threads: each image's numbers are the
    one-thread kernel's."""
    rng = np.random.default_rng(4)
    x = _nd(rng.standard_normal((9, 30, 30, 32)).astype(np.float32))
    dev = cpu()
    c1, c2 = _both(threads, lambda: dev.conv_im2col(x, 3, 3, stride, padding))
    np.testing.assert_array_equal(c1.numpy(), c2.numpy())
    d1, d2 = _both(threads, lambda: dev.conv_col2im(c1, x.shape, 3, 3, stride, padding))
    np.testing.assert_array_equal(d1.numpy(), d2.numpy())


@pytest.mark.parametrize("layout", ["nc", "nchw_view_of_nhwc"])
def test_batch_norm_in_blocks_of_rows(threads, layout):
    """Batch norm over the (rows, C) matrix of channels-last memory in blocks of rows: the
    blocks' partial sums are added (equal to the one-thread kernel up to float rounding)."""
    rng = np.random.default_rng(5)
    if layout == "nc":
        x, dy = (rng.standard_normal((3001, 96)).astype(np.float32) for _ in range(2))
        axes = (0,)
    else:
        x, dy = (rng.standard_normal((10, 9, 9, 400)).astype(np.float32).transpose(0, 3, 1, 2)
                 for _ in range(2))
        axes = (0, 2, 3)
    c = x.shape[1]
    w, b = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    dev = cpu()
    f1, f2 = _both(threads, lambda: dev._batch_norm_fwd(x, w, b, 1e-5, axes))
    for a, e in zip(f2, f1):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)
    assert f2[0].shape == x.shape
    # against the definition, in float64
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axes), x64.var(axes)
    keep = [1 if i in axes else c for i in range(x.ndim)]
    y = (x64 - mean.reshape(keep)) / np.sqrt(var.reshape(keep) + 1e-5) * w.reshape(keep) \
        + b.reshape(keep)
    np.testing.assert_allclose(f2[0], y, rtol=1e-4, atol=1e-4)
    g1, g2 = _both(threads, lambda: dev._batch_norm_bwd(dy, x, f1[1], f1[2], w, axes))
    for a, e in zip(g2, g1):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)
    h1, h2 = _both(threads, lambda: dev._batch_norm_bwd(dy, x, f1[1], f1[2], None, axes))
    np.testing.assert_allclose(h2[0], h1[0], rtol=1e-4, atol=1e-4)
    assert h2[1] is None and h2[2] is None


def test_training_steps_match_one_thread(threads):
    """A conv + BatchNorm2d + LayerNorm + softmax-loss network trained with SGD for three
    steps: on three threads, the weights equal the one-thread run's up to float rounding.
    (Not Adam: a conv bias before batch norm gets a gradient of pure rounding noise, which
    Adam's normalisation turns into full-size steps of either sign.)"""
    from needle import nn

    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 8)

    def run():
        np.random.seed(0)
        model = nn.Sequential(nn.Conv(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                              nn.Conv(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32),
                              nn.ReLU(), nn.Flatten(), nn.LayerNorm1d(32 * 16 * 16),
                              nn.Linear(32 * 16 * 16, 10))
        opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            opt.reset_grad()
            loss = nn.SoftmaxLoss()(model(ndl.Tensor(x)), ndl.Tensor(y))
            loss.backward()
            opt.step()
        return [p.numpy() for p in model.parameters()]

    one, many = _both(threads, run)
    for a, b in zip(one, many):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_freed_arrays_are_reused_without_page_faults():
    """With needle imported, an 80 MB array freed and made again comes from the allocator's
    kept memory: after the first one, hardly a page fault each (a fresh mmap faults on each
    of its 20480 pages)."""
    import subprocess
    import sys

    code = """
import resource, numpy as np
import needle
from needle.backend_ndarray.cpu_parallel import keep_freed_memory
print(keep_freed_memory())
a = np.ones(20 << 20, np.float32); del a
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    a = np.ones(20 << 20, np.float32); del a
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) // 10)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    if out[0] != "True":
        pytest.skip("not glibc: the allocator setting does not apply")
    assert int(out[1]) < 2000, out


def test_c_kernels_build_wherever_a_compiler_is_found():
    """A compile error in csrc/ must not pass for "no compiler" (every C kernel test would
    then skip and the NumPy kernels run unnoticed)."""
    import os

    from needle.backend_ndarray import cpu_c
    from needle.backend_ndarray.c_build import c_compiler
    if os.environ.get("NEEDLE_CPU_C", "1").strip() == "0" or c_compiler() is None:
        pytest.skip("the C kernels are off, or there is no C compiler")
    assert cpu_c.library() is not None
