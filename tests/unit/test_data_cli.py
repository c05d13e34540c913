"""`ltray data stats|split|sources`."""

from __future__ import annotations

from pathlib import Path

import pytest

from ltray.cli import main


def test_stats_digits(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    png = tmp_path / "counts.png"
    assert main(["data", "stats", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "many (> 100): 2, medium (20..100): 6, few (< 20): 2" in out
    assert "imbalance ratio: 10.31" in out
    assert png.stat().st_size > 1000


def test_stats_absent_group(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", "data.imbalance_ratio=2"]) == 0
    assert "few (< 20): absent" in capsys.readouterr().out


def test_split_writes_and_refuses_overwrite(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "split"
    assert main(["data", "split", "--out", str(out), "data.seed=3"]) == 0
    assert len((out / "train.txt").read_text().splitlines()) == 544
    assert len((out / "val.txt").read_text().splitlines()) == 200
    capsys.readouterr()
    assert main(["data", "split", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.txt: already exists" in err


def test_bad_input_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", "data.name=cifar10-lt", "data.root=/no/such/dir"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ltray: error: data.root=/no/such/dir: folder not found")
    assert main(["data", "stats", "data.name=nope"]) == 2
    assert "known: cifar10-lt" in capsys.readouterr().err


def test_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "sources"]) == 0
    out = capsys.readouterr().out
    assert "digits-lt" in out and "listfile" in out


def test_stats_prints_every_split_per_class(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the table held train counts only and `splits:` a dict of totals."""
    assert main(["data", "stats"]) == 0
    out = capsys.readouterr().out
    assert "images per class and split" in out
    header = next(line for line in out.splitlines() if "class" in line and "train" in line)
    assert "val" in header and "test" in header
    assert "splits: train 544 (13-134 per class), val 200 (20-20 per class), test 200" in out
