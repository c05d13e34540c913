"""ltray.metrics against hand-computed values (docs/methods.md#shot-groups).

Every expected number below is worked out in the comments from the definitions: shot groups by
TRAIN count (many > 100, few < 20, 20 and 100 medium), group accuracy = mean per-class accuracy
of the group's classes, overall = mean per-class accuracy (not the sample accuracy), an empty
group absent (None), top-5 and ECE with equal-width, right-closed confidence bins.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ltray.metrics import (
    evaluate_logits,
    evaluate_predictions,
    expected_calibration_error,
    shot_groups,
)


def test_shot_group_thresholds_are_strict_at_both_ends() -> None:
    """101 is many, 100 and 20 are medium, 19 is few (the OLTR / Decoupling convention)."""
    counts = np.array([1280, 101, 100, 20, 19, 5])
    assert shot_groups(counts).tolist() == [0, 0, 1, 1, 2, 2]
    # Thresholds are parameters, not constants: with many=50, few=10 the same counts regroup.
    assert shot_groups(counts, many=50, few=10).tolist() == [0, 0, 0, 1, 1, 2]


# Six classes, ten test images. TRAIN counts put classes 0-1 in many, 2-3 in medium, 4-5 in few.
COUNTS = np.array([500, 101, 100, 20, 19, 5])
# Each row: label, logits. "✓" = argmax is the label; "top-5 miss" = the label has the lowest
# logit of the row (with six classes that is the only way to fall out of the top five).
ROWS = [
    (0, [5, 4, 3, 2, 1, 0]),  # ✓
    (0, [5, 0, 1, 2, 3, 4]),  # ✓
    (0, [4, 5, 3, 2, 1, 0]),  # ✗ (predicts 1; label second)
    (0, [5, 1, 2, 3, 4, 0]),  # ✓
    (1, [0, 5, 1, 2, 3, 4]),  # ✓
    (1, [5, 0, 1, 2, 3, 4]),  # ✗ top-5 miss
    (2, [0, 1, 5, 2, 3, 4]),  # ✓
    (3, [0, 1, 2, 1.5, 5, 4]),  # ✗ (label fourth)
    (3, [5, 4, 3, -1, 1, 0]),  # ✗ top-5 miss
    (4, [5, 4, 3, 2, 1, 0]),  # ✗ (label fifth: inside the top five, outside a top four)
]
# Class 5 has no test image: its per-class accuracy is undefined and must not count as 0.
LABELS = np.array([r[0] for r in ROWS])
LOGITS = np.array([r[1] for r in ROWS], dtype=np.float64)


def test_per_class_groups_and_overall_by_hand() -> None:
    """Per class: 3/4, 1/2, 1/1, 0/2, 0/1, absent. many = (0.75 + 0.5)/2, medium = (1 + 0)/2,
    few = class 4 alone (class 5 has no test image) = 0; overall = mean over the five present
    classes = 2.25/5 = 0.45, while the sample accuracy top-1 is 5/10."""
    m = evaluate_logits(LOGITS, LABELS, shot_groups(COUNTS))
    assert m.per_class[:5] == pytest.approx([0.75, 0.5, 1.0, 0.0, 0.0])
    assert math.isnan(m.per_class[5])
    assert m.many == pytest.approx(0.625)
    assert m.medium == pytest.approx(0.5)
    assert m.few == pytest.approx(0.0)
    assert m.overall == pytest.approx(0.45)
    assert m.top1 == pytest.approx(0.5)
    assert m.top5 == pytest.approx(0.8)  # rows 5 and 8 miss


def test_an_empty_group_is_absent_not_zero() -> None:
    """CIFAR-10-LT at rho = 100 has no few-shot class: ``few`` is None, and the overall is the
    mean of the classes that exist (here 1, 0 and 1/2 → 1/2)."""
    groups = shot_groups(np.array([300, 150, 50]))  # many, many, medium: no few
    labels = np.array([0, 1, 2, 2])
    pred = np.array([0, 0, 2, 1])
    m = evaluate_predictions(pred, labels, groups, num_classes=3)
    assert m.few is None
    assert m.many == pytest.approx(0.5)  # (1 + 0) / 2
    assert m.medium == pytest.approx(0.5)
    assert m.overall == pytest.approx(0.5)
    assert m.top1 == pytest.approx(0.5)
    assert m.summary()["few"] is None


# Six three-class rows whose confidences (max probability) fall in four of five 0.2-wide bins.
PROBS = np.array(
    [
        [0.90, 0.05, 0.05],  # conf 0.90, label 0: right  ┐ bin (0.8, 1]: acc 1/2, conf 0.9,
        [0.05, 0.90, 0.05],  # conf 0.90, label 0: wrong  ┘ gap 0.4, weight 2/6
        [0.70, 0.20, 0.10],  # conf 0.70, label 0: right    bin (0.6, 0.8]: gap 0.3, weight 1/6
        [0.50, 0.30, 0.20],  # conf 0.50, label 1: wrong  ┐ bin (0.4, 0.6]: acc 1/2, conf 0.475,
        [0.30, 0.25, 0.45],  # conf 0.45, label 2: right  ┘ gap 0.025, weight 2/6
        [0.35, 0.33, 0.32],  # conf 0.35, label 0: right    bin (0.2, 0.4]: gap 0.65, weight 1/6
    ]
)
PROB_LABELS = np.array([0, 0, 0, 1, 2, 0])
ECE_BY_HAND = (2 * 0.4 + 0.3 + 2 * 0.025 + 0.65) / 6  # = 0.3


def test_ece_by_hand() -> None:
    """ECE = Σ_b (n_b / N)·|acc_b − conf_b| over five equal-width bins."""
    assert expected_calibration_error(PROBS, PROB_LABELS, bins=5) == pytest.approx(ECE_BY_HAND)
    # One bin: |overall accuracy − mean confidence| = |4/6 − 3.8/6|.
    assert expected_calibration_error(PROBS, PROB_LABELS, bins=1) == pytest.approx(0.2 / 6)
    # Bins are right-closed, ((m − 1)/M, m/M] (Guo et al. 2017): confidence 0.5 is in [0, 0.5].
    # Apart: ½·|1 − 0.5| + ½·|0 − 0.6| = 0.55; shared: |½ − 0.55| = 0.05.
    edge = np.array([[0.5, 0.5], [0.6, 0.4]])
    assert expected_calibration_error(edge, np.array([0, 1]), bins=2) == pytest.approx(0.55)


def test_evaluate_logits_softmaxes_logits_for_ece() -> None:
    """Without ``probs``, ECE is taken on softmax(logits): log-probabilities give PROBS back."""
    m = evaluate_logits(np.log(PROBS), PROB_LABELS, np.zeros(3, dtype=np.int64), ece_bins=5)
    assert m.ece == pytest.approx(ECE_BY_HAND)
    given = evaluate_logits(np.zeros_like(PROBS), PROB_LABELS, np.zeros(3), probs=PROBS, ece_bins=5)
    assert given.ece == pytest.approx(ECE_BY_HAND)


def test_a_masked_class_is_never_predicted_nor_in_the_top_5() -> None:
    """A class masked out of NCM has logit −inf: it is the last candidate for top-1 and top-5.
    Row 0: the label (class 1) is fifth of the finite logits, and would be pushed out of the
    top five if the −inf class were ranked above it."""
    z = np.array([[-math.inf, 1.0, 2.0, 3.0, 4.0, 5.0, 0.0]])
    m = evaluate_logits(z, np.array([1]), np.zeros(7, dtype=np.int64))
    assert m.top5 == 1.0 and m.top1 == 0.0
    m = evaluate_logits(z, np.array([0]), np.zeros(7, dtype=np.int64))
    assert m.top5 == 0.0 and m.overall == 0.0
