"""The Many / Medium / Few / Overall table of a run's ``results.json`` (no torch needed, so the
CLI prints it without importing the training stack)."""

from __future__ import annotations

import io
import math
from typing import Any

__all__ = ["HEAD_LABELS", "results_table", "render_table"]

HEAD_LABELS = {
    "linear": "linear",
    "ncm_ema": "NCM (EMA)",
    "ncm_full": "NCM (full pass)",
    "kt": "KT head",
}


def _pct(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def epoch_label(results: dict[str, Any]) -> str:
    """Which epoch the results are of: the best-val one, or the last when no epoch had a val
    score of the selection metric."""
    if results.get("checkpoint") == "last":
        metric = f"val_{results.get('select_head')}_{results.get('select_group', 'overall')}"
        return f"last epoch {results['best_epoch']} (no epoch reported {metric})"
    return f"best-val epoch {results['best_epoch']}"


def results_table(results: dict[str, Any]) -> Any:
    """The Many / Medium / Few / Overall (test) table of every head, as a rich Table."""
    from rich.table import Table

    table = Table(title=f"test accuracy (%) — {epoch_label(results)}")
    for col in ("head", "Many", "Medium", "Few", "Overall", "top-5", "ECE", "val overall"):
        table.add_column(col, justify="left" if col == "head" else "right", no_wrap=True)
    for head, per_split in results["heads"].items():
        t, v = per_split["test"], per_split["val"]
        table.add_row(
            HEAD_LABELS.get(head, head),
            _pct(t["many"]),
            _pct(t["medium"]),
            _pct(t["few"]),
            _pct(t["overall"]),
            _pct(t["top5"]),
            _pct(t["ece"]),
            _pct(v["overall"]),
        )
    if results.get("val_protocol") == "test":
        table.caption = "val protocol 'test': val IS the test set (papers' protocol)"
    return table


def render_table(results: dict[str, Any]) -> str:
    """:func:`results_table` as plain text."""
    from rich.console import Console

    console = Console(width=110, record=True, file=io.StringIO(), color_system=None)
    console.print(results_table(results))
    return console.export_text()
