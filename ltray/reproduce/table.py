"""The reproduction tables: per-seed records → mean ± std per row and column; text, CSV and PNG.

Pure aggregation first (:func:`aggregate`, :func:`summarize`), output after. A group that is
absent (an empty shot group, a missing or failed run) is ``None`` in a record; it is left out of
the mean, never counted as 0, and a cell with no value at all prints "—". Values are fractions in
[0, 1]; tables show percent. The std is the sample standard deviation over seeds (ddof = 1);
one seed shows the mean alone.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltray.metrics import format_mean_std, mean_std

__all__ = [
    "COLUMNS",
    "Record",
    "Agg",
    "TableRow",
    "aggregate",
    "summarize",
    "format_cell",
    "rich_table",
    "render_text",
    "write_csv",
    "plot_table",
]

COLUMNS = ("many", "medium", "few", "overall")


@dataclass(frozen=True)
class Record:
    """One row's numbers for one seed (test split; ``None`` = absent)."""

    table: str
    row: str
    seed: int
    many: float | None
    medium: float | None
    few: float | None
    overall: float | None
    source: str = ""


@dataclass(frozen=True)
class Agg:
    """Mean and sample std (``None`` with one value) of ``n`` values, as fractions."""

    mean: float
    std: float | None
    n: int


@dataclass
class TableRow:
    """One printed row: its label, a cell per column (``None`` = absent), the seeds it has, and
    whether a rule is drawn above it."""

    key: str
    label: str
    cells: dict[str, Agg | None]
    seeds: int
    rule_above: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _present(v: float | None) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def aggregate(values: Sequence[float | None]) -> Agg | None:
    """Mean ± sample std of the present values; ``None`` when none is present."""
    found = mean_std(v for v in values if _present(v))
    return None if found is None else Agg(*found)


def summarize(
    records: Sequence[Record],
    table: str,
    rows: Sequence[tuple[str, str]],
    *,
    rule_before: str | None = None,
) -> list[TableRow]:
    """Aggregate the records of ``table`` for ``rows`` = [(key, label)], in that order.

    A requested row without any record is kept, with every cell "—".
    """
    out = []
    for key, label in rows:
        mine = [r for r in records if r.table == table and r.row == key]
        cells = {c: aggregate([getattr(r, c) for r in mine]) for c in COLUMNS}
        seeds = len({r.seed for r in mine if _present(r.overall)})
        out.append(TableRow(key, label, cells, seeds, rule_above=key == rule_before))
    return out


def format_cell(agg: Agg | None, *, digits: int = 1) -> str:
    """``"56.9 ± 1.2"`` (percent), ``"56.9"`` for one seed, ``"—"`` when absent."""
    if agg is None:
        return "—"
    return format_mean_std(agg.mean, agg.std, digits=digits)


def rich_table(rows: Sequence[TableRow], *, title: str, caption: str, first: str = "method") -> Any:
    """A rich Table with columns Many / Medium / Few / Overall (+ seeds) and the section rule."""
    from rich.table import Table

    table = Table(title=title, caption=caption, caption_justify="left")
    table.add_column(first, style="bold", no_wrap=True)
    for name in ("Many", "Medium", "Few", "Overall"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("seeds", justify="right")
    for i, row in enumerate(rows):
        if row.rule_above and i:
            table.add_section()
        table.add_row(row.label, *(format_cell(row.cells[c]) for c in COLUMNS), str(row.seeds))
    return table


def render_text(table: Any, width: int = 120) -> str:
    """A rich Table as plain text."""
    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(table)
    return console.export_text()


def write_csv(rows: Sequence[TableRow], path: Path) -> Path:
    """One line per row: key, label, seeds, then ``<col>_mean`` / ``<col>_std`` in percent
    (empty cells for absent values), plus the row's ``extra`` fields."""
    extra_keys: list[str] = []
    for row in rows:
        extra_keys += [k for k in row.extra if k not in extra_keys]
    header = ["key", "label", *extra_keys, "seeds"]
    header += [f"{c}_{s}" for c in COLUMNS for s in ("mean", "std")]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            line: list[Any] = [row.key, row.label, *(row.extra.get(k, "") for k in extra_keys)]
            line.append(row.seeds)
            for c in COLUMNS:
                agg = row.cells[c]
                line.append("" if agg is None else round(100 * agg.mean, 3))
                line.append("" if agg is None or agg.std is None else round(100 * agg.std, 3))
            writer.writerow(line)
    return path


def plot_table(rows: Sequence[TableRow], path: Path, *, title: str) -> Path:
    """Grouped bars of Many / Medium / Few / Overall (%) per row with ±std error bars; absent
    cells draw no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(rows)
    x = np.arange(n)
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * n + 2), 4.2))
    for j, col in enumerate(COLUMNS):
        means = [r.cells[col].mean * 100 if r.cells[col] else np.nan for r in rows]
        errs = [(r.cells[col].std or 0) * 100 if r.cells[col] else 0 for r in rows]
        ax.bar(x + (j - 1.5) * width, means, width, yerr=errs, capsize=2, label=col.capitalize())
    ax.set_xticks(x, [r.label for r in rows], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("test top-1 (%)")
    for i, row in enumerate(rows):
        if row.rule_above and i:
            ax.axvline(i - 0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.set_ylim(0, 115)  # headroom for the legend above the 100 % line
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(title, fontsize=10)
    ax.legend(ncol=4, fontsize=8, loc="upper center", frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
