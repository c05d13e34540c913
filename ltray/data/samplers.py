"""Train samplers, registered by name in :data:`SAMPLERS` (``data.sampler``).

- ``instance``: every image once per epoch (a seeded permutation), like DistributedSampler.
- ``class_balanced``: classes uniformly (over classes with images), then images of the class
  uniformly.
- ``sqrt``: class c with probability ∝ sqrt(n_c), then images of the class uniformly.

The class samplers allocate an epoch's N draws to classes systematically (class c gets
floor or ceil of p_c·N, so frequencies match p_c to within one draw), shuffle them, and cycle
through each class's images in a fresh random order (without replacement until the class is
exhausted, as Decoupling's class-aware sampler does).

All are deterministic given (seed, epoch) — ``set_epoch(e)`` reshuffles — and sharded like
DistributedSampler: one global sequence of ``num_samples * world_size`` indices per epoch (padded
by wrapping around for ``instance``), rank r takes positions r, r + world_size, ...; the shards are
disjoint and of equal size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from ltray.registry import Registry

__all__ = [
    "SAMPLERS",
    "ShardedSampler",
    "InstanceSampler",
    "ClassWeightedSampler",
    "build_sampler",
]


class ShardedSampler:
    """Base: an epoch-seeded global index sequence, sharded over ranks. A valid DataLoader
    ``sampler`` (an iterable of indices with a length); kept free of torch so data configs can
    be validated without importing it.

    Args:
        num_items: dataset size N.
        seed: base seed; epoch e uses ``np.random.default_rng([seed, e])``.
        world_size, rank: the shard this sampler yields.
        num_draws: global draws per epoch before padding (default N).
    """

    def __init__(
        self,
        *,
        num_items: int,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        num_draws: int | None = None,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.num_items = num_items
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        self.epoch = 0
        draws = num_items if num_draws is None else num_draws
        self.num_samples = math.ceil(draws / world_size)
        self.total_size = self.num_samples * world_size

    def set_epoch(self, epoch: int) -> None:
        """Use the sequence of ``epoch`` from the next iteration on."""
        self.epoch = int(epoch)

    def global_indices(self) -> np.ndarray:
        """[total_size] int64: the indices of all ranks for the current epoch."""
        raise NotImplementedError

    def shard_indices(self) -> np.ndarray:
        """[num_samples] int64: this rank's indices for the current epoch, in order."""
        return self.global_indices()[self.rank : self.total_size : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard_indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


class InstanceSampler(ShardedSampler):
    """Each image once per epoch (shuffled unless ``shuffle=False``); padded by wrapping around
    so every rank gets ``ceil(N / world_size)`` indices."""

    def __init__(self, *, num_items: int, shuffle: bool = True, **kw: int) -> None:
        super().__init__(num_items=num_items, **kw)
        self.shuffle = shuffle

    def global_indices(self) -> np.ndarray:
        if self.shuffle:
            idx = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
        else:
            idx = np.arange(self.num_items)
        if self.total_size > len(idx):
            idx = np.resize(idx, self.total_size)  # wraps around, like DistributedSampler
        return idx[: self.total_size]


class ClassWeightedSampler(ShardedSampler):
    """Classes with probability ∝ ``class_weights`` (restricted to classes with images), then
    images of the class uniformly (see the module docstring); ``N`` draws per epoch.

    Args:
        labels: [N] int64 labels of the dataset.
        class_weights: [C] non-negative weights.
    """

    def __init__(self, *, labels: np.ndarray, class_weights: np.ndarray, **kw: int) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        super().__init__(num_items=len(labels), **kw)
        order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=len(class_weights))
        w = np.where(counts > 0, np.asarray(class_weights, dtype=np.float64), 0.0)
        if w.sum() <= 0:
            raise ValueError("no class with images and a positive weight to sample from")
        self.order = order  # indices grouped by class
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.counts = counts
        self.class_probs = w / w.sum()

    def global_indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        total = self.total_size
        # Systematic allocation: class c gets floor or ceil of p_c * total draws (low variance,
        # exact in expectation), then all draws are shuffled together.
        cum = np.concatenate([[0.0], np.cumsum(self.class_probs)]) * total
        edges = np.floor(cum + rng.random()).astype(np.int64)
        edges[0], edges[-1] = 0, total  # exact ends despite float round-off
        per_class = np.diff(edges)
        out = np.empty(total, dtype=np.int64)
        pos = 0
        for c in np.flatnonzero(per_class):
            k, n = int(per_class[c]), int(self.counts[c])
            members = self.order[self.starts[c] : self.starts[c] + n]
            reps = -(-k // n)
            draws = np.concatenate([members[rng.permutation(n)] for _ in range(reps)])[:k]
            out[pos : pos + k] = draws
            pos += k
        return out[rng.permutation(total)]


SamplerFactory = Callable[..., ShardedSampler]
SAMPLERS: Registry[SamplerFactory] = Registry("sampler")


@SAMPLERS.register("instance")
def _instance(
    *, labels: np.ndarray, num_classes: int, shuffle: bool, **shard: int
) -> ShardedSampler:
    return InstanceSampler(num_items=len(labels), shuffle=shuffle, **shard)


@SAMPLERS.register("class_balanced")
def _class_balanced(
    *, labels: np.ndarray, num_classes: int, shuffle: bool, **shard: int
) -> ShardedSampler:
    return ClassWeightedSampler(labels=labels, class_weights=np.ones(num_classes), **shard)


@SAMPLERS.register("sqrt")
def _sqrt(*, labels: np.ndarray, num_classes: int, shuffle: bool, **shard: int) -> ShardedSampler:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return ClassWeightedSampler(labels=labels, class_weights=np.sqrt(counts), **shard)


def build_sampler(
    name: str,
    *,
    labels: np.ndarray,
    num_classes: int,
    shuffle: bool = True,
    seed: int = 0,
    world_size: int = 1,
    rank: int = 0,
) -> ShardedSampler:
    """The sampler ``name`` over a dataset with ``labels`` [N]; an unknown name lists the known
    ones. ``shuffle`` only concerns ``instance`` (the class samplers always draw at random)."""
    factory = SAMPLERS.get(name, key="data.sampler")
    return factory(
        labels=labels,
        num_classes=num_classes,
        shuffle=shuffle,
        seed=seed,
        world_size=world_size,
        rank=rank,
    )
