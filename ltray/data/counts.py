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
from ltray.data.listfiles import read_list_file
from ltray.data.longtail import profile_counts
from ltray.data.sources import _load_digits, scan_image_folder

__all__ = [
    "AS_IS_RHO",
    "as_is_note",
    "effective_profile",
    "folder_counts",
    "holdout_per_class",
    "resolve_profile",
    "train_counts",
]

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
    _, _, labels = scan_image_folder(Path(train), rel_to=Path(train).parent)
    return np.bincount(labels) if len(labels) else None


def _digits_pool(cfg: DataConfig) -> np.ndarray:
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
    try:
        if cfg.name == "listfile":
            if cfg.train_list is None or not Path(cfg.train_list).is_file():
                return None
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


# A folder's train/ whose largest class holds at least this many times the images of its
# smallest is taken as already long-tailed when no data.profile is asked for.
AS_IS_RHO = 2.0


def resolve_profile(cfg: DataConfig, source: str, pool_counts: np.ndarray) -> str:
    """The profile a split uses: ``data.profile`` when set; else ``as_is`` for an ImageFolder
    whose train/ is already imbalanced (the user's own long-tailed data), ``exp`` otherwise."""
    if cfg.profile is not None:
        return cfg.profile
    counts = np.asarray(pool_counts)
    imbalanced = len(counts) > 1 and counts.max() >= AS_IS_RHO * max(int(counts.min()), 1)
    return "as_is" if source == "imagefolder" and imbalanced else "exp"


def as_is_note(root: str | None, pool_counts: np.ndarray, rho: float | None = None) -> str:
    """The one line that says an imbalanced folder is used as it is (``rho``: a
    ``data.imbalance_ratio`` that was asked for, and is therefore not applied)."""
    hi, lo = int(np.max(pool_counts)), int(np.min(pool_counts))
    dropped = (
        f"; data.imbalance_ratio={rho:g} is NOT applied (data.profile=exp cuts it to that ratio)"
        if rho is not None
        else " (data.profile=exp re-profiles it)"
    )
    return (
        f"data.profile: {root}/train is already long-tailed ({hi} down to {lo} images per "
        f"class, rho={hi / max(lo, 1):.0f}); used as it is, shot groups from its own "
        f"counts{dropped}"
    )


def effective_profile(cfg: DataConfig) -> str:
    """What ``data.profile`` resolves to for ``cfg`` without decoding an image (an ImageFolder's
    train/ is counted): two configs with the same effective profile make the same split."""
    if cfg.name == "listfile":
        return "given by the list file"
    if cfg.profile is not None or cfg.name != "imagefolder" or cfg.root is None:
        return cfg.profile or "exp"
    counts = folder_counts(cfg.root)
    return "exp" if counts is None else resolve_profile(cfg, cfg.name, counts)


def holdout_per_class(pool_counts: np.ndarray, val_per_class: int) -> int:
    """Images per class a single-pool source holds out for test and again for val: at most
    ``val_per_class`` and a quarter of the smallest class (the rest keeps >= half of it)."""
    return int(min(val_per_class, np.min(pool_counts) // 4))
