"""What a run writes besides checkpoints: metrics.jsonl and metrics.csv (rewritten whole,
atomically, after every epoch), curves.png, and TensorBoard event files (`--log tensorboard`).

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
from typing import Any, Dict, List, Optional

from ..errors import ConfigError
from ..serialization import atomic_write_bytes

__all__ = ["remove_stale_temps", "write_metrics", "plot_curves", "TensorBoardLog",
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


def plot_curves(path: str, history: List[Dict[str, Any]], title: str) -> bool:
    """Loss and accuracy (perplexity for language models) per epoch, train and validation.
    Returns False, writing nothing, when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    second = "perplexity" if history and "eval_perplexity" in history[0] else "accuracy"
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, key in zip(axes, ("loss", second)):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"eval_{key}"] for h in history], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        if key == "perplexity":
            ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    _atomic(path, buf.getvalue())
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
