"""needle.train: the trainer and the `needle` command.

`engine` holds the Trainer, the tasks and the registries (DATASETS, MODELS, TASKS,
TRAINER_PLUGINS, RECIPE_FLAGS) and knows no dataset, model or flag of a recipe; `recipes`
imports the recipes, which register themselves with their own flags: `mnist` (mnist-small,
fashion-mnist, mlp-resnet), `conv` (cnn, resnet9, densenet, cifar10; the course's hw4 CIFAR
loops), `lm` (the language models and text corpora; the hw4 PTB loops) and `segmentation`
(fcn on mnist-seg), plus the data-parallel plugin. `tta` is `needle eval --tta`; `cli` is the
command line (`needle train|eval|generate|summary|export`).
"""
from . import engine, recipes
from .engine import (
    DATASETS, MODEL_DATASETS, MODELS, RECIPE_FLAGS, TASKS, TRAINER_PLUGINS, ClassificationTask,
    DatasetInfo, Task, Trainer, evaluate_checkpoint, rebuild_checkpoint, register_dataset,
    register_flags, register_model, run_training,
)

__all__ = [
    "engine", "recipes", "DatasetInfo", "Task", "ClassificationTask", "Trainer", "DATASETS",
    "MODELS", "MODEL_DATASETS", "TASKS", "TRAINER_PLUGINS", "RECIPE_FLAGS", "register_dataset",
    "register_model", "register_flags", "run_training", "evaluate_checkpoint", "rebuild_checkpoint",
]
