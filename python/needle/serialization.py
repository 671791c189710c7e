"""Checkpoints: model and optimizer state in one safetensors file, written atomically.

Tensors go in the safetensors body under prefixed names (`model/<name>`, `optim/<i>/<key>`,
`rng/mt19937`); everything else (epoch, step, optimizer hyperparameters, RNG position, run
configuration, metric history) is JSON in the safetensors header metadata under "needle".
The file is written to a temporary file in the same directory, fsynced, then renamed over the
target, so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from typing import Any, Dict, Optional

import numpy as np

from .errors import CheckpointError

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "atomic_write_bytes", "save",
           "load"]

FORMAT = "needle-checkpoint"
VERSION = 1


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` atomically: temp file in the same directory, fsync, rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)  # mkstemp makes 0600; the file gets open()'s ordinary mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _rng_to_arrays(state) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return np.asarray(keys, dtype=np.uint32), {"name": name, "pos": int(pos),
                                               "has_gauss": int(has_gauss),
                                               "cached_gaussian": float(cached)}


def save_checkpoint(path: str, model=None, optimizer=None, rng_state=None,
                    meta: Optional[Dict[str, Any]] = None) -> None:
    """Save `model.state_dict()`, `optimizer.state_dict()`, an RNG state and JSON `meta`.

    `rng_state` is a `np.random.get_state()` tuple (None: the current global state).
    """
    from safetensors.numpy import save

    tensors: Dict[str, np.ndarray] = {}
    info: Dict[str, Any] = {"format": FORMAT, "version": VERSION, "meta": meta or {}}
    if model is not None:
        for name, value in model.state_dict().items():
            tensors[f"model/{name}"] = np.ascontiguousarray(value)
    if optimizer is not None:
        state = optimizer.state_dict()
        for i, entry in state["state"].items():
            for key, value in entry.items():
                tensors[f"optim/{i}/{key}"] = np.ascontiguousarray(value)
        info["optimizer"] = {"name": state["name"], "hyperparameters": state["hyperparameters"],
                             "t": state["t"]}
    keys, rng_info = _rng_to_arrays(rng_state if rng_state is not None
                                    else np.random.get_state())
    tensors["rng/mt19937"] = keys
    info["rng"] = rng_info
    atomic_write_bytes(path, save(tensors, metadata={"needle": json.dumps(info)}))


class Checkpoint:
    """What `load_checkpoint` returns: `model_state`, `optimizer_state`, `rng_state`, `meta`."""

    def __init__(self, path, model_state, optimizer_state, rng_state, meta):
        self.path = path
        self.model_state = model_state
        self.optimizer_state = optimizer_state
        self.rng_state = rng_state
        self.meta = meta


def _read_header(path: str, data: bytes) -> Dict[str, Any]:
    if len(data) < 8:
        raise CheckpointError(f"{path}: not a needle checkpoint (file too short: "
                              f"{len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise CheckpointError(f"{path}: truncated checkpoint (header says {n} bytes, file has "
                              f"{len(data) - 8})")
    try:
        header = json.loads(data[8:8 + n])
        info = json.loads(header["__metadata__"]["needle"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: not a needle checkpoint (no readable needle header)")
    if info.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a needle checkpoint (format {info.get('format')!r})")
    return info


def load_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; any defect raises CheckpointError."""
    from safetensors.numpy import load

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror})") from None
    info = _read_header(path, data)
    try:
        tensors = load(data)
    except Exception as e:  # safetensors raises its own error types on corrupt bodies
        raise CheckpointError(f"{path}: corrupt checkpoint ({e})") from None
    model_state, optim_tensors = {}, {}
    for name, value in tensors.items():
        kind, _, rest = name.partition("/")
        if kind == "model":
            model_state[rest] = value
        elif kind == "optim":
            i, _, key = rest.partition("/")
            optim_tensors.setdefault(int(i), {})[key] = value
    optimizer_state = None
    if "optimizer" in info:
        optimizer_state = dict(info["optimizer"], state=optim_tensors)
    rng = info.get("rng")
    rng_state = None
    if rng is not None and "rng/mt19937" in tensors:
        rng_state = (rng["name"], tensors["rng/mt19937"], rng["pos"], rng["has_gauss"],
                     rng["cached_gaussian"])
    return Checkpoint(path, model_state, optimizer_state, rng_state, info.get("meta", {}))


