"""Table aggregation of `ltray reproduce`: mean ± sample std over seeds, absent groups as "—"."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from ltray.reproduce.table import (
    Record,
    aggregate,
    format_cell,
    render_text,
    rich_table,
    summarize,
    write_csv,
)


def _rec(row: str, seed: int, many: float | None, few: float | None, overall: float) -> Record:
    return Record("main", row, seed, many, 0.5, few, overall)


def test_aggregate_mean_and_sample_std() -> None:
    agg = aggregate([0.5, 0.7])
    assert agg is not None
    assert agg.mean == pytest.approx(0.6)
    # sample std (ddof = 1) of {0.5, 0.7}: |0.7 - 0.5| / sqrt(2)
    assert agg.std == pytest.approx(0.2 / math.sqrt(2))
    assert agg.n == 2


def test_aggregate_skips_absent_values_instead_of_counting_zero() -> None:
    agg = aggregate([0.4, None, float("nan"), 0.6])
    assert agg is not None
    assert agg.mean == pytest.approx(0.5)  # not (0.4 + 0 + 0 + 0.6) / 4
    assert agg.n == 2


def test_aggregate_all_absent_is_none_and_one_value_has_no_std() -> None:
    assert aggregate([None, None]) is None
    assert aggregate([]) is None
    one = aggregate([0.25])
    assert one is not None and one.std is None and one.n == 1


def test_format_cell() -> None:
    assert format_cell(None) == "—"
    assert format_cell(aggregate([0.569])) == "56.9"
    assert format_cell(aggregate([0.5, 0.7])) == "60.0 ± 14.1"


def test_summarize_keeps_order_absent_groups_and_missing_rows() -> None:
    records = [
        _rec("ce", 0, 0.9, None, 0.6),
        _rec("ce", 1, 0.8, None, 0.5),
        _rec("kt", 0, 0.7, 0.2, 0.55),
        Record("mixup", "ce", 0, 0.0, 0.0, 0.0, 0.0),  # another table: ignored
    ]
    rows = summarize(records, "main", [("kt", "KT"), ("ce", "CE"), ("llw", "LLW")])
    assert [r.key for r in rows] == ["kt", "ce", "llw"]
    kt, ce, llw = rows
    assert ce.cells["many"].mean == pytest.approx(0.85)
    assert ce.cells["few"] is None  # empty few-shot group: absent, not 0
    assert ce.seeds == 2 and kt.seeds == 1
    assert all(cell is None for cell in llw.cells.values()) and llw.seeds == 0


def test_rich_table_text_and_csv(tmp_path: Path) -> None:
    records = [_rec("ce", 0, 0.9, None, 0.6), _rec("ce", 1, 0.8, None, 0.5)]
    rows = summarize(records, "main", [("ce", "CE"), ("ncm", "NCM")], rule_before="ncm")
    text = render_text(rich_table(rows, title="t", caption="c"))
    assert "85.0 ± 7.1" in text and "—" in text
    path = write_csv(rows, tmp_path / "t.csv")
    lines = list(csv.DictReader(path.open()))
    assert lines[0]["key"] == "ce" and float(lines[0]["many_mean"]) == pytest.approx(85.0)
    assert lines[0]["few_mean"] == "" and lines[0]["few_std"] == ""
    assert lines[1]["overall_mean"] == "" and lines[1]["seeds"] == "0"
