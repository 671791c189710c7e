"""needle.distributed and SyncBatchNorm: single-process semantics in-process, and real
`mpiexec -n 2` jobs (helper scripts in tests/mpi_scripts/) compared with one process.

The MPI tests start subprocesses with a timeout and skip cleanly without mpi4py or mpiexec.
"""
import json
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest

import needle as ndl
import needle.distributed as dist
from needle import nn
from needle.models import MLPResNet
from needle.nn.nn_distributed import SyncStandardize

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "mpi_scripts")
TIMEOUT = 60


# ---- one process: no MPI needed ------------------------------------------------------------

def test_plain_process_is_world_of_one():
    assert dist.init() == 1
    assert (dist.rank(), dist.world_size(), dist.is_main_process()) == (0, 1, True)
    assert dist.get_comm() is None
    dist.barrier()
    a = np.arange(3.0)
    assert dist.allreduce_array(a) is a and a.tolist() == [0.0, 1.0, 2.0]
    assert dist.broadcast_object({"x": 1}) == {"x": 1}
    assert dist.allgather_object(5) == [5]


def test_import_does_not_load_mpi4py():
    code = ("import sys; sys.path.insert(0, 'python'); import needle, needle.distributed as d;"
            "d.init(); assert 'mpi4py' not in sys.modules, 'mpi4py imported'; print(d.rank())")
    env = {k: v for k, v in os.environ.items() if k not in dist.comm._LAUNCHER_VARS}
    env.pop("NEEDLE_DISTRIBUTED", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(HERE), env=env,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


@pytest.mark.parametrize("env,expected", [
    ({}, False), ({"PMI_RANK": "0"}, True), ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, True),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, False),
    ({"PMI_RANK": "0", "NEEDLE_DISTRIBUTED": "0"}, False), ({"NEEDLE_DISTRIBUTED": "1"}, True),
])
def test_launcher_detection(monkeypatch, env, expected):
    for k in dist.comm._LAUNCHER_VARS + ("SLURM_PROCID", "SLURM_NTASKS", "NEEDLE_DISTRIBUTED"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert dist.comm._launched_by_mpi() is expected


class _FakeComm:
    """Stands in for COMM_WORLD of `size` ranks that all hold the same data."""

    def __init__(self, size):
        self.size = size
        self.allreduce_sizes = []
        self.pending = []
        self.bcast_objects = []

    def Allreduce(self, sendbuf, recvbuf, op):  # noqa: N802 (mpi4py name)
        assert sendbuf == "IN_PLACE" and op == "SUM"
        assert isinstance(recvbuf, np.ndarray) and recvbuf.flags.c_contiguous
        self.allreduce_sizes.append(recvbuf.nbytes)
        recvbuf *= self.size

    def Bcast(self, buf, root=0):  # noqa: N802
        buf[...] = 7.0

    def Iallreduce(self, sendbuf, recvbuf, op):  # noqa: N802
        self.allreduce_sizes.append(-recvbuf.nbytes)  # negative: a non-blocking call
        self.pending.append(recvbuf)
        return len(self.pending) - 1

    def bcast(self, obj, root=0):
        self.bcast_objects.append(obj)
        return obj

    def complete(self, requests):  # what MPI does in Test/Wait: the reduction happens
        for r in requests:
            if self.pending[r] is not None:
                self.pending[r] *= self.size
                self.pending[r] = None


@pytest.fixture
def fake_world(monkeypatch):
    comm = _FakeComm(4)
    fake_mpi = types.SimpleNamespace(IN_PLACE="IN_PLACE", SUM="SUM", MAX="MAX", MIN="MIN")
    fake_mpi.Request = types.SimpleNamespace(Testall=comm.complete, Waitall=comm.complete)
    monkeypatch.setattr(dist.comm, "_state", {"initialized": True, "comm": comm, "MPI": fake_mpi,
                                         "rank": 0, "size": 4})
    dist.reset_comm_stats()
    return comm


def _mlp():
    ndl.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.BatchNorm1d(64),
                         nn.Linear(64, 5))


