"""Where data lives: files shipped inside the package, and larger sets found on disk."""
import os

from ..errors import DataNotFoundError

_SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "datasets")

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"


def shipped_path(name: str) -> str:
    """Absolute path of a data file shipped inside the package (`needle/datasets/<name>`).

    >>> shipped_path("tinyshakespeare.txt")  # doctest: +SKIP
    '.../needle/datasets/tinyshakespeare.txt'
    """
    path = os.path.join(_SHIPPED_DIR, name)
    if not os.path.isfile(path):
        available = sorted(os.listdir(_SHIPPED_DIR)) if os.path.isdir(_SHIPPED_DIR) else []
        raise DataNotFoundError(
            f"shipped_path: no data file {name!r} in {_SHIPPED_DIR}; available: {available}")
    return path


def shipped_mnist_test() -> tuple[str, str]:
    """Paths of the MNIST test split shipped with needle: (images .gz, labels .gz)."""
    return (shipped_path("t10k-images-idx3-ubyte.gz"),
            shipped_path("t10k-labels-idx1-ubyte.gz"))


def find_fashion_mnist(data_dir: str | None = None) -> dict[str, str]:
    """Locate the four Fashion-MNIST IDX files.

    Looks in `data_dir` (and `data_dir/fashion-mnist`) when given, then in the Debian package
    location `/usr/share/datasets/fashion-mnist`. Returns a dict with keys `train_images`,
    `train_labels`, `test_images`, `test_labels` mapping to paths; raises DataNotFoundError
    naming every directory searched when no directory holds all four files.
    """
    candidates = []
    if data_dir is not None:
        candidates += [data_dir, os.path.join(data_dir, "fashion-mnist")]
    candidates.append(FASHION_MNIST_SYSTEM_DIR)
    for folder in candidates:
        paths = [os.path.join(folder, f) for f in FASHION_MNIST_FILES]
        if all(os.path.isfile(p) for p in paths):
            keys = ("train_images", "train_labels", "test_images", "test_labels")
            return dict(zip(keys, paths))
    raise DataNotFoundError(
        "Fashion-MNIST not found: looked for " + ", ".join(FASHION_MNIST_FILES)
        + " in " + ", ".join(repr(c) for c in candidates)
        + " (pass --data-dir, or install the Debian package that provides "
        + FASHION_MNIST_SYSTEM_DIR + ")")
