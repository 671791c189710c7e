"""Trainer plugin for convolutional models: `--model cnn` (SmallResNet on 28x28 grayscale
images, flat or (1, 28, 28)), `--model densenet` (DenseNet-BC, `--growth-rate`,
`--dense-blocks`) and `--model resnet9 --dataset cifar10 --data-dir DIR`.

Imported once from `recipes.py`; it only registers names in `needle.train`. The course's hw4
loops (`epoch_general_cifar10`, `train_cifar10`, `evaluate_cifar10`) run on the Trainer.
"""
from __future__ import annotations

import numpy as np

import argparse

from .. import nn, optim
from ..data import CIFAR10Dataset
from ..data.data_transforms import Normalize, RandomCrop, RandomFlipHorizontal
from ..errors import ConfigError, DataNotFoundError
from ..models.densenet import DenseNet
from ..errors import UserError
from .engine import ClassificationTask, DatasetInfo, Trainer, register_dataset, register_flags
from .engine import register_model
from .flags import POS_INT

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@register_dataset("cifar10")
def cifar10(args) -> DatasetInfo:
    """CIFAR-10 from --data-dir (the extracted cifar-10-batches-py folder); training images
    are randomly flipped and shifted (padding 4); both splits normalized per channel."""
    folder = getattr(args, "data_dir", None)
    if not folder:
        raise DataNotFoundError("cifar10: pass --data-dir DIR, the extracted "
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
    raise ConfigError(f"--model {model}: needs image inputs (C, H, W) or 784-pixel rows, "
                     f"dataset {info.name} gives {shape}")


@register_model("cnn")
def cnn(info: DatasetInfo, args) -> nn.Module:
    from ..models import SmallResNet

    return SmallResNet(in_channels=_channels(info, "cnn"), num_classes=info.num_classes)


@register_model("resnet9")
def resnet9(info: DatasetInfo, args) -> nn.Module:
    from ..models import ResNet9

    if tuple(info.input_shape) != (3, 32, 32) or info.num_classes != 10:
        raise ConfigError(f"--model resnet9: needs (3, 32, 32) images and 10 classes, dataset "
                         f"{info.name} gives {tuple(info.input_shape)} and {info.num_classes}")
    return ResNet9()


DENSENET_GROWTH_RATE = 12
DENSENET_BLOCKS = "6,6,6"


def parse_dense_blocks(text: str) -> tuple:
    """'6,6,6' -> (6, 6, 6): layers per dense block, each >= 1 (ConfigError otherwise)."""
    try:
        blocks = tuple(int(x) for x in str(text).split(","))
    except ValueError:
        blocks = ()
    if not blocks or min(blocks) < 1:
        raise ConfigError(f"--dense-blocks: expected layers per block as positive integers "
                          f"separated by commas (e.g. {DENSENET_BLOCKS}), got {text!r}")
    return blocks


def _dense_blocks_flag(text):
    try:
        return ",".join(str(n) for n in parse_dense_blocks(text))
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None


@register_flags("growth_rate", "dense_blocks")
def _flags(parser, command: str) -> None:
    parser.add_argument("--growth-rate", type=POS_INT, default=None, metavar="K",
                        help=f"densenet: channels each dense layer adds (default "
                             f"{DENSENET_GROWTH_RATE}; the stem has 2K)")
    parser.add_argument("--dense-blocks", type=_dense_blocks_flag, default=None,
                        metavar="N,N,...",
                        help=f"densenet: layers per dense block (default {DENSENET_BLOCKS})")


def _image_shape(info: DatasetInfo, model: str) -> tuple:
    shape = tuple(info.input_shape)
    if shape in ((784,), (28, 28)):
        return (1, 28, 28)
    if len(shape) == 3:
        return shape
    raise ConfigError(f"--model {model}: needs image inputs (C, H, W) or 784-pixel rows, "
                      f"dataset {info.name} gives {shape}")


@register_model("densenet")
def densenet(info: DatasetInfo, args) -> nn.Module:
    """DenseNet-BC with growth rate k = --growth-rate, --dense-blocks layers per block and a
    stem of 2k features (the DenseNet-BC convention), on images or 784-pixel rows."""
    if info.task != "classification":
        raise ConfigError(f"--model densenet: classifies images; dataset {info.name} is a "
                          f"{info.task} set")
    shape = _image_shape(info, "densenet")
    k = getattr(args, "growth_rate", None) or DENSENET_GROWTH_RATE
    blocks = parse_dense_blocks(getattr(args, "dense_blocks", None) or DENSENET_BLOCKS)
    return ImageDenseNet(shape, growth_rate=k, block_config=blocks, num_init_features=2 * k,
                         in_channels=shape[0], num_classes=info.num_classes)


class ImageDenseNet(DenseNet):
    """DenseNet that also reads flattened rows, reshaped to `image_shape` (C, H, W)."""

    def __init__(self, image_shape, **kw):
        super().__init__(**kw)
        self.image_shape = tuple(image_shape)

    def forward(self, x):
        if x.ndim == 2:  # (N, C*H*W) rows -> (N, C, H, W)
            x = x.reshape((x.shape[0],) + self.image_shape)
        return super().forward(x)



# ---- hw4 course loops (apps/simple_ml.py re-exports these) ----------------------------------

def epoch_general_cifar10(dataloader, model, loss_fn=None, opt=None):
    """One pass over `dataloader` on the Trainer: trains (model.train(), a step per batch) when
    `opt` is given, else evaluates (model.eval(), no graph). Returns (accuracy, mean loss per
    sample). `loss_fn` is a loss instance (default nn.SoftmaxLoss()). Seeds np.random with 4
    (course)."""
    np.random.seed(4)
    trainer = Trainer(model, opt, ClassificationTask(loss_fn), dataloader, dataloader)
    metrics = trainer.train_epoch() if opt is not None else trainer.evaluate()
    if trainer.last_samples == 0:
        raise ValueError("epoch_general_cifar10: the dataloader yielded no batches")
    return metrics["accuracy"], metrics["loss"]


def train_cifar10(model, dataloader, n_epochs=1, optimizer=optim.Adam, lr=0.001,
                  weight_decay=0.001, loss_fn=nn.SoftmaxLoss):
    """`n_epochs` of training; returns (accuracy, loss) of the last epoch. `optimizer` and
    `loss_fn` are classes (course)."""
    np.random.seed(4)
    opt = optimizer(model.parameters(), lr=lr, weight_decay=weight_decay)
    acc, loss = 0.0, 0.0
    for _ in range(n_epochs):
        acc, loss = epoch_general_cifar10(dataloader, model, loss_fn(), opt)
    return acc, loss


def evaluate_cifar10(model, dataloader, loss_fn=nn.SoftmaxLoss):
    """(accuracy, loss) of `model` in eval mode over `dataloader`; `loss_fn` is a class."""
    np.random.seed(4)
    return epoch_general_cifar10(dataloader, model, loss_fn(), None)


__all__ = ["cifar10", "cnn", "resnet9", "densenet", "ImageDenseNet", "parse_dense_blocks",
           "CIFAR10_MEAN", "CIFAR10_STD", "epoch_general_cifar10", "train_cifar10",
           "evaluate_cifar10"]