def test_allreduce_gradients_packs_few_buckets(fake_world):
    model = _mlp()
    x = ndl.Tensor(np.random.default_rng(0).standard_normal((8, 20)).astype(np.float32))
    nn.SoftmaxLoss()(model(x), ndl.Tensor(np.arange(8) % 5)).backward()
    params = model.parameters()
    before = [p.grad.numpy().copy() for p in params]
    params[-1].grad = None  # a gradient missing on every rank stays missing
    nbytes = sum(p.numpy().nbytes for p in params)
    dist.allreduce_gradients(model, bucket_bytes=nbytes // 2)
    # 2 or 3 calls for 8 parameters, not 8; every value sent once, plus one flag per parameter
    assert 2 <= len(fake_world.allreduce_sizes) <= 3
    assert sum(fake_world.allreduce_sizes) == nbytes + 4 * len(params)
    assert dist.comm_stats["calls"] == len(fake_world.allreduce_sizes)
    for p, g in zip(params[:-1], before[:-1]):
        np.testing.assert_allclose(p.grad.numpy(), g, rtol=1e-6)  # mean of 4 equal copies
    assert params[-1].grad is None
    fake_world.allreduce_sizes.clear()
    dist.allreduce_gradients(model)  # default 25 MiB: one call for the whole model
    assert len(fake_world.allreduce_sizes) == 1


class _DeviceArray(np.ndarray):
    """A NumPy array posing as a GPU array: `.get()` copies it to the host (as CuPy's does)."""

    def get(self):
        return np.array(self)


def _as_device(a):
    return np.ascontiguousarray(a).view(_DeviceArray)


_FAKE_XP = types.SimpleNamespace(
    zeros=lambda n, dtype: _as_device(np.zeros(n, dtype)),
    ravel=lambda a: _as_device(np.ravel(a)),
    concatenate=lambda parts: _as_device(np.concatenate([np.asarray(p) for p in parts])),
    asarray=_as_device, array=lambda a, order="C": _as_device(np.array(a, order=order)))


class _FakeGPU(ndl.Device):
    """A device whose arrays are not NumPy's: everything MPI sends goes through the host."""

    name = "fakegpu"
    xp = _FAKE_XP

    def to_numpy(self, array):
        return np.array(array)

    def from_numpy(self, array):
        return _as_device(np.array(array, copy=True))


def test_gradients_on_a_device_are_staged_through_the_host(fake_world):
    device = _FakeGPU()
    rng = np.random.default_rng(5)
    shapes = [(3, 4), (4,), (2, 2)]
    params = [ndl.Tensor.make_const(ndl.NDArray._wrap(_as_device(
        rng.standard_normal(s).astype(np.float32)), device)) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    for p, g in zip(params, grads):
        p.grad = ndl.Tensor.make_const(ndl.NDArray._wrap(_as_device(g), device))
    params[1].grad = None
    dist.allreduce_gradients(params)
    assert len(fake_world.allreduce_sizes) == 1
    assert fake_world.allreduce_sizes[0] == 4 * (12 + 4 + 4 + 3)  # values + 3 flags
    for p, g in ((params[0], grads[0]), (params[2], grads[2])):
        data = p.grad.realize_cached_data()
        assert data.device is device and isinstance(data.native, _DeviceArray)
        np.testing.assert_allclose(np.asarray(data.native), g, rtol=1e-6)
    assert params[1].grad is None
    dist.broadcast_parameters(params)  # device values go up through the host too
    for p in params:
        assert isinstance(p.realize_cached_data().native, _DeviceArray)
        assert np.all(np.asarray(p.realize_cached_data().native) == 7.0)


def test_broadcast_parameters_writes_in_place(fake_world):
    model = _mlp()
    p0 = model.parameters()[0]
    native = p0.realize_cached_data().native
    dist.broadcast_parameters(model)
    assert len(fake_world.allreduce_sizes) == 0 and dist.comm_stats["calls"] == 1
    assert p0.realize_cached_data().native is native and np.all(native == 7.0)
    assert np.all(model.modules[3].running_var.numpy() == 7.0)


def _deep_mlp():
    ndl.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))


