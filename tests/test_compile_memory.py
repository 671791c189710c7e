"""needle.compile's memory plan: intermediates written by `out=` kernels into an arena that
the plan allocates once, slots shared by values whose lifetimes do not overlap.

The oracle is the eager run of the same step (and the plan without the pool): the out
kernels make the same array-module calls with `out=`, so every comparison is to the bit."""
import sys

import numpy as np
import pytest

import needle as ndl
from needle import ops
from needle.backend_ndarray import Device, NDArray, cpu
from needle.backend_ndarray.fused_elementwise import FusedElementwise
from needle.backend_ndarray.out_kernels import out_form
from needle.backend_ndarray.recording import Event, Ref, ValueInfo

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_compile import _buffers, _cnn, _mlp, _traced_peak, _train, _train_step  # noqa: E402


# ---- the out kernels against the allocating kernels ---------------------------------------
def _value(a):
    info = ValueInfo(a, None)
    return id(a), info


def _run_both(name, fn, args, kwargs=None):
    """(the kernel's result, its out form's result written into a fresh array). A reduction
    of a non-row-major input runs the allocating kernel (NumPy's order follows the layout)."""
    kwargs = kwargs or {}
    want = fn(*args, **kwargs)
    values, targs = {}, []
    for a in args:
        if isinstance(a, NDArray):
            v, info = _value(a)
            values[v] = info
            targs.append(Ref(v))
        else:
            targs.append(a)
    v, info = _value(want)
    values[v] = info
    form = out_form(Event(fn, name, tuple(targs), kwargs, v), values)
    assert form is not None, name
    out = cpu().empty(want.shape)
    got = form(*args, **kwargs, out=out)
    fallback = name.endswith((".sum", ".max")) and not args[0].numpy().flags.c_contiguous
    assert (got is not out) if fallback else (got is out)
    return want.numpy(), got.numpy()


def _arrays(rng, shape, transposed=False):
    a = rng.standard_normal(shape).astype(np.float32)
    if transposed:  # the same values seen through a permuted (non-contiguous) view
        return NDArray(np.ascontiguousarray(a.T)).permute(tuple(range(a.ndim))[::-1])
    return NDArray(a)


@pytest.mark.parametrize("method", ["__add__", "__radd__", "__sub__", "__rsub__", "__mul__",
                                    "__truediv__", "__rtruediv__", "maximum", "minimum",
                                    "__eq__", "__ge__", "__gt__", "__le__", "__lt__", "__ne__"])
@pytest.mark.parametrize("transposed", [False, True])
def test_binary_out_kernels_equal_the_kernels(method, transposed):
    rng = np.random.default_rng(0)
    a = _arrays(rng, (6, 5), transposed)
    fn = NDArray.__dict__[method]
    for other in (_arrays(rng, (6, 5)), _arrays(rng, (1, 5)), 0.5, 2):
        if method.startswith("__r") and isinstance(other, NDArray):
            continue  # reflected methods are called with numbers only
        want, got = _run_both(f"NDArray.{method}", fn, (a, other))
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("method", ["__neg__", "exp", "log", "tanh", "sqrt", "abs", "sign",
                                    "sigmoid", "compact", "copy"])
def test_unary_out_kernels_equal_the_kernels(method):
    rng = np.random.default_rng(1)
    a = _arrays(rng, (4, 7), transposed=True)
    if method in ("log", "sqrt"):
        a = a.abs()
    want, got = _run_both(f"NDArray.{method}", NDArray.__dict__[method], (a,))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("method", ["sum", "max"])
@pytest.mark.parametrize("axes,keepdims", [(None, False), ((0,), False), ((1,), True),
                                           ((0, 2), False), ((2,), True)])
@pytest.mark.parametrize("transposed", [False, True])
def test_reduction_out_kernels_equal_the_kernels(method, axes, keepdims, transposed):
    rng = np.random.default_rng(2)
    a = _arrays(rng, (7, 33, 5), transposed)
    fn = NDArray.__dict__[method]
    want, got = _run_both(f"NDArray.{method}", fn, (a, axes, keepdims))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, getattr(a.numpy(), method)(axis=axes, keepdims=keepdims),
                               rtol=1e-5)


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True)])
def test_matmul_out_kernel_equals_the_kernel(ta, tb):
    rng = np.random.default_rng(3)
    a, b = _arrays(rng, (33, 17), ta), _arrays(rng, (17, 9), tb)
    want, got = _run_both("NDArray.__matmul__", NDArray.__matmul__, (a, b))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, a.numpy() @ b.numpy(), rtol=1e-5, atol=1e-5)


