"""Convolutional backbones that map images to penultimate features (docs/methods.md#backbones).

    net = build_backbone("resnet10", in_channels=3, small_input=False)
    h = net(x)                 # [B, 512], after the last ReLU and global average pool, so h >= 0
    fmap = net.forward_map(x)  # [B, 512, h, w], e.g. for OLTR's attention
    h = net.pool(fmap)         # same as net(x)

Registered names (``model.backbone``):

- ``resnet10`` — OLTR/Decoupling ResNet-10: one BasicBlock per stage, widths 64/128/256/512,
  1x1 conv + BN projection shortcuts; ≈4.9M parameters.
- ``resnet18`` — the same family with two blocks per stage; ≈11.2M parameters.
- ``resnet32`` — LDAM-DRW CIFAR ResNet-32: three stages of five BasicBlocks, widths 16/32/64,
  option-A (zero-pad) shortcuts, Kaiming init; ≈0.46M parameters.

The heads are not part of a backbone; :class:`ltray.models.network.LTNet` adds them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltray.registry import Registry

__all__ = ["Backbone", "BACKBONES", "build_backbone", "ImageNetResNet", "CifarResNet"]


class Backbone(nn.Module):
    """Base class: ``forward(x [B, C, H, W]) -> features [B, feat_dim]``.

    Subclasses implement :meth:`forward_map`; pooling is shared so that features computed from a
    (possibly attended) feature map match :meth:`forward` exactly.
    """

    feat_dim: int

    def forward_map(self, x: Tensor) -> Tensor:
        """Last feature map [B, feat_dim, h, w] (after the last ReLU)."""
        raise NotImplementedError

    def pool(self, fmap: Tensor) -> Tensor:
        """Global average pool: [B, d, h, w] -> [B, d]. (``adaptive_avg_pool2d`` rather than
        ``mean(dim=(2, 3))``: the same numbers, 5% faster per step on a channels_last CPU.)"""
        return F.adaptive_avg_pool2d(fmap, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Penultimate features [B, feat_dim], non-negative."""
        return self.pool(self.forward_map(x))

    def init_head(self, head: nn.Linear) -> None:
        """Initialise a classifier on top of this backbone the way its reference code did.

        Default: PyTorch's ``nn.Linear`` initialisation (OLTR/Decoupling).
        """


BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone")


def build_backbone(name: str, *, in_channels: int, small_input: bool) -> Backbone:
    """Build the registered backbone ``name``.

    Args:
        name: a name of :data:`BACKBONES`; an unknown one raises ``ConfigError`` listing them.
        in_channels: image channels (1 for digits/MNIST, 3 for RGB).
        small_input: use a CIFAR-style 3x3 stride-1 stem without max-pool (8x8 .. 32x32 inputs).
            ResNet-32 always has that stem and ignores the flag.
    """
    factory = BACKBONES.get(name, key="model.backbone")
    return factory(in_channels=in_channels, small_input=small_input)


# ------------------------------------------------------------------ ImageNet-style ResNets


class _BasicBlock(nn.Module):
    """3x3-3x3 residual block with a 1x1 conv + BN projection when the shape changes."""

    def __init__(self, in_planes: int, planes: int, *, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ImageNetResNet(Backbone):
    """ResNet with BasicBlocks and widths 64/128/256/512 (OLTR's ResNet-10, ResNet-18).

    Args:
        blocks: BasicBlocks per stage, e.g. (1, 1, 1, 1) for ResNet-10.
        in_channels: image channels.
        small_input: 3x3 stride-1 stem and no max-pool, so 8x8/32x32 images keep spatial extent.
    """

    def __init__(
        self, *, blocks: tuple[int, int, int, int], in_channels: int, small_input: bool
    ) -> None:
        super().__init__()
        if small_input:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        stages: list[nn.Module] = []
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            layers: list[nn.Module] = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(_BasicBlock(in_planes, planes, stride=stride))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.feat_dim = 512
        # OLTR draws conv weights from N(0, 2/(k*k*out)), i.e. Kaiming fan-out; BN starts at 1/0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_map(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))


@BACKBONES.register("resnet10")
def resnet10(*, in_channels: int, small_input: bool) -> Backbone:
    """OLTR/Decoupling ResNet-10 (one BasicBlock per stage), 512-d features."""
    return ImageNetResNet(blocks=(1, 1, 1, 1), in_channels=in_channels, small_input=small_input)


@BACKBONES.register("resnet18")
def resnet18(*, in_channels: int, small_input: bool) -> Backbone:
    """ResNet-18 (two BasicBlocks per stage), 512-d features."""
    return ImageNetResNet(blocks=(2, 2, 2, 2), in_channels=in_channels, small_input=small_input)


# ------------------------------------------------------------------------ CIFAR ResNets


class _ShortcutA(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _CifarBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, *, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            # LDAM-DRW doubles the width exactly when it halves the resolution.
            if planes != 2 * in_planes or stride != 2:
                raise ValueError(
                    "option-A shortcut needs planes == 2*in_planes and stride == 2, got "
                    f"(in_planes={in_planes}, planes={planes}, stride={stride})"
                )
            self.shortcut = _ShortcutA(planes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(Backbone):
    """LDAM-DRW CIFAR ResNet (6n+2 layers): widths 16/32/64, option-A shortcuts, Kaiming init.

    Args:
        blocks_per_stage: n; 5 gives ResNet-32.
        in_channels: image channels.
    """

    def __init__(self, *, blocks_per_stage: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            layers: list[nn.Module] = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(_CifarBlock(in_planes, planes, stride=stride))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.feat_dim = 64
        # LDAM-DRW's _weights_init: kaiming_normal_ (fan-in) on every conv; BN keeps 1/0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward_map(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def init_head(self, head: nn.Linear) -> None:
        """LDAM-DRW applies the same Kaiming init to its classifier weight."""
        with torch.no_grad():
            nn.init.kaiming_normal_(head.weight)


@BACKBONES.register("resnet32")
def resnet32(*, in_channels: int, small_input: bool) -> Backbone:
    """LDAM-DRW ResNet-32, 64-d features; always the CIFAR stem (``small_input`` is ignored)."""
    del small_input  # the CIFAR stem is the architecture, for any input size
    return CifarResNet(blocks_per_stage=5, in_channels=in_channels)
