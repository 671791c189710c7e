"""needle.data: datasets, readers, transforms and the DataLoader."""
from .cifar10 import CIFAR10Dataset, read_cifar_batch
from .data_basic import DataLoader, Dataset, NDArrayDataset
from .data_transforms import (
    Compose,
    Normalize,
    PCAColorAugmentation,
    RandomCrop,
    RandomFlipHorizontal,
    RandomRotation,
    Transform,
    tta_predict,
    tta_views,
)
from .mnist import MNISTDataset, parse_mnist, read_idx
from .paths import find_fashion_mnist, shipped_mnist_test, shipped_path
from .samplers import DistributedSampler
from .segmentation import MNISTSegmentation, digit_masks, mean_iou, pixel_accuracy
from .text import Corpus, Dictionary, batchify, get_batch

__all__ = [
    "CIFAR10Dataset", "Compose", "Corpus", "DataLoader", "Dataset", "Dictionary",
    "DistributedSampler", "MNISTDataset", "MNISTSegmentation", "digit_masks", "mean_iou",
    "pixel_accuracy", "NDArrayDataset", "Normalize", "PCAColorAugmentation", "RandomCrop",
    "RandomRotation", "tta_predict", "tta_views",
    "RandomFlipHorizontal", "Transform", "batchify", "find_fashion_mnist", "get_batch",
    "parse_mnist", "read_cifar_batch", "read_idx", "shipped_mnist_test", "shipped_path",
]
