"""The per-class plot's smoothing (issue 13: zero padding drew both ends too low)."""

from __future__ import annotations

import numpy as np

from ltray.plots import moving_average


def test_a_flat_curve_stays_flat_up_to_both_ends() -> None:
    acc = np.full(1000, 60.0)
    smooth = moving_average(acc, 20)
    np.testing.assert_allclose(smooth, 60.0)
    # What np.convolve(mode="same") with zero padding gave: the ends nearly halved.
    padded = np.convolve(acc, np.ones(20) / 20, mode="same")
    assert padded[0] < 35 and padded[-1] < 35


def test_window_means_by_hand_with_a_cut_window_and_a_missing_class() -> None:
    acc = np.array([10.0, 20.0, np.nan, 40.0, 50.0])
    # k = 3: each point averages itself and its neighbours that exist (NaN skipped).
    np.testing.assert_allclose(moving_average(acc, 3), [15.0, 15.0, 30.0, 45.0, 45.0])


def test_k_one_is_the_identity() -> None:
    acc = np.array([1.0, 5.0, 2.0])
    np.testing.assert_array_equal(moving_average(acc, 1), acc)
