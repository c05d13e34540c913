"""What a source hands over: :class:`Pool` (the images of one original split) and
:class:`SourceData` (all pools of a dataset plus its family constants), and the on-disk cache
of decoded small images.

The decode cache is one ``.npy`` uint8 array [N, C, H, W] per (source, root, mode, file list,
and each file's size and modification time) under ``ltray.paths.data_cache_dir()/decoded``,
keyed by a hash of those: an image overwritten in place (same name, new pixels) changes its
size or mtime and the folder is decoded again. It is memory-mapped (``allow_pickle=False``) so
a second :func:`~ltray.data.prepare_data` — e.g. in every Ray worker — reads only the images it
keeps and never decodes a JPEG again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ltray.errors import DataError
from ltray.paths import data_cache_dir

__all__ = ["Pool", "SourceData", "decode_cached", "cache_key", "file_stamps"]


@dataclass
class Pool:
    """The images of one original split (train, val or test).

    ``ids`` are the list-file entries (a path relative to ``root`` for file-based sources, a
    stable ``split/index`` id otherwise); ``images`` is uint8 [N, C, H, W] for in-memory sources
    and ``None`` for lazily decoded files; ``list_file`` is where the ids were read from (for
    ``file:line`` in error messages).
    """

    ids: list[str]
    labels: np.ndarray
    images: np.ndarray | None = None
    root: Path | None = None
    list_file: Path | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: np.ndarray) -> Pool:
        """The pool restricted to ``idx`` (in that order); file:line provenance is dropped."""
        idx = np.asarray(idx, dtype=np.int64)
        return replace(
            self,
            ids=[self.ids[i] for i in idx],
            labels=self.labels[idx],
            images=None if self.images is None else np.asarray(self.images[idx]),
            list_file=None,
        )


@dataclass
class SourceData:
    """A dataset as a source found it, before the long-tailed selection.

    ``test is None``: the source has a single pool; val and test are held out of ``train``
    (digits). ``long_tailed``: ``train`` is already long-tailed (list files), no selection.
    """

    name: str
    origin: str
    root: str | None
    family: str
    class_names: list[str]
    native_size: int
    in_channels: int
    train: Pool
    test: Pool | None
    val: Pool | None = None
    long_tailed: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    notes: list[str] = field(default_factory=list)


def cache_key(*parts: str | Sequence[str]) -> str:
    """16-hex-digit sha256 of the parts (sequences are joined by newlines)."""
    h = hashlib.sha256()
    for part in parts:
        text = part if isinstance(part, str) else "\n".join(part)
        h.update(text.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def file_stamps(root: Path, rels: Sequence[str], *, threads: int = 8) -> list[str]:
    """``"size mtime_ns"`` of every ``root/rels[i]``: what the decoded pixels depend on besides
    the name (a file rewritten in place changes one of them). A missing file is a
    :class:`DataError` naming it."""

    prefix = f"{root}{os.sep}"  # string paths: a Path per file costs more than its stat

    def stamp(rel: str) -> str:
        try:
            st = os.stat(prefix + rel)
        except OSError as exc:
            raise DataError(
                f"image {root / rel} cannot be read ({exc.strerror}); replace or remove the file"
            ) from None
        return f"{st.st_size} {st.st_mtime_ns}"

    with ThreadPoolExecutor(max_workers=max(1, threads)) as ex:  # stat calls release the GIL
        return list(ex.map(stamp, rels, chunksize=1024))


def _decode_one(path: Path, mode: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert(mode), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"image {path} cannot be read ({exc}); replace or remove the file"
        ) from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_cached(
    *, source: str, root: Path, rels: Sequence[str], mode: str, threads: int = 4
) -> np.ndarray:
    """uint8 [N, C, H, W] images ``root/rels[i]`` decoded with PIL (``mode`` "RGB" or "L"),
    through the disk cache (memory-mapped read-only on a hit).

    The cache key holds each file's size and modification time (:func:`file_stamps`), so an
    image rewritten in place is decoded again. Every image must have the first image's size;
    otherwise a :class:`DataError` names it.
    """
    key = cache_key(source, str(root.resolve()), mode, rels, file_stamps(root, rels))
    cache = data_cache_dir() / "decoded" / f"{source}-{key}.npy"
    if cache.is_file():
        try:
            arr = np.load(cache, mmap_mode="r", allow_pickle=False)
            if arr.ndim == 4 and arr.shape[0] == len(rels) and arr.dtype == np.uint8:
                return arr
        except (OSError, ValueError):
            pass  # a torn or foreign file: decode again and replace it
    paths = [root / r for r in rels]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as ex:
        # PIL releases the GIL while decoding; chunks keep the scheduling overhead small.
        arrays = list(ex.map(lambda p: _decode_one(p, mode), paths, chunksize=256))
    shape = arrays[0].shape
    for p, a in zip(paths, arrays, strict=True):
        if a.shape != shape:
            raise DataError(
                f"image {p} is {a.shape[1]}x{a.shape[0]} but {paths[0]} is {shape[1]}x{shape[0]}; "
                "in-memory datasets need one image size: resize the images first"
            )
    out = np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            np.save(fh, out, allow_pickle=False)
        tmp.replace(cache)
    except OSError:
        pass  # a read-only cache folder only costs speed
    return out
