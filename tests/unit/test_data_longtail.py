"""Long-tail profiles, the seeded selection, carve-outs and shot groups, pinned by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ltray.data.longtail import (
    carve_per_class,
    check_no_empty_class,
    group_sizes,
    profile_counts,
    select_long_tail,
)
from ltray.errors import ConfigError, DataError
from ltray.metrics import shot_groups


def test_exp_profile_cifar10_rho100() -> None:
    counts = profile_counts(n_max=5000, num_classes=10, rho=100, profile="exp")
    assert counts.tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert counts.sum() == 12406


def test_exp_profile_hand_values() -> None:
    # n_i = floor(100 * (1/4)^(i/2)): 100, 50, 25
    assert profile_counts(n_max=100, num_classes=3, rho=4, profile="exp").tolist() == [100, 50, 25]
    assert profile_counts(n_max=500, num_classes=100, rho=100, profile="exp")[[0, -1]].tolist() == [
        500,
        5,
    ]
    assert profile_counts(n_max=7, num_classes=1, rho=10, profile="exp").tolist() == [7]


def test_step_profile_hand_values() -> None:
    # first floor(C/2) keep n_max, the rest floor(n_max / rho)
    assert profile_counts(n_max=100, num_classes=5, rho=10, profile="step").tolist() == [
        100,
        100,
        10,
        10,
        10,
    ]
    assert profile_counts(n_max=100, num_classes=4, rho=3, profile="step").tolist() == [
        100,
        100,
        33,
        33,
    ]


def test_rho_one_is_balanced() -> None:
    for profile in ("exp", "step"):
        assert set(profile_counts(n_max=9, num_classes=4, rho=1, profile=profile)) == {9}


def test_unknown_profile_is_an_error_never_balanced() -> None:
    with pytest.raises(ConfigError, match=r"unknown profile 'linear'; known: exp, step"):
        profile_counts(n_max=10, num_classes=3, rho=2, profile="linear")


def test_selection_is_seeded_per_class_and_keeps_counts() -> None:
    labels = np.repeat(np.arange(3), 10)
    counts = np.array([10, 5, 2])
    a = select_long_tail(labels, counts, seed=0)
    b = select_long_tail(labels, counts, seed=0)
    c = select_long_tail(labels, counts, seed=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.bincount(labels[a]).tolist() == [10, 5, 2]
    assert np.bincount(labels[c]).tolist() == [10, 5, 2]
    # class 1's choice does not depend on class 2's request
    d = select_long_tail(labels, np.array([10, 5, 1]), seed=0)
    assert np.array_equal(a[labels[a] == 1], d[labels[d] == 1])


def test_selection_asking_too_many_is_an_error() -> None:
    with pytest.raises(DataError, match=r"class 1 \(b\) has 2 images but the profile asks for 3"):
        select_long_tail(np.array([0, 0, 0, 1, 1]), np.array([3, 3]), seed=0, class_names="ab")


def test_carve_is_balanced_disjoint_and_seeded() -> None:
    labels = np.repeat(np.arange(4), 25)
    cut, rest = carve_per_class(labels, 5, seed=3, num_classes=4)
    assert np.bincount(labels[cut]).tolist() == [5, 5, 5, 5]
    assert len(np.intersect1d(cut, rest)) == 0 and len(cut) + len(rest) == 100
    cut2, _ = carve_per_class(labels, 5, seed=3, num_classes=4)
    cut3, _ = carve_per_class(labels, 5, seed=4, num_classes=4)
    assert np.array_equal(cut, cut2) and not np.array_equal(cut, cut3)


def test_group_boundaries_exactly_20_and_100_are_medium() -> None:
    counts = np.array([101, 100, 50, 20, 19])
    groups = shot_groups(counts, 100, 20)
    assert groups.tolist() == [0, 1, 1, 1, 2]
    assert group_sizes(groups) == {"many": 1, "medium": 3, "few": 1}


def test_empty_group_is_absent() -> None:
    groups = shot_groups(np.array([5000, 2997, 83, 50]), 100, 20)
    assert group_sizes(groups) == {"many": 2, "medium": 2, "few": None}


def test_empty_class_error_names_class_and_fix() -> None:
    with pytest.raises(DataError, match=r"class 2 \(c\) .*no training images.*lower rho"):
        check_no_empty_class(np.array([3, 1, 0]), class_names="abc", what="x", fix="lower rho")