def test_constructor_and_rand_out_kernels_equal_the_kernels():
    dev = cpu()
    for name, args in (("ones", (dev, (3, 4))), ("zeros", (dev, (2,))),
                       ("full", (dev, (2, 3), 1.5))):
        want, got = _run_both(f"Device.{name}", getattr(Device, name), args)
        np.testing.assert_array_equal(got, want)
    np.random.seed(5)
    want = dev.rand(3, 4).numpy()
    np.random.seed(5)
    v, info = _value(NDArray(want))
    form = out_form(Event(Device.rand, "Device.rand", (dev, 3, 4), {}, v), {v: info})
    got = form(dev, 3, 4, out=dev.empty((3, 4))).numpy()
    np.testing.assert_array_equal(got, want)  # the same draw from the same generator


def test_no_out_form_for_other_dtypes_or_float64_operands():
    a = NDArray(np.ones((2, 2), np.float64))
    b = NDArray(np.ones((2, 2), np.float32))
    for x, y in ((a, b), (b, a)):
        out = x + y
        values = dict([_value(x), _value(y), _value(out)])
        e = Event(NDArray.__add__, "NDArray.__add__", (Ref(id(x)), Ref(id(y))), {}, id(out))
        assert out_form(e, values) is None


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("form", ["numpy", "c"])
def test_fused_out_kernel_equals_fused_kernel(seed, form, monkeypatch, tmp_path):
    from needle.backend_ndarray import fused_elementwise

    if form == "c":
        if fused_elementwise.c_compiler() is None:
            pytest.skip("no C compiler")
        monkeypatch.setattr(fused_elementwise, "C_MIN_ELEMENTS", 1)
        monkeypatch.setenv("NEEDLE_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(seed)
    shape = (5, 6)
    full = NDArray(rng.standard_normal((6, 5)).astype(np.float32)).permute((1, 0))
    row = NDArray(rng.standard_normal((1, 6)).astype(np.float32))
    col = NDArray(rng.standard_normal((5, 1)).astype(np.float32))
    chain = [("mul", (("in", 0), ("c", 1.5))), ("add", (("t", 0), ("in", 1))),
             ("tanh", (("t", 1),)), ("maximum", (("t", 2), ("s", 0))),
             ("sub", (("c", 2.0), ("t", 3))), ("div", (("t", 4), ("in", 2)))]
    skip = [("exp", (("in", 1),)), ("mul", (("in", 0), ("in", 2))),
            ("add", (("t", 0), ("t", 1))), ("neg", (("t", 2),))]  # t0 read two steps on
    for program, n_in in ((chain, 3), (skip, 3)):
        k = FusedElementwise(program, n_in, 1 if program is chain else 0, shape, cpu())
        assert (k._c is not None) == (form == "c")
        args = (full, row, col) + ((0.25,) if program is chain else ())
        want = k.entry()(*args).numpy()
        out = cpu().empty(shape)
        assert k.entry_out()(*args, out=out) is out
        np.testing.assert_array_equal(out.numpy(), want)


# ---- whole steps: pooled, unpooled and eager ------------------------------------------------
@pytest.mark.parametrize("make", [_mlp, _cnn], ids=["mlp-bn-dropout-adam", "cnn"])
def test_pooled_unpooled_and_eager_training_are_equal(make):
    steps = 22
    eager, p_eager, model_e, _, _ = _train(make, steps, False, create_graph=False)
    runs = {}
    for reuse in (True, False):
        runs[reuse] = _train(make, steps, True, create_graph=False, reuse_buffers=reuse)
    (pooled, p_pooled, model_p, step_p, _), (unpooled, p_unpooled, _, step_u, _) = (
        runs[True], runs[False])
    assert step_p.calls["replayed"] == steps - 2
    if make is _mlp:  # the CNN's conv and batch norm kernels have no out= form
        assert step_p.plan.pool and step_p.plan.pool_bytes > 0  # the pool is in use
    assert not step_u.plan.pool and "_out(" not in step_u.plan.source
    np.testing.assert_array_equal(pooled, eager)
    np.testing.assert_array_equal(unpooled, eager)
    for a, b, c in zip(p_pooled, p_unpooled, p_eager):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)
    for (name, b1), (_, b2) in zip(_buffers(model_p), _buffers(model_e)):
        np.testing.assert_array_equal(b1, b2, err_msg=name)
    for pp, pe in zip(model_p.parameters(), model_e.parameters()):
        np.testing.assert_array_equal(pp.grad.numpy(), pe.grad.numpy())


