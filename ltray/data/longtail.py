"""Long-tailed selection (docs/methods.md#long-tailed-data): per-class profiles, the seeded
selection, the balanced carve-outs (val out of test, val+test out of a single pool) and the shot
groups.

Pure numpy; every random choice uses ``np.random.default_rng([seed, tag, class])`` so a split is
the same on every machine and independent of the other classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ltray.errors import ConfigError, DataError
from ltray.metrics import GROUP_NAMES, shot_groups

__all__ = [
    "PROFILES",
    "profile_counts",
    "select_long_tail",
    "carve_per_class",
    "check_no_empty_class",
    "group_sizes",
    "shot_groups",
]

PROFILES = ("exp", "step")

# Stream tags keep the selection and the carve-outs independent of each other.
_TAG_SELECT = 0
_TAG_CARVE = 1


def profile_counts(*, n_max: int, num_classes: int, rho: float, profile: str) -> np.ndarray:
    """[C] int64 images per class of a long-tailed train split, class 0 = head.

    exp:  n_i = floor(n_max * (1/rho)^(i/(C-1)));
    step: the first floor(C/2) classes keep n_max, the rest floor(n_max/rho).
    An unknown profile is a :class:`ConfigError`, never a silent balanced split.
    """
    if rho < 1:
        raise ConfigError(f"data.imbalance_ratio must be >= 1, got {rho}")
    if n_max < 1 or num_classes < 1:
        raise DataError(
            f"a long-tailed split needs n_max >= 1 and C >= 1, got n_max={n_max}, C={num_classes}"
        )
    i = np.arange(num_classes, dtype=np.float64)
    if profile == "exp":
        if num_classes == 1:
            return np.array([n_max], dtype=np.int64)
        # floor of a float product, like the reference CIFAR-LT code (int(n_max * rho**-(i/(C-1)))).
        return np.array(
            [int(n_max * (1.0 / rho) ** (k / (num_classes - 1))) for k in i], dtype=np.int64
        )
    if profile == "step":
        counts = np.full(num_classes, int(n_max / rho), dtype=np.int64)
        counts[: num_classes // 2] = n_max
        return counts
    raise ConfigError(f"data.profile: unknown profile {profile!r}; known: {', '.join(PROFILES)}")


def _class_rng(seed: int, tag: int, cls: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), tag, int(cls)])


def select_long_tail(
    labels: np.ndarray, counts: np.ndarray, *, seed: int, class_names: Sequence[str] | None = None
) -> np.ndarray:
    """Indices (sorted) keeping ``counts[c]`` images of each class c.

    Per class: the class's indices in original order, a seeded shuffle, the first ``counts[c]``.
    A class with fewer images than requested is a :class:`DataError`.
    """
    labels = np.asarray(labels)
    keep: list[np.ndarray] = []
    for c, n in enumerate(np.asarray(counts)):
        idx = np.flatnonzero(labels == c)
        if n > len(idx):
            name = class_names[c] if class_names else str(c)
            raise DataError(
                f"class {c} ({name}) has {len(idx)} images but the profile asks for {int(n)}; "
                "lower n_max or check the dataset"
            )
        perm = _class_rng(seed, _TAG_SELECT, c).permutation(len(idx))
        keep.append(idx[perm[: int(n)]])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def carve_per_class(
    labels: np.ndarray, per_class: int, *, seed: int, num_classes: int, stream: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (carved, rest): ``per_class`` seeded images of every class are carved
    (all of a class with fewer). Both outputs are sorted index arrays.

    ``stream`` separates several carve-outs of the same pool (e.g. val then test).
    """
    labels = np.asarray(labels)
    carved: list[np.ndarray] = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        perm = np.random.default_rng([int(seed), _TAG_CARVE, stream, c]).permutation(len(idx))
        carved.append(idx[perm[:per_class]])
    cut = np.sort(np.concatenate(carved)) if carved else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), cut, assume_unique=True)
    return cut, rest


def check_no_empty_class(
    counts: np.ndarray, *, class_names: Sequence[str], what: str, fix: str
) -> None:
    """Raise :class:`DataError` naming the first class with no train images."""
    empty = np.flatnonzero(np.asarray(counts) == 0)
    if len(empty):
        c = int(empty[0])
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataError(
            f"class {c} ({class_names[c]}){more} is left with no training images in {what}; "
            f"every class needs at least one: {fix}"
        )


def group_sizes(groups: np.ndarray) -> dict[str, int | None]:
    """Classes per shot group; ``None`` for an empty (absent) group."""
    sizes = np.bincount(np.asarray(groups), minlength=len(GROUP_NAMES))
    return {name: (int(sizes[g]) or None) for g, name in enumerate(GROUP_NAMES)}
