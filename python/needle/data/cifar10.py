"""CIFAR-10 from the official "python version" pickle batches."""
import os
import pickle

import numpy as np

from ..errors import DataFormatError, DataNotFoundError
from .data_basic import Dataset

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)

# The official batches pickle a dict of bytes keys, lists and NumPy arrays; nothing else may
# be constructed while loading (unpickling arbitrary globals would run arbitrary code).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def read_cifar_batch(path: str):
    """Read one CIFAR-10 python batch file.

    Returns (data uint8 (N, 3072), labels int64 (N,)). Raises DataNotFoundError or DataFormatError
    naming `path` and the problem.
    """
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataNotFoundError(f"CIFAR-10 batch file {path!r} does not exist") from None
    except IsADirectoryError:
        raise DataNotFoundError(f"CIFAR-10 batch file {path!r} is a directory") from None
    except EOFError:
        raise DataFormatError(f"CIFAR-10 batch file {path!r} is truncated or empty") from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, OverflowError, UnicodeDecodeError) as e:
        raise DataFormatError(f"CIFAR-10 batch file {path!r} is not a valid pickled batch "
                         f"({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):  # bad file content, hence ValueError
        msg = f"CIFAR-10 batch file {path!r} holds a {type(batch).__name__}, expected a dict"
        raise DataFormatError(msg)  # noqa: TRY004
    keys = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = [k for k in ("data", "labels") if k not in keys]
    if missing:
        raise DataFormatError(f"CIFAR-10 batch file {path!r} lacks key(s) {missing}; "
                         f"found {sorted(map(str, keys))}")
    data = np.asarray(keys["data"])
    labels = np.asarray(keys["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataFormatError(f"CIFAR-10 batch file {path!r}: 'data' must be uint8 (N, 3072), "
                         f"got {data.dtype} {data.shape}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or labels.dtype.kind not in "iu":
        raise DataFormatError(f"CIFAR-10 batch file {path!r}: 'labels' must be {data.shape[0]} "
                         f"integers, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataFormatError(f"CIFAR-10 batch file {path!r}: labels outside 0..9 "
                         f"(min {labels.min()}, max {labels.max()})")
    return data, labels.astype(np.int64)


class CIFAR10Dataset(Dataset):
    """CIFAR-10 from `base_folder` (the extracted `cifar-10-batches-py`).

    train=True reads data_batch_1..5 (50000 items), train=False reads test_batch (10000).
    `ds[i]` → (image float32 (3, 32, 32) in [0, 1], label int64); slices and index arrays give
    stacked (n, 3, 32, 32) images and (n,) labels. Transforms see each (3, 32, 32) image, so use
    `layout="CHW"` transforms. `p` is kept for the course signature and unused.
    """

    supports_batch_index = True

    def __init__(self, base_folder: str, train: bool, p: float = 0.5, transforms=None):
        super().__init__(transforms)
        if not os.path.isdir(base_folder):
            raise DataNotFoundError(f"CIFAR10Dataset: folder {base_folder!r} does not exist "
                                    f"(expected the extracted cifar-10-batches-py)")
        self.p = p
        names = TRAIN_BATCHES if train else TEST_BATCHES
        parts = [read_cifar_batch(os.path.join(base_folder, name)) for name in names]
        data = np.concatenate([d for d, _ in parts]) if len(parts) > 1 else parts[0][0]
        self.X = data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
        self.y = np.concatenate([lab for _, lab in parts])

    def __len__(self) -> int:
        return self.y.shape[0]

    def __getitem__(self, index):
        images = self.X[index]
        labels = self.y[index]
        if self.transforms is not None:
            if images.ndim == 3:
                images = self.apply_transforms(images)
            elif len(images):
                images = np.stack([self.apply_transforms(img) for img in images])
        return images, labels