def _loss(model, seed):
    rng = np.random.default_rng(seed)
    x = ndl.Tensor(rng.standard_normal((8, 20)).astype(np.float32), requires_grad=False)
    return nn.SoftmaxLoss()(model(x), ndl.Tensor(rng.integers(0, 5, 8)))


@pytest.mark.parametrize("create_graph", [False, True])
def test_reducer_starts_buckets_during_the_backward(fake_world, create_graph):
    model, reference = _deep_mlp(), _deep_mlp()
    params = model.parameters()
    reducer = dist.GradientReducer(params, bucket_bytes=64 * 64 * 4)
    for step in range(3):
        for m in (model, reference):
            for p in m.parameters():
                p.grad = None
        _loss(reference, step).backward(create_graph=False)
        fake_world.allreduce_sizes.clear()
        _loss(model, step).backward(create_graph=create_graph)
        started = [n for n in fake_world.allreduce_sizes if n < 0]
        if step == 0 or create_graph:  # planning step, or a graph backward: no hook calls
            assert started == []
        else:  # every bucket was on its way before the backward returned, in plan order
            assert len(started) == len(reducer.buckets)
            assert fake_world.pending[-len(started)] is None  # tested (progressed) in flight
        reducer.finish()
        calls = [n for n in fake_world.allreduce_sizes if n < 0]
        assert len(calls) == len(reducer.buckets) >= 3
        assert -sum(calls) == sum(p.numpy().nbytes for p in params) + 4 * len(params)
        for p, r in zip(params, reference.parameters()):  # the mean of 4 equal copies
            np.testing.assert_allclose(p.grad.numpy(), r.grad.numpy(), rtol=1e-6)
    # the buckets follow rank 0's first backward: the last layer's gradients come first
    assert fake_world.bcast_objects and reducer.buckets[0][0] >= len(params) - 2
    reducer.close()
    assert reducer._hook not in ndl.graph.LEAF_GRAD_HOOKS


def test_reducer_missing_gradients_and_second_backward(fake_world):
    model = _deep_mlp()
    params = model.parameters()
    reducer = dist.GradientReducer(params, bucket_bytes=1 << 30)
    _loss(model, 0).backward(create_graph=False)
    reducer.finish()
    for p in params:
        p.grad = None
    params[-1].requires_grad = False  # no gradient on any rank: stays None
    _loss(model, 1).backward(create_graph=False)
    reducer.finish()
    assert params[-1].grad is None and params[0].grad is not None
    params[-1].requires_grad = True
    _loss(model, 2).backward(create_graph=False)
    with pytest.raises(RuntimeError, match="second gradient before finish"):
        _loss(model, 3).backward(create_graph=False)
    reducer.close()


def test_reducer_gradients_are_views_that_survive_the_next_step(fake_world):
    model, reference = _deep_mlp(), _deep_mlp()
    reducer = dist.GradientReducer(model.parameters(), bucket_bytes=64 * 64 * 4)
    kept = []
    for step in range(3):
        for m in (model, reference):
            for p in m.parameters():
                p.grad = None
        _loss(reference, step).backward(create_graph=False)
        _loss(model, step).backward(create_graph=False)
        reducer.finish()
        kept.append([(p.grad, r.grad.numpy().copy()) for p, r in
                     zip(model.parameters(), reference.parameters())])
        if step > 0:  # the gradients of the step before were not overwritten by this one
            for grad, expected in kept[-2]:
                np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-6)
        for grad, expected in kept[-1]:
            np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-6)
    reducer.close()


def test_reducer_without_tests_progresses_nothing_before_finish(fake_world):
    model = _deep_mlp()
    reducer = dist.GradientReducer(model.parameters(), bucket_bytes=64 * 64 * 4, test_every=0)
    for step in range(2):
        fake_world.pending.clear()
        _loss(model, step).backward(create_graph=False)
        if step == 1:  # started during the backward, but never tested: still in flight
            assert fake_world.pending and all(b is not None for b in fake_world.pending)
        reducer.finish()
        assert all(b is None for b in fake_world.pending)
    reducer.close()


