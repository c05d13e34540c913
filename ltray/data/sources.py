"""Dataset sources, registered by name in :data:`SOURCES` (``data.name``).

A source reads a dataset as it is on disk and returns a :class:`~ltray.data.pools.SourceData`;
the long-tailed selection and the val carve-out happen later, in :mod:`ltray.data.prepare`.

- ``digits-lt`` (default, offline): scikit-learn's bundled 8×8 digits.
- ``cifar10-lt`` / ``cifar100-lt``: an ImageFolder tree ``root/{train,test}/<class>/NNNN.jpg``,
  else a torchvision pickle copy under ``root``, else a torchvision download
  (``data.download=true``).
- ``mnist-lt``: torchvision's raw MNIST layout (``root/MNIST/raw``).
- ``imagefolder``: any ``root/train/<class>/...``, ``root/test/...`` (+ optional ``root/val``).
- ``listfile``: ``data.train_list``/``val_list``/``test_list`` over ``data.root``; already
  long-tailed; decoded lazily per item.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ltray.config import DataConfig
from ltray.data.listfiles import check_images_exist, check_labels, read_list_file
from ltray.data.pools import Pool, SourceData, decode_cached
from ltray.errors import DataError
from ltray.registry import Registry

__all__ = ["SOURCES", "SourceFn", "CIFAR10_CLASSES", "IMAGE_EXTENSIONS", "scan_image_folder"]

SourceFn = Callable[..., SourceData]
SOURCES: Registry[SourceFn] = Registry("dataset source")

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
_SMALL_MAX = 64  # images up to this size are decoded once and kept in memory


def _require_root(cfg: DataConfig, what: str) -> Path:
    if cfg.root is None:
        raise DataError(f"data.root is not set; {cfg.name} needs it: set data.root to {what}")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise DataError(f"data.root={cfg.root}: folder not found; point it at {what}")
    return root


def scan_image_folder(split_dir: Path, *, rel_to: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(class names sorted, relative paths, labels) of ``split_dir/<class>/<image>``.

    Files are sorted by name within each class, so numbered files keep their original order.
    """
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    rels: list[str] = []
    labels: list[int] = []
    for c, name in enumerate(classes):
        with os.scandir(split_dir / name) as it:
            files = sorted(
                e.name
                for e in it
                if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS
            )
        base = (split_dir / name).relative_to(rel_to).as_posix()
        rels.extend(f"{base}/{f}" for f in files)
        labels.extend([c] * len(files))
    return classes, rels, np.asarray(labels, dtype=np.int64)


def _folder_pool(root: Path, split: str, classes: list[str], *, name: str) -> Pool:
    split_dir = root / split
    found, rels, labels = scan_image_folder(split_dir, rel_to=root)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"{split_dir}: class folder(s) {', '.join(unknown[:5])} are not in {root / 'train'}; "
            f"{name} needs the same class folders in every split"
        )
    remap = np.asarray([classes.index(c) for c in found], dtype=np.int64)
    return Pool(ids=rels, labels=remap[labels] if len(labels) else labels, root=root)


def _image_folder(
    root: Path,
    *,
    name: str,
    expect: list[str] | None,
    num_classes: int | None,
    require_test: bool = True,
) -> SourceData:
    """An ImageFolder tree; small images (≤ 64 px) are decoded into memory through the cache."""
    if not (root / "train").is_dir():
        raise DataError(f"{root}: no train/ folder; expected root/train/<class>/<image>")
    classes, rels, labels = scan_image_folder(root / "train", rel_to=root)
    if expect is not None and classes != expect:
        raise DataError(
            f"{root / 'train'}: class folders {classes} are not the expected {expect}; "
            f"point data.root at a {name} ImageFolder copy"
        )
    if num_classes is not None and len(classes) != num_classes:
        raise DataError(
            f"{root / 'train'}: {len(classes)} class folders, {name} has {num_classes}; "
            "point data.root at the right copy"
        )
    if not rels:
        raise DataError(
            f"{root / 'train'}: no images found (extensions {sorted(IMAGE_EXTENSIONS)})"
        )
    train = Pool(ids=rels, labels=labels, root=root)
    test = _folder_pool(root, "test", classes, name=name) if (root / "test").is_dir() else None
    if test is None and require_test:
        raise DataError(f"{root}: no test/ folder; expected root/test/<class>/<image>")
    val = _folder_pool(root, "val", classes, name=name) if (root / "val").is_dir() else None

    from PIL import Image

    with Image.open(root / rels[0]) as im:
        w, h = im.size
        gray = im.mode in ("L", "1", "I;16")
    mode = "L" if gray else "RGB"
    channels = 1 if gray else 3
    if max(w, h) > _SMALL_MAX:  # large images: decoded per item (imagenet family)
        return SourceData(
            name=name,
            origin="imagefolder (files)",
            root=str(root),
            family="imagenet",
            class_names=classes,
            native_size=224,
            in_channels=3,
            train=train,
            test=test,
            val=val,
        )
    for split, pool in (("train", train), ("test", test), ("val", val)):
        if pool is not None and len(pool):
            pool.images = decode_cached(
                source=f"{name}-{split}", root=root, rels=pool.ids, mode=mode
            )
    return SourceData(
        name=name,
        origin="imagefolder (decoded, cached)",
        root=str(root),
        family="gray_small" if gray else "cifar",
        class_names=classes,
        native_size=h,
        in_channels=channels,
        train=train,
        test=test,
        val=val,
    )


