"""Transfer learning for `needle train`: `--init-from CKPT` loads the weights of another run
whose names and shapes match, and `--freeze PREFIX` keeps parameters out of training.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from ..errors import ConfigError
from ..serialization import load_checkpoint

__all__ = ["init_from_checkpoint", "freeze_parameters"]


def init_from_checkpoint(model, path: str) -> Tuple[List[str], List[str]]:
    """Copy into `model` every tensor of the checkpoint at `path` whose name and shape match.

    Returns (loaded names, skipped descriptions): a skipped entry says why, e.g.
    'linear.weight: (100, 10) there, (100, 5) here' or 'fc.bias: not in the checkpoint'.
    Raises ConfigError when nothing matches (another kind of model).
    """
    state = load_checkpoint(path).model_state
    mine = model.state_dict()
    matching, skipped = {}, []
    for name, value in mine.items():
        theirs = state.get(name)
        if theirs is None:
            skipped.append(f"{name}: not in the checkpoint")
        elif tuple(theirs.shape) != tuple(value.shape):
            skipped.append(f"{name}: {tuple(theirs.shape)} there, {tuple(value.shape)} here")
        else:
            matching[name] = theirs
    skipped += [f"{name}: not in this model" for name in state if name not in mine]
    if not matching:
        raise ConfigError(f"--init-from {path}: no tensor of the checkpoint matches this "
                          f"model by name and shape")
    model.load_state_dict(matching, strict=False)
    return sorted(matching), skipped


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
