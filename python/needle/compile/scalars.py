"""Scalar slots: Python numbers the plan reads at replay time instead of baking them in.

While a step is recorded, the optimizers' hyperparameters (`lr`, `momentum`, the betas, ...)
and their step count `t` are replaced by `SymFloat`/`SymInt`: numbers that behave as the
plain value and also remember how to recompute it (`read()`), from the optimizer's attribute
or from the arithmetic that made them. `self.t += 1` gives a SymInt reading `opt.t + 1`;
`1.0 - self.momentum` one reading `1.0 - opt.momentum`. A kernel that receives one records a
scalar slot, so a learning-rate schedule that changes `opt.lr` between calls changes what the
replay passes. Comparisons and truth tests (`if self.weight_decay:`) fix a branch: each one is
kept as a guard the replay checks before running the plan.
"""
from __future__ import annotations

import operator

__all__ = ["SymFloat", "SymInt", "Sym", "plain", "attribute_sym"]


class Sym:
    """Mixin of the two scalar types: `read()` recomputes the value; `text` describes it."""

    __slots__ = ()

    def read(self):
        return self._read()


def _binary(op, symbol, reflected=False):
    def method(self, other):
        if not isinstance(other, (int, float)):
            return NotImplemented
        a, b = (other, self) if reflected else (self, other)
        value = op(plain(a), plain(b))
        ra = a.read if isinstance(a, Sym) else (lambda a=a: a)
        rb = b.read if isinstance(b, Sym) else (lambda b=b: b)
        text = f"({_text(a)} {symbol} {_text(b)})"
        return make_sym(value, lambda: op(ra(), rb()), text, self._guards)

    return method


def _compare(op, symbol):
    def method(self, other):
        if not isinstance(other, (int, float)):
            return NotImplemented
        result = op(plain(self), plain(other))
        r, o = self.read, plain(other)
        self._guards.append((lambda: op(r(), o) == result,
                             f"{self.text} {symbol} {o!r} is {result}"))
        return result

    return method


def _bool(self):
    result = plain(self) != 0
    r = self.read
    self._guards.append((lambda: (r() != 0) == result, f"bool({self.text}) is {result}"))
    return result


def _text(x):
    return x.text if isinstance(x, Sym) else repr(x)


def _arith(cls):
    for name, op, sym in (("add", operator.add, "+"), ("sub", operator.sub, "-"),
                          ("mul", operator.mul, "*"), ("truediv", operator.truediv, "/"),
                          ("pow", operator.pow, "**")):
        setattr(cls, f"__{name}__", _binary(op, sym))
        setattr(cls, f"__r{name}__", _binary(op, sym, reflected=True))
    for name, op, sym in (("eq", operator.eq, "=="), ("ne", operator.ne, "!="),
                          ("lt", operator.lt, "<"), ("le", operator.le, "<="),
                          ("gt", operator.gt, ">"), ("ge", operator.ge, ">=")):
        setattr(cls, f"__{name}__", _compare(op, sym))
    cls.__bool__ = _bool
    cls.__neg__ = lambda self: make_sym(-plain(self), lambda r=self.read: -r(),
                                        f"-{self.text}", self._guards)
    cls.__hash__ = lambda self: hash(plain(self))
    cls.__repr__ = lambda self: f"{plain(self)!r}"
    return cls


@_arith
class SymFloat(Sym, float):
    """A float that knows how to recompute itself (see the module docstring)."""

    def __new__(cls, value, read, text, guards):
        self = float.__new__(cls, value)
        self._read, self.text, self._guards = read, text, guards
        return self


@_arith
class SymInt(Sym, int):
    """An int that knows how to recompute itself (see the module docstring)."""

    def __new__(cls, value, read, text, guards):
        self = int.__new__(cls, value)
        self._read, self.text, self._guards = read, text, guards
        return self


def make_sym(value, read, text, guards):
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return SymInt(value, read, text, guards)
    return SymFloat(value, read, text, guards)


def plain(x):
    """The plain int or float of a Sym (other values unchanged)."""
    if isinstance(x, SymInt):
        return int.__int__(x)
    if isinstance(x, SymFloat):
        return float.__float__(x)
    return x


def attribute_sym(obj, name: str, label: str, guards: list):
    """A Sym standing for `obj.<name>` (its current value, read again at replay)."""
    value = getattr(obj, name)
    return make_sym(plain(value), lambda: plain(getattr(obj, name)), f"{label}.{name}", guards)
