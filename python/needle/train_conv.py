"""Trainer plugin for convolutional models: `--model cnn` (SmallResNet on 28x28 grayscale
images, flat or (1, 28, 28)) and `--model resnet9 --dataset cifar10 --data-dir DIR`.

Imported once from `cli.py`'s plugin section; it only registers names in `needle.train`.
"""
from __future__ import annotations

from . import nn
from .data import CIFAR10Dataset
from .data.data_transforms import Normalize, RandomCrop, RandomFlipHorizontal
from .train import DatasetInfo, register_dataset, register_model

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@register_dataset("cifar10")
def cifar10(args) -> DatasetInfo:
    """CIFAR-10 from --data-dir (the extracted cifar-10-batches-py folder); training images
    are randomly flipped and shifted (padding 4); both splits normalized per channel."""
    folder = getattr(args, "data_dir", None)
    if not folder:
        raise FileNotFoundError("cifar10: pass --data-dir DIR, the extracted "
                                "cifar-10-batches-py folder (data_batch_1..5, test_batch)")
    norm = Normalize(CIFAR10_MEAN, CIFAR10_STD, layout="CHW")
    train = CIFAR10Dataset(folder, train=True, transforms=[
        RandomFlipHorizontal(layout="CHW"), RandomCrop(4, layout="CHW"), norm])
    test = CIFAR10Dataset(folder, train=False, transforms=[norm])
    return DatasetInfo("cifar10", train, test, input_shape=(3, 32, 32), num_classes=10)


def _channels(info: DatasetInfo, model: str) -> int:
    shape = tuple(info.input_shape)
    if shape in ((784,), (28, 28), (1, 28, 28)):
        return 1
    if len(shape) == 3:
        return shape[0]
    raise ValueError(f"--model {model}: needs image inputs (C, H, W) or 784-pixel rows, "
                     f"dataset {info.name} gives {shape}")


@register_model("cnn")
def cnn(info: DatasetInfo, args) -> nn.Module:
    from .models import SmallResNet

    return SmallResNet(in_channels=_channels(info, "cnn"), num_classes=info.num_classes)


@register_model("resnet9")
def resnet9(info: DatasetInfo, args) -> nn.Module:
    from .models import ResNet9

    if tuple(info.input_shape) != (3, 32, 32) or info.num_classes != 10:
        raise ValueError(f"--model resnet9: needs (3, 32, 32) images and 10 classes, dataset "
                         f"{info.name} gives {tuple(info.input_shape)} and {info.num_classes}")
    return ResNet9()


__all__ = ["cifar10", "cnn", "resnet9", "CIFAR10_MEAN", "CIFAR10_STD"]
