"""needle.compile: compiled steps against the eager steps they record (the reference is the
eager run of the same code with the same seeds), guards, memory, refusals and the plan."""
import gc
import os
import sys
import tracemalloc
import warnings

import numpy as np
import pytest

import needle as ndl
from needle import nn, ops
from needle.compile import CompileError, RecompileWarning
from needle.models import LanguageModel, MLPResNet

_BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _workloads():
    pytest.importorskip("torch")  # benchmarks/_workloads.py builds torch twins too
    if _BENCH not in sys.path:
        sys.path.insert(0, _BENCH)
    import _workloads

    return _workloads


# ---- the four workloads of benchmarks/_workloads.py, at test sizes --------------------------
def _mlp():
    np.random.seed(0)
    model = MLPResNet(12, 16, num_blocks=2, num_classes=5, norm=nn.BatchNorm1d, drop_prob=0.1)
    opt = ndl.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    rng = np.random.default_rng(0)

    def batch(k):
        return (rng.standard_normal((16, 12)).astype(np.float32),
                rng.integers(0, 5, 16).astype(np.float32))

    return model, opt, batch, lambda m, x, y: nn.SoftmaxLoss()(m(x), y)


def _train_step(model, opt, loss_fn, create_graph=True):
    """The course's training step as a function of the batch (what these tests compile)."""
    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model, x, y)
        loss.backward(create_graph=create_graph)
        opt.step()
        return loss

    return step


def _cnn():
    wl = _workloads()
    np.random.seed(0)
    model = wl.NeedleSmallCNN()
    opt = ndl.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(0)

    def batch(k):
        return (rng.standard_normal((4, 1, 28, 28)).astype(np.float32),
                rng.integers(0, 10, 4).astype(np.float32))

    return model, opt, batch, lambda m, x, y: nn.SoftmaxLoss()(m(x), y)


def _lstm():
    np.random.seed(0)
    T, B, V = 6, 3, 20
    model = LanguageModel(8, V, 8, num_layers=2, seq_model="lstm", seq_len=T)
    opt = ndl.optim.SGD(model.parameters(), lr=1.0)
    rng = np.random.default_rng(0)

    def batch(k):
        return (rng.integers(0, V, (T, B)).astype(np.float32),
                rng.integers(0, V, T * B).astype(np.float32))

    return model, opt, batch, lambda m, x, y: nn.SoftmaxLoss()(m(x)[0], y)


def _transformer():
    wl = _workloads()
    np.random.seed(0)
    T, B, V = 5, 2, 30
    model = wl.NeedleTransformerLM(V, 8, 2, 16, 2, T)
    opt = ndl.optim.AdamW(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)

    def batch(k):
        return (rng.integers(0, V, (B, T)).astype(np.float32),
                rng.integers(0, V, T * B).astype(np.float32))

    return model, opt, batch, lambda m, x, y: nn.SoftmaxLoss()(m(x), y)


