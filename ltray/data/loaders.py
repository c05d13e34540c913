"""``make_loader``: a DataLoader over one split of an :class:`~ltray.data.LTData`.

The sampler is always one of :mod:`ltray.data.samplers` (so ``loader.sampler.set_epoch(e)``
works on every loader); in-memory splits are fetched and augmented a batch at a time
(:meth:`TensorImageDataset.__getitems__` + :func:`fast_collate`).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ltray.data.datasets import fast_collate
from ltray.data.prepare import LTData
from ltray.data.samplers import build_sampler

__all__ = ["make_loader"]


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
) -> DataLoader:
    """A loader of ``(x float32 [B, C, S, S], y int64 [B])`` batches of ``split``.

    Args:
        sampler: "instance" | "class_balanced" | "sqrt" (class samplers only for "train").
        shuffle: reshuffle each epoch; default True for "train", False otherwise. An
            unshuffled instance loader with world_size=1 yields every sample once, in order.
        seed: base seed of the sampler (epoch ``e`` after ``loader.sampler.set_epoch(e)``) and of
            the workers' augmentation RNG.
        world_size, rank: the disjoint, equal-size shard of this rank (train); evaluation
            runs on one rank over the whole split (world_size=1).
    """
    if shuffle is None:
        shuffle = split == "train"
    labels = data.labels(split)
    smp = build_sampler(
        sampler,
        labels=labels,
        num_classes=data.num_classes,
        shuffle=shuffle,
        seed=seed,
        world_size=world_size,
        rank=rank,
    )
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return DataLoader(
        data.dataset(split, augment=augment),
        batch_size=batch_size,
        sampler=smp,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=fast_collate,
        persistent_workers=num_workers > 0,
        generator=gen,
    )
