"""`needle export CHECKPOINT --format onnx`: a `needle train` checkpoint as an ONNX file."""
from __future__ import annotations

import json
import os
from typing import Optional

from ..errors import ConfigError

__all__ = ["export_checkpoint", "FORMATS"]

FORMATS = ("onnx",)


def export_checkpoint(path: str, fmt: str = "onnx", out: Optional[str] = None,
                      batch_size: int = 1, *, registry) -> str:
    """Rebuild the model saved in `path`, load its weights, trace it on one batch of its own
    evaluation data (`batch_size` rows; the ONNX graph has that batch size) and write
    `out` (default: the checkpoint's path with `.onnx`). Returns a one-line JSON report.

    `registry` is the trainer (`needle.train`: `rebuild_checkpoint`, `TASKS`); it is
    passed in so that this package does not import the trainer."""
    from ..autograd import Tensor as ndl_tensor
    from .export import export

    if fmt not in FORMATS:
        raise ConfigError(f"needle export: format {fmt!r} is not supported (choose from "
                          f"{', '.join(FORMATS)})")
    _, run_args, info, model = registry.rebuild_checkpoint(path)
    run_args.batch_size = batch_size
    _, eval_data = registry.TASKS[info.task]().loaders(info, run_args)
    example = next(iter(eval_data))[0]
    if info.task == "classification":  # the evaluation loader batches at least 1000 rows
        example = ndl_tensor(example.numpy()[:batch_size])
    out = out or os.path.splitext(path)[0] + ".onnx"
    export(model, example, out)
    return json.dumps({"checkpoint": path, "format": fmt, "output": out,
                       "model": run_args.model, "input_shape": list(example.shape)})
