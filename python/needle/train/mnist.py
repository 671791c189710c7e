"""The MNIST-format recipes: `--dataset mnist-small` (the shipped MNIST t10k images),
`--dataset fashion-mnist` (with `--augment`) and `--model mlp-resnet`.

Imported once from `recipes.py`; it only registers names in `needle.train`.
"""
from __future__ import annotations

import numpy as np

from .. import nn
from ..data import MNISTDataset, find_fashion_mnist, shipped_mnist_test
from ..data.data_basic import NDArrayDataset
from ..data.data_transforms import RandomCrop, RandomFlipHorizontal, RandomRotation
from ..errors import ConfigError
from .engine import DatasetInfo, register_dataset, register_flags, register_model

__all__ = ["mnist_small", "fashion_mnist", "mlp_resnet", "augmentation", "MNIST_SMALL_TRAIN",
           "AUGMENT_ROTATE_DEGREES", "AUGMENTATIONS", "MLP_RESNET_HIDDEN_DIM"]

MNIST_SMALL_TRAIN = 8000  # of the 10000 shipped t10k images; the rest validate
AUGMENT_ROTATE_DEGREES = 15.0  # --augment rotate: angles uniform in [-15, 15] degrees
AUGMENTATIONS = ("none", "flip", "flip-shift", "rotate")
MLP_RESNET_HIDDEN_DIM = 100


@register_flags("augment")
def _flags(parser, command: str) -> None:
    if command == "train":
        parser.add_argument(
            "--augment", default="none", choices=AUGMENTATIONS,
            help="fashion-mnist training images: random left-right flips, and with "
                 "flip-shift also shifts of up to 2 pixels; rotate: random rotations by up "
                 "to 15 degrees (cifar10 always flips and shifts by up to 4)")


@register_dataset("mnist-small")
def mnist_small(args) -> DatasetInfo:
    """The shipped MNIST t10k set: first 8000 images train, last 2000 validate."""
    ds = MNISTDataset(*shipped_mnist_test())
    X, y = ds.images.reshape(len(ds), -1), ds.labels
    k = MNIST_SMALL_TRAIN
    return DatasetInfo("mnist-small", NDArrayDataset(X[:k], y[:k]),
                       NDArrayDataset(X[k:], y[k:]), input_shape=(784,), num_classes=10)


def augmentation(kind):
    """The training transforms of --augment none|flip|flip-shift|rotate (None: none)."""
    if kind in (None, "none"):
        return None
    if kind == "flip":
        return [RandomFlipHorizontal()]
    if kind == "flip-shift":
        return [RandomFlipHorizontal(), RandomCrop(2)]
    if kind == "rotate":
        return [RandomRotation(AUGMENT_ROTATE_DEGREES)]
    raise ConfigError(f"--augment: unknown augmentation {kind!r} ({', '.join(AUGMENTATIONS)})")


@register_dataset("fashion-mnist")
def fashion_mnist(args) -> DatasetInfo:
    """Fashion-MNIST 60000/10000 from --data-dir or the Debian location. --augment flip: the
    training images are flipped left-right (p=0.5); flip-shift: also shifted by up to 2 pixels;
    rotate: rotated by a uniform angle in [-15, 15] degrees (nearest pixel, zero fill)."""
    paths = find_fashion_mnist(getattr(args, "data_dir", None))
    train = MNISTDataset(paths["train_images"], paths["train_labels"],
                         transforms=augmentation(getattr(args, "augment", None)))
    test = MNISTDataset(paths["test_images"], paths["test_labels"])
    return DatasetInfo("fashion-mnist", train, test, input_shape=(784,), num_classes=10)


@register_model("mlp-resnet")
def mlp_resnet(info: DatasetInfo, args) -> nn.Module:
    from ..models import MLPResNet

    return MLPResNet(int(np.prod(info.input_shape)),
                     getattr(args, "hidden_dim", None) or MLP_RESNET_HIDDEN_DIM,
                     num_classes=info.num_classes)
