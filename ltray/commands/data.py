"""`ltray data stats|split|sources`: inspect and export long-tailed splits.

ltray data stats data.name=cifar10-lt data.root=../shared/data/cifar10 data.imbalance_ratio=100
ltray data stats --config my.yaml --plot counts.png
ltray data split --config my.yaml --out splits/cifar10-lt-r100
ltray data sources
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ltray.config import load_config
from ltray.data import SOURCES, SPLITS, prepare_data, write_list_file
from ltray.data.transforms import augment_text, normalization_text
from ltray.errors import DataError
from ltray.metrics import GROUP_NAMES

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "data",
        help="inspect and export long-tailed splits",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="YAML config file (default: built-in defaults)")
        p.add_argument(
            "overrides", nargs="*", help="dotted overrides, e.g. data.imbalance_ratio=50"
        )
        p.add_argument(
            "--no-image-check",
            action="store_true",
            help="list files: count labels without checking that the images exist",
        )

    stats = sub.add_parser(
        "stats", help="per-class train/val/test counts, shot groups, imbalance ratio"
    )
    common(stats)
    stats.add_argument("--plot", metavar="PNG", help="also write a histogram of the class counts")
    split = sub.add_parser("split", help="write train/val/test list files of the split")
    common(split)
    split.add_argument("--out", required=True, metavar="DIR", help="folder for the list files")
    sub.add_parser("sources", help="list the dataset sources (data.name)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    if args.data_command == "sources":
        for name in SOURCES.names():
            doc = (SOURCES.get(name).__doc__ or "").strip().splitlines()
            print(f"{name:14s} {doc[0] if doc else ''}")
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.data_command == "split":
        return _split(cfg.data, Path(args.out), check_images=not args.no_image_check)
    return _stats(cfg.data, args.plot, check_images=not args.no_image_check)


def _split(dcfg: Any, out: Path, *, check_images: bool) -> int:

    for split in SPLITS:  # refuse before any work
        if (out / f"{split}.txt").exists():
            raise DataError(
                f"{out / f'{split}.txt'}: already exists; remove it or choose another --out"
            )
    data = prepare_data(dcfg, check_images=check_images, write_splits=False)
    for split in SPLITS:
        path = write_list_file(out / f"{split}.txt", data.ids(split), data.labels(split))
        print(f"{split:5s} {len(data.labels(split)):7d} images → {path}")
    if data.split_info["val_is_test"]:
        print(data.split_info["val_note"])
    return 0


def _stats(dcfg: Any, plot: str | None, *, check_images: bool) -> int:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    data = prepare_data(dcfg, check_images=check_images)
    info = data.split_info
    counts = data.class_counts
    console = Console()
    per_split = {s: np.bincount(data.labels(s), minlength=data.num_classes) for s in SPLITS}
    table = Table(title=f"{info['source']}: images per class and split")
    for col in ("class", "name", *SPLITS, "group"):
        table.add_column(col, justify="left" if col in ("name", "group") else "right")
    for c in range(data.num_classes):
        table.add_row(
            str(c),
            data.class_names[c],
            *(str(int(per_split[s][c])) for s in SPLITS),
            GROUP_NAMES[data.groups[c]],
        )
    if data.num_classes <= 200:
        console.print(table)
    sizes = info["group_sizes"]
    many, few = info["thresholds"]["many"], info["thresholds"]["few"]
    rules = {"many": f"> {many}", "medium": f"{few}..{many}", "few": f"< {few}"}
    groups = ", ".join(
        f"{g} ({rules[g]}): {sizes[g] if sizes[g] is not None else 'absent'}" for g in GROUP_NAMES
    )
    console.print(f"source: {info['source']} ({info['origin']}), root: {info['root']}")
    console.print(
        f"profile: {info['profile']}, rho requested: {info['rho_requested']}, "
        f"n_max: {info['n_max']}, seed: {info['seed']}"
    )
    console.print(
        f"classes: {data.num_classes}, train images: {int(counts.sum())}, "
        f"max/min: {int(counts.max())}/{int(counts.min())}, imbalance ratio: {info['rho']:.2f}"
    )
    console.print(f"shot groups (classes): {groups}")
    sizes_text = ", ".join(
        f"{s} {int(per_split[s].sum())} ({int(per_split[s].min())}-{int(per_split[s].max())} "
        "per class)"
        for s in SPLITS
    )
    console.print(f"splits: {sizes_text}; {info['val_note']}", markup=False)
    for note in info.get("notes", []):
        if note != info["val_note"]:  # the val/test warning is printed just above
            console.print(f"note: {note}", markup=False)
    console.print(
        f"family: {data.family}, input {data.in_channels}x{data.image_size}x{data.image_size}"
    )
    console.print(f"normalization: {normalization_text(data.spec)}", markup=False)
    console.print(f"augment (train): {augment_text(data.spec)}", markup=False)
    if info["list_files"]:
        console.print(f"split list files: {Path(info['list_files']['train']).parent}")
    if plot:
        _plot(counts, data.groups, Path(plot), title=f"{info['source']} (rho={info['rho']:.1f})")
        console.print(f"histogram → {plot}")
    return 0


def _plot(counts: Any, groups: Any, path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = ["tab:blue", "tab:orange", "tab:red"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(counts)), counts, color=[colors[g] for g in groups], width=1.0)
    ax.set_xlabel("class index")
    ax.set_ylabel("train images")
    ax.set_yscale("log")
    ax.set_title(title)
    from matplotlib.patches import Patch

    names = ("many", "medium", "few")
    ax.legend(handles=[Patch(color=c, label=n) for c, n in zip(colors, names, strict=True)])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
