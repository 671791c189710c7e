"""Trainer recipe for per-pixel classification: `needle train --model fcn --dataset mnist-seg`.

`mnist-seg` is `data.MNISTSegmentation` over the shipped MNIST t10k images (first 8000 train,
last 2000 validate): pixel class = digit label + 1 where the intensity / 255 is above 0.5,
0 (background) elsewhere, 11 classes. The segmentation task scores every pixel with softmax
cross-entropy and reports pixel accuracy and mean IoU (the mean over the classes present in
the prediction or the target of |pred = c and true = c| / |pred = c or true = c|, from the
confusion matrix summed over the epoch); after every epoch it draws the first validation
images with their true and predicted masks in OUT/masks.png.

Imported once from `recipes.py`; it only registers names in `needle.train`.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

from .. import nn
from ..data import DataLoader
from ..data.segmentation import NUM_SEGMENTATION_CLASSES, MNISTSegmentation
from ..errors import ConfigError
from .engine import TASKS, DatasetInfo, Task, register_dataset, register_flags, register_model
from .flags import POS_INT
from .run_files import plot_masks

__all__ = ["SegmentationTask", "segmentation_scores", "check_models_fit", "mnist_seg", "fcn",
           "MNIST_SEG_TRAIN", "MASK_SAMPLES", "SEGMENTATION_MODELS"]

MNIST_SEG_TRAIN = 8000  # of the 10000 shipped t10k images; the rest validate
MASK_SAMPLES = 8  # validation images drawn in masks.png
SEGMENTATION_MODELS = ("fcn",)  # the models that give per-pixel scores (N, K, H, W)


FCN_WIDTH = 16


@register_flags("width")
def _flags(parser, command: str) -> None:
    parser.add_argument("--width", type=POS_INT, default=None,
                        help=f"fcn: channels of the first encoder stage, doubled per stage "
                             f"(default {FCN_WIDTH})")


@register_dataset("mnist-seg")
def mnist_seg(args) -> DatasetInfo:
    """Digit segmentation of the shipped MNIST t10k images: 8000 train, 2000 validate."""
    augment = getattr(args, "augment", None)
    if augment not in (None, "none"):
        raise ConfigError(f"--augment {augment}: not supported for mnist-seg (the masks would "
                          f"have to move with the images)")
    return DatasetInfo("mnist-seg", MNISTSegmentation(stop=MNIST_SEG_TRAIN),
                       MNISTSegmentation(start=MNIST_SEG_TRAIN), task="segmentation",
                       input_shape=(1, 28, 28), num_classes=NUM_SEGMENTATION_CLASSES)


@register_model("fcn", default_dataset="mnist-seg")
def fcn(info: DatasetInfo, args) -> nn.Module:
    from ..models import FCN

    shape = tuple(info.input_shape)
    if info.task != "segmentation" or len(shape) != 3:
        raise ConfigError(f"--model fcn: needs a segmentation dataset (mnist-seg), got "
                          f"{info.name} ({info.task})")
    return FCN(in_channels=shape[0], num_classes=info.num_classes,
               width=getattr(args, "width", None) or FCN_WIDTH)


def segmentation_scores(confusion: Sequence[Sequence[float]]) -> Dict[str, float]:
    """Pixel accuracy and mean IoU from a confusion matrix (row: true class, column:
    predicted), with `data.segmentation.mean_iou`'s convention: classes absent from both the
    prediction and the target are left out of the mean."""
    k = len(confusion)
    total = sum(sum(row) for row in confusion)
    diag = [confusion[c][c] for c in range(k)]
    true = [sum(row) for row in confusion]
    pred = [sum(confusion[r][c] for r in range(k)) for c in range(k)]
    ious = [diag[c] / (true[c] + pred[c] - diag[c]) for c in range(k)
            if true[c] + pred[c] - diag[c] > 0]
    return {"pixel_accuracy": sum(diag) / total if total else 0.0,
            "mean_iou": sum(ious) / len(ious) if ious else 0.0}


class SegmentationTask(Task):
    """Per-pixel scores (B, K, H, W) against masks (B, H, W) of class ids: softmax
    cross-entropy averaged over pixels. The (K, K) confusion matrix of the epoch is summed on
    the device (one_hot(true)^T @ one_hot(pred) per batch) and turned into pixel accuracy
    and mean IoU by `metrics`. `batch` returns the correct pixels in units of whole images
    (correct pixels / (H * W)), so that correct / n is the pixel accuracy in progress bars.

    Under data-parallel training the validation confusion matrix is the main process's
    shard's (the loss and the pixel accuracy are summed over all shards).
    """

    primary_metric = "mean_iou"
    higher_is_better = True
    curve_metrics = ("pixel_accuracy", "mean_iou")

    def __init__(self):
        self.loss_fn = nn.SoftmaxLoss()
        self.confusion = None  # NDArray (K, K), float64
        self.training = True
        self.samples: Optional[tuple] = None  # (images, masks, preds) of the first eval batch
        self.num_classes = NUM_SEGMENTATION_CLASSES
        self.last_scores: Dict[str, float] = {}

    def loaders(self, info, args):
        self.num_classes = info.num_classes
        train = DataLoader(info.train, batch_size=args.batch_size, shuffle=True,
                           num_workers=int(getattr(args, "workers", 0) or 0))
        evaluate = DataLoader(info.eval, batch_size=max(args.batch_size, 500), shuffle=False)
        return train, evaluate

    def start_epoch(self, training: bool) -> None:
        self.confusion = None
        self.training = training
        if not training:
            self.samples = None

    def batch(self, model, batch):
        X, y = batch[0], batch[1]
        scores = model(X)
        if scores.ndim != 4 or scores.shape[0] != y.shape[0] or \
                tuple(scores.shape[2:]) != tuple(y.shape[1:]):
            raise ConfigError(f"segmentation: the model gives {tuple(scores.shape)}, per-pixel "
                              f"scores (B, K, H, W) for masks {tuple(y.shape)} are needed "
                              f"(--model {' or '.join(SEGMENTATION_MODELS)})")
        B, K, H, W = scores.shape
        flat = scores.permute((0, 2, 3, 1)).reshape((B * H * W, K))  # (B*H*W, K)
        target = y.reshape((B * H * W,))
        loss = self.loss_fn(flat, target)
        pred = flat.realize_cached_data().argmax(axis=1)  # (B*H*W,)
        true = target.realize_cached_data()
        device = pred.device
        # counts below 2**24 are exact in float32; the epoch's sum is kept in float64
        confusion = (device.one_hot(K, true).transpose() @ device.one_hot(K, pred))
        confusion = confusion.astype("float64")
        self.confusion = confusion if self.confusion is None else self.confusion + confusion
        correct = float((pred == true.astype(pred.dtype)).sum().item())
        if not self.training and self.samples is None:
            m = min(MASK_SAMPLES, B)
            self.samples = (X.numpy()[:m], y.numpy()[:m],
                            pred.reshape((B, H, W))[:m].numpy())
        return loss, B, correct / (H * W)

    def metrics(self, loss_sum, correct, n):
        out = {"loss": loss_sum / max(n, 1)}
        if self.confusion is None:
            out.update(pixel_accuracy=0.0, mean_iou=0.0)
        else:
            out.update(segmentation_scores(self.confusion.numpy().tolist()))
        return out

    def write_artifacts(self, folder: str, title: str) -> Dict[str, bool]:
        if self.samples is None:
            return {}
        images, masks, preds = self.samples
        return {"masks.png": plot_masks(os.path.join(folder, "masks.png"), images, masks, preds,
                                        self.num_classes, f"{title}: validation masks")}


TASKS["segmentation"] = SegmentationTask


def check_models_fit(trainer, args) -> None:
    """A trainer plugin: a classification model on a segmentation set (or the reverse) is a
    ConfigError before anything is written."""
    model = getattr(args, "model", None)
    if isinstance(trainer.task, SegmentationTask) and model not in SEGMENTATION_MODELS:
        raise ConfigError(f"--model {model}: gives one prediction per image; --dataset "
                          f"{args.dataset} needs per-pixel scores (--model "
                          f"{' or '.join(SEGMENTATION_MODELS)})")
