"""needle.data: datasets, readers, transforms and the DataLoader."""
from .cifar10 import CIFAR10Dataset, read_cifar_batch
from .data_basic import DataLoader, Dataset, NDArrayDataset
from .data_transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomFlipHorizontal,
    Transform,
)
from .mnist import MNISTDataset, parse_mnist, read_idx
from .paths import find_fashion_mnist, shipped_mnist_test, shipped_path
from .samplers import DistributedSampler
from .text import Corpus, Dictionary, batchify, get_batch

__all__ = [
    "CIFAR10Dataset", "Compose", "Corpus", "DataLoader", "Dataset", "Dictionary",
    "DistributedSampler", "MNISTDataset", "NDArrayDataset", "Normalize", "RandomCrop",
    "RandomFlipHorizontal", "Transform", "batchify", "find_fashion_mnist", "get_batch",
    "parse_mnist", "read_cifar_batch", "read_idx", "shipped_mnist_test", "shipped_path",
]
