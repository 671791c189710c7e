"""A run's configuration as stored in its checkpoints, and the checks made against it.

`--resume CKPT` rebuilds the model from the configuration stored in CKPT (not from the current
flags); a flag given on the command line that differs from the stored value is an error,
except the ones that make sense to change on resume (`RESUMABLE`). `needle eval CKPT --dataset
X` checks that X has the inputs and classes the checkpoint was trained on.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

from ..errors import ConfigError

__all__ = ["CONFIG_KEYS", "add_config_keys", "RESUMABLE", "run_config", "data_signature",
           "apply_resume_config", "check_data_matches", "check_finite_record"]

# The configuration every run stores; each recipe adds the keys of its own flags
# (`engine.register_flags`), e.g. --bptt for the language models.
CONFIG_KEYS = ["model", "dataset", "data_dir", "hidden_dim", "optimizer", "lr", "weight_decay",
               "batch_size", "epochs", "seed", "schedule", "warmup_epochs", "freeze",
               "init_from", "early_stopping"]


def add_config_keys(keys) -> None:
    """Store the values of `keys` (argparse dests) in every checkpoint's configuration."""
    for key in keys:
        if key not in CONFIG_KEYS:
            CONFIG_KEYS.append(key)


# What a resumed run may change: its length, where the data lives (a moved folder), and
# nothing that changes the model, the optimizer or the data order.
RESUMABLE = frozenset({"epochs", "data_dir", "early_stopping"})


def run_config(args) -> Dict[str, Any]:
    return {k: getattr(args, k, None) for k in CONFIG_KEYS}


def data_signature(info) -> Dict[str, Any]:
    """What a model built for the dataset `info` depends on."""
    return {"name": info.name, "task": info.task, "input_shape": list(info.input_shape),
            "num_classes": int(info.num_classes)}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def apply_resume_config(args, meta: Dict[str, Any], path: str) -> Optional[int]:
    """Set `args` from the checkpoint's stored configuration, in place.

    `args.explicit_flags` (a set of option names, e.g. {"epochs"}; the CLI fills it) names
    the flags the user typed: any of them that differs from the stored value and is not in
    RESUMABLE raises ConfigError (without it, the RESUMABLE values of `args` are kept and
    the rest is taken from the checkpoint). Returns the stored --epochs when this call extends it.
    """
    stored = meta.get("config") or {}
    if not stored:
        raise ConfigError(f"--resume {path}: the checkpoint stores no run configuration")
    typed = getattr(args, "explicit_flags", None)
    # Called from Python without the CLI's record: the caller's RESUMABLE values stand.
    explicit = set(RESUMABLE) if typed is None else set(typed)
    for key in CONFIG_KEYS:
        if key not in stored:
            continue
        value, saved = getattr(args, key, None), stored[key]
        if key in explicit and key not in RESUMABLE and value != saved:
            raise ConfigError(
                f"--resume {path}: {_flag(key)} {value} differs from the checkpoint's "
                f"{saved!r} (a resumed run keeps its configuration; only "
                f"{', '.join(_flag(k) for k in sorted(RESUMABLE))} may change)")
        if key in RESUMABLE and key in explicit:
            continue
        setattr(args, key, saved)
    epochs_done = int(meta.get("epoch", 0))
    if args.epochs < epochs_done:
        raise ConfigError(f"--resume {path}: --epochs {args.epochs} is fewer than the "
                          f"{epochs_done} epochs the checkpoint has already trained")
    saved_epochs = stored.get("epochs")
    return saved_epochs if saved_epochs is not None and args.epochs > saved_epochs else None


def check_data_matches(path: str, meta: Dict[str, Any], info, model_state: Dict[str, Any],
                       model) -> None:
    """ConfigError when the dataset `info` does not fit the checkpoint at `path` (the inputs
    or the classes differ, or the model built for it has other parameter shapes)."""
    stored = meta.get("data")
    ours = data_signature(info)
    trained_on = (meta.get("config") or {}).get("dataset")
    if stored is not None:
        for key in ("task", "input_shape", "num_classes"):
            if stored.get(key) != ours[key]:
                raise ConfigError(
                    f"{path}: dataset {info.name!r} does not match the checkpoint, trained "
                    f"on {stored.get('name')!r} ({key.replace('_', ' ')} {stored.get(key)} "
                    f"there, {ours[key]} here)")
    mine = model.state_dict()
    for key, value in model_state.items():
        if key in mine and tuple(mine[key].shape) != tuple(value.shape):
            raise ConfigError(
                f"{path}: dataset {info.name!r} does not match the checkpoint, trained on "
                f"{trained_on!r} (parameter {key} is {tuple(value.shape)} there, "
                f"{tuple(mine[key].shape)} for this dataset)")


def check_finite_record(record: Dict[str, Any]) -> Optional[str]:
    """The first metric of `record` that is nan or inf, as 'name=value'; None if all finite."""
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value) and key != "lr":
            return f"{key}={value}"
    return None