# ---- needle.save / needle.load (PyTorch's habit, as safetensors) ---------------------------
SAVE_FORMAT = "needle-save"


def _flatten_for_save(obj, prefix, tensors, plain, path):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str) or "/" in k:
                raise CheckpointError(f"needle.save({path}): keys must be strings without '/', "
                                      f"got {k!r}")
            _flatten_for_save(v, f"{prefix}{k}/", tensors, plain, path)
        if not obj and prefix:
            plain[prefix[:-1]] = {}
        return
    name = prefix[:-1]
    if hasattr(obj, "numpy") and hasattr(obj, "shape"):  # Tensor, NDArray
        tensors[name] = np.ascontiguousarray(obj.numpy())
    elif isinstance(obj, np.ndarray):
        tensors[name] = np.ascontiguousarray(obj)
    elif obj is None or isinstance(obj, (bool, int, float, str, list, tuple)):
        try:
            json.dumps(obj)
        except TypeError:
            raise CheckpointError(f"needle.save({path}): {name} holds a {type(obj).__name__} "
                                  f"that is not JSON (only arrays, tensors, numbers, strings "
                                  f"and lists of them are saved)") from None
        plain[name] = obj
    else:
        hint = " (save model.state_dict() instead)" if hasattr(obj, "state_dict") else ""
        raise CheckpointError(f"needle.save({path}): cannot save {name or 'the object'} of "
                              f"type {type(obj).__name__}{hint}")


def save(obj: Dict[str, Any], path: str) -> None:
    """Save a state dict (name -> Tensor/NDArray/NumPy array), nested dicts of them, and plain
    JSON values (epoch numbers, settings) to one safetensors file, atomically.

    The argument order is PyTorch's (`torch.save(obj, path)`); nothing is pickled, so a
    Module itself is refused: save `model.state_dict()`."""
    from safetensors.numpy import save as st_save

    if not isinstance(obj, dict):
        hint = " (save model.state_dict())" if hasattr(obj, "state_dict") else ""
        raise CheckpointError(f"needle.save({path}): expected a dict, got "
                              f"{type(obj).__name__}{hint}")
    tensors: Dict[str, np.ndarray] = {}
    plain: Dict[str, Any] = {}
    _flatten_for_save(obj, "", tensors, plain, path)
    meta = {"format": SAVE_FORMAT, "version": VERSION, "plain": plain}
    atomic_write_bytes(path, st_save(tensors, metadata={"needle": json.dumps(meta)}))


def load(path: str) -> Dict[str, Any]:
    """Read what `save` wrote: the same dict, with NumPy arrays where tensors were (what
    `Module.state_dict()` returns and `Module.load_state_dict()` takes)."""
    from safetensors.numpy import load as st_load

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"needle.load({path}): cannot read ({e.strerror})") from None
    plain: Dict[str, Any] = {}
    if len(data) >= 8:
        (n,) = struct.unpack("<Q", data[:8])
        try:
            info = json.loads(json.loads(data[8:8 + n])["__metadata__"]["needle"])
            if info.get("format") == SAVE_FORMAT:
                plain = info.get("plain", {})
        except (ValueError, KeyError, TypeError):
            pass  # a plain safetensors file (e.g. written by PyTorch): tensors only
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"needle.load({path}): not a safetensors file ({e})") from None
    out: Dict[str, Any] = {}
    for name, value in list(tensors.items()) + list(plain.items()):
        parts = name.split("/") if name else []
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        if parts:
            d[parts[-1]] = value
    return out
