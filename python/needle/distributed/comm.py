"""MPI primitives for data-parallel training (through mpi4py): the bottom of needle.distributed.

The package's overview: data-parallel training over MPI, the same model on N processes.

Every process holds a full copy of the model and reads its own shard of the data; after each
backward pass, `allreduce_gradients` averages the gradients across processes with a few large
`Allreduce` calls on contiguous NumPy buckets, so every copy takes the same optimizer step and
the run equals one process training on the global batch (the sum of the local ones).

Works unchanged as a plain process (world size 1, nothing is imported or sent) and under
`mpiexec -n N` / `srun`::

    import needle.distributed as dist
    dist.init()                                   # no-op outside an MPI launcher
    model = DistributedDataParallel(model)        # broadcasts rank 0's weights
    sampler = dist.distributed_sampler(train_set, seed=0)
    loader = DataLoader(train_set, batch_size=local_batch, sampler=sampler)
    for x, y in loader:
        loss = loss_fn(model(x), y)
        opt.reset_grad(); loss.backward()
        model.allreduce_gradients()               # average over ranks, in a few buckets
        opt.step()

mpi4py is imported lazily, only when `init()` finds the process started by an MPI launcher
(or `NEEDLE_DISTRIBUTED=1`), so `import needle` never initializes MPI. Gradients of `cuda()`
arrays are packed on the device, staged through one host buffer per bucket and copied back;
CUDA-aware MPI (device pointers handed to MPI) is future work.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
import traceback
from typing import Any, Dict, List, Optional

import numpy as np


__all__ = [
    "init", "is_initialized", "is_distributed", "rank", "world_size", "is_main_process",
    "barrier", "get_comm", "allreduce_array", "broadcast_object", "allgather_object",
    "install_excepthook", "abort", "abort_on_error", "mpiexec_command", "comm_stats",
    "reset_comm_stats", "DEFAULT_BUCKET_BYTES", "local_world_size", "set_threads_per_rank",
]

DEFAULT_BUCKET_BYTES = 25 * 2 ** 20  # as PyTorch DDP: few calls, overlap-friendly sizes
ABORT_GRACE_SECONDS = 0.5  # before MPI_Abort, for the launcher to forward stderr
REPORT_DELAY_SECONDS = 1.0  # rank r > 0 waits min(r, 8) times this before reporting a failure

# Environment variables that MPI launchers set in every process they start (MPICH/Hydra,
# Open MPI, PMIx, Intel MPI, MVAPICH, Slurm's srun with PMI).
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE",
                  "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE", "HYDI_CONTROL_FD")

_state: Dict[str, Any] = {"initialized": False, "comm": None, "MPI": None,
                          "rank": 0, "size": 1}

comm_stats: Dict[str, float] = {"calls": 0, "bytes": 0, "seconds": 0.0}
"""Counters of the collective calls made here: number, payload bytes, wall seconds."""


def reset_comm_stats() -> None:
    comm_stats.update(calls=0, bytes=0, seconds=0.0)


def _launched_by_mpi() -> bool:
    flag = os.environ.get("NEEDLE_DISTRIBUTED")
    if flag is not None:
        return flag.strip().lower() not in ("0", "false", "no", "off", "")
    if any(v in os.environ for v in _LAUNCHER_VARS):
        return True
    # srun without PMI variables still tells us the task count
    return int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in os.environ


def init() -> int:
    """Join the MPI job this process was started in; return the world size.

    A plain process (no MPI launcher in the environment, or mpi4py not installed) gets world
    size 1 and rank 0 without importing mpi4py. Calling `init()` again is a no-op.
    Set `NEEDLE_DISTRIBUTED=0` to force a single process, `=1` to force MPI.
    """
    if _state["initialized"]:
        return _state["size"]
    _state["initialized"] = True
    if not _launched_by_mpi():
        return 1
    try:
        from mpi4py import MPI  # noqa: PLC0415 (optional dependency, imported lazily)
    except ImportError:
        if _launcher_size() > 1:
            raise RuntimeError("needle.distributed.init: started by an MPI launcher with "
                               "several processes, but mpi4py is not installed; "
                               "pip install 'needle[mpi]'") from None
        return 1
    comm = MPI.COMM_WORLD
    _state.update(comm=comm, MPI=MPI, rank=comm.Get_rank(), size=comm.Get_size())
    expected = _launcher_size()
    if expected > 1 and _state["size"] == 1:
        # e.g. Open MPI's mpiexec starting a program whose mpi4py links MPICH: every
        # process would train alone and all of them would write the same files
        raise RuntimeError(f"needle.distributed.init: the launcher started {expected} "
                           "processes but MPI sees 1; mpiexec and mpi4py use different MPI "
                           f"libraries (mpi4py: {MPI.Get_library_version().splitlines()[0]})")
    return _state["size"]


def _launcher_size() -> int:
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_NTASKS"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


def is_initialized() -> bool:
    return _state["initialized"]


def get_comm():
    """The mpi4py communicator (COMM_WORLD), or None in a single plain process."""
    init()
    return _state["comm"]


def rank() -> int:
    """This process's index in 0..world_size()-1 (0 in a plain process)."""
    init()
    return _state["rank"]


