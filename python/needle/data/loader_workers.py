"""Worker processes that prepare a DataLoader's batches ahead of the training loop.

`DataLoader(num_workers=N)` starts N processes at each `iter()` (forked where the platform
allows, so the dataset is shared copy-on-write, not pickled). Worker `w` fetches batches
w, w + N, w + 2N, ... of the epoch's index order — the order the loader drew in the parent,
exactly as with `num_workers=0` — and puts each batch's NumPy fields on its own bounded queue
(`prefetch_factor` batches deep). The parent takes batch k from worker k mod N, so batches
come out in order whatever the timing, and turns them into Tensors (devices are touched only
by the parent).

Randomness: before fetching batch k a worker seeds NumPy's global RNG from the parent's RNG
state at `iter()` time and k, so random transforms draw the same numbers for any N >= 1, on
every run from the same seed, without advancing the parent's stream.

Shutdown: the workers are stopped (SIGTERM, then SIGKILL) and reaped when the epoch ends, when
the iterator is garbage-collected (e.g. after a `break`), on an error, and at interpreter exit.
Workers ignore SIGINT, so Ctrl-C reaches only the training loop, and each stops on its own
when its parent disappears.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import queue
import signal
import traceback
import weakref

import numpy as np

__all__ = ["WorkerIterator", "batch_seed_entropy"]

_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), spelled out for Pythons before 3.10
_PIPE_BYTES = 1 << 20  # /proc/sys/fs/pipe-max-size's default
_POLL_SECONDS = 0.5  # how often a waiting side checks that the other is still alive


def batch_seed_entropy() -> int:
    """A 128-bit number derived from NumPy's global RNG state, without drawing from it."""
    state = np.random.get_state()
    digest = hashlib.blake2b(np.asarray(state[1]).tobytes() + str(state[2]).encode(),
                             digest_size=16).digest()
    return int.from_bytes(digest, "little")


def _seed_for_batch(entropy: int, batch: int) -> None:
    seq = np.random.SeedSequence(entropy, spawn_key=(int(batch),))
    np.random.seed(seq.generate_state(4))


class _RemoteTraceback(Exception):
    """The traceback of an exception raised inside a worker (as `__cause__` of the re-raise)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def _worker_loop(fetch, order, starts, stop, batch_size, first, step, entropy, out, parent):
    """Fetch batches first, first + step, ... and put (k, fields, error) on `out`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training loop's to handle
    for k in range(first, len(starts), step):
        start = starts[k]
        end = min(start + batch_size, stop)
        index = slice(start, end) if order is None else order[start:end]
        _seed_for_batch(entropy, k)
        try:
            message = (k, fetch(index), None)
        except Exception as exc:  # noqa: BLE001 (handed to the parent, which re-raises it)
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            try:
                pickle.dumps(exc)
            except Exception:  # noqa: BLE001 (an unpicklable exception travels as text)
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            message = (k, None, (exc, text))
        while True:
            try:
                out.put(message, timeout=_POLL_SECONDS)
                break
            except queue.Full:
                if os.getppid() != parent:
                    return
        if message[2] is not None:
            return
    out.close()
    out.join_thread()  # hand the last batches to the pipe before exiting


def _widen_pipe(q) -> None:
    """Let a queue's pipe hold a whole batch (Linux: 64 KiB by default, so a 400 KB batch
    would cross in a few dozen wake-ups of both processes)."""
    try:
        import fcntl  # noqa: PLC0415 (POSIX only)

        fcntl.fcntl(q._writer.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass  # another platform, or a limit below 1 MiB: the default pipe works, slower


def _context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _shutdown(workers, queues) -> None:
    for p in workers:
        if p.is_alive():
            p.terminate()
    for p in workers:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()
    for q in queues:
        q.cancel_join_thread()
        q.close()


class WorkerIterator:
    """One epoch of a DataLoader's batches, prepared by `num_workers` processes.

    `order` is the epoch's index order (None: sequential slices), `starts` the first position
    of each batch in it and `stop` the end of the order. Batches come out in the order of
    `starts`; a worker's exception is re-raised here with the worker's traceback as cause.
    """

    def __init__(self, loader, order, starts, stop: int):
        self._loader = loader
        self._count = len(starts)
        self._next = 0
        n = min(loader.num_workers, max(self._count, 1))
        ctx = _context()
        entropy = batch_seed_entropy()
        self._queues = [ctx.Queue(maxsize=loader.prefetch_factor) for _ in range(n)]
        for q in self._queues:
            _widen_pipe(q)
        self._workers = []
        parent = os.getpid()
        for w in range(n):
            p = ctx.Process(target=_worker_loop, name=f"needle-DataLoader-worker-{w}",
                            args=(loader._fetch, order, starts, stop, loader.batch_size, w, n,
                                  entropy, self._queues[w], parent), daemon=True)
            self._workers.append(p)
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._queues)
        for p in self._workers:
            p.start()

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        """Stop and reap the workers now (also done at the end, on errors and by the GC)."""
        self._finalizer()

    def __next__(self) -> tuple:
        if self._next >= self._count:
            self.close()
            raise StopIteration
        w = self._next % len(self._workers)
        while True:
            try:
                k, fields, error = self._queues[w].get(timeout=_POLL_SECONDS)
                break
            except queue.Empty:
                worker = self._workers[w]
                if not worker.is_alive():
                    code = worker.exitcode
                    self.close()
                    raise RuntimeError(f"DataLoader: worker {w} (pid {worker.pid}) exited "
                                       f"unexpectedly with exit code {code} before batch "
                                       f"{self._next}") from None
            except BaseException:
                self.close()
                raise
        if error is not None:
            self.close()
            exc, text = error
            raise exc from _RemoteTraceback(f"in DataLoader worker {w}, batch {k}:\n{text}")
        assert k == self._next, (k, self._next)  # each queue holds its worker's batches in order
        self._next += 1
        return self._loader._to_tensors(fields)