def test_reducer_and_sharded_optimizer_reject_bad_arguments(fake_world):
    params = _deep_mlp().parameters()
    with pytest.raises(ValueError, match="wait must be one of"):
        dist.GradientReducer(params, wait="sleep")
    with pytest.raises(ValueError, match="GradientReducer: transport must be"):
        dist.GradientReducer(params, transport="tcp")
    assert dist.GradientReducer(params).transport == "mpi"  # the fake MPI has no windows
    model = dist.DistributedDataParallel(_deep_mlp(), broadcast=False)
    with pytest.raises(TypeError, match="elementwise rule"):
        dist.ShardedOptimizer(ndl.optim.LBFGS(model.parameters()), model)
    with pytest.raises(TypeError, match="must be a DistributedDataParallel"):
        dist.ShardedOptimizer(ndl.optim.SGD(params), _deep_mlp())
    with pytest.raises(ValueError, match="optimizer's parameters must be the model's"):
        dist.ShardedOptimizer(ndl.optim.SGD(params), model)
    with pytest.raises(ValueError, match="transport must be"):
        dist.ShardedOptimizer(ndl.optim.SGD(model.parameters()), model, transport="tcp")
    model.reducer.close()


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_sharded_optimizer_in_one_process_is_the_optimizer(opt_name):
    model, reference = _deep_mlp(), _deep_mlp()
    make = {"sgd": lambda ps: ndl.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3),
            "adam": lambda ps: ndl.optim.Adam(ps, lr=0.01)}[opt_name]
    ddp = dist.DistributedDataParallel(model)
    opt = dist.ShardedOptimizer(make(ddp.parameters()), ddp)
    ref_opt = make(reference.parameters())
    for step in range(3):
        for o, m in ((opt, ddp), (ref_opt, reference)):
            o.reset_grad()
            _loss(m, step).backward(create_graph=False)
        ddp.allreduce_gradients()
        assert opt.clip_grad_norm(1.0) == pytest.approx(ref_opt.clip_grad_norm(1.0), rel=1e-6)
        opt.step()
        ref_opt.step()
    for p, r in zip(model.parameters(), reference.parameters()):
        np.testing.assert_array_equal(p.numpy(), r.numpy())
    assert opt.state_dict()["state"].keys() == ref_opt.state_dict()["state"].keys()
    assert opt.local_state_size() == sum(p.numpy().size for p in model.parameters()) * (
        1 if opt_name == "sgd" else 2)


def test_reducer_is_released_with_its_owner(fake_world):
    reducer = dist.GradientReducer(_deep_mlp().parameters())
    hook = reducer._hook
    del reducer  # no gc.collect(): nothing else holds it
    assert hook not in ndl.graph.LEAF_GRAD_HOOKS


def test_threads_per_rank(fake_world, monkeypatch):
    from needle.backend_ndarray import cpu_c

    fake_world.Split_type = lambda kind: types.SimpleNamespace(Get_size=lambda: 2,
                                                                Free=lambda: None)
    fake_world_mpi = dist.comm._state["MPI"]
    fake_world_mpi.COMM_TYPE_SHARED = "shared"
    device = ndl.cpu()
    saved = device.get_num_threads()
    try:
        for var in dist.comm.THREAD_VARS:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        # the environment's choice is applied to the device's own threads too
        assert dist.set_threads_per_rank() == 3 and device.get_num_threads() == 3
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # set for the BLAS alone
        assert dist.set_threads_per_rank() == 1 and device.get_num_threads() == 1
        monkeypatch.delenv("OPENBLAS_NUM_THREADS")
        monkeypatch.setattr(dist.comm, "_usable_cores", lambda: 8)
        assert dist.local_world_size() == 2
        assert dist.set_threads_per_rank() == 4 and device.get_num_threads() == 4
        monkeypatch.setattr(dist.comm, "_usable_cores", lambda: 1)
        assert dist.set_threads_per_rank() == 1 and device.get_num_threads() == 1
        threadpoolctl = pytest.importorskip("threadpoolctl")
        dist.set_threads_per_rank(2)
        assert device.get_num_threads() == 2
        blas = [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "blas"]
        # needle's threads split each product when its C library calls the BLAS (which then
        # keeps one thread of its own); else the BLAS gets the threads
        splits = cpu_c.library() is not None and bool(cpu_c._GEMM and cpu_c._GEMM[0])
        assert blas and all(n == (1 if splits else 2) for n in blas)
        with pytest.raises(ValueError, match="set_threads_per_rank: need at least 1"):
            dist.set_threads_per_rank(0)
    finally:
        pytest.importorskip("threadpoolctl").threadpool_limits(limits=saved, user_api="blas")
        device.set_num_threads(saved)


