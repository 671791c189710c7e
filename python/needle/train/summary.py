"""A model summary like torchinfo's: one row per module (indented by depth, named by the
dotted prefix of its parameters, which `--freeze` takes) with its output shape on a sample
batch and its parameter count, then the totals.

The output shapes come from one forward pass in eval mode without a graph: each module's
`forward` is wrapped for that call only (an instance attribute, removed afterwards).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

from ..autograd import Value, no_grad

__all__ = ["model_summary"]


def _shape(out: Any) -> str:
    if isinstance(out, Value):
        data = out.realize_cached_data()
        if isinstance(data, tuple):
            return "(" + ", ".join(str(tuple(d.shape)) for d in data) + ")"
        return str(tuple(data.shape))
    if isinstance(out, (tuple, list)):
        parts = [_shape(o) for o in out if o is not None]
        return "(" + ", ".join(parts) + ")" if len(parts) > 1 else "".join(parts)
    return "-"


def _count_one(p) -> int:
    n = 1
    for d in p.shape:
        n *= int(d)
    return n


def _count(module) -> int:
    return sum(_count_one(p) for p in module.parameters())


def model_summary(model, run_forward: Callable[[], Any], max_depth: int = 3,
                  title: str = "") -> str:
    """The summary table of `model`; `run_forward()` runs the model once on a sample batch.

    >>> print(model_summary(model, lambda: model(x)))  # doctest: +SKIP
    """
    rows: List[tuple] = []  # (dotted name, as in named_parameters / --freeze, module, depth)

    def walk(module, name, depth):
        rows.append((name, module, depth))
        if depth < max_depth:
            for child_name, child in module._children_items():
                if hasattr(child, "_children_items"):  # a Module
                    walk(child, f"{name}.{child_name}" if name else child_name, depth + 1)
    walk(model, "", 0)
    shapes: Dict[int, str] = {}
    wrapped: List[Any] = []
    for _, m, _ in rows:
        if id(m) in shapes or "forward" in vars(m):
            continue
        shapes[id(m)] = "-"

        def make(mod, inner):
            def forward(*args, **kwargs):
                out = inner(*args, **kwargs)
                shapes[id(mod)] = _shape(out)
                return out
            return forward

        m.forward = make(m, m.forward)
        wrapped.append(m)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            run_forward()
    finally:
        for m in wrapped:
            del m.forward
        model.train(was_training)
    name_w = max(len("  " * d + (n + " " if n else "") + type(m).__name__) for n, m, d in rows)
    name_w = max(name_w, len("layer"))
    shape_w = max(max(len(shapes.get(id(m), "-")) for _, m, _ in rows), len("output shape"))
    lines = [title] if title else []
    lines.append(f"{'layer':<{name_w}}  {'output shape':<{shape_w}}  {'params':>12}")
    lines.append("-" * (name_w + shape_w + 16))
    for n, m, d in rows:
        label = "  " * d + (n + " " if n else "") + type(m).__name__
        lines.append(f"{label:<{name_w}}  {shapes.get(id(m), '-'):<{shape_w}}  "
                     f"{_count(m):>12,}")
    total = _count(model)
    nbytes = sum(p.realize_cached_data().nbytes for p in model.parameters())
    lines.append("-" * (name_w + shape_w + 16))
    trainable = sum(_count_one(p) for p in model.parameters() if p.requires_grad)
    lines.append(f"total parameters {total:,} ({nbytes / 2**20:.2f} MiB)"
                 + (f", trainable {trainable:,}" if trainable != total else ""))
    return "\n".join(lines)