def world_size() -> int:
    """The number of processes in the job (1 in a plain process)."""
    init()
    return _state["size"]


def is_distributed() -> bool:
    return world_size() > 1


def is_main_process() -> bool:
    """True on rank 0: the one process that prints, writes metrics and saves checkpoints."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process reaches this point (no-op with one process)."""
    if is_distributed():
        _state["comm"].Barrier()


def abort(code: int = 1) -> None:
    """End every process of the job now (MPI_Abort), or this one if there is no job."""
    comm = _state["comm"]
    if comm is not None and _state["size"] > 1:
        # MPI_Abort tears the job down at once, and the launcher's stdio forwarding with it:
        # give it a moment to deliver the `rank R failed: ...` line written just before
        time.sleep(ABORT_GRACE_SECONDS)
        comm.Abort(code)
    os._exit(code)


def install_excepthook() -> None:
    """Make an uncaught exception on any rank end the whole job within seconds.

    The hook prints `rank R failed: <traceback>` to stderr (once per job when every rank fails
    the same way, see `_report_and_abort`) and calls `MPI_Abort`, so the other
    ranks (possibly blocked in a collective) are killed instead of waiting forever and
    `mpiexec` exits non-zero. No-op with one process.
    """
    if not is_distributed():
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            previous(exc_type, exc, tb)
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        _report_and_abort(f"rank {rank()} failed: {exc_type.__name__}: {exc}\n{text}", 1)

    sys.excepthook = hook


def mpiexec_command(n: int, python: Optional[str] = None) -> List[str]:
    """The command prefix that starts `n` local processes, e.g. `[mpiexec, "-n", "2"]`.

    Prefers the `mpiexec` installed beside this Python (the `mpich` wheel of `needle[mpi]`),
    then one on PATH. Raises FileNotFoundError when there is none.
    """
    bindir = os.path.dirname(python or sys.executable)
    candidates = [os.path.join(bindir, "mpiexec"), shutil.which("mpiexec") or ""]
    for exe in candidates:
        if exe and os.access(exe, os.X_OK):
            return [exe, "-n", str(int(n))]
    raise FileNotFoundError("needle.distributed.mpiexec_command: no mpiexec found beside "
                            f"{sys.executable} or on PATH; pip install 'needle[mpi]'")


