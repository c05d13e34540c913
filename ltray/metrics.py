"""Evaluation metrics the field reports: top-1/top-5, many/medium/few, per-class accuracy, ECE.

Pure numpy functions over logits and labels; no I/O. Group accuracy is the mean of the per-class
accuracies of the classes in the group; an empty group is ``None`` (absent), never 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "GROUP_NAMES",
    "shot_groups",
    "per_class_accuracy",
    "group_accuracy",
    "topk_accuracy",
    "expected_calibration_error",
    "HeadMetrics",
    "evaluate_logits",
    "evaluate_predictions",
    "mean_std",
    "format_mean_std",
]

GROUP_NAMES = ("many", "medium", "few")


def shot_groups(class_counts: np.ndarray, many: int = 100, few: int = 20) -> np.ndarray:
    """Group id per class from TRAIN counts: 0 many (> many), 1 medium, 2 few (< few).

    With the defaults, exactly 100 images is medium and exactly 20 is medium.
    """
    counts = np.asarray(class_counts)
    groups = np.ones(len(counts), dtype=np.int64)
    groups[counts > many] = 0
    groups[counts < few] = 2
    return groups


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[C] accuracy per class; NaN for a class absent from ``labels``."""
    correct = np.bincount(
        labels, weights=(pred == labels).astype(np.float64), minlength=num_classes
    )
    total = np.bincount(labels, minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def group_accuracy(per_class: np.ndarray, groups: np.ndarray) -> dict[str, float | None]:
    """Mean per-class accuracy of each shot group; ``None`` for an empty group."""
    out: dict[str, float | None] = {}
    for gid, name in enumerate(GROUP_NAMES):
        vals = per_class[(groups == gid) & ~np.isnan(per_class)]
        out[name] = float(vals.mean()) if len(vals) else None
    return out


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    topk = np.argpartition(-logits, kth=k - 1, axis=1)[:, :k]
    return float((topk == labels[:, None]).any(axis=1).mean())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with ``bins`` equal-width confidence bins over max-probability."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


@dataclass
class HeadMetrics:
    """Metrics of one head on one split (accuracies as fractions in [0, 1])."""

    top1: float
    top5: float | None
    many: float | None
    medium: float | None
    few: float | None
    overall: float
    ece: float | None
    per_class: list[float]

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("per_class")
        return d


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def evaluate_predictions(
    pred: np.ndarray, labels: np.ndarray, groups: np.ndarray, num_classes: int
) -> HeadMetrics:
    """Metrics from hard predictions only (top-5 and ECE unavailable)."""
    pc = per_class_accuracy(pred, labels, num_classes)
    g = group_accuracy(pc, groups)
    overall = float(np.nanmean(pc)) if np.isfinite(pc).any() else float("nan")
    return HeadMetrics(
        top1=float((pred == labels).mean()),
        top5=None,
        many=g["many"],
        medium=g["medium"],
        few=g["few"],
        overall=overall,
        ece=None,
        per_class=[float(x) for x in pc],
    )


def evaluate_logits(
    logits: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    ece_bins: int = 15,
    probs: np.ndarray | None = None,
) -> HeadMetrics:
    """All metrics of one head. ``overall`` is the mean per-class accuracy (equal to top-1 on a
    balanced split); ``top1`` is the plain sample accuracy. ``probs`` defaults to softmax(logits).
    Logits may hold ``-inf`` for masked classes."""
    num_classes = logits.shape[1]
    pred = logits.argmax(axis=1)
    m = evaluate_predictions(pred, labels, groups, num_classes)
    safe = np.where(np.isfinite(logits), logits, np.finfo(np.float32).min)
    m.top5 = topk_accuracy(safe, labels, 5)
    p = _softmax(safe.astype(np.float64)) if probs is None else probs
    m.ece = expected_calibration_error(p, labels, ece_bins)
    return m


def mean_std(values: Any) -> tuple[float, float | None, int] | None:
    """(mean, sample std (ddof = 1; None for one value), n) of the present values (None and NaN
    left out); None when no value is present."""
    vals = [float(v) for v in values if v is not None and not np.isnan(float(v))]
    if not vals:
        return None
    mean = float(np.mean(vals))
    return mean, (float(np.std(vals, ddof=1)) if len(vals) > 1 else None), len(vals)


def format_mean_std(
    mean: float | None, std: float | None = None, *, scale: float = 100.0, digits: int = 1
) -> str:
    """``"56.9 ± 1.2"`` (fractions shown in percent by default), the mean alone without a
    std, ``"—"`` without a mean: the one way every ltray table writes a value over seeds."""
    if mean is None:
        return "—"
    if std is None:
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"
