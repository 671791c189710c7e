"""MNIST-format readers: gzipped IDX files (MNIST, Fashion-MNIST)."""
import gzip
import struct
import zlib

import numpy as np

from ..errors import DataFormatError, DataNotFoundError
from .data_basic import Dataset

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def _read_gzip(path: str, what: str) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataNotFoundError(f"{what} file {path!r} does not exist") from None
    except IsADirectoryError:
        raise DataNotFoundError(f"{what} file {path!r} is a directory") from None
    except gzip.BadGzipFile as e:
        raise DataFormatError(f"{what} file {path!r} is not a gzip file ({e})") from None
    except EOFError:
        raise DataFormatError(f"{what} file {path!r} is truncated (gzip stream ends "
                              f"early)") from None
    except zlib.error as e:
        raise DataFormatError(f"{what} file {path!r} has corrupt gzip data ({e})") from None


def read_idx(path: str, magic: int, what: str = "IDX") -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes whose header has the given `magic` number.

    Returns a uint8 array shaped by the header's big-endian dimensions, e.g. (N, 28, 28) for
    magic 2051 (images) or (N,) for magic 2049 (labels). Raises DataNotFoundError or DataFormatError
    naming `path` and the problem.
    """
    raw = _read_gzip(path, what)
    ndim = magic & 0xFF
    header_size = 4 * (1 + ndim)
    if len(raw) < 4:
        raise DataFormatError(f"{what} file {path!r} is truncated: {len(raw)} bytes, "
                         f"no IDX header")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise DataFormatError(f"{what} file {path!r} has magic number {found}, expected {magic}")
    if len(raw) < header_size:
        raise DataFormatError(f"{what} file {path!r} is truncated: {len(raw)} bytes, "
                         f"the IDX header needs {header_size}")
    dims = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(raw) - header_size
    if got != expected:
        problem = "is truncated" if got < expected else "has trailing bytes"
        raise DataFormatError(f"{what} file {path!r} {problem}: header says {dims} "
                         f"({expected} bytes of data), file has {got}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def _read_mnist_pair(image_filename: str, label_filename: str):
    images = read_idx(image_filename, IDX_IMAGES_MAGIC, "MNIST image")
    labels = read_idx(label_filename, IDX_LABELS_MAGIC, "MNIST label")
    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(f"MNIST files disagree: {image_filename!r} holds {images.shape[0]} "
                         f"images but {label_filename!r} holds {labels.shape[0]} labels")
    return images, labels


def parse_mnist(image_filename: str, label_filename: str):
    """Parse gzipped MNIST IDX files.

    Returns (X, y): X float32 (N, rows*cols) scaled to [0, 1] by 1/255, y uint8 (N,).
    """
    images, labels = _read_mnist_pair(image_filename, label_filename)
    n = images.shape[0]
    X = images.reshape(n, -1).astype(np.float32) / np.float32(255.0)
    return X, labels.copy()


class MNISTDataset(Dataset):
    """MNIST (or Fashion-MNIST) from gzipped IDX files.

    `ds[i]` → (image float32 (784,) in [0, 1], label uint8); `ds[a:b]` or `ds[index_array]`
    → (images (n, 784), labels (n,)), the same shapes the DataLoader yields. Transforms see
    each image as (28, 28, 1) and their output is flattened again. With `flatten=False` images
    stay (28, 28, 1) (n×28×28×1 stacked), e.g. for convolutional models.
    """

    supports_batch_index = True

    def __init__(self, image_filename: str, label_filename: str, transforms=None,
                 flatten: bool = True):
        super().__init__(transforms)
        images, labels = _read_mnist_pair(image_filename, label_filename)
        n, rows, cols = images.shape
        self.image_shape = (rows, cols, 1)
        self.images = images.reshape(n, rows, cols, 1).astype(np.float32) / np.float32(255.0)
        self.labels = labels.copy()
        self.flatten = flatten

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index):
        images = self.images[index]
        labels = self.labels[index]
        if self.transforms is not None:
            if images.ndim == 3:
                images = self.apply_transforms(images)
            elif len(images):
                images = np.stack([self.apply_transforms(img) for img in images])
        if self.flatten:
            images = images.reshape(images.shape[:-3] + (-1,))
        return images, labels
