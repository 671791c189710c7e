"""DenseNet (Huang et al. 2017, DenseNet-BC): dense blocks in which every layer reads the
concatenation of all earlier outputs of its block, with bottleneck and transition layers.

Layer: BN -> ReLU -> Conv1x1(bn_size * k) -> BN -> ReLU -> Conv3x3(k), k the growth rate, as
torchvision's `_DenseLayer`; transition: BN -> ReLU -> Conv1x1(floor(C * compression)) ->
AvgPool2d(2). NCHW in, (N, num_classes) logits out.
"""
from __future__ import annotations

from typing import Sequence

from .. import nn, ops

__all__ = ["DenseNet", "DenseLayer", "DenseBlock", "Transition"]


class DenseLayer(nn.Module):
    """(N, C_in, H, W) -> (N, growth_rate, H, W): the bottleneck then the 3x3 conv."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int = 4, device=None,
                 dtype="float32", memory_efficient: bool = True):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        mid = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels, **kw)
        self.conv1 = nn.Conv(in_channels, mid, 1, bias=False, **kw)
        self.norm2 = nn.BatchNorm2d(mid, **kw)
        # the 3x3 conv's im2col matrix is 9x its input: recomputed in the backward
        self.conv2 = nn.Conv(mid, growth_rate, 3, bias=False, memory_efficient=memory_efficient,
                             **kw)

    def forward(self, x):
        h = self.conv1(ops.relu(self.norm1(x)))  # (N, bn_size * k, H, W)
        return self.conv2(ops.relu(self.norm2(h)))  # (N, k, H, W)


class DenseBlock(nn.Module):
    """`num_layers` DenseLayers; layer i reads cat(x, y_0, ..., y_{i-1}) along channels and
    the block returns cat(x, y_0, ..., y_{L-1}): C_in + L * growth_rate channels."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bn_size: int = 4,
                 device=None, dtype="float32", memory_efficient: bool = True):
        super().__init__()
        self.layers = [DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size,
                                  device=device, dtype=dtype, memory_efficient=memory_efficient)
                       for i in range(num_layers)]
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            inp = features[0] if len(features) == 1 else ops.concatenate(features, 1)
            features.append(layer(inp))
        return ops.concatenate(features, 1)


class Transition(nn.Module):
    """(N, C_in, H, W) -> (N, C_out, H // 2, W // 2)."""

    def __init__(self, in_channels: int, out_channels: int, device=None, dtype="float32"):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels, device=device, dtype=dtype)
        self.conv = nn.Conv(in_channels, out_channels, 1, bias=False, device=device,
                            dtype=dtype)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        return self.pool(self.conv(ops.relu(self.norm(x))))


class DenseNet(nn.Module):
    """DenseNet-BC for small images: stem Conv3x3(num_init_features), dense blocks with
    `block_config` layers each, a transition (compression 0.5) after all blocks but the
    last, then BN -> ReLU -> global average pool -> Linear(num_classes).

    The defaults (growth 12, blocks (6, 6, 6), 24 stem features) fit 28x28 grayscale
    images: `DenseNet()(x)` with x (N, 1, 28, 28) gives (N, 10). `memory_efficient` (the
    default) has the dense layers' 3x3 convs recompute their im2col matrices in the backward
    instead of keeping them (measured: peak memory of a training step about halved).
    """

    def __init__(self, growth_rate: int = 12, block_config: Sequence[int] = (6, 6, 6),
                 num_init_features: int = 24, bn_size: int = 4, compression: float = 0.5,
                 in_channels: int = 1, num_classes: int = 10, device=None, dtype="float32",
                 memory_efficient: bool = True):
        super().__init__()
        if not 0 < compression <= 1:
            raise ValueError(f"DenseNet: compression must be in (0, 1], got {compression}")
        kw = dict(device=device, dtype=dtype)
        self.stem = nn.Conv(in_channels, num_init_features, 3, bias=False, **kw)
        stages = []
        channels = num_init_features
        for i, n in enumerate(block_config):
            block = DenseBlock(n, channels, growth_rate, bn_size,
                               memory_efficient=memory_efficient, **kw)
            stages.append(block)
            channels = block.out_channels
            if i + 1 < len(block_config):
                out = int(channels * compression)
                stages.append(Transition(channels, out, **kw))
                channels = out
        self.features = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(channels, **kw)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes, **kw)
        self.num_features = channels

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"DenseNet: expected NCHW input, got shape {x.shape}")
        h = self.features(self.stem(x))  # (N, num_features, H', W')
        h = self.flatten(self.pool(ops.relu(self.norm(h))))  # (N, num_features)
        return self.classifier(h)
