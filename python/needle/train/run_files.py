"""What a run writes besides checkpoints: metrics.jsonl and metrics.csv (rewritten whole,
atomically, after every epoch), curves.png, masks.png (segmentation runs), and TensorBoard
event files (`--log tensorboard`).

Every file is written to a temp file in the same folder and renamed over the old one, so an
interrupt leaves either the old or the new file; temp files that a killed process left behind
(`.NAME.XXXX` from `atomic_write_bytes`) are removed before the next write of NAME.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import os
from typing import Any, Dict, List, Optional, Sequence

from ..errors import ConfigError
from ..serialization import atomic_write_bytes

__all__ = ["remove_stale_temps", "write_metrics", "plot_curves", "plot_masks", "TensorBoardLog",
           "RUN_FILES"]

RUN_FILES = ("metrics.jsonl", "metrics.csv", "curves.png", "last.safetensors",
             "best.safetensors")


def remove_stale_temps(folder: str, name: str) -> None:
    """Delete `.NAME.*` temp files in `folder` (left by a process killed while writing)."""
    for path in glob.glob(os.path.join(glob.escape(folder), "." + glob.escape(name) + ".*")):
        try:
            os.unlink(path)
        except OSError:
            pass


def _atomic(path: str, data: bytes) -> None:
    remove_stale_temps(os.path.dirname(os.path.abspath(path)), os.path.basename(path))
    atomic_write_bytes(path, data)


def write_metrics(folder: str, history: List[Dict[str, Any]]) -> None:
    """OUT/metrics.jsonl (one JSON record per epoch) and OUT/metrics.csv (one row per epoch,
    the union of the records' keys as columns)."""
    _atomic(os.path.join(folder, "metrics.jsonl"),
            "".join(json.dumps(h) + "\n" for h in history).encode())
    keys: List[str] = []
    for h in history:
        keys += [k for k in h if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    _atomic(os.path.join(folder, "metrics.csv"), buf.getvalue().encode())


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    _atomic(path, buf.getvalue())


def plot_curves(path: str, history: List[Dict[str, Any]], title: str,
                metrics: Optional[Sequence[str]] = None) -> bool:
    """Loss and `metrics` (default: accuracy, or perplexity for language models) per epoch,
    train and validation, one panel each. Returns False, writing nothing, when matplotlib is
    not installed."""
    plt = _pyplot()
    if plt is None:
        return False
    epochs = [h["epoch"] for h in history]
    if metrics is None:
        metrics = ("perplexity" if history and "eval_perplexity" in history[0]
                    else "accuracy",)
    keys = ("loss",) + tuple(metrics)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.8))
    for ax, key in zip(axes, keys):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"eval_{key}"] for h in history], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key.replace("_", " "))
        if key == "perplexity":
            ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    _save(plt, fig, path)
    return True


def plot_masks(path: str, images, masks, preds, num_classes: int, title: str) -> bool:
    """A grid of segmentation samples: one column per image, rows image / true mask /
    predicted mask. images (N, H, W) or (N, 1, H, W) in [0, 1], masks and preds (N, H, W)
    class ids (0 drawn black: the background). Returns False, writing nothing, without
    matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    from matplotlib.colors import ListedColormap

    n = len(images)
    colours = [(0.0, 0.0, 0.0)] + [plt.get_cmap("tab10")(i)[:3] for i in range(num_classes - 1)]
    cmap = ListedColormap(colours[:num_classes])
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n, 4.4), squeeze=False)
    for j in range(n):
        image = images[j][0] if images[j].ndim == 3 else images[j]
        for i, (grid, kw) in enumerate(((image, dict(cmap="gray", vmin=0, vmax=1)),
                                        (masks[j], dict(cmap=cmap, vmin=-0.5,
                                                        vmax=num_classes - 0.5)),
                                        (preds[j], dict(cmap=cmap, vmin=-0.5,
                                                        vmax=num_classes - 0.5)))):
            ax = axes[i][j]
            ax.imshow(grid, interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
    for i, name in enumerate(("image", "true mask", "predicted")):
        axes[i][0].set_ylabel(name)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(plt, fig, path)
    return True


class TensorBoardLog:
    """Scalars per epoch (every key of the record) and the training loss per step, as
    TensorBoard event files in OUT/tensorboard (via tensorboardX, the `tensorboard` extra)."""

    def __init__(self, folder: str, purge_step: Optional[int] = None):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ConfigError("--log tensorboard needs tensorboardX: pip install -e "
                              "'.[tensorboard]' (or pip install tensorboardX)") from None
        self.writer = SummaryWriter(os.path.join(folder, "tensorboard"), purge_step=purge_step)

    def step(self, global_step: int, loss: float) -> None:
        self.writer.add_scalar("train/step_loss", loss, global_step)

    def epoch(self, record: Dict[str, Any]) -> None:
        for key, value in record.items():
            if key == "epoch" or not isinstance(value, (int, float)):
                continue
            split, _, name = key.partition("_")
            tag = f"{split}/{name}" if split in ("train", "eval") and name else key
            self.writer.add_scalar(tag, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