# The MLP only: a CNN's conv (`Device.conv_forward`) and batch norm are one kernel call each
# that allocates its own output, so its plan has nearly no out= intermediates to pool.
@pytest.mark.parametrize("make", [_mlp], ids=["mlp"])
def test_pooled_peak_is_at_most_the_unpooled_peak(make):
    plans = {}
    for reuse in (True, False):
        model, opt, batch, loss_fn = make()
        f = ndl.compile(_train_step(model, opt, loss_fn, create_graph=False),
                        reuse_buffers=reuse)
        for k in range(2):
            x, y = batch(k)
            f(ndl.Tensor(x, requires_grad=False), ndl.Tensor(y, requires_grad=False))
        plans[reuse] = f.plan
    pooled, unpooled = plans[True], plans[False]
    assert pooled.peak_bytes_unpooled == unpooled.peak_bytes == unpooled.peak_bytes_unpooled
    assert 0 < pooled.pool_bytes <= pooled.peak_bytes <= unpooled.peak_bytes
    # slots of one arena that overlap in bytes never hold values alive at the same time
    text = str(pooled)
    assert "pool (allocated once" in text and "arena0" in text
    assert sum(len(s[5]) for s in pooled.pool) > len(pooled.pool)  # some slots are shared


def test_replay_writes_into_the_pool_and_allocates_fewer_intermediates():
    rng = np.random.default_rng(0)
    w_np = rng.standard_normal((256, 256)).astype(np.float32)
    w = ndl.Tensor(w_np)

    def f(x):
        h = ops.exp(x * 0.5)  # (256, 256) intermediates: 256 KiB each
        h = ops.matmul(h, w) + 1.0
        return ops.summation(ops.tanh(h))

    xs = [ndl.Tensor(rng.standard_normal((256, 256)).astype(np.float32), requires_grad=False)
          for _ in range(5)]
    with ndl.no_grad():
        pooled = ndl.compile(f)
        unpooled = ndl.compile(f, reuse_buffers=False)
        for x in xs[:3]:
            pooled(x)
            unpooled(x)
        plan = pooled.plan
        slots = [s[6] for s in plan.pool]
        arena = plan.arenas[0][4]
        for x in xs[3:]:
            np.testing.assert_array_equal(pooled(x).numpy(), f(x).numpy())
            # the same slot objects, inside the arena, holding this replay's values
            assert [s[6] for s in plan.pool] == slots
            assert all(np.shares_memory(s.numpy(), arena.numpy()) for s in slots)
        # the slot's last value is tanh(h + 1) of the last replay
        name, users = plan.pool[0][0], plan.pool[0][5]
        assert f"{users[-1]} = fused2_out(" in plan.source and f"out={name})" in plan.source
        h = np.exp(xs[-1].numpy() * np.float32(0.5)) @ w_np + np.float32(1.0)
        np.testing.assert_allclose(plan.pool[0][6].numpy(), np.tanh(h), rtol=1e-5, atol=1e-6)
        one = 256 * 256 * 4
        replay, plain = _traced_peak(pooled, xs[0]), _traced_peak(unpooled, xs[0])
    assert plan.pool_bytes == one and len(plan.pool[0][5]) == 2  # two values share it
    assert replay + one <= plain, (replay, plain)


def test_a_view_keeps_its_pooled_value_alive():
    """`r` views `a` and is read after `a`'s last direct use; the same-shape temporaries made
    in between must not take `a`'s bytes."""
    rng = np.random.default_rng(1)

    def f(x):
        a = ops.exp(x)
        r = ops.broadcast_to(ops.reshape(a, (1, 8, 16)), (2, 8, 16))
        t = a * 2.0  # a's last direct use
        for _ in range(4):
            t = ops.tanh(t) + 1.0  # (8, 16) temporaries, each dead after the next
        return ops.summation(r * ops.reshape(t, (1, 8, 16)), axes=(0,))

    with ndl.no_grad():
        g = ndl.compile(f, fuse=False)
        for k in range(5):
            x = ndl.Tensor(rng.standard_normal((8, 16)).astype(np.float32), requires_grad=False)
            np.testing.assert_array_equal(g(x).numpy(), f(x).numpy())
    assert g.calls["replayed"] == 3 and g.plan.pool


def test_returned_values_and_gradients_stay_valid_after_later_replays():
    """Returned values and new gradients never live in the pool: what a replay gave stays
    as it was through the replays after it (and equals the eager step's)."""
    rng = np.random.default_rng(2)

    def make():
        np.random.seed(0)
        model = ndl.nn.Linear(16, 8)
        opt = ndl.optim.SGD(model.parameters(), lr=0.1)

        def step(x):
            opt.reset_grad()
            h = ops.exp(model(x) * 0.1)  # returned
            loss = ops.summation(h * h)
            loss.backward(create_graph=False)
            opt.step()
            return loss, h

        return model, step

    model_e, eager = make()
    model_c, step = make()
    f = ndl.compile(step)
    kept = []
    for k in range(6):
        x = ndl.Tensor(rng.standard_normal((4, 16)).astype(np.float32), requires_grad=False)
        out_c, out_e = f(x), eager(x)
        grads = [p.grad.realize_cached_data() for p in model_c.parameters()]
        for a, b in zip(list(out_c) + grads, list(out_e) + [p.grad for p in
                                                              model_e.parameters()]):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        kept.append((list(out_c) + grads, [a.numpy().copy() for a in list(out_c) + grads]))
    assert f.calls["replayed"] == 4 and f.plan.pool
    for arrays, copies in kept:  # unchanged by the replays after them
        for a, c in zip(arrays, copies):
            np.testing.assert_array_equal(a.numpy(), c)
    kinds = {b[1] for b in f.plan.buffers}
    assert "output" in kinds and "pooled" in kinds


