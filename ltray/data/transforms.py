"""Per-family input constants and augmentation, resolved against ``data.augment``.

A family's defaults scale with the decoded image size (docs/methods.md#augmentation):

- ``gray_small`` (gray images kept in memory: digits 8×8, MNIST 28×28, a user's gray
  ImageFolder): random shift with zero padding round(size / 8) (8 px: 1, 28 px: 4), no flip
  (a flipped digit or letter is another class or none).
- ``cifar`` (colour images kept in memory, 32×32): shift with padding round(size / 8) (4) +
  horizontal flip.
- ``imagenet`` (large images decoded per item): RandomResizedCrop(224, scale [0.08, 1]) + flip
  + ColorJitter(0.4, 0.4, 0.4, 0); eval Resize(256) + CenterCrop(224).

Every ``data.augment`` key (pad, flip, crop_scale, color_jitter) works in every family: in-memory
families are augmented a whole batch at a time on the training device (:mod:`ltray.data.device`),
the imagenet family with torchvision's PIL transforms per item. This module imports neither torch
nor torchvision at import time (the CLI validates data before it starts anything heavy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ltray.config import AugmentConfig

__all__ = [
    "FAMILIES",
    "FamilySpec",
    "family_spec",
    "default_augment",
    "describe_augment",
    "augment_text",
    "normalization_text",
    "input_line",
    "published_stats",
    "imagenet_transform",
]

FAMILIES = ("gray_small", "cifar", "imagenet")


@dataclass(frozen=True)
class FamilySpec:
    """How images of one dataset enter the network, augmentation resolved.

    ``image_size``: the decoded (native) size; ``pad``: zero padding of the random shift (0: off);
    ``flip``: random horizontal flip; ``crop_scale``: [min, max] area fraction of a random
    resized crop, or None (off); ``color_jitter``: brightness/contrast/saturation strength (0:
    off); ``mean``/``std``: per-channel normalisation of [0, 1] images; ``stats``: where those
    came from; ``augment_set``: the ``data.augment`` keys the config set (the rest are the
    family's defaults).
    """

    name: str
    image_size: int
    in_channels: int
    small_input: bool
    pad: int
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_scale: tuple[float, float] | None = None
    color_jitter: float = 0.0
    stats: str = "published"
    augment_set: tuple[str, ...] = ()


_MNIST_MEAN, _MNIST_STD = (0.1307,), (0.3081,)
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_PUBLISHED = {
    "gray_small": ("MNIST", _MNIST_MEAN, _MNIST_STD),
    "cifar": ("CIFAR-10", _CIFAR_MEAN, _CIFAR_STD),
    "imagenet": ("ImageNet", _IMAGENET_MEAN, _IMAGENET_STD),
}
_FAMILY_INPUT = {"imagenet": 224}  # in-memory families keep their native size


def published_stats(family: str, in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The family's published per-channel (mean, std) for ``in_channels`` channels."""
    if family not in _PUBLISHED:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    _, mean, std = _PUBLISHED[family]
    if len(mean) == 1:
        return mean * in_channels, std * in_channels
    return mean[:in_channels], std[:in_channels]


def default_augment(family: str, native_size: int) -> dict[str, Any]:
    """The family's augmentation for images of ``native_size`` pixels: ``pad``, ``flip``,
    ``crop_scale`` (None: off), ``color_jitter``.

    In-memory families shift by round(native_size / 8) pixels (at least 1), the ratio of
    CIFAR's pad 4 at 32 px; gray images are never flipped by default.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    if family == "imagenet":
        return {"pad": 0, "flip": True, "crop_scale": (0.08, 1.0), "color_jitter": 0.4}
    return {
        "pad": max(1, int(native_size / 8 + 0.5)),
        "flip": family != "gray_small",
        "crop_scale": None,
        "color_jitter": 0.0,
    }


def family_spec(
    family: str,
    *,
    native_size: int,
    in_channels: int,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    stats: str | None = None,
    augment: AugmentConfig | None = None,
) -> FamilySpec:
    """The spec of ``family`` for images of ``native_size`` pixels and ``in_channels``:
    ``data.augment`` (``augment``) over the family's defaults, and ``mean``/``std`` (described
    by ``stats``) or else the family's published constants."""
    resolved = default_augment(family, native_size)
    given: dict[str, Any] = {}
    if augment is not None:
        given = {k: v for k, v in augment.model_dump().items() if v is not None}
    resolved.update(given)
    crop = resolved["crop_scale"]
    if crop is not None and tuple(crop) == (1.0, 1.0):
        crop = None
    if mean is None or std is None:
        name = _PUBLISHED[family][0]
        mean, std = published_stats(family, in_channels)
        stats = stats or f"published ({name})"
    return FamilySpec(
        name=family,
        image_size=_FAMILY_INPUT.get(family, native_size),
        in_channels=in_channels,
        small_input=family != "imagenet",
        pad=int(resolved["pad"]),
        flip=bool(resolved["flip"]),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        crop_scale=None if crop is None else (float(crop[0]), float(crop[1])),
        color_jitter=float(resolved["color_jitter"]),
        stats=stats or "given",
        augment_set=tuple(sorted(given)),
    )


