"""Convolutional models: ResNet9 for CIFAR-10 (course layout) and a small residual CNN for 28x28
grayscale images (MNIST / Fashion-MNIST)."""
from __future__ import annotations

from .. import nn


class ConvBN(nn.Module):
    """Conv(a, b, k, stride=s) -> BatchNorm2d(b) -> ReLU, NCHW."""

    def __init__(self, a, b, k, s, device=None, dtype="float32"):
        super().__init__()
        self.conv = nn.Conv(a, b, k, stride=s, device=device, dtype=dtype)
        self.bn = nn.BatchNorm2d(b, device=device, dtype=dtype)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class ResNet9(nn.Module):
    """The course's ResNet9: (N, 3, 32, 32) -> (N, 10) logits, 431946 parameters.

    Construction (= initialisation) order: ConvBN(3,16,7,4), ConvBN(16,32,3,2),
    Residual[ConvBN(32,32,3,1) x2], ConvBN(32,64,3,2), ConvBN(64,128,3,2),
    Residual[ConvBN(128,128,3,1) x2], Flatten, Linear(128,128), ReLU, Linear(128,10).
    """

    def __init__(self, device=None, dtype="float32"):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.model = nn.Sequential(
            ConvBN(3, 16, 7, 4, **kw),
            ConvBN(16, 32, 3, 2, **kw),
            nn.Residual(nn.Sequential(ConvBN(32, 32, 3, 1, **kw), ConvBN(32, 32, 3, 1, **kw))),
            ConvBN(32, 64, 3, 2, **kw),
            ConvBN(64, 128, 3, 2, **kw),
            nn.Residual(nn.Sequential(ConvBN(128, 128, 3, 1, **kw),
                                      ConvBN(128, 128, 3, 1, **kw))),
            nn.Flatten(),
            nn.Linear(128, 128, **kw),
            nn.ReLU(),
            nn.Linear(128, 10, **kw),
        )

    def forward(self, x):
        return self.model(x)


class SmallResNet(nn.Module):
    """A small residual CNN for (N, 1, 28, 28) images -> (N, num_classes) logits.

    ConvBN(1,32,3) -> MaxPool 2 (14x14) -> Residual[ConvBN(32,32,3) x2] -> ConvBN(32,64,3,s2)
    (7x7) -> Residual[ConvBN(64,64,3) x2] -> global average pool -> Linear(64, classes).
    """

    def __init__(self, in_channels=1, num_classes=10, width=32, device=None, dtype="float32"):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        w = width
        self.model = nn.Sequential(
            ConvBN(in_channels, w, 3, 1, **kw),
            nn.MaxPool2d(2),
            nn.Residual(nn.Sequential(ConvBN(w, w, 3, 1, **kw), ConvBN(w, w, 3, 1, **kw))),
            ConvBN(w, 2 * w, 3, 2, **kw),
            nn.Residual(nn.Sequential(ConvBN(2 * w, 2 * w, 3, 1, **kw),
                                      ConvBN(2 * w, 2 * w, 3, 1, **kw))),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * w, num_classes, **kw),
        )

    def forward(self, x):
        if x.ndim == 2:  # flattened 784-pixel rows
            x = x.reshape((x.shape[0], 1, 28, 28))
        return self.model(x)