def test_plugin_shards_validation_and_reduces_the_sums(fake_world, monkeypatch):
    from needle.data import DataLoader, NDArrayDataset
    from needle.distributed.plugin import trainer_plugin
    from needle.train.engine import ClassificationTask, Trainer

    monkeypatch.setattr(dist.comm, "_state", {**dist.comm._state, "rank": 1})
    monkeypatch.setattr(dist.comm, "set_threads_per_rank", lambda: 1)
    monkeypatch.setattr(dist.plugin, "set_threads_per_rank", lambda: 1)
    monkeypatch.setattr(dist.plugin, "install_excepthook", lambda: None)
    monkeypatch.setattr(dist.plugin, "broadcast_parameters", lambda model: None)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((23, 20)).astype(np.float32), rng.integers(0, 5, 23)
    model = _deep_mlp()
    trainer = Trainer(model, ndl.optim.SGD(model.parameters(), lr=0.1), ClassificationTask(),
                      DataLoader(NDArrayDataset(X, y), batch_size=8, shuffle=True),
                      DataLoader(NDArrayDataset(X, y), batch_size=5))
    full = trainer.evaluate()
    trainer_plugin(trainer, types.SimpleNamespace(seed=0))
    assert trainer.world_size == 4 and trainer.is_main is False
    assert trainer.train_data.batch_size == 2 and len(trainer.train_data.sampler) == 6
    shard = trainer.eval_data.sampler.indices().tolist()
    assert shard == list(range(1, 23, 4))  # rank 1 of 4: every sample read once overall
    sums = []
    trainer.reduce_eval_sums = lambda s: (sums.append(s), tuple(4 * v for v in s))[1]
    trainer.evaluate()
    (loss_sum, correct, n), = sums
    assert n == 6
    # rank 1's shard: its loss sum is the full evaluation's per-sample losses at those indices
    torch = pytest.importorskip("torch")
    model.eval()
    logits = torch.tensor(model(ndl.Tensor(X[shard], requires_grad=False)).numpy())
    ref = torch.nn.functional.cross_entropy(logits, torch.tensor(y[shard]), reduction="sum")
    np.testing.assert_allclose(loss_sum, float(ref), rtol=1e-5)
    assert correct == int((logits.argmax(1).numpy() == y[shard]).sum())
    assert np.isfinite(full["loss"])
    # the default reduction adds the ranks' (loss_sum, correct, n) in float64
    fake_world.allreduce_sizes.clear()
    assert dist.plugin._allreduce_sums((1.5, 2, 6)) == (6.0, 8, 24)


def test_distributed_sampler_without_padding_covers_each_sample_once():
    from needle.data import DistributedSampler

    for n, k in ((23, 4), (3, 5), (0, 2), (8, 2)):
        shards = [DistributedSampler(n, k, r, shuffle=False, pad=False).indices().tolist()
                  for r in range(k)]
        assert sorted(sum(shards, [])) == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        assert [len(DistributedSampler(n, k, r, pad=False)) for r in range(k)] == \
            list(map(len, shards))


def test_mpiexec_command_finds_launcher():
    try:
        cmd = dist.mpiexec_command(3)
    except FileNotFoundError:
        pytest.skip("no mpiexec")
    assert cmd[1:] == ["-n", "3"] and os.access(cmd[0], os.X_OK)