@pytest.mark.parametrize("device", ["cuda-over-numpy", "cuda"])
def test_pooled_and_unpooled_plans_agree_on_the_cuda_device(device):
    """On the CUDA device's code (over NumPy without a GPU): pooled and unpooled plans are
    bit-equal, and compiled training equals eager."""
    from needle.backend_ndarray import CUDADevice
    from needle.models import MLPResNet

    if device == "cuda" and not ndl.cuda().enabled():
        pytest.skip("needs CuPy and a CUDA GPU")
    dev = ndl.cuda() if device == "cuda" else CUDADevice(xp=np)

    def run(mode):
        np.random.seed(0)
        model = MLPResNet(12, 16, num_blocks=2, num_classes=5, drop_prob=0.1, device=dev)
        opt = ndl.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
        step = _train_step(model, opt, lambda m, x, y: ndl.nn.SoftmaxLoss()(m(x), y),
                           create_graph=False)
        f = step if mode == "eager" else ndl.compile(step, reuse_buffers=mode == "pooled")
        rng = np.random.default_rng(0)
        np.random.seed(1)
        losses = []
        for _ in range(8):
            x = ndl.Tensor(rng.standard_normal((16, 12)).astype(np.float32), device=dev,
                           requires_grad=False)
            y = ndl.Tensor(rng.integers(0, 5, 16).astype(np.float32), device=dev,
                           requires_grad=False)
            losses.append(float(f(x, y).numpy()))
        weights = [p.numpy() for p in model.parameters()]
        return losses, weights, getattr(f, "plan", None)

    (lp, wp, plan), (lu, wu, _), (le, we, _) = run("pooled"), run("unpooled"), run("eager")
    assert plan.pool
    np.testing.assert_array_equal(lp, lu)  # the out kernels: the same calls with out=
    for a, b in zip(wp, wu):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(lp, le, rtol=1e-5)
    for a, b in zip(wp, we):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cuda_fused_kernel_writes_into_a_slot_of_an_arena():
    """cuda()'s generated RawKernel (run over test_cuda_fused's NumPy stand-in for CuPy)
    writes a fused group into a row-major view at an offset of a larger array."""
    from test_cuda_fused import PROGRAM, _device, _FusedRawKernel, _inputs

    dev = _device()
    k = FusedElementwise(PROGRAM, 3, 1, (6, 9), dev)
    assert k._cuda is not None
    want = k(*_inputs(dev), -0.25).numpy()
    arena = dev.full((100,), 7.0)
    slot = arena[16:70].reshape((6, 9))
    _FusedRawKernel.launches = []
    assert k.entry_out()(*_inputs(dev), -0.25, out=slot) is slot
    assert len(_FusedRawKernel.launches) == 1
    np.testing.assert_array_equal(slot.numpy(), want)
    rest = arena.numpy()
    assert (rest[:16] == 7.0).all() and (rest[70:] == 7.0).all()  # nothing written outside


def test_a_replay_gives_new_gradient_tensors_and_lets_the_old_ones_go():
    """As eager code with reset_grad: each replay's `.grad` is a new Tensor; one a caller kept
    keeps its values, and one nobody kept is freed (not held by the plan)."""
    import gc
    import weakref

    np.random.seed(0)
    model = ndl.nn.Linear(8, 4)
    opt = ndl.optim.SGD(model.parameters(), lr=0.1)

    def step(x):
        opt.reset_grad()
        loss = ops.summation(model(x) * model(x))
        loss.backward(create_graph=False)
        opt.step()
        return loss

    f = ndl.compile(step)
    rng = np.random.default_rng(3)
    batches = [ndl.Tensor(rng.standard_normal((5, 8)).astype(np.float32), requires_grad=False)
               for _ in range(5)]
    for x in batches[:3]:  # eager, recording, first replay
        f(x)
    kept = model.weight.grad
    kept_values = kept.numpy().copy()
    dropped = weakref.ref(model.bias.grad.realize_cached_data()._array)  # the native array
    f(batches[3])
    gc.collect()
    assert f.calls["replayed"] == 2
    assert model.weight.grad is not kept
    np.testing.assert_array_equal(kept.numpy(), kept_values)
    assert dropped() is None
