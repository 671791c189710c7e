"""needle.train: the trainer and the `needle` command.

`engine` holds the Trainer, the tasks and the registries (DATASETS, MODELS, TASKS,
TRAINER_PLUGINS); `conv` and `lm` register the convolutional and language-model recipes and
keep the course's hw4 loops; `segmentation` registers `--model fcn --dataset mnist-seg` and
the per-pixel task; `tta` is `needle eval --tta`; `cli` is the command line (`needle
train|eval|generate`), which imports the recipes and the data-parallel plugin.
"""
from . import engine
from .engine import (
    DATASETS, MODELS, TASKS, TRAINER_PLUGINS, ClassificationTask, DatasetInfo, Task, Trainer,
    evaluate_checkpoint, rebuild_checkpoint, register_dataset, register_model, run_training,
)

__all__ = [
    "engine", "DatasetInfo", "Task", "ClassificationTask", "Trainer", "DATASETS", "MODELS",
    "TASKS", "TRAINER_PLUGINS", "register_dataset", "register_model", "run_training",
    "evaluate_checkpoint", "rebuild_checkpoint",
]
