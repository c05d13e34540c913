"""Per-family image transforms.

- ``gray_small`` (digits 8×8, MNIST 28×28): small random shift (zero pad + random crop), no flip
  (a flipped digit is another digit or none).
- ``cifar`` (32×32): RandomCrop(32, padding=4) + horizontal flip.
- ``imagenet``: RandomResizedCrop(224) + flip + ColorJitter(0.4, 0.4, 0.4, 0); eval
  Resize(256) + CenterCrop(224).

In-memory families are augmented a whole batch at a time on the training device
(:mod:`ltray.data.device`). The imagenet family uses torchvision's PIL transforms per item.
This module imports neither torch nor torchvision at import time (the CLI validates data
before it starts anything heavy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FAMILIES",
    "FamilySpec",
    "family_spec",
    "imagenet_transform",
]

FAMILIES = ("gray_small", "cifar", "imagenet")


@dataclass(frozen=True)
class FamilySpec:
    """Constants of one input family.

    ``pad``: zero padding of the random-shift crop (in-memory families); ``flip``: random
    horizontal flip; ``mean``/``std``: per-channel normalisation of [0, 1] images.
    """

    name: str
    image_size: int
    in_channels: int
    small_input: bool
    pad: int
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]


_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def family_spec(
    family: str,
    *,
    native_size: int,
    in_channels: int,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> FamilySpec:
    """The spec of ``family`` for images of ``native_size`` pixels and ``in_channels``."""
    if family == "gray_small":
        pad = 1 if native_size <= 16 else 2  # 8×8 digits: 1 px; 28×28 MNIST: 2 px
        return FamilySpec(
            family,
            native_size,
            in_channels,
            True,
            pad,
            False,
            mean or (0.1307,) * in_channels,
            std or (0.3081,) * in_channels,
        )
    if family == "cifar":
        return FamilySpec(
            family,
            native_size,
            in_channels,
            True,
            4,
            True,
            mean or _CIFAR_MEAN[:in_channels],
            std or _CIFAR_STD[:in_channels],
        )
    if family == "imagenet":
        return FamilySpec(
            family,
            224,
            in_channels,
            False,
            0,
            True,
            mean or _IMAGENET_MEAN,
            std or _IMAGENET_STD,
        )
    raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


def imagenet_transform(
    *, train: bool, size: int = 224, spec: FamilySpec | None = None, normalize: bool = True
) -> Callable[[object], Any]:
    """torchvision transform: PIL image → float32 [3, size, size] normalised, or with
    ``normalize=False`` uint8 [3, size, size] (a quarter of the bytes to copy; the loaders
    normalise on the training device).

    train: RandomResizedCrop(size) + flip + ColorJitter(0.4, 0.4, 0.4, 0);
    eval: Resize(size·256/224) + CenterCrop(size).
    """
    from torchvision import transforms as T

    mean = spec.mean if spec else _IMAGENET_MEAN
    std = spec.std if spec else _IMAGENET_STD
    if train:
        ops = [
            T.RandomResizedCrop(size),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.4, 0.4, 0.4, 0.0),
        ]
    else:
        ops = [T.Resize(round(size * 256 / 224)), T.CenterCrop(size)]
    if not normalize:
        return T.Compose([*ops, T.PILToTensor()])
    return T.Compose([*ops, T.ToTensor(), T.Normalize(mean, std)])
