"""The train split's images per class, from a config alone: no image decoded, no torch.

    counts = train_counts(cfg.data)   # [C] int64, or None when it cannot be known cheaply

The validation pass (:mod:`ltray.validate`) uses it to refuse a metric or ``eval.select_group``
naming a shot group the split will not have (``val_kt_few`` on CIFAR-10-LT at rho=100, whose
fewest class keeps 50 images) before Ray starts. It follows :func:`ltray.data.prepare.prepare_data`
step for step: the pool of each source (counted from its folder or list file, or the fixed sizes
of the torchvision copies), digits' per-class hold-out, then the long-tailed profile; a test pins
it to ``prepare_data`` on every source the suite can build.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ltray.config import DataConfig
from ltray.data.longtail import profile_counts

__all__ = ["train_counts", "folder_counts"]

# Fixed train pools of the torchvision copies (an ImageFolder tree is counted instead).
_TORCHVISION_POOLS = {
    "cifar10-lt": np.full(10, 5000, dtype=np.int64),
    "cifar100-lt": np.full(100, 500, dtype=np.int64),
    "mnist-lt": np.array(
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949], dtype=np.int64
    ),
}


def folder_counts(root: str | None) -> np.ndarray | None:
    """Images per class folder of ``root/train`` (None: no such folder, or it is empty)."""
    if root is None:
        return None
    train = Path(root).expanduser().resolve() / "train"
    if not train.is_dir():
        return None
    counts = _scan_counts(str(train), train.stat().st_mtime_ns)
    return None if counts is None else counts.copy()


@functools.lru_cache(maxsize=8)
def _scan_counts(train: str, mtime_ns: int) -> np.ndarray | None:
    """Images per class folder of ``train`` (cached: a sweep's validation asks once per
    searched value; the folder's mtime is part of the key)."""
    from ltray.data.sources import scan_image_folder

    _, _, labels = scan_image_folder(Path(train), rel_to=Path(train).parent)
    return np.bincount(labels) if len(labels) else None


def _digits_pool(cfg: DataConfig) -> np.ndarray:
    from ltray.data.prepare import holdout_per_class
    from ltray.data.sources import _load_digits

    counts = np.bincount(_load_digits()[1], minlength=10).astype(np.int64)
    return counts - 2 * max(holdout_per_class(counts, cfg.val_per_class), 0)


def _pool_counts(cfg: DataConfig) -> np.ndarray | None:
    """Images per class of the source's train pool (before the profile), or None."""
    if cfg.name == "digits-lt":
        return _digits_pool(cfg)
    if cfg.name in ("cifar10-lt", "cifar100-lt"):
        return (
            folder_counts(cfg.root)
            if cfg.root and Path(cfg.root, "train").is_dir()
            else (_TORCHVISION_POOLS[cfg.name])
        )
    if cfg.name == "mnist-lt":
        return _TORCHVISION_POOLS[cfg.name]
    if cfg.name == "imagefolder":
        return folder_counts(cfg.root)
    return None


def train_counts(cfg: DataConfig) -> np.ndarray | None:
    """[C] train images per class that ``prepare_data(cfg)`` will produce, or ``None`` when
    that needs more than counting files (a source this module does not know, an unreadable
    folder). Never raises for a bad config: the validation pass reports those itself."""
    from ltray.data.prepare import resolve_profile

    try:
        if cfg.name == "listfile":
            if cfg.train_list is None or not Path(cfg.train_list).is_file():
                return None
            from ltray.data.listfiles import read_list_file

            labels = read_list_file(cfg.train_list)[1]
            n = max(int(labels.max()) + 1 if len(labels) else 0, cfg.num_classes or 0)
            return np.bincount(labels, minlength=n).astype(np.int64)
        pool = _pool_counts(cfg)
        if pool is None or len(pool) == 0 or pool.min() < 1:
            return None
        profile = resolve_profile(cfg, cfg.name, pool)
        if profile == "as_is":
            return pool.astype(np.int64)
        return profile_counts(
            n_max=int(pool.min()), num_classes=len(pool), rho=cfg.imbalance_ratio, profile=profile
        )
    except Exception:  # noqa: BLE001 - a config problem the validation pass names itself
        return None
