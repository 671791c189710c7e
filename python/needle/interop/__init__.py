"""needle among the other tools: DLPack exchange and PyTorch state dicts.

`from_dlpack(obj)` wraps another library's memory as a Tensor (no copy); `Tensor.__dlpack__`
goes the other way. `load_torch_state_dict(model, sd_or_path)` and `torch_state_dict(model)`
convert between PyTorch's parameter names and layouts and needle's.
"""
from .dlpack import DLPackError, from_dlpack
from .state_dict import StateDictError, load_torch_state_dict, torch_key_map, torch_state_dict

__all__ = ["DLPackError", "from_dlpack", "StateDictError", "load_torch_state_dict",
           "torch_state_dict", "torch_key_map"]
