"""List files: parsing without images, file:line errors, writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ltray.data.listfiles import (
    check_images_exist,
    check_labels,
    class_counts,
    read_list_file,
    write_list_file,
)
from ltray.errors import DataError


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "list.txt"
    p.write_text(text)
    return p


def test_read_list_file(tmp_path: Path) -> None:
    p = _write(tmp_path, "train/a/1.jpg 0\n\ntrain/b/2.jpg 1\ntrain/b c/3.jpg 1\n")
    paths, labels = read_list_file(p)
    assert paths == ["train/a/1.jpg", "train/b/2.jpg", "train/b c/3.jpg"]
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 1]
    assert class_counts(labels, 3).tolist() == [1, 2, 0]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("a.jpg 0\nb.jpg\n", r"list.txt:2: malformed line 'b.jpg'; expected `relative/path label`"),
        ("a.jpg 0\nb.jpg x\n", r"list.txt:2: label 'x' is not an integer"),
        ("a.jpg -1\n", r"list.txt:1: label -1 is negative"),
        ("\n\n", r"list.txt: list file has no entries"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        read_list_file(_write(tmp_path, text))


def test_missing_list_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope.txt: list file not found"):
        read_list_file(tmp_path / "nope.txt")


def test_label_out_of_range_names_line_and_range(tmp_path: Path) -> None:
    p = _write(tmp_path, "a.jpg 0\n\nb.jpg 7\n")
    _, labels = read_list_file(p)
    with pytest.raises(
        DataError, match=r"list.txt:3: label 7 is out of range; valid labels are 0..4"
    ):
        check_labels(labels, 5, source=p)


def test_missing_image_names_image_and_line(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    p = _write(tmp_path, "img/a.jpg 0\nimg/b.jpg 1\n")
    paths, _ = read_list_file(p)
    with pytest.raises(DataError, match=r"list.txt:2: image .*img/b.jpg not found"):
        check_images_exist(tmp_path, paths, source=p)


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    out = write_list_file(tmp_path / "s" / "train.txt", ["a", "b"], np.array([0, 1]))
    assert out.read_text() == "a 0\nb 1\n"
    assert read_list_file(out)[0] == ["a", "b"]
    with pytest.raises(DataError, match=r"train.txt: already exists; remove it"):
        write_list_file(out, ["a"], np.array([0]))
