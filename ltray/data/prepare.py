"""``prepare_data(cfg.data) -> LTData``: source → held-out splits → long-tailed train split →
val protocol → shot groups, validated up front and cheap to call again (decoded images come
from the disk cache).

Order of operations (docs/methods.md#long-tailed-data):
1. the source reads the dataset (``SOURCES[data.name]``);
2. a single-pool source (digits) holds out a balanced test and val split per class first;
3. unless the source is already long-tailed (list files), the train pool is cut to the profile
   with n_max = the smallest per-class count of the pool;
4. normalisation: a user's ImageFolder or list files get the per-channel mean/std of their own
   train split (computed once, cached; ``data.normalize``), built-in datasets their published
   values; augmentation is ``data.augment`` over the family's size-scaled defaults;
5. val: the source's val split, else ``val_per_class`` images per class carved out of the
   test split (``val_protocol=carve``), or val = the whole test split (``val_protocol=test``,
   the papers' protocol, flagged in ``split_info``);
6. the split is written as list files under the cache (a reusable artifact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ltray.config import DataConfig
from ltray.data.counts import as_is_note, holdout_per_class, resolve_profile
from ltray.data.listfiles import write_list_file
from ltray.data.longtail import (
    carve_per_class,
    check_no_empty_class,
    group_sizes,
    profile_counts,
    select_long_tail,
)
from ltray.data.pools import Pool, SourceData, cache_key
from ltray.data.sources import SOURCES
from ltray.data.stats import train_split_stats
from ltray.data.transforms import FamilySpec, describe_augment, family_spec, imagenet_transform
from ltray.errors import ConfigError, DataError
from ltray.metrics import shot_groups
from ltray.paths import data_cache_dir

if TYPE_CHECKING:  # torch is imported where images are touched, not where data is validated
    import torch
    from torch.utils.data import Dataset

__all__ = [
    "LTData",
    "prepare_data",
    "SPLITS",
    "VAL_IS_TEST_NOTE",
]

SPLITS = ("train", "val", "test")
VAL_IS_TEST_NOTE = (
    "WARNING: val_protocol=test: the val split IS the test split (the papers' CIFAR-LT "
    "protocol); every choice made on val is made on test, so test numbers are optimistic"
)


@dataclass
class LTData:
    """A prepared long-tailed dataset: its metadata and a Dataset per split."""

    num_classes: int
    class_counts: np.ndarray  # [C] int64 train counts after the selection
    groups: np.ndarray  # [C] 0 many / 1 medium / 2 few
    class_names: list[str]
    in_channels: int
    image_size: int
    small_input: bool
    family: str
    split_info: dict[str, Any]
    spec: FamilySpec
    pools: dict[str, Pool] = field(repr=False)
    _on_device: dict[tuple[str, str], tuple[Pool, Any]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def _pool(self, split: str) -> Pool:
        if split not in self.pools:
            raise ConfigError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        return self.pools[split]

    def labels(self, split: str) -> np.ndarray:
        """[N] int64 labels of ``split`` ("train" | "val" | "test")."""
        return self._pool(split).labels

    def ids(self, split: str) -> list[str]:
        """[N] list-file entries (relative paths or stable ids) of ``split``."""
        return self._pool(split).ids

    @property
    def in_memory(self) -> bool:
        """Whether every split's images are decoded in memory (else they are read per item)."""
        return all(p.images is not None for p in self.pools.values())

    def on_device(self, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 [N, H, W, C], int64 [N]) of an in-memory ``split`` on ``device``, copied
        there once per process and kept (until the split's pool is replaced)."""
        import torch

        from ltray.data.device import to_nhwc

        pool = self._pool(split)
        key = (split, str(device))
        if key not in self._on_device or self._on_device[key][0] is not pool:
            if pool.images is None:
                raise ValueError(f"split {split!r} is read from files, not held in memory")
            labels = torch.from_numpy(np.asarray(pool.labels, dtype=np.int64)).to(device)
            self._on_device[key] = (pool, (to_nhwc(pool.images, device), labels))
        return self._on_device[key][1]

    def dataset(self, split: str, *, augment: bool, normalize: bool = True) -> Dataset:
        """Items ``(x float32 [C, S, S] normalised, y int)`` of ``split``, S = image_size;
        file-backed splits with ``normalize=False`` give uint8 [C, S, S] (the loaders
        normalise on the device)."""
        from ltray.data.datasets import FileImageDataset, TensorImageDataset

        pool = self._pool(split)
        if pool.images is not None:
            return TensorImageDataset(
                images=pool.images,
                labels=pool.labels,
                spec=self.spec,
                augment=augment,
                out_size=self.image_size,
            )
        assert pool.root is not None
        return FileImageDataset(
            root=pool.root,
            paths=pool.ids,
            labels=pool.labels,
            transform=imagenet_transform(
                train=augment, size=self.image_size, spec=self.spec, normalize=normalize
            ),
            list_file=pool.list_file,
        )


def _holdout(src: SourceData, cfg: DataConfig, num_classes: int) -> tuple[Pool, Pool, Pool]:
    """Balanced test then val hold-outs out of a single pool (digits): (train, val, test)."""
    counts = np.bincount(src.train.labels, minlength=num_classes)
    k = holdout_per_class(counts, cfg.val_per_class)
    if k < 1:
        c = int(counts.argmin())
        raise DataError(
            f"class {c} ({src.class_names[c]}) has {int(counts[c])} images, too few to hold out "
            "a val and a test image and keep training images; use a larger dataset"
        )
    test_idx, rest = carve_per_class(
        src.train.labels, k, seed=cfg.seed, num_classes=num_classes, stream=1
    )
    rest_pool = src.train.subset(rest)
    val_idx, train_idx = carve_per_class(
        rest_pool.labels, k, seed=cfg.seed, num_classes=num_classes, stream=2
    )
    return rest_pool.subset(train_idx), rest_pool.subset(val_idx), src.train.subset(test_idx)


def _check_held_out(
    pools: dict[str, Pool], cfg: DataConfig, src: SourceData, *, carved: bool
) -> None:
    """Every class must keep a val and a test image: a class with none would be scored NaN and
    drop out of its shot group and of overall without a word. Raises :class:`DataError` with
    the counts and the fix."""
    names = src.class_names
    num_classes = len(names)
    root = src.root or src.name

    def counts(split: str) -> np.ndarray:
        return np.bincount(pools[split].labels, minlength=num_classes)

    def classes(idx: np.ndarray) -> str:
        listed = ", ".join(f"{int(c)} ({names[int(c)]})" for c in idx[:5])
        return listed + (f" and {len(idx) - 5} more" if len(idx) > 5 else "")

    test, val = counts("test"), counts("val")
    if carved:
        # val was carved out of test: the test pool is test + val of each class.
        pool = test + val
        empty = np.flatnonzero(pool == 0)
        if len(empty):
            raise DataError(
                f"class {classes(empty)} has no test images in {root}/test (folder missing or "
                "empty); every class needs test images to be scored: add them"
            )
        short = np.flatnonzero(test == 0)
        if len(short):
            smallest = int(pool.min())
            fix = (
                f"lower data.val_per_class to {smallest - 1} (the smallest class has "
                f"{smallest} test images)"
                if smallest > 1
                else "add test images"
            )
            most = int(pool[short].max())
            raise DataError(
                f"data.val_per_class={cfg.val_per_class} carves every test image of class "
                f"{classes(short)} into val ({most} test images or fewer), leaving no test "
                f"image to score {'it' if len(short) == 1 else 'them'} on; {fix}, or add a "
                f"{root}/val/<class>/ folder so that test is kept whole"
            )
        return
    for split, where in (("test", cfg.test_list), ("val", cfg.val_list)):
        empty = np.flatnonzero(counts(split) == 0)
        if not len(empty):
            continue
        origin = where or f"{root}/{split}"
        fix = f"add {split} images of {'it' if len(empty) == 1 else 'them'}"
        if split == "val" and src.val is not None:
            drop = "leave data.val_list unset" if cfg.val_list else f"remove {root}/val"
            fix += f", or {drop} to carve val out of test (data.val_per_class)"
        raise DataError(
            f"class {classes(empty)} has no {split} images in {origin}; every class needs "
            f"{split} images to be {'scored' if split == 'test' else 'selected on'}: {fix}"
        )


def _write_splits(pools: dict[str, Pool], *, name: str) -> dict[str, str]:
    """Write the split as list files under the cache; same split → same folder, kept."""
    key = cache_key(
        name,
        *(
            f"{s}:{i} {y}"
            for s in SPLITS
            for i, y in zip(pools[s].ids, pools[s].labels.tolist(), strict=True)
        ),
    )
    folder = data_cache_dir() / "splits" / f"{name}-{key}"
    out = {}
    for split in SPLITS:
        path = folder / f"{split}.txt"
        if not path.is_file():
            try:
                write_list_file(path, pools[split].ids, pools[split].labels, overwrite=True)
            except OSError:
                continue  # a read-only cache only loses the artifact
        out[split] = str(path)
    return out


# Sources whose images are the user's own: no published statistics describe them.
USER_SOURCES = ("imagefolder", "listfile")


def _normalization(
    cfg: DataConfig, src: SourceData, train: Pool, *, size: int, check_images: bool
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None, str | None]:
    """(mean, std, where they came from) per ``data.normalize``; (None, None, None) leaves the
    family's published constants to :func:`family_spec`."""
    own = cfg.normalize == "dataset" or (cfg.normalize == "auto" and src.name in USER_SOURCES)
    if own:
        if train.images is None and not check_images:
            # List files counted without their images: nothing to compute the statistics on.
            return None, None, "not computed (images not checked); the family's values shown"
        mode = "L" if src.in_channels == 1 else "RGB"
        st = train_split_stats(train, source=src.name, mode=mode, size=size, seed=cfg.seed)
        return st.mean, st.std, st.note
    if cfg.normalize == "auto" and src.mean is not None:
        return src.mean, src.std, f"published ({src.name})"
    return None, None, None


def prepare_data(
    cfg: DataConfig, *, check_images: bool = True, write_splits: bool = True
) -> LTData:
    """Build the long-tailed dataset described by ``cfg`` (see the module docstring).

    Raises :class:`DataError` / :class:`ConfigError` with one message naming the key or
    ``file:line`` and the fix, before any expensive work where possible. ``check_images=False``
    skips the existence check of list-file images (counts and groups of ImageNet-LT/Places-LT
    lists without their images).
    """
    source_fn = SOURCES.get(cfg.name, key="data.name")
    src = source_fn(cfg, check_images=check_images)
    num_classes = len(src.class_names)
    if src.test is None:
        train, val, test = _holdout(src, cfg, num_classes)
        holdout = (
            f"val and test: {int(np.bincount(val.labels).min())} per class held out of one pool"
        )
    else:
        train, val, test = src.train, src.val, src.test
        holdout = None

    info: dict[str, Any] = {
        "source": src.name,
        "origin": src.origin,
        "root": src.root,
        "seed": cfg.seed,
        "num_classes": num_classes,
    }
    if src.long_tailed:
        info.update(profile="given by the list file", rho_requested=None, n_max=None)
        where = f"{cfg.train_list}"
        fix = f"check the labels of {where} or set data.num_classes to the real class count"
    else:
        pool_counts = np.bincount(train.labels, minlength=num_classes)
        check_no_empty_class(
            pool_counts,
            class_names=src.class_names,
            what=f"the {src.name} train pool",
            fix="add images to that class folder or check data.root",
        )
        profile = resolve_profile(cfg, src.name, pool_counts)
        if profile == "as_is":
            # The train split is the folder's own: shot groups come from its counts.
            info.update(profile="as_is", rho_requested=None, n_max=None)
            default_rho = DataConfig.model_fields["imbalance_ratio"].default
            asked = cfg.imbalance_ratio if cfg.imbalance_ratio != default_rho else None
            if cfg.profile is None or asked is not None:
                src.notes.append(as_is_note(src.root, pool_counts, asked))
        else:
            n_max = int(pool_counts.min())
            target = profile_counts(
                n_max=n_max, num_classes=num_classes, rho=cfg.imbalance_ratio, profile=profile
            )
            check_no_empty_class(
                target,
                class_names=src.class_names,
                what=f"the {profile} profile (n_max={n_max}, rho={cfg.imbalance_ratio:g})",
                fix=f"lower data.imbalance_ratio (at most {n_max}) or use another data.profile",
            )
            train = train.subset(
                select_long_tail(train.labels, target, seed=cfg.seed, class_names=src.class_names)
            )
            info.update(profile=profile, rho_requested=cfg.imbalance_ratio, n_max=n_max)
        fix = "lower data.imbalance_ratio or use another data.profile"
    counts = np.bincount(train.labels, minlength=num_classes).astype(np.int64)
    check_no_empty_class(counts, class_names=src.class_names, what="the train split", fix=fix)

    if cfg.val_protocol == "test":
        val = test
        val_note = VAL_IS_TEST_NOTE
    elif val is not None:
        val_note = f"val: {holdout}" if holdout else "val: the dataset's own val split"
    else:
        val_idx, test_idx = carve_per_class(
            test.labels, cfg.val_per_class, seed=cfg.seed, num_classes=num_classes
        )
        val, test = test.subset(val_idx), test.subset(test_idx)
        val_note = (
            f"val: {cfg.val_per_class} images per class carved out of test (seeded); "
            "test = the rest"
        )
    pools = {"train": train, "val": val, "test": test}
    _check_held_out(pools, cfg, src, carved=cfg.val_protocol == "carve" and src.val is None)

    default_size = 224 if src.family == "imagenet" else src.native_size
    image_size = cfg.image_size or default_size
    mean, std, stats = _normalization(cfg, src, train, size=image_size, check_images=check_images)
    spec = family_spec(
        src.family,
        native_size=src.native_size,
        in_channels=src.in_channels,
        mean=mean,
        std=std,
        stats=stats,
        augment=cfg.augment,
    )
    groups = shot_groups(counts, cfg.many_threshold, cfg.few_threshold)
    info.update(
        rho=float(counts.max() / counts.min()),
        val_protocol=cfg.val_protocol,
        val_per_class=cfg.val_per_class,
        val_is_test=cfg.val_protocol == "test",
        val_note=val_note,
        holdout=holdout,
        sizes={s: len(p) for s, p in pools.items()},
        train_counts=counts.tolist(),
        val_counts=np.bincount(val.labels, minlength=num_classes).tolist(),
        test_counts=np.bincount(test.labels, minlength=num_classes).tolist(),
        thresholds={"many": cfg.many_threshold, "few": cfg.few_threshold},
        group_sizes=group_sizes(groups),
        family=src.family,
        image_size=image_size,
        normalization={"mean": list(spec.mean), "std": list(spec.std), "stats": spec.stats},
        augment=describe_augment(spec),
        lists_given={
            k: v
            for k, v in (("train", cfg.train_list), ("val", cfg.val_list), ("test", cfg.test_list))
            if v
        },
        notes=list(src.notes),
    )
    if cfg.val_protocol == "test":
        info["notes"].append(VAL_IS_TEST_NOTE)
    info["list_files"] = _write_splits(pools, name=src.name) if write_splits else {}
    for pool in pools.values():  # one contiguous uint8 block per split (not a memory map)
        if pool.images is not None and not pool.images.flags.writeable:
            pool.images = np.array(pool.images)
    return LTData(
        num_classes=num_classes,
        class_counts=counts,
        groups=groups,
        class_names=list(src.class_names),
        in_channels=src.in_channels,
        image_size=image_size,
        small_input=src.family != "imagenet",
        family=src.family,
        split_info=info,
        spec=spec,
        pools=pools,
    )
