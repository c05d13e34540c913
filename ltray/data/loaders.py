"""``make_loader``: batches of one split of an :class:`~ltray.data.LTData` on a device.

- In-memory splits (digits, MNIST, CIFAR, small ImageFolders): the split is copied to the
  device once as uint8 and batched, augmented and normalised there
  (:class:`~ltray.data.device.DeviceBatches`); no DataLoader, no worker processes.
- File-backed splits (ImageNet-LT-sized list files and folders): a ``DataLoader`` decoding
  and cropping with PIL in ``num_workers`` processes into uint8 batches, in pinned host memory
  when the device is a GPU; :class:`HostBatches` copies each batch asynchronously
  (``non_blocking``) and normalises it on the device, so the host moves a quarter of the bytes
  and does no float work.

Either way ``loader.sampler.set_epoch(e)`` reshuffles and ``len(loader)`` is the number of
batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ltray.data.device import DeviceBatches, normalize_nhwc
from ltray.data.prepare import LTData
from ltray.data.samplers import build_sampler
from ltray.data.transforms import FamilySpec

__all__ = ["make_loader", "shard_loader", "HostBatches"]


class HostBatches:
    """A DataLoader of uint8 batches ``[B, C, S, S]`` made on the host, delivered on
    ``device`` as float32 ``[B, C, S, S]`` channels_last, normalised there.

    ``sampler`` and ``len()`` are the DataLoader's.
    """

    def __init__(self, loader: DataLoader, *, device: torch.device, spec: FamilySpec) -> None:
        self.loader = loader
        self.device = device
        self.spec = spec

    @property
    def sampler(self) -> Any:
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)  # from pinned memory: overlaps compute
            y = y.to(self.device, non_blocking=True)
            yield (
                normalize_nhwc(x.permute(0, 2, 3, 1), self.spec).contiguous(
                    memory_format=torch.channels_last
                ),
                y,
            )


def make_loader(
    data: LTData,
    split: str,
    *,
    batch_size: int,
    augment: bool,
    sampler: str = "instance",
    shuffle: bool | None = None,
    seed: int = 0,
    world_size: int = 1,
    rank: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    device: torch.device | str = "cpu",
) -> Any:
    """Batches ``(x float32 [B, C, S, S], y int64 [B])`` of ``split``.

    Args:
        sampler: "instance" | "class_balanced" | "sqrt" (class samplers only for "train").
        shuffle: reshuffle each epoch; default True for "train", False otherwise. An
            unshuffled instance loader with world_size=1 yields every sample once, in order.
        seed: base seed of the sampler (epoch ``e`` after ``loader.sampler.set_epoch(e)``) and of
            the augmentation.
        world_size, rank: the disjoint, equal-size shard of this rank (train); evaluation
            runs on one rank over the whole split (world_size=1).
        num_workers: decoding processes of file-backed splits (in-memory splits need none).
        device: where the batches are used; in-memory splits are produced there.
    """
    if shuffle is None:
        shuffle = split == "train"
    device = torch.device(device)
    smp = build_sampler(
        sampler,
        labels=data.labels(split),
        num_classes=data.num_classes,
        shuffle=shuffle,
        seed=seed,
        world_size=world_size,
        rank=rank,
    )
    if data.pools[split].images is not None:
        return _device_batches(
            data, split, device, batch_size=batch_size, augment=augment, sampler=smp,
            drop_last=drop_last,
        )  # fmt: skip
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    loader = DataLoader(
        data.dataset(split, augment=augment, normalize=False),
        batch_size=batch_size,
        sampler=smp,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        generator=gen,
    )
    return HostBatches(loader, device=device, spec=data.spec)


def _device_batches(
    data: LTData, split: str, device: torch.device, **batching: Any
) -> DeviceBatches:
    """Batches of an in-memory split, made on ``device`` from its cached uint8 copy."""
    images, labels = data.on_device(split, device)
    return DeviceBatches(images, labels, spec=data.spec, out_size=data.image_size, **batching)


def shard_loader(
    data: LTData,
    split: str,
    *,
    batch_size: int,
    world_size: int,
    rank: int,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Eval-transform batches of this rank's share (images r, r + world, ...) of ``split``:
    every image exactly once over all ranks, no padding (a full pass sums over them)."""
    device = torch.device(device)
    idx = np.arange(rank, len(data.labels(split)), world_size)
    if data.pools[split].images is not None:
        return _device_batches(
            data, split, device, batch_size=batch_size, augment=False, indices=idx
        )
    from torch.utils.data import Subset

    loader = DataLoader(
        Subset(data.dataset(split, augment=False, normalize=False), idx.tolist()),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    return HostBatches(loader, device=device, spec=data.spec)