THREAD_VARS = ("NEEDLE_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "MKL_NUM_THREADS")


def local_world_size() -> int:
    """The number of this job's processes on this machine (1 in a plain process)."""
    if not is_distributed():
        return 1
    if "local_size" not in _state:
        local = _state["comm"].Split_type(_state["MPI"].COMM_TYPE_SHARED)
        _state["local_size"] = local.Get_size()
        local.Free()
    return _state["local_size"]


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads_per_rank(threads: Optional[int] = None) -> int:
    """Give every process of the job its share of this machine's cores; returns the count.

    Sets the CPU device's own threads to `threads`, and the BLAS threads (through
    threadpoolctl, when installed) where the device leaves products to the BLAS; by default
    the usable cores divided by the job's processes on this machine (at least 1): two
    processes with a thread per core each would oversubscribe the cores and run slower than
    one. When `threads` is None and the environment sets a thread count (`NEEDLE_NUM_THREADS`,
    `OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`, `MKL_NUM_THREADS`, the first one set), that
    count is the one applied. Call it on every rank (it asks MPI which processes share the
    machine).
    """
    from ..backend_ndarray import cpu  # noqa: PLC0415 (the device is not needed to import comm)

    local = local_world_size()
    if threads is None:
        for var in THREAD_VARS:
            value = os.environ.get(var, "").strip()
            if value.isdigit() and int(value) > 0:
                threads = int(value)
                break
        else:
            threads = max(1, _usable_cores() // local)
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"set_threads_per_rank: need at least 1 thread, got {threads}")
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415 (optional)
    except ImportError:
        pass
    else:
        threadpool_limits(limits=threads, user_api="blas")
    cpu().set_num_threads(threads)
    return threads


# ---- collectives ---------------------------------------------------------------------------

def _timed(fn, nbytes: int):
    t0 = time.perf_counter()
    fn()
    comm_stats["seconds"] += time.perf_counter() - t0
    comm_stats["calls"] += 1
    comm_stats["bytes"] += nbytes


def allreduce_array(array: np.ndarray, op: str = "sum") -> np.ndarray:
    """Reduce a contiguous NumPy array across ranks in place (`op` in sum/max/min); returns it."""
    if not is_distributed():
        return array
    if not (isinstance(array, np.ndarray) and array.flags.c_contiguous):
        raise TypeError("allreduce_array: needs a C-contiguous numpy array, got "
                        f"{type(array).__name__}")
    MPI = _state["MPI"]
    mpi_op = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
    _timed(lambda: _state["comm"].Allreduce(MPI.IN_PLACE, array, op=mpi_op), array.nbytes)
    return array


def broadcast_object(obj: Any, root: int = 0) -> Any:
    """Rank `root`'s Python object on every rank (pickled: for small things, not tensors)."""
    if not is_distributed():
        return obj
    return _state["comm"].bcast(obj, root=root)


def allgather_object(obj: Any) -> List[Any]:
    """Every rank's object, as a list indexed by rank (pickled: for small things)."""
    if not is_distributed():
        return [obj]
    return _state["comm"].allgather(obj)


# ---- errors ------------------------------------------------------------------------------

def abort_on_error(message: str, code: int = 2) -> None:
    """In a job of several processes, report `rank R failed: message` once and end every rank.

    For errors a caller has already caught (the CLI turns bad input into exit status 2): one
    rank returning while the others wait in a collective would hang the job. No-op otherwise.
    """
    if _state["comm"] is None or _state["size"] < 2:
        return
    _report_and_abort(f"rank {_state['rank']} failed: {message}\n", code)


def _report_and_abort(text: str, code: int) -> None:
    """Write `text` to stderr and end the job, so that an error every rank meets is read once.

    Rank 0 reports at once and aborts `ABORT_GRACE_SECONDS` later, which kills the others;
    rank r > 0 first waits `min(r, 8) * REPORT_DELAY_SECONDS`. So when the same error hits
    every rank (a bad flag, a missing file), only rank 0's report appears, and a rank that
    fails alone still reports (the lowest failing rank first) before it ends the job.
    """
    r = _state["rank"]
    if r > 0:
        time.sleep(min(r, 8) * REPORT_DELAY_SECONDS)
    sys.stderr.write(text)
    sys.stderr.flush()
    abort(code)


