"""List files in the ImageNet-LT / Places-LT format: one ``relative/path label`` per line.

Parsing and counting never open an image, so the real long-tailed label distributions
(ImageNet-LT, Places-LT) can be studied without their images; checking that the images exist is
the separate step :func:`check_images_exist`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ltray.errors import DataError

__all__ = [
    "read_list_file",
    "write_list_file",
    "check_labels",
    "check_images_exist",
    "class_counts",
    "line_of",
]


def read_list_file(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Parse a list file into (relative paths, labels [N] int64).

    Blank lines are skipped. A line that is not ``relative/path label`` with an integer
    label ``>= 0`` raises :class:`DataError` naming ``file:line``.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: list file not found; point data.*_list at an existing file")
    paths: list[str] = []
    labels: list[int] = []
    with p.open("r", encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise DataError(
                    f"{p}:{lineno}: malformed line {line!r}; expected `relative/path label` "
                    "(a path, whitespace, an integer label)"
                )
            rel, lab = parts
            try:
                label = int(lab)
            except ValueError:
                raise DataError(
                    f"{p}:{lineno}: label {lab!r} is not an integer; expected `relative/path label`"
                ) from None
            if label < 0:
                raise DataError(f"{p}:{lineno}: label {label} is negative; labels are 0..C-1")
            paths.append(rel)
            labels.append(label)
    if not paths:
        raise DataError(f"{p}: list file has no entries; expected `relative/path label` lines")
    return paths, np.asarray(labels, dtype=np.int64)


def check_labels(labels: np.ndarray, num_classes: int, *, source: str | Path) -> None:
    """Raise :class:`DataError` at the first label outside ``0..num_classes-1``.

    ``source`` is the list file the labels came from (blank lines are assumed absent for the
    line number, which holds for files :func:`write_list_file` wrote; for others the message
    also quotes the entry index).
    """
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"{line_of(source, i)}: label {int(labels[i])} is out of range; valid labels are "
            f"0..{num_classes - 1} (data.num_classes={num_classes}); fix the list or raise "
            "data.num_classes"
        )


def line_of(source: str | Path, index: int) -> str:
    """``file:line`` of the ``index``-th non-blank entry of a list file."""
    p = Path(source)
    if p.is_file():
        seen = -1
        with p.open("r", encoding="utf-8") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if raw.strip():
                    seen += 1
                    if seen == index:
                        return f"{p}:{lineno}"
    return f"{p} (entry {index + 1})"


def check_images_exist(root: str | Path, paths: Sequence[str], *, source: str | Path) -> None:
    """Raise :class:`DataError` at the first image of ``paths`` (relative to ``root``) that
    does not exist, naming the image and ``list file:line``. Only ``stat``s files."""
    base = Path(root)
    for i, rel in enumerate(paths):
        if not (base / rel).is_file():
            raise DataError(
                f"{line_of(source, i)}: image {base / rel} not found; check data.root "
                f"(={base}) or the list file"
            )


def write_list_file(
    path: str | Path, paths: Sequence[str], labels: np.ndarray, *, overwrite: bool = False
) -> Path:
    """Write ``relative/path label`` lines atomically; refuse to overwrite an existing file
    unless ``overwrite``."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise DataError(f"{p}: already exists; remove it or choose another --out folder")
    p.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{rel} {int(lab)}\n" for rel, lab in zip(paths, labels, strict=True))
    tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)
    return p


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[C] int64 number of entries per class."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.int64)
