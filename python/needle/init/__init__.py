"""Tensor constructors and parameter initializers (NumPy global RNG, course conventions)."""
from .init_basic import (
    constant, get_rng_state, manual_seed, one_hot, ones, ones_like, rand, randb, randn,
    set_rng_state, zeros, zeros_like,
)
from .init_initializers import kaiming_normal, kaiming_uniform, xavier_normal, xavier_uniform

__all__ = [
    "rand", "randn", "constant", "ones", "zeros", "randb", "one_hot", "zeros_like", "ones_like",
    "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "manual_seed",
    "get_rng_state", "set_rng_state",
]
