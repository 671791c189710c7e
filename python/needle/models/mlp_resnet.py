"""MLPResNet: a residual MLP for flat inputs such as MNIST (course hw2 architecture).

Construction order is part of the contract (it fixes the seeded initial weights):
MLPResNet = Linear(dim, hidden), ReLU, blocks..., Linear(hidden, classes); each ResidualBlock =
Linear(dim, hidden), norm(hidden), ReLU, Dropout, Linear(hidden, dim), norm(dim).
"""
from __future__ import annotations

from .. import nn

__all__ = ["ResidualBlock", "MLPResNet"]


def ResidualBlock(dim: int, hidden_dim: int, norm=nn.BatchNorm1d, drop_prob: float = 0.1,
                  device=None, dtype: str = "float32") -> nn.Module:  # noqa: N802 (course name)
    """Sequential(Residual(Linear, norm, ReLU, Dropout, Linear, norm), ReLU); (B, dim) -> (B, dim).

    >>> ResidualBlock(15, 2).num_parameters()
    111
    """
    return nn.Sequential(
        nn.Residual(nn.Sequential(
            nn.Linear(dim, hidden_dim, device=device, dtype=dtype),
            norm(hidden_dim, device=device, dtype=dtype),
            nn.ReLU(),
            nn.Dropout(drop_prob),
            nn.Linear(hidden_dim, dim, device=device, dtype=dtype),
            norm(dim, device=device, dtype=dtype),
        )),
        nn.ReLU(),
    )


def MLPResNet(dim: int, hidden_dim: int = 100, num_blocks: int = 3, num_classes: int = 10,
              norm=nn.BatchNorm1d, drop_prob: float = 0.1, device=None,
              dtype: str = "float32") -> nn.Module:  # noqa: N802 (course name)
    """Linear(dim, hidden), ReLU, num_blocks x ResidualBlock(hidden, hidden//2), Linear.

    (B, dim) -> (B, num_classes) logits.

    >>> MLPResNet(10, 100, 1, 100).num_parameters()
    21650
    """
    return nn.Sequential(
        nn.Linear(dim, hidden_dim, device=device, dtype=dtype),
        nn.ReLU(),
        *[ResidualBlock(hidden_dim, hidden_dim // 2, norm, drop_prob, device=device, dtype=dtype)
          for _ in range(num_blocks)],
        nn.Linear(hidden_dim, num_classes, device=device, dtype=dtype),
    )
