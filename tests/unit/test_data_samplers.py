"""Samplers: class frequencies, determinism per (seed, epoch), disjoint equal rank shards."""

from __future__ import annotations

import numpy as np
import pytest

from ltray.data.samplers import build_sampler
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


@pytest.mark.parametrize("name", ["instance", "class_balanced", "sqrt"])
def test_rank_shards_are_disjoint_equal_and_deterministic(name: str) -> None:
    world = 3
    shards = []
    for rank in range(world):
        s = build_sampler(name, labels=LABELS, num_classes=10, seed=7, world_size=world, rank=rank)
        s.set_epoch(2)
        shards.append(list(s))
        assert len(s) == len(shards[-1])
    assert len({len(x) for x in shards}) == 1
    # all ranks together read the one global sequence, position by position
    ref = build_sampler(name, labels=LABELS, num_classes=10, seed=7, world_size=world)
    ref.set_epoch(2)
    glob = ref.global_indices()
    for rank in range(world):
        assert shards[rank] == glob[rank::world].tolist()
    if name == "instance":  # every image once (plus wrap-around padding)
        assert set().union(*map(set, shards)) == set(range(len(LABELS)))
        assert len(shards[0]) * world - len(LABELS) < world


def test_unknown_sampler_lists_known() -> None:
    with pytest.raises(ConfigError, match="known: class_balanced, instance, sqrt"):
        build_sampler("balanced", labels=LABELS, num_classes=10)
