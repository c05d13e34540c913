"""In-memory splits held on the training device as uint8, augmented and normalised there.

For the datasets that fit in memory (digits, MNIST, CIFAR, any small ImageFolder) the whole
split lives on the device as uint8 ``[N, H, W, C]``. A batch is one ``index_select``, one gather
that does the random shift and the horizontal flip together, and one fused normalisation; the
result is float32 ``[B, C, S, S]`` in channels_last, the memory format the convolutions want.
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

__all__ = ["DeviceBatches", "augment_nhwc", "normalize_nhwc", "to_nhwc"]


def to_nhwc(images: np.ndarray, device: torch.device | str) -> Tensor:
    """uint8 [N, C, H, W] numpy → contiguous uint8 [N, H, W, C] on ``device`` (one copy)."""
    t = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return t.permute(0, 2, 3, 1).contiguous()


def augment_nhwc(x: Tensor, spec: FamilySpec, *, generator: torch.Generator) -> Tensor:
    """Random shift (zero pad ``spec.pad``, random crop back to H×W) and, if ``spec.flip``, a
    random horizontal flip, independently per image, as one gather.

    x: uint8 [B, H, W, C] → uint8 [B, H, W, C] (a new tensor on the same device).
    ``generator`` must live on ``x.device``.
    """
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
    """uint8 [B, H, W, C] → float32 [B, C, S, S] channels_last, ``(x/255 − mean)/std``;
    resized (bilinear) when ``out_size`` differs from H."""
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device)
    y = torch.addcmul(-mean / std, x.float(), 1.0 / (255.0 * std))  # one fused pass
    y = y.permute(0, 3, 1, 2)  # a channels_last view of [B, C, H, W]
    if out_size is not None and out_size != y.shape[-1]:
        y = F.interpolate(y, size=(out_size, out_size), mode="bilinear", align_corners=False)
    return y


class DeviceBatches:
    """Batches ``(x float32 [B, C, S, S] channels_last, y int64 [B])`` of one in-memory split.

    Args:
        images: uint8 [N, H, W, C] on the device (see :func:`to_nhwc`).
        labels: int64 [N] on the same device.
        spec: the family's constants (pad, flip, mean, std).
        batch_size: images per batch.
        augment: random shift (+ flip where the family allows it).
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
                x = augment_nhwc(x, self.spec, generator=gen)
            yield (
                normalize_nhwc(x, self.spec, out_size=self.out_size),
                self.labels.index_select(0, idx),
            )
