"""PyTorch state dicts in and out of needle models.

Each needle layer that PyTorch also has is mapped to PyTorch's key names and layouts:

| needle                         | PyTorch                 | layout change                    |
|--------------------------------|-------------------------|----------------------------------|
| Linear.weight (in, out)        | Linear.weight (out, in) | transpose                        |
| Linear.bias (1, out) or (out,) | Linear.bias (out,)      | reshape                          |
| Conv.weight (K, K, Cin, Cout)  | Conv2d.weight           | (Cout, Cin, K, K)                |
| ConvTranspose.weight           | ConvTranspose2d.weight  | (Cin, Cout, K, K)                |
| BatchNorm1d/2d                 | BatchNorm1d/2d          | same; `num_batches_tracked` kept |
| LayerNorm1d, Embedding         | LayerNorm, Embedding    | same                             |
| RNN/LSTM/GRU `<cells>.k.W_ih`  | `weight_ih_lk`          | transpose (gate order is equal)  |
| `<cells>.k.W_hh`, biases       | `weight_hh_lk`, `bias_*_lk` | transpose / same             |
| MultiheadAttention             | MultiheadAttention      | in_proj_weight transposed        |

Module paths follow the attribute names, except that `Sequential`'s `modules.<i>` is PyTorch's
`<i>`. Anything else keeps its needle name and layout. Conversions run on the NumPy copies that
`Module.state_dict()` returns and `Module.load_state_dict()` takes (I/O at the file edge).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Union

import numpy as np

from ..errors import UserError
from ..nn import (
    GRU, LSTM, RNN, BatchNorm1d, BatchNorm2d, Conv, ConvTranspose, Linear, Module,
    MultiheadAttention, Sequential,
)

__all__ = ["StateDictError", "load_torch_state_dict", "torch_state_dict", "torch_key_map"]


class StateDictError(UserError, ValueError):
    """A PyTorch state dict that does not fit a needle model (keys or shapes)."""


def _same(a):
    return a


def _t(a):
    return np.ascontiguousarray(np.swapaxes(a, 0, 1))


def _conv_out(a):  # needle (K, K, Cin, Cout) -> torch (Cout, Cin, K, K)
    return np.ascontiguousarray(a.transpose(3, 2, 0, 1))


def _conv_in(a):
    return np.ascontiguousarray(a.transpose(2, 3, 1, 0))


def _convt_out(a):  # needle (K, K, Cin, Cout) -> torch (Cin, Cout, K, K)
    return np.ascontiguousarray(a.transpose(2, 3, 0, 1))


def _convt_in(a):
    return np.ascontiguousarray(a.transpose(2, 3, 0, 1))


def _flat(a):
    return np.ascontiguousarray(a.reshape(-1))


def _join(*parts):
    return ".".join(p for p in parts if p)


def _torch_path(needle_path: str, parents: Dict[str, Module]) -> str:
    """Drop `modules` after a Sequential (needle `seq.modules.0` is torch `seq.0`)."""
    parts = needle_path.split(".") if needle_path else []
    out, path = [], ""
    for i, p in enumerate(parts):
        if p == "modules" and isinstance(parents.get(path), Sequential) and i + 1 < len(parts):
            path = _join(path, p)
            continue
        out.append(p)
        path = _join(path, p)
    return ".".join(out)


def _entries(module: Module):
    """(needle local name, torch local name, to_torch, from_torch) for one module's tensors."""
    if isinstance(module, Linear):
        yield "weight", "weight", _t, _t
        if module.bias is not None:
            yield "bias", "bias", _flat, _same
    elif isinstance(module, ConvTranspose):
        yield "weight", "weight", _convt_out, _convt_in
        if module.bias is not None:
            yield "bias", "bias", _same, _same
    elif isinstance(module, Conv):
        yield "weight", "weight", _conv_out, _conv_in
        if module.bias is not None:
            yield "bias", "bias", _same, _same
    elif isinstance(module, (RNN, LSTM, GRU)):
        cells = ("rnn_cells" if isinstance(module, RNN) else
                 "lstm_cells" if isinstance(module, LSTM) else "gru_cells")
        for k, cell in enumerate(getattr(module, cells)):
            yield f"{cells}.{k}.W_ih", f"weight_ih_l{k}", _t, _t
            yield f"{cells}.{k}.W_hh", f"weight_hh_l{k}", _t, _t
            if cell.bias_ih is not None:
                yield f"{cells}.{k}.bias_ih", f"bias_ih_l{k}", _same, _same
                yield f"{cells}.{k}.bias_hh", f"bias_hh_l{k}", _same, _same
    elif isinstance(module, MultiheadAttention):
        yield "in_proj_weight", "in_proj_weight", _t, _t
        if module.in_proj_bias is not None:
            yield "in_proj_bias", "in_proj_bias", _same, _same


