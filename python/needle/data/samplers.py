"""Samplers: index orders a DataLoader can follow instead of its own shuffle."""
import numpy as np


class DistributedSampler:
    """The shard of a dataset's indices that one of `num_replicas` processes reads.

    Every rank computes the same order — a permutation from `np.random.default_rng(seed +
    epoch)` when `shuffle`, else 0..n-1 — so shards are disjoint and together cover the data.
    Unless `drop_last`, the order is padded by wrapping around to a multiple of `num_replicas`
    (a few samples then appear twice) so every rank gets `len(self)` indices and takes the same
    number of steps; with `drop_last` the tail is dropped instead. Rank r takes positions r,
    r + num_replicas, ... . Never touches numpy's global RNG. Call `set_epoch(e)` (the
    DataLoader does) to reshuffle each epoch.

    `pad=False` (for evaluation) neither pads nor drops: rank r takes positions r,
    r + num_replicas, ... of the n indices, so every sample is read exactly once and the shards'
    lengths differ by at most one.

    >>> list(DistributedSampler(5, num_replicas=2, rank=1, shuffle=False))
    [1, 3, 0]
    """

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, pad: bool = True):
        n = dataset if isinstance(dataset, (int, np.integer)) else len(dataset)
        if num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas must be >= 1, "
                             f"got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: rank must be in [0, {num_replicas}), "
                             f"got {rank}")
        self.n = int(n)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.pad = pad
        self.epoch = 0
        if not pad:
            self.num_samples = len(range(self.rank, self.n, self.num_replicas))
        elif drop_last:
            self.num_samples = self.n // self.num_replicas
        else:
            self.num_samples = -(-self.n // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, as an int64 array."""
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(self.n)
        else:
            order = np.arange(self.n)
        if not self.pad:
            return order[self.rank::self.num_replicas].astype(np.int64)
        if self.total_size > self.n:
            if self.n == 0:
                order = np.zeros(0, dtype=np.int64)
            else:
                order = np.resize(order, self.total_size)  # repeats from the start
        order = order[:self.total_size]
        return order[self.rank::self.num_replicas].astype(np.int64)

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples
