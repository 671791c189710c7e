"""A fully convolutional network for per-pixel classification (Long et al. 2015): two
downsampling stages (Conv3x3 -> BN -> ReLU -> MaxPool2d(2)), a bottleneck conv, and two
upsampling stages with transposed convolutions (`nn.ConvTranspose2d`, kernel 3, stride 2,
output_padding 1: exactly 2x), each joined with the encoder features of the same size (a
skip by concatenation, as FCN-8s joins pool layers), then a 1x1 conv to class scores.

(N, C_in, H, W) -> (N, num_classes, H, W); H and W must be multiples of 4.
"""
from __future__ import annotations

from .. import nn, ops

__all__ = ["FCN"]


class _ConvBNReLU(nn.Module):
    def __init__(self, a, b, device=None, dtype="float32"):
        super().__init__()
        self.conv = nn.Conv(a, b, 3, device=device, dtype=dtype)
        self.bn = nn.BatchNorm2d(b, device=device, dtype=dtype)

    def forward(self, x):
        return ops.relu(self.bn(self.conv(x)))


class FCN(nn.Module):
    """Encoder widths (width, 2*width), bottleneck 4*width; see the module docstring."""

    def __init__(self, in_channels: int = 1, num_classes: int = 11, width: int = 16,
                 device=None, dtype="float32"):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        w = width
        self.down1 = _ConvBNReLU(in_channels, w, **kw)        # (N, w, H, W)
        self.down2 = _ConvBNReLU(w, 2 * w, **kw)              # (N, 2w, H/2, W/2)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _ConvBNReLU(2 * w, 4 * w, **kw)     # (N, 4w, H/4, W/4)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 3, stride=2, padding=1, output_padding=1,
                                      **kw)                   # (N, 2w, H/2, W/2)
        self.fuse2 = _ConvBNReLU(4 * w, 2 * w, **kw)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 3, stride=2, padding=1, output_padding=1,
                                      **kw)                   # (N, w, H, W)
        self.fuse1 = _ConvBNReLU(2 * w, w, **kw)
        self.classifier = nn.Conv(w, num_classes, 1, **kw)  # (N, num_classes, H, W)
        self.num_classes = num_classes

    def forward(self, x):
        if x.ndim != 4 or x.shape[2] % 4 or x.shape[3] % 4:
            raise ValueError(f"FCN: expected NCHW input with H and W multiples of 4, got shape "
                             f"{x.shape}")
        e1 = self.down1(x)
        e2 = self.down2(self.pool(e1))
        b = self.bottleneck(self.pool(e2))
        d2 = self.fuse2(ops.concatenate([ops.relu(self.up2(b)), e2], 1))
        d1 = self.fuse1(ops.concatenate([ops.relu(self.up1(d2)), e1], 1))
        return self.classifier(d1)
