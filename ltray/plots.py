"""Figures people would rather look at than numbers (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["per_class_plot", "moving_average"]


def moving_average(values: np.ndarray, k: int) -> np.ndarray:
    """Centred moving average over ``k`` points of ``values`` [N] → [N].

    Each point is the mean of the window's values that exist: near the ends the window is
    cut short instead of padded with zeros (which drew the head and the tail of a per-class
    curve too low), and NaN entries (classes absent from the split) are skipped.
    """
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    window = np.ones(max(int(k), 1))
    total = np.convolve(np.where(ok, v, 0.0), window, mode="same")
    n = np.convolve(ok.astype(float), window, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def per_class_plot(results: dict[str, Any], path: Path) -> Path:
    """Per-class test accuracy of every head against the class's train frequency (log x)."""
    plt = _plt()
    counts = np.asarray(results["class_counts"], dtype=float)
    order = np.argsort(-counts, kind="stable")
    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    x = np.arange(len(counts))
    for head, per_split in results["heads"].items():
        acc = np.asarray(per_split["test"]["per_class"], dtype=float)[order] * 100
        overall = 100 * per_split["test"]["overall"]
        if len(acc) > 50:  # smooth long class lists so the lines stay readable
            k = max(len(acc) // 50, 1)
            acc = moving_average(acc, k)
        ax.plot(
            x,
            acc,
            marker="o" if len(acc) <= 50 else None,
            ms=3,
            lw=1.2,
            label=f"{head} ({overall:.1f}%)",
        )
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("per-class accuracy, classes sorted by train frequency")
    ax_n.bar(x, counts[order], color="0.6")
    ax_n.set_yscale("log")
    ax_n.set_ylabel("train images")
    ax_n.set_xlabel("class (head → tail)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
