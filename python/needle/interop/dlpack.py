"""`needle.from_dlpack`: a Tensor over another library's memory, without a copy."""
from __future__ import annotations

from ..autograd import Tensor
from ..backend_ndarray.dlpack import DLPackError, from_dlpack as _array_from_dlpack

__all__ = ["DLPackError", "from_dlpack"]


def from_dlpack(obj, *, requires_grad: bool = False) -> Tensor:
    """A Tensor sharing `obj`'s memory (a NumPy array, a torch tensor, a CuPy array, or any
    object with `__dlpack__`); writes through either side are seen by the other. Shape and
    strides are kept. As in PyTorch, the result does not require grad unless asked."""
    if isinstance(obj, Tensor):
        return obj
    return Tensor.make_const(_array_from_dlpack(obj), requires_grad=requires_grad)
