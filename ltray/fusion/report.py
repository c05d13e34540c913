"""Saving post-hoc results: a table (CSV + JSON), a grouped bar chart and LLW's learned weights
against class frequency (`ltray fuse` then logs them to the run's MLflow run through
:mod:`ltray.tracking`).

Results go into a new folder ``RUN_DIR/fusion/fuse-<timestamp>[-N]/`` every time, so earlier
results are never overwritten. An empty shot group is absent (an empty CSV cell, "—" in the
table, no bar), never 0.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ltray.paths import new_run_dir

if TYPE_CHECKING:  # results are passed in: this module (and RunDir's names) stays torch-free
    from ltray.fusion.methods import MethodResult

__all__ = [
    "FUSION_DIR",
    "FUSE_RESULTS",
    "GROUP_COLUMNS",
    "result_rows",
    "write_results",
    "rich_table",
    "plot_groups",
    "plot_llw_weights",
    "save_results",
]

FUSION_DIR = "fusion"  # RUN_DIR/fusion/fuse-<timestamp>/: one folder per `ltray fuse`
FUSE_RESULTS = "results.json"  # in a fuse folder: every method's choices and metrics

GROUP_COLUMNS = ("many", "medium", "few", "overall")
SELECTED_KEYS = ("w", "tau", "epoch", "tie_break")


def _chosen_text(chosen: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    parts = []
    for k, v in chosen.items():
        if "history" in k or k == "val_score" or (keys is not None and k not in keys):
            continue
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def result_rows(results: Sequence[MethodResult]) -> list[dict[str, Any]]:
    """One flat row per method: test groups and overall, test top-1, val overall, chosen values
    (fractions in [0, 1]; ``None`` for an empty group)."""
    rows = []
    for r in results:
        row: dict[str, Any] = {"method": r.name}
        for g in GROUP_COLUMNS:
            row[f"test_{g}"] = getattr(r.test, g)
        row["test_top1"] = r.test.top1
        row["val_overall"] = r.val.overall
        row["chosen"] = _chosen_text(r.chosen)
        rows.append(row)
    return rows


def write_results(results: Sequence[MethodResult], out_dir: Path) -> list[Path]:
    """``results.csv`` (flat rows) and ``results.json`` (full metrics, settings, chosen)."""
    rows = result_rows(results)
    csv_path = out_dir / "results.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    full = [
        {
            "method": r.name,
            "chosen": r.chosen,
            "settings": r.settings,
            "val": r.val.summary(),
            "test": r.test.summary(),
            "test_per_class": r.test.per_class,
        }
        for r in results
    ]
    json_path = out_dir / FUSE_RESULTS
    json_path.write_text(json.dumps(full, indent=1, default=float))
    paths = [csv_path, json_path]
    for r in results:
        if r.extras:
            p = out_dir / f"{r.name}_params.npz"
            np.savez(p, **r.extras)
            paths.append(p)
    return paths


def _pct(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def rich_table(results: Sequence[MethodResult], title: str) -> Any:
    """A rich Table: Many / Medium / Few / Overall on test in %, val overall, chosen values."""
    from rich.table import Table

    table = Table(title=title, caption="top-1 %, mean per-class accuracy; — = empty group")
    table.add_column("method", style="bold", no_wrap=True)
    for name in ("Many", "Medium", "Few", "Overall"):
        table.add_column(f"test {name}", justify="right", no_wrap=True)
    table.add_column("val Overall", justify="right", no_wrap=True)
    table.add_column("chosen on val")
    for r in results:
        table.add_row(
            r.name,
            *(_pct(getattr(r.test, g)) for g in GROUP_COLUMNS),
            _pct(r.val.overall),
            _chosen_text(r.chosen, SELECTED_KEYS),
        )
    return table


def plot_groups(results: Sequence[MethodResult], path: Path) -> Path:
    """Grouped bar chart of test Many / Medium / Few / Overall (%) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    width = 0.8 / len(GROUP_COLUMNS)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n + 2), 4))
    x = np.arange(n)
    for j, g in enumerate(GROUP_COLUMNS):
        vals = [getattr(r.test, g) for r in results]
        xs = [x[i] + (j - 1.5) * width for i, v in enumerate(vals) if v is not None]
        ys = [100 * v for v in vals if v is not None]
        ax.bar(xs, ys, width, label=g.capitalize())
    ax.set_xticks(x, [r.name for r in results], rotation=45, ha="right")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(ncol=4, fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_llw_weights(extras: dict[str, np.ndarray], class_counts: np.ndarray, path: Path) -> Path:
    """LLW's learned a₁ (linear) and a₂ (NCM) per class against the class's train count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.maximum(np.asarray(class_counts), 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(counts, extras["a1"], s=12, label="a₁ (linear)")
    ax.scatter(counts, extras["a2"], s=12, marker="x", label="a₂ (NCM)")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("train images of the class")
    ax.set_ylabel("learned weight")
    ax.set_title("LLW per-class weights vs class frequency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_results(run_dir: Path, results: Sequence[MethodResult], class_counts: np.ndarray) -> Path:
    """Write table, charts and LLW plot into a new ``RUN_DIR/fusion/fuse-*`` folder; returns
    it (`ltray fuse` then logs it to the run's MLflow run: :func:`ltray.tracking.log_fusion`)."""
    out_dir = new_run_dir("fuse", parent=Path(run_dir) / FUSION_DIR)
    write_results(results, out_dir)
    plot_groups(results, out_dir / "groups.png")
    for r in results:
        if r.name == "llw" and "a1" in r.extras:
            plot_llw_weights(r.extras, class_counts, out_dir / "llw_weights.png")
    return out_dir