def torch_key_map(model: Module) -> Dict[str, tuple]:
    """needle state-dict key -> (PyTorch key, to_torch, from_torch) for every tensor."""
    mods = dict(model.named_modules())
    out: Dict[str, tuple] = {}
    for path, m in mods.items():
        tpath = _torch_path(path, mods)
        for nl, tl, to_t, from_t in _entries(m):
            key = _join(path, nl)
            out[key] = (_join(tpath, tl), to_t, from_t)
    for key in model.state_dict():
        if key in out:
            continue
        owner, _, local = key.rpartition(".")
        while owner and owner not in mods:  # a parameter inside a list/dict attribute
            owner, _, rest = owner.rpartition(".")
            local = _join(rest, local)
        out[key] = (_join(_torch_path(owner, mods), local), _same, _same)
    return out


def _batchnorm_counters(model: Module):
    mods = dict(model.named_modules())
    for path, m in mods.items():
        if isinstance(m, (BatchNorm1d, BatchNorm2d)):
            yield _join(_torch_path(path, mods), "num_batches_tracked")


def torch_state_dict(model: Module, *, as_torch: bool = False) -> Dict[str, np.ndarray]:
    """The model's parameters and buffers under PyTorch's names and layouts.

    Values are NumPy arrays (`as_torch=True` gives torch tensors, importing torch), ready for
    `torch_model.load_state_dict(...)` after `torch.from_numpy`, or for safetensors.
    """
    sd = model.state_dict()
    out = {}
    for key, (tkey, to_t, _) in torch_key_map(model).items():
        out[tkey] = to_t(sd[key])
    for tkey in _batchnorm_counters(model):
        out[tkey] = np.zeros((), dtype=np.int64)
    if as_torch:
        import torch

        out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
    return out


def _read(state) -> Dict[str, np.ndarray]:
    if isinstance(state, (str, os.PathLike)):
        path = os.fspath(state)
        if not os.path.exists(path):
            raise StateDictError(f"load_torch_state_dict: no such file {path}")
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own error types
            raise StateDictError(f"load_torch_state_dict: {path} is not a readable "
                                 f".safetensors file: {e}") from e
    out = {}
    for k, v in dict(state).items():
        if hasattr(v, "detach") and hasattr(v, "cpu") and hasattr(v, "numpy"):  # torch
            v = v.detach().cpu().numpy()
        elif hasattr(v, "realize_cached_data"):  # a needle Tensor
            v = v.numpy()
        out[k] = np.asarray(v)
    return out


def load_torch_state_dict(model: Module, state: Union[Dict, str, os.PathLike], *,
                          strict: bool = True,
                          rename: Optional[Union[Dict[str, str], Callable[[str], str]]] = None
                          ) -> Module:
    """Copy a PyTorch state dict (or a `.safetensors` file PyTorch wrote) into `model`.

    `rename` maps the file's keys to the names `torch_state_dict(model)` uses (a dict or a
    function) when the two architectures name their submodules differently. PyTorch's
    `num_batches_tracked` counters are ignored. Nothing is written unless every tensor fits.
    """
    given = _read(state)
    if rename is not None:
        fn = (lambda k: rename.get(k, k)) if isinstance(rename, dict) else rename
        given = {fn(k): v for k, v in given.items()}
    given = {k: v for k, v in given.items() if not k.endswith("num_batches_tracked")}
    own = model.state_dict()
    kmap = torch_key_map(model)
    by_torch = {tkey: (key, from_t) for key, (tkey, _, from_t) in kmap.items()}
    missing = [f"{tk} (needle {nk}, shape {own[nk].shape})" for tk, (nk, _) in by_torch.items()
               if tk not in given]
    unexpected = [f"{k} (shape {tuple(v.shape)})" for k, v in given.items()
                  if k not in by_torch]
    if strict and (missing or unexpected):
        parts = ([f"{type(model).__name__} is missing {missing}"] if missing else []) + (
            [f"the state has unexpected {unexpected}"] if unexpected else [])
        raise StateDictError("load_torch_state_dict: " + "; ".join(parts) +
                             " (strict=False loads what fits; rename= maps other names)")
    converted = {}
    for tkey, (nkey, from_t) in by_torch.items():
        if tkey not in given:
            continue
        value = from_t(given[tkey])
        want = own[nkey].shape
        if value.size == int(np.prod(want)) and value.shape != want and value.ndim <= 2 \
                and len(want) <= 2 and nkey.endswith("bias"):
            value = value.reshape(want)  # needle's (1, out) Linear bias
        if value.shape != want:
            raise StateDictError(
                f"load_torch_state_dict: {tkey} has shape {tuple(given[tkey].shape)} "
                f"(as needle {tuple(value.shape)}), but needle's {nkey} is {tuple(want)}")
        converted[nkey] = value
    model.load_state_dict(converted, strict=False)
    return model
