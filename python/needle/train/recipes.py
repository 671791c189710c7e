"""The recipes and plugins `needle train` knows: importing this module registers them.

Each line imports a module that registers datasets, models, tasks and its own flags in
`needle.train.engine` (see engine's docstring); the plugins run on every Trainer the engine
builds. Adding a recipe is one line here.
"""
from __future__ import annotations

from ..distributed.plugin import trainer_plugin
from . import conv, lm, mnist, segmentation
from .engine import TRAINER_PLUGINS

__all__ = ["mnist", "conv", "lm", "segmentation"]

for _plugin in (trainer_plugin,  # data parallel under mpiexec
                lm.clip_plugin,  # gradient clipping for language models
                segmentation.check_models_fit):
    if _plugin not in TRAINER_PLUGINS:
        TRAINER_PLUGINS.append(_plugin)