@pytest.mark.parametrize("create_graph", [False, True])
def test_sync_batchnorm_single_process_is_batchnorm(create_graph):
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((16, 6)).astype(np.float32) * 3 + 1
    outs = []
    for cls in (nn.BatchNorm1d, nn.SyncBatchNorm):
        ndl.manual_seed(0)
        bn = cls(6)
        bn.weight = nn.Parameter(ndl.Tensor(rng.standard_normal(6).astype(np.float32) * 0
                                            + np.linspace(0.5, 2, 6, dtype=np.float32)))
        x = ndl.Tensor(xs)
        y = bn(x)
        (y * y).sum().backward(create_graph=create_graph)
        outs.append((y.numpy(), x.grad.numpy(), bn.weight.grad.numpy(),
                     bn.running_mean.numpy(), bn.running_var.numpy()))
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sync_standardize_matches_standardize_and_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((5, 3, 4, 2)).astype(np.float32)
    gs = rng.standard_normal(xs.shape).astype(np.float32)
    axes = (0, 2, 3)
    x = ndl.Tensor(xs)
    y = SyncStandardize(axes, 1e-5)(x)
    y.backward(ndl.Tensor(gs), create_graph=False)
    fast = x.grad.numpy()
    x2 = ndl.Tensor(xs)
    y2 = SyncStandardize(axes, 1e-5)(x2)
    y2.backward(ndl.Tensor(gs), create_graph=True)  # the graph gradient, made of ops
    xt = torch.tensor(xs, requires_grad=True)
    yt = torch.nn.functional.batch_norm(xt, None, None, training=True, eps=1e-5)
    yt.backward(torch.tensor(gs))
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fast, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(x2.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_sync_batchnorm_4d_eval_uses_running_stats():
    ndl.manual_seed(0)
    bn = nn.SyncBatchNorm(3)
    xs = np.random.default_rng(3).standard_normal((4, 3, 2, 2)).astype(np.float32)
    bn(ndl.Tensor(xs))
    mean = xs.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * mean, rtol=1e-5, atol=1e-7)
    bn.eval()
    y = bn(ndl.Tensor(xs)).numpy()
    rm, rv = bn.running_mean.numpy(), bn.running_var.numpy()
    ref = (xs - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="SyncBatchNorm"):
        bn(ndl.Tensor(np.zeros((4, 5), dtype=np.float32)))


def test_sync_batchnorm_4d_matches_batchnorm2d():
    rng = np.random.default_rng(4)
    xs = rng.standard_normal((3, 4, 5, 5)).astype(np.float32) * 2 + 0.5
    gs = rng.standard_normal(xs.shape).astype(np.float32)
    outs = []
    for convert in (False, True):
        ndl.manual_seed(0)
        model = nn.Sequential(nn.BatchNorm2d(4))
        if convert:
            model = nn.convert_sync_batchnorm(model)
            assert isinstance(model.modules[0], nn.SyncBatchNorm)
        x = ndl.Tensor(xs)
        y = model(x)
        y.backward(ndl.Tensor(gs), create_graph=False)
        bn = model.modules[0]
        outs.append((y.numpy(), x.grad.numpy(), bn.weight.grad.numpy(), bn.bias.grad.numpy(),
                     bn.running_mean.numpy(), bn.running_var.numpy()))
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_convert_sync_batchnorm_keeps_state_dict():
    model = MLPResNet(8, 16, num_blocks=2, num_classes=3)
    keys = sorted(model.state_dict())
    model = nn.convert_sync_batchnorm(model)
    n_sync = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules_list())
    assert n_sync == 4
    assert sorted(model.state_dict()) == keys


# ---- real MPI jobs ----------------------------------------------------------------------------

def _mpiexec(n):
    pytest.importorskip("mpi4py")
    try:
        return dist.mpiexec_command(n)
    except FileNotFoundError:
        pytest.skip("mpiexec not found")