def _array_pool(split: str, images: np.ndarray, labels: np.ndarray) -> Pool:
    """A pool of in-memory images [N, H, W] or [N, H, W, C] uint8."""
    arr = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    ids = [f"{split}/{i:05d}" for i in range(len(arr))]
    return Pool(
        ids=ids, labels=np.asarray(labels, dtype=np.int64), images=np.ascontiguousarray(arr)
    )


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: (images float [1797, 8, 8] in 0..16, labels [1797]).

    Read straight from the CSV file that ships inside scikit-learn (what ``load_digits``
    parses): importing scikit-learn costs seconds at every start, the file costs milliseconds.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            raw = np.loadtxt(path, delimiter=",")
            return raw[:, :-1].reshape(-1, 8, 8), raw[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # a layout this reader does not know

    d = load_digits()
    return d.images, d.target


@SOURCES.register("digits-lt")
def digits_source(cfg: DataConfig, *, check_images: bool = True) -> SourceData:
    """scikit-learn's 1,797 8×8 digits (0..16 scaled to 0..255); one pool, val/test held out."""
    raw, target = _load_digits()
    images = np.rint(raw * (255.0 / 16.0)).astype(np.uint8)  # [N, 8, 8]
    return SourceData(
        name="digits-lt",
        origin="sklearn.datasets.load_digits",
        root=None,
        family="gray_small",
        class_names=[str(i) for i in range(10)],
        native_size=8,
        in_channels=1,
        train=_array_pool("digits", images, target),
        test=None,
        mean=(0.3053,),
        std=(0.3760,),
    )


def _cifar(cfg: DataConfig, *, num_classes: int) -> SourceData:
    name = f"cifar{num_classes}-lt"
    root = _require_root(
        cfg, f"a CIFAR-{num_classes} ImageFolder tree (train/, test/) or torchvision copy"
    )
    if (root / "train").is_dir():
        expect = CIFAR10_CLASSES if num_classes == 10 else None
        return _image_folder(root, name=name, expect=expect, num_classes=num_classes)
    import torchvision

    cls = torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100
    try:
        tr = cls(str(root), train=True, download=cfg.download)
        te = cls(str(root), train=False, download=cfg.download)
    except RuntimeError as exc:
        raise DataError(
            f"data.root={root}: no CIFAR-{num_classes} ImageFolder tree (train/, test/) and no "
            f"torchvision copy ({exc}); set data.download=true (needs internet) or fix data.root"
        ) from None
    return SourceData(
        name=name,
        origin="torchvision pickle",
        root=str(root),
        family="cifar",
        class_names=list(tr.classes),
        native_size=32,
        in_channels=3,
        train=_array_pool("train", tr.data, np.asarray(tr.targets)),
        test=_array_pool("test", te.data, np.asarray(te.targets)),
    )


@SOURCES.register("cifar10-lt")
def cifar10_source(cfg: DataConfig, *, check_images: bool = True) -> SourceData:
    """CIFAR-10: ImageFolder tree (root/train, root/test), torchvision copy, or download."""
    return _cifar(cfg, num_classes=10)


@SOURCES.register("cifar100-lt")
def cifar100_source(cfg: DataConfig, *, check_images: bool = True) -> SourceData:
    """CIFAR-100: ImageFolder tree (root/train, root/test), torchvision copy, or download."""
    return _cifar(cfg, num_classes=100)


@SOURCES.register("mnist-lt")
def mnist_source(cfg: DataConfig, *, check_images: bool = True) -> SourceData:
    """torchvision's raw MNIST; ``data.root`` is the folder holding ``MNIST/`` (or MNIST/)."""
    root = _require_root(cfg, "the folder that holds MNIST/raw (torchvision layout)")
    if root.name == "MNIST" and (root / "raw").is_dir():
        root = root.parent
    import torchvision

    try:
        tr = torchvision.datasets.MNIST(str(root), train=True, download=cfg.download)
        te = torchvision.datasets.MNIST(str(root), train=False, download=cfg.download)
    except RuntimeError as exc:
        raise DataError(
            f"data.root={root}: no MNIST in torchvision's layout ({exc}); expected "
            f"{root}/MNIST/raw/*-ubyte, or set data.download=true (needs internet)"
        ) from None
    return SourceData(
        name="mnist-lt",
        origin="torchvision MNIST raw",
        root=str(root),
        family="gray_small",
        class_names=[str(i) for i in range(10)],
        native_size=28,
        in_channels=1,
        train=_array_pool("train", tr.data.numpy(), tr.targets.numpy()),
        test=_array_pool("test", te.data.numpy(), te.targets.numpy()),
    )


@SOURCES.register("imagefolder")
def imagefolder_source(cfg: DataConfig, *, check_images: bool = True) -> SourceData:
    """Any root/train/<class>/, root/test/<class>/ (+ root/val/) tree; ≤ 64 px kept in memory."""
    root = _require_root(cfg, "a folder with train/<class>/ and test/<class>/ (val/ optional)")
    return _image_folder(root, name="imagefolder", expect=None, num_classes=cfg.num_classes)


def _class_names_from_paths(paths: list[str], labels: np.ndarray, num_classes: int) -> list[str]:
    """The parent folder of each class's first image (ImageNet-LT/Places-LT style), when those
    are distinct; otherwise ``class_<i>``."""
    names = [f"class_{c}" for c in range(num_classes)]
    first = {}
    for p, y in zip(paths, labels.tolist(), strict=True):
        first.setdefault(y, p)
    parents = {c: Path(p).parent.name for c, p in first.items()}
    if len(set(parents.values())) == len(parents) and all(parents.values()):
        for c, n in parents.items():
            names[c] = n
    return names


@SOURCES.register("listfile")
def listfile_source(cfg: DataConfig, *, check_images: bool = True) -> SourceData:
    """List files (``relative/path label``) over ``data.root``; already long-tailed."""
    lists = {"train": cfg.train_list, "val": cfg.val_list, "test": cfg.test_list}
    for key in ("train", "test"):
        if lists[key] is None:
            raise DataError(
                f"data.{key}_list is not set; the listfile source needs data.train_list and "
                "data.test_list (data.val_list optional) with `relative/path label` lines"
            )
    if cfg.root is None:
        raise DataError("data.root is not set; listfile paths are relative to data.root")
    root = Path(cfg.root).expanduser()
    if check_images and not root.is_dir():
        raise DataError(f"data.root={cfg.root}: folder not found; the list paths are under it")
    parsed = {k: read_list_file(v) for k, v in lists.items() if v is not None}
    num_classes = cfg.num_classes or int(parsed["train"][1].max()) + 1  # classes of the train list
    pools: dict[str, Pool] = {}
    for key, (paths, labels) in parsed.items():
        check_labels(labels, num_classes, source=lists[key])
        if check_images:
            check_images_exist(root, paths, source=lists[key])
        pools[key] = Pool(ids=paths, labels=labels, root=root, list_file=Path(lists[key]))
    names = _class_names_from_paths(*parsed["train"], num_classes)
    return SourceData(
        name="listfile",
        origin="list files",
        root=str(root),
        family="imagenet",
        class_names=names,
        native_size=224,
        in_channels=3,
        train=pools["train"],
        test=pools["test"],
        val=pools.get("val"),
        long_tailed=True,
    )
