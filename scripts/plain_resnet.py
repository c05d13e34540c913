"""He et al.'s CIFAR ResNet-32 in plain PyTorch, for the benchmark yardsticks in ``scripts/``.

No ltray code: ``plain_ddp.py`` measures data parallelism with it, and ``bench_data.py`` /
``bench_posthoc.py`` fall back to it where ``ltray.models`` cannot be imported, and
``plain_imagefolder.py`` trains it on an ImageFolder (1 or 3 input channels). Three stages of
five basic blocks (16/32/64 channels) with option-A shortcuts (stride-2 subsampling, channels
zero-padded), as in the paper, ltray's backbone and the reference loop.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["resnet32", "resnet32_features"]


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        sc = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:
            sc = F.pad(sc, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + sc)


def resnet32_features(in_channels: int = 3) -> nn.Module:
    """Images [N, in_channels, S, S] → features [N, 64] (global average pool)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
    ]
    cin = 16
    for width, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(5):
            layers.append(Block(cin, width, stride if i == 0 else 1))
            cin = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def resnet32(num_classes: int, in_channels: int = 3) -> nn.Module:
    """Features and a linear classifier: images → logits [N, num_classes]."""
    return nn.Sequential(resnet32_features(in_channels), nn.Linear(64, num_classes))
