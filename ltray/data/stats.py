"""A dataset's own normalisation statistics: per-channel mean and std of its train split.

    st = train_split_stats(pool, source="imagefolder", mode="L", size=28)
    st.mean, st.std          # per channel, of [0, 1] pixels

Computed once over the images of the train split as the network sees them (pixels scaled to
[0, 1]; in-memory splits as decoded, file-backed splits through the eval resize and centre crop,
on a seeded sample of at most :data:`MAX_FILES` images), then cached as a small JSON file under
``ltray.paths.data_cache_dir()/stats``, keyed on what the numbers depend on: the source, the root,
the colour mode, the input size and the split's image ids. A second run on the same split reads
the file and decodes nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltray.data.listfiles import line_of
from ltray.data.pools import Pool, cache_key
from ltray.data.transforms import imagenet_transform
from ltray.errors import DataError
from ltray.paths import data_cache_dir

__all__ = ["MAX_FILES", "SplitStats", "channel_stats", "train_split_stats", "stats_cache_path"]

MAX_FILES = 5000  # file-backed splits: a seeded sample this large pins mean/std to ~1e-3
_CHUNK = 4096
_VERSION = "1"  # bump when the recipe changes: old cache files are then ignored


@dataclass(frozen=True)
class SplitStats:
    """Per-channel statistics of a train split: ``mean``/``std`` of [0, 1] pixels, ``note``
    (which images they were computed on), ``cached`` (read from ``path`` rather than computed
    by this call)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    note: str
    cached: bool
    path: Path


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of uint8 images [N, C, H, W] scaled to [0, 1] (population std
    over every pixel of every image), accumulated in float64 chunk by chunk."""
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(f"images must be non-empty uint8 [N, C, H, W], got {images.shape}")
    c = images.shape[1]
    total = np.zeros(c)
    squares = np.zeros(c)
    for start in range(0, len(images), _CHUNK):
        chunk = np.asarray(images[start : start + _CHUNK], dtype=np.float64) / 255.0
        total += chunk.sum(axis=(0, 2, 3))
        squares += np.square(chunk).sum(axis=(0, 2, 3))
    n = len(images) * images.shape[2] * images.shape[3]
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
    if np.any(std == 0):
        raise DataError(
            "the train split's images are constant in some channel (std 0); normalising by "
            "them is undefined: check the images, or set data.normalize=family"
        )
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def stats_cache_path(
    *, source: str, root: Path | None, mode: str, size: int, ids: Sequence[str]
) -> Path:
    """Where the statistics of one train split are cached (the key names every input)."""
    where = str(Path(root).resolve()) if root is not None else "-"
    key = cache_key(_VERSION, source, where, mode, str(size), sorted(ids))
    return data_cache_dir() / "stats" / f"{source}-{key}.json"


def _read(path: Path) -> dict | None:
    try:
        rec = json.loads(path.read_text())
        if isinstance(rec.get("mean"), list) and isinstance(rec.get("std"), list):
            return rec
    except (OSError, ValueError):
        pass  # missing, torn or foreign: compute again
    return None


def _write(path: Path, rec: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rec, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache costs a recomputation next time, nothing else


def _file_images(pool: Pool, *, mode: str, size: int, seed: int) -> np.ndarray:
    """A seeded sample (≤ MAX_FILES) of a file-backed pool, decoded as the eval transform sees
    it: uint8 [n, C, size, size]."""
    from PIL import Image

    assert pool.root is not None
    idx = np.arange(len(pool))
    if len(idx) > MAX_FILES:
        idx = np.sort(np.random.default_rng([seed, 0x57A75]).choice(idx, MAX_FILES, replace=False))
    crop = imagenet_transform(train=False, size=size, normalize=False)
    root = Path(pool.root)

    def one(i: int) -> np.ndarray:
        path = root / pool.ids[i]
        try:
            with Image.open(path) as im:
                return np.asarray(crop(im.convert(mode)), dtype=np.uint8)
        except (OSError, ValueError) as exc:
            at = f" ({line_of(pool.list_file, i)})" if pool.list_file else ""
            raise DataError(
                f"image {path}{at} cannot be read ({exc}) while computing the train split's "
                "mean/std (data.normalize); replace the file or drop its line"
            ) from None

    with ThreadPoolExecutor(max_workers=4) as ex:
        return np.stack(list(ex.map(one, idx.tolist(), chunksize=64)))


def train_split_stats(
    pool: Pool, *, source: str, mode: str, size: int, seed: int = 0
) -> SplitStats:
    """The per-channel mean and std of a train split's images, from the cache when it holds
    them. ``mode``: "L" or "RGB" (file-backed splits are decoded in it); ``size``: the input
    size of file-backed splits (in-memory splits are used as decoded)."""
    path = stats_cache_path(source=source, root=pool.root, mode=mode, size=size, ids=pool.ids)
    rec = _read(path)
    cached = rec is not None
    if rec is None:
        if pool.images is not None:
            images, how = pool.images, "all"
        else:
            images = _file_images(pool, mode=mode, size=size, seed=seed)
            how = "all" if len(images) == len(pool) else "a seeded sample of"
        mean, std = channel_stats(images)
        rec = {"mean": list(mean), "std": list(std), "images": int(len(images)), "how": how}
        _write(path, rec)
    note = f"the dataset's own: train split, {rec['how']} {rec['images']} images"
    return SplitStats(tuple(rec["mean"]), tuple(rec["std"]), note, cached, path)
