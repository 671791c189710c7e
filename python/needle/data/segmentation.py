"""Digit segmentation from the shipped MNIST test images, and the segmentation metrics.

The masks are derived from the images themselves, nothing is hand-labelled: pixel (r, c) of
image i has class `label_i + 1` where the stroke is, i.e. where the intensity / 255 is above
`threshold` (default 0.5), and class 0 (background) elsewhere; 11 classes in all. A model must
both find the stroke and recognise the digit, pixel by pixel.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .data_basic import Dataset
from .mnist import _read_mnist_pair
from .paths import shipped_mnist_test

__all__ = ["MNISTSegmentation", "digit_masks", "pixel_accuracy", "mean_iou",
           "confusion_matrix", "NUM_SEGMENTATION_CLASSES"]

NUM_SEGMENTATION_CLASSES = 11  # background + ten digits


def digit_masks(images: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """int64 masks (N, H, W): label + 1 where images (N, H, W) in [0, 1] exceed `threshold`."""
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"digit_masks: need images (N, H, W) and labels (N,), got "
                         f"{images.shape} and {labels.shape}")
    return np.where(images > threshold, labels[:, None, None] + 1, 0).astype(np.int64)


class MNISTSegmentation(Dataset):
    """`ds[i]` -> (image float32 (1, 28, 28) in [0, 1], mask int64 (28, 28)); slices and index
    arrays give stacked batches. Default files: the MNIST test split shipped with needle
    (10000 images); `start`/`stop` pick a range of it (e.g. a train/validation split)."""

    supports_batch_index = True

    def __init__(self, image_filename: Optional[str] = None,
                 label_filename: Optional[str] = None, threshold: float = 0.5,
                 start: int = 0, stop: Optional[int] = None):
        super().__init__(None)
        if (image_filename is None) != (label_filename is None):
            raise ValueError("MNISTSegmentation: give both image and label files, or neither")
        if image_filename is None:
            image_filename, label_filename = shipped_mnist_test()
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"MNISTSegmentation: threshold must be in [0, 1), got {threshold}")
        images, labels = _read_mnist_pair(image_filename, label_filename)
        images = images[start:stop].astype(np.float32) / np.float32(255.0)  # (N, H, W)
        labels = labels[start:stop]
        self.threshold = threshold
        self.images = images[:, None]  # (N, 1, H, W)
        self.labels = labels.copy()
        self.masks = digit_masks(images, labels, threshold)

    def __len__(self) -> int:
        return self.masks.shape[0]

    def __getitem__(self, index):
        return self.images[index], self.masks[index]


def confusion_matrix(pred, target, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts: row = true class, column = predicted class."""
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    target = np.asarray(target).reshape(-1).astype(np.int64)
    if pred.shape != target.shape:
        raise ValueError(f"confusion_matrix: {pred.size} predictions for {target.size} targets")
    if pred.size and (min(pred.min(), target.min()) < 0
                      or max(pred.max(), target.max()) >= num_classes):
        raise ValueError(f"confusion_matrix: class ids must be in [0, {num_classes})")
    return np.bincount(target * num_classes + pred,
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def pixel_accuracy(pred, target) -> float:
    """The fraction of pixels whose predicted class (same shape as target) is right."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pixel_accuracy: prediction {pred.shape} and target {target.shape} "
                         f"differ")
    return float((pred == target).mean())


def mean_iou(pred, target, num_classes: int) -> float:
    """Mean over classes of |pred = c and target = c| / |pred = c or target = c|, over the
    classes that occur in the prediction or the target (the usual convention: a class absent
    from both is left out rather than counted as 0 or 1)."""
    cm = confusion_matrix(pred, target, num_classes)
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    present = union > 0
    if not present.any():
        raise ValueError("mean_iou: no pixels")
    return float((inter[present] / union[present]).mean())
