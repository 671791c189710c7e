"""Dataset, NDArrayDataset and DataLoader: NumPy inside, needle Tensors at the loader's edge."""
import numpy as np

from ..autograd import Tensor
from .loader_workers import WorkerIterator


class Dataset:
    """An indexable collection of samples.

    Subclasses implement `__getitem__` and `__len__`. `transforms` is a list of callables (or a
    single callable) applied in order by `apply_transforms`, at `__getitem__` time.

    A subclass whose `__getitem__` also accepts a slice or an integer index array, returning the
    samples stacked along a new first axis, sets `supports_batch_index = True`; the DataLoader
    then fetches each batch with one indexing call instead of one call per sample.
    """

    supports_batch_index = False

    def __init__(self, transforms=None):
        self.transforms = transforms

    def __getitem__(self, index):
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def apply_transforms(self, x):
        if self.transforms is None:
            return x
        if callable(self.transforms):
            return self.transforms(x)
        for transform in self.transforms:
            x = transform(x)
        return x


class NDArrayDataset(Dataset):
    """Samples are rows of the given arrays: `ds[i]` → `(a[i], b[i], ...)`.

    `i` may be an int, a slice or an integer index array. All arrays need the same length.

    >>> ds = NDArrayDataset(np.zeros((10, 3)), np.arange(10)); ds[2:4][0].shape
    (2, 3)
    """

    supports_batch_index = True

    def __init__(self, *arrays):
        super().__init__()
        if not arrays:
            raise ValueError("NDArrayDataset: needs at least one array")
        self.arrays = tuple(np.asarray(a) for a in arrays)
        lengths = [a.shape[0] if a.ndim else None for a in self.arrays]
        if None in lengths or len(set(lengths)) != 1:
            raise ValueError("NDArrayDataset: arrays need the same first dimension, got shapes "
                             + ", ".join(str(a.shape) for a in self.arrays))

    def __len__(self) -> int:
        return self.arrays[0].shape[0]

    def __getitem__(self, index):
        return tuple(a[index] for a in self.arrays)


def _as_tuple(sample) -> tuple:
    return tuple(sample) if isinstance(sample, (tuple, list)) else (sample,)


class DataLoader:
    """Iterate over a dataset in batches of Tensors.

    Each batch is a tuple with one Tensor per field of a sample. Floating-point fields become
    `dtype` (default float32); integer fields (labels) keep their dtype. Tensors are placed on
    `device` (default: needle's default device) and do not require grad.

    Order: with `shuffle=True`, one `np.random.permutation(len(dataset))` is drawn at the start
    of every epoch (each `iter()`); nothing is drawn otherwise. Batches are consecutive chunks of
    `batch_size` indices; the last one is shorter unless `drop_last`.

    `sampler` (exclusive with `shuffle`) is any iterable of indices with `__len__`, e.g. a
    `DistributedSampler`. If it has `set_epoch`, the loader calls it with `self.epoch` at the
    start of every epoch and then increments `self.epoch`; `set_epoch(e)` sets the counter (for
    resuming).

    `num_workers=N` (N >= 1) prepares batches in N worker processes, up to `prefetch_factor`
    batches ahead per worker, while the loop trains (see `needle.data.loader_workers`): the
    same batches in the same order as `num_workers=0` when the dataset draws no random
    numbers; random transforms draw from a per-batch seed derived from NumPy's global RNG
    state at `iter()` time, so augmentation is reproducible and the same for every N >= 1
    (but not the draws `num_workers=0` makes, which share the stream with the loop). The
    workers are stopped at the end of the epoch, on `break` (when the iterator is garbage
    collected, or by its `close()`), on errors and on Ctrl-C. Worth it when fetching a batch
    costs a noticeable part of a step (transforms in Python); each worker takes a core.

    >>> loader = DataLoader(NDArrayDataset(X, y), batch_size=128, shuffle=True)
    >>> for xb, yb in loader: ...
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False,
                 drop_last: bool = False, sampler=None, device=None, dtype=None,
                 num_workers: int = 0, prefetch_factor: int = 2):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, "
                             f"got {batch_size!r}")
        if not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
            raise ValueError(f"DataLoader: num_workers must be an integer >= 0, "
                             f"got {num_workers!r}")
        if not isinstance(prefetch_factor, (int, np.integer)) or prefetch_factor < 1:
            raise ValueError(f"DataLoader: prefetch_factor must be an integer >= 1, "
                             f"got {prefetch_factor!r}")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: pass either shuffle=True or a sampler, not both "
                             "(the sampler decides the order)")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.sampler = sampler
        self.device = device
        self.dtype = np.dtype(dtype if dtype is not None else "float32")
        self.num_workers = int(num_workers)
        self.prefetch_factor = int(prefetch_factor)
        self.epoch = 0
        self._order = None
        self._starts = iter(())

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch number passed to the sampler's `set_epoch` at the next `iter()`."""
        self.epoch = int(epoch)

    def _num_indices(self) -> int:
        return len(self.sampler) if self.sampler is not None else len(self.dataset)

    def __len__(self) -> int:
        n = self._num_indices()
        if self.drop_last:
            return n // self.batch_size
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        if self.sampler is not None:
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(self.epoch)
            if hasattr(self.sampler, "indices"):
                order = np.asarray(self.sampler.indices(), dtype=np.int64)
            else:
                order = np.fromiter(iter(self.sampler), dtype=np.int64)
        elif self.shuffle:
            order = np.random.permutation(len(self.dataset))
        else:
            order = None  # sequential: batches are slices
        self.epoch += 1
        self._order = order
        n = len(order) if order is not None else len(self.dataset)
        stop = n - n % self.batch_size if self.drop_last else n
        if self.num_workers > 0:
            return WorkerIterator(self, order, range(0, stop, self.batch_size), n)
        self._starts = iter(range(0, stop, self.batch_size))
        self._n = n
        return self

    def __next__(self) -> tuple:
        start = next(self._starts)  # StopIteration ends the epoch
        end = min(start + self.batch_size, self._n)
        if self._order is None:
            index = slice(start, end)
        else:
            index = self._order[start:end]
        return self._to_tensors(self._fetch(index))

    def _fetch(self, index) -> tuple:
        dataset = self.dataset
        if getattr(dataset, "supports_batch_index", False):
            return _as_tuple(dataset[index])
        if isinstance(index, slice):
            index = range(index.start, index.stop)
        samples = [_as_tuple(dataset[int(i)]) for i in index]
        return tuple(np.stack([np.asarray(field) for field in fields])
                     for fields in zip(*samples))

    def _to_tensors(self, fields) -> tuple:
        out = []
        for field in fields:
            array = np.asarray(field)
            if array.dtype.kind == "f" and array.dtype != self.dtype:
                array = array.astype(self.dtype)
            out.append(Tensor(array, device=self.device, requires_grad=False))
        return tuple(out)