def describe_augment(spec: FamilySpec) -> dict[str, Any]:
    """The resolved augmentation as saved in a run (``split.json``) and printed by `ltray data
    stats`: each key's value and whether ``data.augment`` set it or the family default did."""
    values = {
        "pad": spec.pad,
        "flip": spec.flip,
        "crop_scale": list(spec.crop_scale) if spec.crop_scale else None,
        "color_jitter": spec.color_jitter,
    }
    return {
        **values,
        "from_config": list(spec.augment_set),
        "text": augment_text(spec),
    }


def augment_text(spec: FamilySpec) -> str:
    """One line: ``pad 4 (default: 28 px / 8), flip off (default: gray), ...``."""

    def why(key: str, default: str) -> str:
        return f"data.augment.{key}" if key in spec.augment_set else f"default: {default}"

    gray = spec.name == "gray_small"
    pad_default = "random crop shifts" if spec.name == "imagenet" else f"{spec.image_size} px / 8"
    parts = [
        f"shift pad {spec.pad} px ({why('pad', pad_default)})",
        f"flip {'on' if spec.flip else 'off'} ({why('flip', 'gray' if gray else 'colour')})",
        "crop scale "
        + (f"[{spec.crop_scale[0]:g}, {spec.crop_scale[1]:g}]" if spec.crop_scale else "off")
        + f" ({why('crop_scale', spec.name + ' family')})",
        "colour jitter "
        + (f"{spec.color_jitter:g}" if spec.color_jitter else "off")
        + f" ({why('color_jitter', spec.name + ' family')})",
    ]
    return ", ".join(parts)


def normalization_text(spec: FamilySpec) -> str:
    """One line: ``mean [0.1428] std [0.3029] (train split, 9324 images)``."""
    mean = ", ".join(f"{v:.4f}" for v in spec.mean)
    std = ", ".join(f"{v:.4f}" for v in spec.std)
    return f"mean [{mean}] std [{std}] ({spec.stats})"


def imagenet_transform(
    *, train: bool, size: int = 224, spec: FamilySpec | None = None, normalize: bool = True
) -> Callable[[object], Any]:
    """torchvision transform: PIL image → float32 [C, size, size] normalised, or with
    ``normalize=False`` uint8 [C, size, size] (a quarter of the bytes to copy; the loaders
    normalise on the training device).

    train (the spec's augmentation; default spec: the imagenet family's): RandomResizedCrop(size,
    crop_scale) or Resize + CenterCrop when crop_scale is off, RandomCrop(size, pad) when pad > 0,
    horizontal flip, ColorJitter(j, j, j, 0); eval: Resize(size·256/224) + CenterCrop(size).
    """
    from torchvision import transforms as T

    spec = spec or family_spec("imagenet", native_size=224, in_channels=3)
    ops: list[Any]
    if train:
        if spec.crop_scale is not None:
            ops = [T.RandomResizedCrop(size, scale=spec.crop_scale)]
        else:
            ops = [T.Resize(round(size * 256 / 224)), T.CenterCrop(size)]
        if spec.pad:
            ops.append(T.RandomCrop(size, padding=spec.pad))
        if spec.flip:
            ops.append(T.RandomHorizontalFlip())
        if spec.color_jitter:
            j = spec.color_jitter
            ops.append(T.ColorJitter(j, j, j, 0.0))
    else:
        ops = [T.Resize(round(size * 256 / 224)), T.CenterCrop(size)]
    if not normalize:
        return T.Compose([*ops, T.PILToTensor()])
    return T.Compose([*ops, T.ToTensor(), T.Normalize(spec.mean, spec.std)])


def input_line(data: Any) -> str:
    """What `ltray train` prints before it starts: input shape, normalisation, augmentation
    (``data``: an :class:`~ltray.data.prepare.LTData`)."""
    spec = data.spec
    shape = f"{data.in_channels}x{data.image_size}x{data.image_size}"
    return f"{shape}, {normalization_text(spec)}; augment: {augment_text(spec)}"
