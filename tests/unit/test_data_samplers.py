"""Samplers: class frequencies, determinism per (seed, epoch), disjoint equal rank shards."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ltray.data.samplers import ClassWeightedSampler, build_sampler
from ltray.errors import ConfigError

LABELS = np.repeat(np.arange(10), [1000, 600, 360, 216, 130, 78, 47, 28, 17, 10])


def _draws(name: str, n: int, **kw: int) -> np.ndarray:
    s = build_sampler(name, labels=LABELS, num_classes=10, **kw)
    out: list[int] = []
    epoch = 0
    while len(out) < n:
        s.set_epoch(epoch)
        out.extend(s)
        epoch += 1
    return np.asarray(out[:n])


def test_class_balanced_is_uniform_over_classes() -> None:
    idx = _draws("class_balanced", 10_000, seed=0)
    freq = np.bincount(LABELS[idx], minlength=10) / len(idx)
    assert np.all(np.abs(freq - 0.1) <= 0.05 * 0.1), freq


def test_sqrt_sampler_follows_sqrt_counts() -> None:
    idx = _draws("sqrt", 20_000, seed=0)
    freq = np.bincount(LABELS[idx], minlength=10) / len(idx)
    counts = np.bincount(LABELS)
    expected = np.sqrt(counts) / np.sqrt(counts).sum()
    assert np.allclose(freq, expected, rtol=0.15), (freq, expected)


def test_within_class_draws_cover_the_class() -> None:
    idx = _draws("class_balanced", 10_000, seed=0)
    tail = np.flatnonzero(LABELS == 9)
    assert set(idx[LABELS[idx] == 9]) == set(tail.tolist())


def test_instance_sampler_is_a_permutation_per_epoch() -> None:
    s = build_sampler("instance", labels=LABELS, num_classes=10, seed=5)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    s.set_epoch(0)
    assert list(s) == e0
    assert sorted(e0) == list(range(len(LABELS))) and e0 != e1


def test_unshuffled_instance_is_in_order() -> None:
    s = build_sampler("instance", labels=LABELS, num_classes=10, shuffle=False)
    assert list(s) == list(range(len(LABELS)))


def _single_process_sequence(name: str, draws: int) -> list[int]:
    """What ONE process draws for (seed 7, epoch 2): the sequence the ranks must share out.

    ``instance``: the single-process permutation, wrapped around to ``draws`` indices (the
    DistributedSampler padding). Class samplers: a world-size-1 sampler asked for ``draws``
    draws, with the class weights of its definition (1, or sqrt n_c)."""
    if name == "instance":
        s = build_sampler(name, labels=LABELS, num_classes=10, seed=7)
        s.set_epoch(2)
        order = list(s)
        return (order * 2)[:draws]
    counts = np.bincount(LABELS, minlength=10)
    weights = np.ones(10) if name == "class_balanced" else np.sqrt(counts)
    ref = ClassWeightedSampler(labels=LABELS, class_weights=weights, seed=7, num_draws=draws)
    ref.set_epoch(2)
    return list(ref)


@pytest.mark.parametrize("name", ["instance", "class_balanced", "sqrt"])
def test_ranks_deal_out_the_single_process_sequence_round_robin(name: str) -> None:
    """With W ranks each takes ⌈N/W⌉ draws, and together they read the one sequence a single
    process would draw for W·⌈N/W⌉ draws, dealt like cards: rank r's i-th index is position
    i·W + r. So shards are disjoint (as positions) and equal, and W workers see what one would.
    The reference comes from an unsharded sampler, not from the sharded sampler's own slice."""
    world, n = 3, math.ceil(len(LABELS) / 3)  # 2486 images → 829 per rank, one padded draw
    shards = []
    for rank in range(world):
        s = build_sampler(name, labels=LABELS, num_classes=10, seed=7, world_size=world, rank=rank)
        s.set_epoch(2)
        shards.append(list(s))
        assert len(s) == len(shards[-1]) == n
    reference = _single_process_sequence(name, world * n)
    dealt = [[reference[i * world + rank] for i in range(n)] for rank in range(world)]
    assert shards == dealt
    if name == "instance":  # every image once, the one padded draw is the first image again
        assert sorted(sum(shards, [])) == sorted(list(range(len(LABELS))) + reference[:1])


def test_unknown_sampler_lists_known() -> None:
    with pytest.raises(ConfigError, match="known: class_balanced, instance, sqrt"):
        build_sampler("balanced", labels=LABELS, num_classes=10)
