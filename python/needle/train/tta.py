"""`needle eval CKPT --tta flip|crop`: accuracy of predictions averaged over test-time views.

The views are `data.tta_views` of each validation batch: "flip" (the image and its mirror, 2
views) or "crop" (AlexNet's ten patches: the centre and four corner crops of the zero-padded
image, kept at the input size, and their mirrors). The predicted class is the argmax of the
softmax probabilities averaged over the views (`data.tta_predict`). The padding of the crops
is the shift the training augmentations use: 2 pixels for 28x28 images, 4 for 32x32.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from .. import nn
from ..autograd import no_grad
from ..backend_ndarray import array
from ..data.data_transforms import tta_predict, tta_views
from ..errors import ConfigError

__all__ = ["TTA_MODES", "check_tta", "image_shape", "tta_padding", "tta_accuracy"]

TTA_MODES = ("flip", "crop")


def image_shape(info) -> tuple:
    """(C, H, W) of the images of a classification set whose rows are images (784 pixels:
    one 28x28 channel) or images themselves; ConfigError otherwise."""
    shape = tuple(info.input_shape)
    if shape == (784,):
        return (1, 28, 28)
    if len(shape) == 3:
        return shape
    raise ConfigError(f"--tta: needs image data; dataset {info.name} gives inputs of shape "
                      f"{shape}")


def check_tta(path: str, info, mode: str) -> None:
    """ConfigError unless `mode` is a TTA mode and the checkpoint classifies images."""
    if mode not in TTA_MODES:
        raise ConfigError(f"--tta: unknown mode {mode!r} ({', '.join(TTA_MODES)})")
    if info.task != "classification":
        raise ConfigError(f"--tta {mode}: needs an image-classification checkpoint; {path} is "
                          f"a {info.task} model (dataset {info.name})")
    image_shape(info)


def tta_padding(shape: tuple) -> int:
    """The shift of the crop views for images of `shape` (C, H, W)."""
    return 4 if min(shape[1:]) >= 32 else 2


class _RowsModel(nn.Module):
    """Feeds (N, C, H, W) views to a model that was trained on flattened rows."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.reshape((x.shape[0], int(np.prod(x.shape[1:])))))


def _batches(dataset, batch_size: int):
    """(images, labels) NumPy batches of `dataset` in order."""
    n = len(dataset)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if getattr(dataset, "supports_batch_index", False):
            X, y = dataset[start:stop][:2]
        else:
            samples = [dataset[i] for i in range(start, stop)]
            X = np.stack([s[0] for s in samples])
            y = np.asarray([s[1] for s in samples])
        yield np.asarray(X), np.asarray(y)


def tta_accuracy(model, info, mode: str, batch_size: int = 500) -> Dict[str, Any]:
    """Accuracy on `info.eval` of `model` (put in eval mode) with the predictions averaged
    over the `mode` views: {"tta": mode, "tta_views": V, "eval_accuracy_tta": acc}."""
    shape = image_shape(info)
    flat = len(tuple(info.input_shape)) == 1
    net = _RowsModel(model) if flat else model
    padding = tta_padding(shape)
    model.eval()
    correct = total = 0
    with no_grad():
        for X, y in _batches(info.eval, batch_size):
            images = X.reshape((X.shape[0],) + shape)
            probs = tta_predict(net, images, mode, padding=padding, layout="CHW")
            pred = probs.realize_cached_data().argmax(axis=1)  # (N,)
            labels = array(y.astype(np.int64), dtype="int64", device=pred.device)
            correct += int((pred == labels.astype(pred.dtype)).sum().item())
            total += len(y)
    views = len(tta_views(np.zeros((1,) + shape, np.float32), mode, padding, "CHW"))
    return {"tta": mode, "tta_views": views, "eval_accuracy_tta": correct / max(total, 1)}