def _run(cmd, timeout=TIMEOUT):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("NEEDLE_DISTRIBUTED", None)
    return subprocess.run(cmd, cwd=os.path.dirname(HERE), env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """One 2-process job with local batch 4 and one plain process with batch 8."""
    mpiexec = _mpiexec(2)
    tmp = tmp_path_factory.mktemp("ddp")
    script = os.path.join(SCRIPTS, "ddp_check.py")
    one, two = str(tmp / "one.npz"), str(tmp / "two.npz")
    r1 = _run([sys.executable, script, "--local-batch", "8", "--out", one])
    assert r1.returncode == 0, r1.stderr
    r2 = _run(mpiexec + [sys.executable, script, "--local-batch", "4", "--out", two])
    assert r2.returncode == 0, r2.stdout + r2.stderr
    return np.load(one), np.load(two)


@pytest.mark.mpi
@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("norm", ["syncbn", "layernorm"])
@pytest.mark.parametrize("graph", [0, 1])
@pytest.mark.parametrize("mode", [0, 1, 2, 3])  # ddp_check.MODES: (sharded step, transport)
def test_two_processes_equal_one_with_double_batch(ddp_results, opt, norm, graph, mode):
    one, two = ddp_results
    assert int(one["world_size"]) == 1 and int(two["world_size"]) == 2
    shard = mode in (1, 2)
    prefix = f"{opt}.{norm}.{graph}.{mode}."
    keys = [k for k in one.files if k.startswith(prefix) and not k.endswith("state_size")]
    assert any(".buf." in k for k in keys) == (norm == "syncbn")
    # parameters, optimizer state (gathered from the shards), losses and clipped norms
    assert any(".state." in k for k in keys)
    for k in keys:
        np.testing.assert_allclose(two[k], one[k], rtol=0, atol=1e-5, err_msg=k)
    if shard:
        # ZeRO-1: each rank holds about half of the optimizer state, together all of it
        total = int(one[prefix + "state_size"][0])
        sizes = two[prefix + "state_size"]
        assert sizes.sum() == total and sizes.max() < 0.6 * total, (sizes, total)
        assert (one[prefix + "norms"] > float(one["clip_norm"])).any()  # the clipping clipped
    # the weights did move (the comparison is not between two untouched initializations), and
    # rank 1's own initialization (another seed) was replaced by rank 0's broadcast
    assert np.abs(one[prefix + "p0"] - one[prefix + "init0"]).max() > 1e-2


@pytest.mark.mpi
def test_shards_are_disjoint_and_cover(ddp_results):
    _, two = ddp_results
    for drop_last in (0, 1):
        for epoch in (0, 1):
            a, b = (two[f"shard.{drop_last}.{epoch}.{r}"] for r in (0, 1))
            assert len(a) == len(b)
            if drop_last:
                assert len(a) == 11 and not set(a) & set(b)
            else:
                assert len(a) == 12 and set(a) | set(b) == set(range(23))
                assert len(set(a) & set(b)) == 1  # one wrap-around sample pads 23 to 24
    assert not np.array_equal(two["shard.0.0.0"], two["shard.0.1.0"])  # reshuffled per epoch


@pytest.mark.mpi
def test_checkpoint_from_two_processes_resumes_in_one(tmp_path):
    mpiexec = _mpiexec(2)
    script = os.path.join(SCRIPTS, "ckpt_resume.py")
    ckpt = str(tmp_path / "run.safetensors")
    w = _run(mpiexec + [sys.executable, script, "--phase", "write", "--ckpt", ckpt])
    assert w.returncode == 0, w.stdout + w.stderr
    assert sorted(os.listdir(tmp_path)) == ["run.safetensors", "run.safetensors.next_loss.npy"]
    expected = float(np.load(ckpt + ".next_loss.npy"))
    r = _run([sys.executable, script, "--phase", "resume", "--ckpt", ckpt])
    assert r.returncode == 0, r.stderr
    got = float(r.stdout.split("NEXT_LOSS")[1])
    assert abs(got - expected) < 1e-5


@pytest.mark.mpi
@pytest.mark.parametrize("fail_rank", [0, 1, -1])
def test_failing_rank_ends_the_job(fail_rank):
    mpiexec = _mpiexec(2)
    start = time.monotonic()
    r = _run(mpiexec + [sys.executable, os.path.join(SCRIPTS, "raise_on_rank.py"),
                        "--fail-rank", str(fail_rank)], timeout=30)
    elapsed = time.monotonic() - start
    assert r.returncode != 0
    assert elapsed < 15
    out = r.stdout + r.stderr
    reporter = max(fail_rank, 0)  # when every rank fails, rank 0's report is the one
    assert f"rank {reporter} failed: RuntimeError: injected failure" in out
    assert out.count("failed: RuntimeError: injected failure") == 1, out


# ---- the `needle train` command under mpiexec ---------------------------------------------------

def _needle_train(prefix, *flags):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=os.path.join(os.path.dirname(HERE), "python"))
    env.pop("NEEDLE_DISTRIBUTED", None)
    cmd = prefix + [sys.executable, "-m", "needle", "train", "--hidden-dim", "16",
                    "--no-progress"] + list(flags)
    return subprocess.run(cmd, cwd=os.path.dirname(HERE), env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


@pytest.mark.mpi
def test_needle_train_under_mpiexec_and_resume_with_one_process(tmp_path):
    mpiexec = _mpiexec(2)
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    r = _needle_train(mpiexec, "--epochs", "1", "--batch-size", "256", "--out", two)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("epoch   1") == 1 and r.stdout.count("done:") == 1  # rank 0 only
    assert r.stdout.count("data parallel: 2 processes (MPI), 1 thread(s) each") == 1
    assert {"best.safetensors", "curves.png", "last.safetensors", "metrics.jsonl"} <= \
        set(os.listdir(two))
    assert not [f for f in os.listdir(two) if "tmp" in f]  # written once, by rank 0
    with open(os.path.join(two, "metrics.jsonl")) as f:
        first = [line for line in f]
    assert len(first) == 1
    # validation was sharded over the ranks and reduced: one process evaluating the whole set
    # with the same weights gives the same metrics
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(HERE), "python"))
    e = subprocess.run([sys.executable, "-m", "needle", "eval",
                        os.path.join(two, "last.safetensors")], env=env, capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert e.returncode == 0, e.stderr
    ref, got = json.loads(e.stdout.strip().splitlines()[-1]), json.loads(first[0])
    assert ref["eval_accuracy"] == got["eval_accuracy"]
    assert abs(ref["eval_loss"] - got["eval_loss"]) < 1e-5
    r = _needle_train([], "--epochs", "2", "--batch-size", "256", "--out", one,
                      "--resume", os.path.join(two, "last.safetensors"))
    assert r.returncode == 0, r.stderr
    with open(os.path.join(one, "metrics.jsonl")) as f:
        lines = f.readlines()
    assert len(lines) == 2 and lines[0] == first[0]
    assert '"epoch": 2' in lines[1]


@pytest.mark.mpi
def test_needle_train_bad_global_batch_aborts_every_rank(tmp_path):
    mpiexec = _mpiexec(2)
    r = _needle_train(mpiexec, "--epochs", "1", "--batch-size", "255", "--out",
                      str(tmp_path / "x"))
    assert r.returncode != 0
    message = "failed: --batch-size 255 is the global batch and must be a multiple of the 2"
    assert r.stderr.count(message) == 1, r.stderr  # every rank fails; the job reports once
    assert "needle: error" not in r.stderr
    assert not os.path.exists(tmp_path / "x" / "last.safetensors")


@pytest.mark.mpi
def test_launcher_and_mpi_library_mismatch_is_an_error():
    pytest.importorskip("mpi4py")
    # a launcher claiming 2 processes around a process whose MPI sees only itself
    env = dict(os.environ, PMI_SIZE="2", PYTHONPATH=os.path.join(os.path.dirname(HERE),
                                                                 "python"))
    for k in ("PMI_RANK", "PMI_FD", "PMI_PORT", "PMI_ID", "NEEDLE_DISTRIBUTED"):
        env.pop(k, None)
    code = "import needle.distributed as d; d.init()"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode != 0
    assert "use different MPI libraries" in r.stderr