def _traced_peak(fn, *args):
    """Peak bytes NumPy allocated during fn(*args) (NumPy reports its buffers to
    tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _train(make, steps, compiled, create_graph=True, fuse=True, reuse_buffers=True):
    """Losses and final parameters of `steps` steps under a cosine schedule."""
    model, opt, batch, loss_fn = make()
    sched = ndl.optim.CosineAnnealing(opt, T_max=steps)
    train_step = _train_step(model, opt, loss_fn, create_graph)
    step = (ndl.compile(train_step, fuse=fuse, reuse_buffers=reuse_buffers) if compiled
            else train_step)
    np.random.seed(1)  # the dropout masks' stream
    losses = []
    for k in range(steps):
        x, y = batch(k)
        loss = step(ndl.Tensor(x, requires_grad=False), ndl.Tensor(y, requires_grad=False))
        losses.append(float(loss.numpy()))
        sched.step()
    params = [p.numpy().copy() for p in model.parameters()]
    return losses, params, model, step, opt


@pytest.mark.parametrize("make,create_graph", [(_mlp, True), (_mlp, False), (_cnn, False),
                                               (_lstm, True), (_transformer, False)],
                         ids=["mlp-graph", "mlp-fast", "cnn", "lstm", "transformer"])
def test_compiled_training_equals_eager(make, create_graph):
    steps = 30 if make in (_mlp, _lstm) else 12
    eager, p_eager, model_e, _, opt_e = _train(make, steps, False, create_graph)
    for fuse in (False, True):
        comp, p_comp, model_c, step, opt_c = _train(make, steps, True, create_graph, fuse)
        assert step.calls == {"eager": 1, "recorded": 1, "replayed": steps - 2}
        assert opt_c.t == opt_e.t == steps and opt_c.lr == opt_e.lr
        # the same NumPy calls in the same order on the same values (the default fused
        # kernels make the unfused kernels' calls in one function): equal to the bit
        np.testing.assert_array_equal(comp, eager)
        for a, b in zip(p_comp, p_eager):
            np.testing.assert_array_equal(a, b)
        for (name, b1), (_, b2) in zip(_buffers(model_c), _buffers(model_e)):
            np.testing.assert_array_equal(b1, b2, err_msg=name)
        # gradients are left on the parameters as eager leaves them
        for pc, pe in zip(model_c.parameters(), model_e.parameters()):
            np.testing.assert_array_equal(pc.grad.numpy(), pe.grad.numpy())


def _buffers(model):
    out = []
    for m in model.modules_list():
        for name in ("running_mean", "running_var"):
            if hasattr(m, name):
                out.append((name, getattr(m, name).numpy().copy()))
    return out


def test_learning_rate_and_momentum_are_read_at_replay():
    def make():
        np.random.seed(0)
        model = nn.Linear(4, 3)
        opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
        rng = np.random.default_rng(0)
        return model, opt, rng

    results = []
    for compiled in (False, True):
        model, opt, rng = make()

        def step(x):
            opt.reset_grad()
            loss = (model(x) ** 2).sum()
            loss.backward()
            opt.step()
            return loss

        f = ndl.compile(step) if compiled else step
        out = []
        for k in range(8):
            opt.lr = 0.1 / (k + 1)
            opt.momentum = 0.5 if k < 4 else 0.25
            out.append(float(f(ndl.Tensor(rng.standard_normal((5, 4)).astype(np.float32),
                                          requires_grad=False)).numpy()))
        results.append((out, model.weight.numpy()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-6)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-6)


def test_branch_on_a_hyperparameter_re_records():
    np.random.seed(0)
    model = nn.Linear(3, 2)
    opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.0)

    def step(x):
        opt.reset_grad()
        loss = model(x).sum()
        loss.backward()
        opt.step()
        return loss

    f = ndl.compile(step)
    x = ndl.Tensor(np.ones((2, 3), np.float32), requires_grad=False)
    for _ in range(3):
        f(x)
    opt.momentum = 0.9  # SGD's `if m == 0.0` now takes the other branch
    f(x)
    assert any("momentum" in e for e in f.explanations)
    assert f.calls["replayed"] == 1


def test_new_batch_shape_and_eval_mode_record_new_plans():
    model, opt, batch, loss_fn = _mlp()

    step = _train_step(model, opt, loss_fn)

    f = ndl.compile(step, explain=True)
    x, y = batch(0)
    args = (ndl.Tensor(x, requires_grad=False), ndl.Tensor(y, requires_grad=False))
    short = (ndl.Tensor(x[:5], requires_grad=False), ndl.Tensor(y[:5], requires_grad=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            f(*args)
        f(*short)
        f(*short)
        model.eval()
        f(*args)
        f(*args)
        model.train()
        f(*args)
    assert f.calls == {"eager": 3, "recorded": 3, "replayed": 2}
    assert len(f.plans) == 3
    texts = [str(w.message) for w in caught if issubclass(w.category, RecompileWarning)]
    assert len(texts) == 3
    assert "inputs" in texts[1] and "[16, 12]" in texts[1].split("->")[0]
    assert "[5, 12]" in texts[1].split("->")[1]
    assert "training flags" in texts[2]


def test_eval_step_compiles_and_matches_eager():
    model, opt, batch, loss_fn = _mlp()
    model.eval()
    f = ndl.compile(lambda x: model(x))
    x = ndl.Tensor(batch(0)[0], requires_grad=False)
    with ndl.no_grad():
        want = model(x).numpy()
        outs = [f(x).numpy() for _ in range(4)]
    for o in outs:
        np.testing.assert_array_equal(o, want)


def test_replays_keep_memory_flat():
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("RSS is read from /proc/self/statm (Linux)")
    model, opt, batch, loss_fn = _mlp()

    step = _train_step(model, opt, loss_fn)

    f = ndl.compile(step)
    x, y = batch(0)
    args = (ndl.Tensor(x, requires_grad=False), ndl.Tensor(y, requires_grad=False))
    for _ in range(50):
        f(*args)
    gc.collect()
    rss0, tensors0 = _rss(), ndl.autograd.TENSOR_COUNTER
    for _ in range(1000):
        f(*args)
    gc.collect()
    assert ndl.autograd.TENSOR_COUNTER == tensors0
    assert _rss() - rss0 < 4 * 2 ** 20
    assert f.calls["replayed"] == 1048


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("read", ["numpy", "item", "float", "bool_finite"])
def test_reading_a_value_inside_the_step_is_refused(read):
    model = nn.Linear(3, 1)

    def step(x):
        out = model(x).sum()
        if read == "numpy":
            out.numpy()
        elif read == "item":
            out.item()
        elif read == "float":
            float(out.numpy())
        else:
            out.realize_cached_data().isfinite()
        return out

    f = ndl.compile(step)
    with pytest.raises(CompileError) as err:
        f(ndl.Tensor(np.ones((2, 3), np.float32)))
    msg = str(err.value)
    assert "test_compile.py" in msg and "outside the compiled function" in msg
    assert "'step'" in msg


def test_replay_outputs_are_fresh_tensors():
    w = ndl.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    f = ndl.compile(lambda x: ops.matmul(ops.exp(x), w))
    xs = [np.random.default_rng(k).standard_normal((4, 2)).astype(np.float32) for k in range(5)]
    outs = [f(ndl.Tensor(x)) for x in xs]  # kept: each replay's result is its own Tensor
    assert f.calls["replayed"] == 3
    for x, o in zip(xs, outs):
        np.testing.assert_allclose(o.numpy(), np.exp(x) @ w.numpy(), rtol=1e-6)


def test_plan_lists_kernels_and_buffers():
    model, opt, batch, loss_fn = _mlp()

    step = _train_step(model, opt, loss_fn, create_graph=False)

    f = ndl.compile(step)
    x, y = batch(0)
    for _ in range(2):
        f(ndl.Tensor(x, requires_grad=False), ndl.Tensor(y, requires_grad=False))
    text = str(f.plan)
    assert "def replay(a0, a1):" in text
    assert "adam0.lr" in text and "(adam0.t + 1)" in text
    assert "dev_adam_update" in text and "dev_batch_norm_fwd" in text
    assert f"{f.plan.n_kernels} kernel calls" in text
    n_params = len(model.parameters())
    # parameters, Adam's flat moments (one m and one v for all parameters) and running
    # statistics are the state the plan updates in place
    assert sum(b[1] == "state" for b in f.plan.buffers) >= n_params + 2
    assert text.count("\n    v") >= f.plan.n_kernels // 2


def test_not_a_function_and_bad_results():
    with pytest.raises(TypeError, match="expected a function"):
        ndl.compile(3)
    f = ndl.compile(lambda x: {"loss": x})
    x = ndl.Tensor(np.ones(2, np.float32))
    f(x)
    with pytest.raises(CompileError, match="returned a dict"):
        f(x)


# ---- fused elementwise kernels ----------------------------------------------------------------
def _random_program(rng, n_inputs, n_steps):
    from needle.backend_ndarray.fused_elementwise import FUSIBLE

    names = sorted(FUSIBLE)
    program = []
    for j in range(n_steps):
        name = names[rng.integers(len(names))]
        arity = FUSIBLE[name][0]
        ops_ = []
        for k in range(arity):
            r = rng.integers(4)
            if j and (k == 0 or r == 0):
                ops_.append(("t", int(rng.integers(j))))
            elif r == 1:
                ops_.append(("c", float(np.float32(rng.uniform(0.5, 2.0)))))
            elif r == 2:
                ops_.append(("s", 0))
            else:
                ops_.append(("in", int(rng.integers(n_inputs))))
        if name in ("log", "sqrt"):  # keep the domain positive: log(abs(...) + 1)
            program.append(("abs", ops_[:1]))
            program.append(("add", [("t", len(program) - 1), ("c", 1.0)]))
            ops_ = [("t", len(program) - 1)]
        program.append((name, ops_))
    return program


def _reference(program, arrays, scalars):
    from needle.backend_ndarray.fused_elementwise import FUSIBLE

    temps = []
    for name, operands in program:
        vals = [arrays[x] if k == "in" else temps[x] if k == "t" else
                np.float32(scalars[x] if k == "s" else x) for k, x in operands]
        temps.append(FUSIBLE[name][2](np, *vals))
    return temps[-1]


def _strided_inputs(rng, shape, n):
    """Inputs of `shape` or broadcastable to it, some transposed or sliced views."""
    arrays = []
    for i in range(n):
        s = tuple(1 if rng.random() < 0.3 else d for d in shape)[rng.integers(0, 2):]
        kind = rng.integers(3)
        if kind == 0 and len(s) >= 2:  # a transposed view
            a = rng.standard_normal(s[::-1]).astype(np.float32).T
        elif kind == 1:  # every other element
            a = rng.standard_normal(tuple(d * 2 for d in s)).astype(np.float32)
            a = a[tuple(slice(None, None, 2) for _ in s)]
        else:
            a = rng.standard_normal(s).astype(np.float32)
        arrays.append(a)
    return arrays


@pytest.mark.parametrize("seed", range(12))
def test_fused_kernel_equals_numpy_on_strided_broadcast_inputs(seed, monkeypatch, tmp_path):
    from needle.backend_ndarray import fused_elementwise as fe

    monkeypatch.setenv("NEEDLE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fe, "C_MIN_ELEMENTS", 0)  # the C kernel even for these small shapes
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in rng.integers(1, 6, rng.integers(0, 4)))
    n = int(rng.integers(1, 4))
    program = _random_program(rng, n, int(rng.integers(1, 7)))
    arrays = _strided_inputs(rng, shape, n)
    scalars = [float(rng.uniform(0.5, 2.0))]
    want = np.broadcast_to(_reference(program, arrays, scalars), shape)
    dev = ndl.cpu()
    nds = [dev.from_host(a) for a in arrays]  # views of the NumPy arrays, strides kept
    for compiler in (fe.c_compiler, lambda: None):  # generated C, then the NumPy plan
        monkeypatch.setattr(fe, "c_compiler", compiler)
        monkeypatch.setattr(fe, "_LIBRARIES", {})
        kernel = fe.FusedElementwise(program, n, 1, shape, dev)
        if compiler is not fe.c_compiler:
            assert kernel._c is None
        for run in (kernel, kernel.entry()):  # the call, and the function a plan binds
            got = run(*nds, *scalars).numpy()
            assert got.shape == shape
            np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6,
                                       err_msg=kernel.describe())


def test_fused_c_source_is_cached_on_disk(monkeypatch, tmp_path):
    from needle.backend_ndarray import fused_elementwise as fe

    if fe.c_compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("NEEDLE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fe, "_LIBRARIES", {})
    monkeypatch.setattr(fe, "C_MIN_ELEMENTS", 0)
    program = [("mul", [("in", 0), ("c", 3.0)]), ("exp", [("t", 0)])]
    kernel = fe.FusedElementwise(program, 1, 0, (3,), ndl.cpu())
    assert kernel._c is not None
    assert len(list((tmp_path / "fused").glob("*.so"))) == 1
    x = np.array([0.0, 1.0, -1.0], np.float32)
    np.testing.assert_allclose(kernel(ndl.cpu().from_host(x)).numpy(), np.exp(3 * x),
                               rtol=1e-6)


@pytest.mark.parametrize("make", [_mlp, _cnn, _transformer], ids=["mlp", "cnn", "transformer"])
def test_fused_plan_equals_unfused_plan(make):
    results = {}
    for fuse in (False, True):
        model, opt, batch, loss_fn = make()
        step = ndl.compile(_train_step(model, opt, loss_fn, create_graph=False), fuse=fuse)
        np.random.seed(1)
        losses = []
        for k in range(3):  # eager, recorded, replayed: the gradients are the replay's
            x, y = batch(k)
            losses.append(float(step(ndl.Tensor(x, requires_grad=False),
                                     ndl.Tensor(y, requires_grad=False)).numpy()))
        results[fuse] = (losses, [p.grad.numpy() for p in model.parameters()], step.plan)
    (l0, g0, plan0), (l1, g1, plan1) = results[False], results[True]
    assert plan1.n_kernels < plan0.n_kernels and "fused" in plan1.source
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_chain_of_small_ops_fuses_into_few_kernels():
    w = ndl.Tensor(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32))

    def chain(x):
        y = x * w
        for i in range(30):
            y = y * 1.01 if i % 3 == 0 else y + 0.1 if i % 3 == 1 else ops.tanh(y)
        loss = y.sum()
        loss.backward(create_graph=False)
        return loss, w.grad

    x = ndl.Tensor(np.random.default_rng(1).standard_normal((8, 8)).astype(np.float32),
                   requires_grad=False)
    want = chain(x)
    f = ndl.compile(chain)
    for _ in range(3):
        got = f(x)
    np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(got[1].numpy(), want[1].numpy(), rtol=1e-5, atol=1e-6)
    assert f.plan.source.count("fused") >= 2 and f.plan.n_kernels < 60


def test_replay_peak_memory_is_at_most_eager():
    model, opt, batch, loss_fn = _mlp()

    step = _train_step(model, opt, loss_fn, create_graph=False)

    x, y = batch(0)
    args = (ndl.Tensor(x, requires_grad=False), ndl.Tensor(y, requires_grad=False))
    f = ndl.compile(step)
    for _ in range(3):
        step(*args)
        f(*args)

    eager, replay = _traced_peak(step, *args), _traced_peak(f, *args)
    assert f.calls["replayed"] >= 2
    assert 0 < replay <= eager, (replay, eager)


_HELD = {}


def test_decorator_and_optimizers_found_in_containers_or_tracked():
    np.random.seed(0)
    model = nn.Linear(3, 2)
    _HELD["opt"] = ndl.optim.SGD(model.parameters(), lr=0.1)
    hidden = [ndl.optim.SGD(model.parameters(), lr=0.1)]

    @ndl.compile
    def step(x):
        opt = _HELD["opt"]
        opt.reset_grad()
        loss = model(x).sum()
        loss.backward()
        opt.step()
        return loss

    def other(x, opt=hidden[0]):  # a default argument is not searched
        loss = model(x).sum()
        loss.backward()
        opt.step()
        return loss

    assert step.optimizers == [_HELD["opt"]] and step.modules == [model]
    assert ndl.compile(other).optimizers == []
    tracked = ndl.compile(other, track=[hidden[0]])
    assert tracked.optimizers == [hidden[0]]
    x = ndl.Tensor(np.ones((2, 3), np.float32), requires_grad=False)
    for lr in (0.1, 0.1, 0.05, 0.01):  # the replays read the new rates
        _HELD["opt"].lr = lr
        step(x)
    assert "sgd0.lr" in step.plan.source


def test_replacing_a_parameter_after_recording_re_records():
    """The parameter walk is cached against `nn.structure_version()`: assigning a new
    Parameter to a module changes the signature, so the next call records anew."""
    np.random.seed(0)
    model = ndl.nn.Linear(4, 3)
    opt = ndl.optim.SGD(model.parameters(), lr=0.1)

    def step(x):
        opt.reset_grad()
        loss = model(x).sum()
        loss.backward(create_graph=False)
        opt.step()
        return loss

    compiled = ndl.compile(step, track=(model, opt))
    x = ndl.Tensor(np.ones((2, 4), np.float32), requires_grad=False)
    for _ in range(3):
        compiled(x)
    assert compiled.calls["replayed"] == 1
    model.weight = ndl.nn.Parameter(np.zeros((4, 3), np.float32))
    opt.params = list(model.parameters())
    before = dict(compiled.calls)
    bias = model.bias.numpy().copy()
    loss = compiled(x)
    assert compiled.calls["replayed"] == before["replayed"]  # not replayed on the old plan
    np.testing.assert_allclose(loss.numpy(), 2 * bias.sum(), rtol=1e-6)  # x @ 0 + b, 2 rows
