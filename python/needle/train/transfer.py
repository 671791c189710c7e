"""Transfer learning for `needle train`: `--init-from CKPT` loads the weights of another run
whose names and shapes match, and `--freeze PREFIX` keeps parameters out of training.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from ..errors import ConfigError
from ..nn.nn_utils import load_matching_state_dict
from ..serialization import load_checkpoint

__all__ = ["init_from_checkpoint", "freeze_parameters"]


def init_from_checkpoint(model, path: str) -> Tuple[List[str], List[str]]:
    """Copy into `model` every tensor of the checkpoint at `path` whose name and shape match.

    Returns (loaded names, skipped descriptions): a skipped entry says why, e.g.
    'linear.weight: (100, 10) there, (100, 5) here' or 'fc.bias: not in the state'
    (`nn.utils.load_matching_state_dict`).
    Raises ConfigError when nothing matches (another kind of model).
    """
    loaded, skipped = load_matching_state_dict(model, load_checkpoint(path).model_state)
    if not loaded:
        raise ConfigError(f"--init-from {path}: no tensor of the checkpoint matches this "
                          f"model by name and shape")
    return loaded, skipped


def freeze_parameters(model, prefixes: Sequence[str]) -> List[str]:
    """Set `requires_grad = False` on the parameters whose dotted names start with one of
    `prefixes`; returns their names. A prefix that matches nothing raises ConfigError."""
    named = model.named_parameters()
    frozen = []
    for prefix in prefixes:
        hits = [name for name, _ in named if name.startswith(prefix)]
        if not hits:
            tops = sorted({name.split(".", 1)[0] for name, _ in named})
            raise ConfigError(f"--freeze {prefix}: no parameter name starts with it (names "
                              f"start with {', '.join(tops)}; `needle summary` lists them)")
        frozen += [h for h in hits if h not in frozen]
    for name, p in named:
        if name in frozen:
            p.requires_grad = False
    if len(frozen) == len(named):
        raise ConfigError(f"--freeze {' '.join(prefixes)}: freezes every parameter; nothing "
                          f"would train")
    return frozen
