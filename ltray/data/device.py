"""In-memory splits held on the training device as uint8, augmented and normalised there.

For the datasets that fit in memory (digits, MNIST, CIFAR, any small ImageFolder) the whole
split lives on the device as uint8 ``[N, H, W, C]``. A batch is one ``index_select``, one gather
that does the random shift and the horizontal flip together, and one fused normalisation; the
result is float32 ``[B, C, S, S]`` in channels_last, the memory format the convolutions want.
Where ``data.augment`` asks for them, a colour jitter (before the normalisation) and a random
resized crop (one ``grid_sample`` that also resizes to S) are batched the same way.
Nothing crosses the host-device boundary after the first copy, so on a GPU the loader costs a
few kernel launches per step, and on a CPU it runs at tens of thousands of images per second
(``scripts/bench_data.py``).

    batches = DeviceBatches(images, labels, spec=data.spec, batch_size=128, augment=True,
                            sampler=sampler, out_size=32)
    for epoch in range(epochs):
        batches.sampler.set_epoch(epoch)
        for x, y in batches: ...          # x float32 [B, C, S, S] channels_last, y int64 [B]

Augmentation draws come from a generator seeded by (sampler seed, epoch, rank), so an epoch
resumed from a checkpoint sees the same crops and flips as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ltray.data.samplers import ShardedSampler
from ltray.data.transforms import FamilySpec

__all__ = [
    "DeviceBatches",
    "augment_nhwc",
    "color_jitter_nhwc",
    "normalize_nhwc",
    "resized_crop",
    "to_nhwc",
    "train_batch",
]


def to_nhwc(images: np.ndarray, device: torch.device | str) -> Tensor:
    """uint8 [N, C, H, W] numpy → contiguous uint8 [N, H, W, C] on ``device`` (one copy)."""
    t = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return t.permute(0, 2, 3, 1).contiguous()


def augment_nhwc(x: Tensor, spec: FamilySpec, *, generator: torch.Generator) -> Tensor:
    """Random shift (zero pad ``spec.pad``, random crop back to H×W) and, if ``spec.flip``, a
    random horizontal flip, independently per image, as one gather (``x`` itself when both
    are off).

    x: uint8 [B, H, W, C] → uint8 [B, H, W, C] (a new tensor on the same device).
    ``generator`` must live on ``x.device``.
    """
    if not spec.pad and not spec.flip:
        return x
    b, h, w, _ = x.shape
    dev = x.device
    p = spec.pad
    src = F.pad(x, (0, 0, p, p, p, p)) if p > 0 else x
    oy = torch.randint(0, 2 * p + 1, (b, 1), generator=generator, device=dev)
    ox = torch.randint(0, 2 * p + 1, (b, 1), generator=generator, device=dev)
    rows = oy + torch.arange(h, device=dev)  # [B, H]
    cols = torch.arange(w, device=dev).expand(b, w)
    if spec.flip:
        flip = torch.rand(b, 1, generator=generator, device=dev) < 0.5
        cols = torch.where(flip, (w - 1) - cols, cols)
    cols = ox + cols  # [B, W]
    batch = torch.arange(b, device=dev)[:, None, None]
    return src[batch, rows[:, :, None], cols[:, None, :]]


def normalize_nhwc(x: Tensor, spec: FamilySpec, *, out_size: int | None = None) -> Tensor:
    """uint8 [B, H, W, C] (or float [B, H, W, C] already in [0, 1]) → float32 [B, C, S, S]
    channels_last, ``(x/255 − mean)/std``; resized (bilinear) when ``out_size`` differs from H."""
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device)
    scale = 1.0 if x.is_floating_point() else 255.0
    y = torch.addcmul(-mean / std, x.float(), 1.0 / (scale * std))  # one fused pass
    y = y.permute(0, 3, 1, 2)  # a channels_last view of [B, C, H, W]
    if out_size is not None and out_size != y.shape[-1]:
        y = F.interpolate(y, size=(out_size, out_size), mode="bilinear", align_corners=False)
    return y


def _uniform(b: int, lo: float, hi: float, gen: torch.Generator, dev: torch.device) -> Tensor:
    return lo + (hi - lo) * torch.rand(b, generator=gen, device=dev)


def color_jitter_nhwc(x: Tensor, strength: float, *, generator: torch.Generator) -> Tensor:
    """Brightness, contrast and (colour images) saturation, each factor drawn per image from
    [max(0, 1 − s), 1 + s], applied in that order as torchvision's ColorJitter(s, s, s, 0)
    defines them (contrast and saturation blend with the image's gray mean / gray image).

    x: float [B, H, W, C] in [0, 1] → float [B, H, W, C] in [0, 1].
    """
    b, dev = x.shape[0], x.device
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength

    def gray(y: Tensor) -> Tensor:  # [B, H, W, 1], ITU-R 601 weights as torchvision
        if y.shape[-1] == 1:
            return y
        w = torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=y.dtype)
        return (y * w).sum(-1, keepdim=True)

    x = (x * _uniform(b, lo, hi, generator, dev).view(b, 1, 1, 1)).clamp_(0, 1)
    m = gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = torch.lerp(m, x, _uniform(b, lo, hi, generator, dev).view(b, 1, 1, 1)).clamp_(0, 1)
    if x.shape[-1] == 3:
        x = torch.lerp(gray(x), x, _uniform(b, lo, hi, generator, dev).view(b, 1, 1, 1))
        x = x.clamp_(0, 1)
    return x


def resized_crop(
    y: Tensor, scale: tuple[float, float], *, out_size: int, generator: torch.Generator
) -> Tensor:
    """A random box per image, area fraction in ``scale`` and aspect ratio in [3/4, 4/3]
    (log-uniform; a box that does not fit keeps its area and spans the image's full side, so
    ``scale=(1, 1)`` is the whole image), resized bilinearly to ``out_size``: one
    ``grid_sample`` for the batch.

    y: float [B, C, H, W] → float [B, C, S, S].
    """
    b, dev = y.shape[0], y.device
    area = _uniform(b, scale[0], scale[1], generator, dev)
    log_ratio = _uniform(b, float(np.log(3 / 4)), float(np.log(4 / 3)), generator, dev)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio)  # box side / image side
    h = torch.sqrt(area / ratio)
    # A box wider (taller) than the image takes the full width (height) and keeps its area;
    # its aspect ratio then stays within [3/4, 4/3] (w > 1 needs area > 3/4).
    w, h = (
        torch.where(w > 1, 1.0, torch.where(h > 1, area, w)),
        torch.where(h > 1, 1.0, torch.where(w > 1, area, h)),
    )
    cx = (2 * torch.rand(b, generator=generator, device=dev) - 1) * (1 - w)
    cy = (2 * torch.rand(b, generator=generator, device=dev) - 1) * (1 - h)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    grid = F.affine_grid(theta, [b, y.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(y, grid, mode="bilinear", padding_mode="border", align_corners=False)


def train_batch(
    x: Tensor, spec: FamilySpec, *, generator: torch.Generator, out_size: int | None = None
) -> Tensor:
    """The train transform of a batch: shift and flip (:func:`augment_nhwc`), colour jitter,
    normalisation, then a random resized crop or the plain resize to ``out_size``.

    x: uint8 [B, H, W, C] → float32 [B, C, S, S] channels_last.
    """
    x = augment_nhwc(x, spec, generator=generator)
    if spec.color_jitter:
        x = color_jitter_nhwc(x.float() / 255.0, spec.color_jitter, generator=generator)
    if spec.crop_scale is None:
        return normalize_nhwc(x, spec, out_size=out_size)
    y = normalize_nhwc(x, spec)
    size = out_size or y.shape[-1]
    out = resized_crop(y, spec.crop_scale, out_size=size, generator=generator)
    return out.contiguous(memory_format=torch.channels_last)


class DeviceBatches:
    """Batches ``(x float32 [B, C, S, S] channels_last, y int64 [B])`` of one in-memory split.

    Args:
        images: uint8 [N, H, W, C] on the device (see :func:`to_nhwc`).
        labels: int64 [N] on the same device.
        spec: the family's constants (pad, flip, crop scale, jitter, mean, std).
        batch_size: images per batch.
        augment: the spec's train transform (:func:`train_batch`).
        sampler: the epoch's order (and this rank's shard); ``set_epoch`` reshuffles.
        indices: a fixed order instead of a sampler (e.g. one rank's share of a full pass).
        out_size: model input size S.
        drop_last: drop a last incomplete batch.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        spec: FamilySpec,
        batch_size: int,
        augment: bool,
        sampler: ShardedSampler | None = None,
        indices: np.ndarray | None = None,
        out_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if (sampler is None) == (indices is None):
            raise ValueError("DeviceBatches needs exactly one of `sampler` or `indices`")
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}"
            )
        self.images = images
        self.labels = labels
        self.spec = spec
        self.batch_size = batch_size
        self.augment = augment
        self.sampler = sampler
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.out_size = out_size
        self.drop_last = drop_last

    @property
    def device(self) -> torch.device:
        return self.images.device

    def _order(self) -> np.ndarray:
        if self.sampler is None:
            assert self.indices is not None
            return self.indices
        return self.sampler.shard_indices()

    def _generator(self) -> torch.Generator:
        s = self.sampler
        key = [0, 0, 0] if s is None else [s.seed, s.epoch, s.rank]
        seed = int(np.random.default_rng([*key, 0x5EED]).integers(2**62))
        return torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self) -> int:
        n = len(self._order()) if self.sampler is None else len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.from_numpy(self._order()).to(self.device)
        gen = self._generator() if self.augment else None
        n = len(order)
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images.index_select(0, idx)
            if gen is not None:
                xf = train_batch(x, self.spec, generator=gen, out_size=self.out_size)
            else:
                xf = normalize_nhwc(x, self.spec, out_size=self.out_size)
            yield xf, self.labels.index_select(0, idx)
