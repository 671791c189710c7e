"""DataLoader(num_workers=N): the same batches as num_workers=0 (the reference), reproducible
random transforms, errors from workers, and workers that never outlive their epoch."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import needle.data as ndata
from needle.data.data_transforms import RandomCrop, RandomFlipHorizontal
from needle.errors import DataFormatError

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 60


class _PerSample(ndata.Dataset):
    """No batch indexing: the loader stacks `n` samples one by one."""

    def __init__(self, n, fail_at=None, delay=0.0, transforms=None):
        super().__init__(transforms)
        rng = np.random.default_rng(1)
        self.x = rng.standard_normal((n, 4, 4, 1)).astype(np.float32)
        self.fail_at, self.delay = fail_at, delay

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise DataFormatError(f"sample {i} is corrupt")
        if self.delay:
            time.sleep(self.delay)
        return self.apply_transforms(self.x[i]), i


def _epochs(loader, epochs=2, seed=0):
    np.random.seed(seed)
    return [[tuple(t.numpy() for t in batch) for batch in loader] for _ in range(epochs)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for ea, eb in zip(a, b):
        assert len(ea) == len(eb)
        for ba, bb in zip(ea, eb):
            for fa, fb in zip(ba, bb):
                assert fa.dtype == fb.dtype and fa.shape == fb.shape
                np.testing.assert_array_equal(fa, fb)


def _alive(pid):
    """True while `pid` exists and is not a zombie (a reaped child no longer exists)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("kind", ["sequential", "shuffle", "drop_last", "sampler", "per_sample"])
def test_batches_equal_num_workers_0(workers, kind):
    X = np.random.default_rng(0).standard_normal((103, 3)).astype(np.float64)
    y = np.arange(103)
    ds = _PerSample(37) if kind == "per_sample" else ndata.NDArrayDataset(X, y)
    kw = {"batch_size": 10}
    if kind in ("shuffle", "drop_last", "per_sample"):
        kw["shuffle"] = True
    if kind == "drop_last":
        kw["drop_last"] = True
    if kind == "sampler":
        kw["sampler"] = ndata.DistributedSampler(len(ds), num_replicas=2, rank=1, seed=3)
    ref = _epochs(ndata.DataLoader(ds, **kw))
    got = _epochs(ndata.DataLoader(ds, num_workers=workers, prefetch_factor=1, **kw))
    _assert_same(got, ref)
    assert ref[0][0][0].dtype == np.float32  # floats become float32 as with workers=0
    if kind != "sequential":
        assert not all(np.array_equal(a[-1], b[-1]) for a, b in zip(ref[0], ref[1]))


def test_random_transforms_are_reproducible_and_independent_of_num_workers():
    ds = _PerSample(40, transforms=[RandomFlipHorizontal(), RandomCrop(1)])
    runs = {w: _epochs(ndata.DataLoader(ds, batch_size=8, num_workers=w), epochs=1)
            for w in (1, 2, 3)}
    _assert_same(runs[1], runs[3])
    _assert_same(runs[2], runs[3])
    _assert_same(_epochs(ndata.DataLoader(ds, batch_size=8, num_workers=2), epochs=1), runs[2])
    plain = _epochs(ndata.DataLoader(_PerSample(40), batch_size=8), epochs=1)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(runs[1][0], plain[0]))
    # each image was flipped and/or shifted from the original, not replaced
    for (img, idx), (orig, _) in zip(runs[1][0], plain[0]):
        assert np.abs(img).sum() <= np.abs(orig).sum() + 1e-5
    other_seed = _epochs(ndata.DataLoader(ds, batch_size=8, num_workers=2), epochs=1, seed=5)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(runs[2][0], other_seed[0]))


def test_workers_do_not_draw_from_the_parents_rng():
    ds = _PerSample(20, transforms=[RandomFlipHorizontal()])
    np.random.seed(0)
    list(ndata.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2))
    after = np.random.rand()
    np.random.seed(0)
    np.random.permutation(len(ds))  # the loader's one draw
    assert np.random.rand() == after


def test_workers_are_reaped_after_an_epoch_and_after_break():
    ds = ndata.NDArrayDataset(np.zeros((50, 2), np.float32))
    loader = ndata.DataLoader(ds, batch_size=5, num_workers=2)
    it = iter(loader)
    pids = [p.pid for p in it._workers]
    assert len(it) == 10 and len(list(it)) == 10
    assert not any(_alive(p) for p in pids)
    for i, _ in enumerate(loader):  # early break: the loop drops the iterator
        if i == 1:
            break
    it = iter(loader)
    next(it)
    pids = [p.pid for p in it._workers]
    assert all(_alive(p) for p in pids)
    del it  # reference count, no gc.collect()
    assert not any(_alive(p) for p in pids)


def test_worker_exception_is_reraised_with_its_traceback():
    loader = ndata.DataLoader(_PerSample(30, fail_at=17), batch_size=4, num_workers=2)
    it = iter(loader)
    pids = [p.pid for p in it._workers]
    with pytest.raises(DataFormatError, match="sample 17 is corrupt") as info:
        list(it)
    assert "in DataLoader worker 0, batch 4" in str(info.value.__cause__)
    assert "__getitem__" in str(info.value.__cause__)
    assert not any(_alive(p) for p in pids)


def test_killed_worker_is_an_error_not_a_hang():
    loader = ndata.DataLoader(_PerSample(40, delay=0.05), batch_size=4, num_workers=2)
    it = iter(loader)
    next(it)
    os.kill(it._workers[1].pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"DataLoader: worker 1 \(pid \d+\) exited "
                                           r"unexpectedly with exit code -9"):
        list(it)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("bad", [{"num_workers": -1}, {"num_workers": 1.5},
                                 {"prefetch_factor": 0}])
def test_bad_worker_settings(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"DataLoader: {name} must be an integer"):
        ndata.DataLoader(ndata.NDArrayDataset(np.zeros(3)), **bad)


_SCRIPT = """
import signal, sys, time
# a parent started in the background may hand down SIGINT ignored; a terminal's Ctrl-C does not
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {python!r})
import numpy as np, needle.data as nd

class Slow(nd.Dataset):
    def __len__(self): return 10000
    def __getitem__(self, i):
        time.sleep(0.01)
        return np.zeros(3, np.float32)

it = iter(nd.DataLoader(Slow(), batch_size=2, num_workers=2))
next(it)
print(" ".join(str(p.pid) for p in it._workers), flush=True)
for batch in it:
    pass
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_or_killed_parent_leaves_no_worker(sig):
    code = _SCRIPT.format(python=os.path.join(os.path.dirname(HERE), "python"))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        # Ctrl-C reaches the whole foreground process group; SIGKILL only the parent
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.kill()
        _, err = proc.communicate(timeout=TIMEOUT)
        if sig == signal.SIGINT:
            assert proc.returncode != 0 and "KeyboardInterrupt" in err
            assert err.count("KeyboardInterrupt") == 1  # the workers ignore it
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_needle_train_with_workers_trains_the_same_model(tmp_path):
    from needle.train import cli

    records = []
    for workers in (0, 2):
        out = str(tmp_path / f"w{workers}")
        assert cli.main(["train", "--epochs", "1", "--hidden-dim", "16", "--no-progress",
                         "--no-summary", "--workers", str(workers), "--out", out]) == 0
        with open(os.path.join(out, "metrics.jsonl")) as f:
            record = json.loads(f.readline())
        records.append({k: v for k, v in record.items() if k != "seconds"})
    assert records[0] == records[1]  # the same batches in the same order: the same run
