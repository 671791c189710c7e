"""needle.compile: record the kernel calls of a step once, replay them as a flat plan.

See docs/compile.md. `compiled.py` holds the callable and its guards, `plan.py` turns a
recording into one Python function, `memory.py` places its intermediates in a reused arena,
`fusion.py` fuses elementwise chains, `scalars.py` the scalar slots (hyperparameters read at
replay time); the recorder itself lives in backend_ndarray/recording.py.
"""
from .compiled import CompileError, Compiled, RecompileWarning, compile
from .plan import Plan

__all__ = ["compile", "Compiled", "CompileError", "RecompileWarning", "Plan"]
