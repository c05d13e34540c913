"""Score a finished run on another split or dataset: every head, the run's own shot groups.

    run = ltray.load_run(run_dir)
    ev = evaluate_run(run, ["data.seed=1"], split="test")   # another seeded hold-out
    save_evaluation(ev, out_dir)                              # table.txt, metrics.csv, plot

Overrides are ``data.*`` keys applied to the run's own config (a bare ``seed=1`` means
``data.seed=1``); the images are preprocessed at the run's input size. Many / Medium / Few are
the run's groups (its train class counts and thresholds), not the new data's: the question is
how the classes the model saw rarely fare elsewhere.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltray.config import Config, build_config, read_yaml
from ltray.errors import ConfigError, DataError
from ltray.inference.load import LoadedRun
from ltray.metrics import HeadMetrics
from ltray.train.evaluate import evaluate_heads, to_device
from ltray.train.tables import HEAD_LABELS

__all__ = ["Evaluation", "evaluate_run", "evaluation_table", "save_evaluation"]

_CSV_KEYS = ("many", "medium", "few", "overall", "top1", "top5", "ece")


@dataclass
class Evaluation:
    """Metrics of every head of ``run_dir`` on ``split`` of the data ``data`` describes."""

    run_dir: Path
    split: str
    data: dict[str, Any]  # dataset name, overrides, split sizes
    class_counts: list[int]  # the run's train counts (its shot groups)
    heads: dict[str, HeadMetrics]


def _data_config(run: LoadedRun, overrides: list[str]) -> Config:
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"data overrides take key=value, got {', '.join(bad)}")
    # A bare key is a data key: `seed=1` means `data.seed=1`.
    keys = [o if "." in o.split("=", 1)[0] else f"data.{o}" for o in overrides]
    other = [k for k in keys if not k.startswith("data.")]
    if other:
        raise ConfigError(
            f"{', '.join(other)}: `ltray evaluate` takes data.* overrides only (the model is fixed)"
        )
    if not any(k.startswith("data.image_size=") for k in keys):
        keys.append(f"data.image_size={run.input.image_size}")  # the size the network expects
    raw, lines = read_yaml(run.run_dir / "config.yaml")
    return build_config(raw, source=str(run.run_dir / "config.yaml"), lines=lines, overrides=keys)


@torch.inference_mode()
def evaluate_run(
    run: LoadedRun, overrides: list[str] | None = None, *, split: str = "test"
) -> Evaluation:
    """Evaluate every head of ``run`` on ``split`` of its data with ``overrides``.

    Raises:
        ConfigError: an override is not a ``data.*`` key or is invalid.
        DataError: the data has another number of classes or channels than the run.
    """
    from ltray.data import make_loader, prepare_data

    overrides = list(overrides or [])
    cfg = _data_config(run, overrides)
    data = prepare_data(cfg.data, write_splits=False)
    if data.num_classes != run.num_classes:
        raise DataError(
            f"{cfg.data.name}: {data.num_classes} classes, the run has {run.num_classes}; "
            "evaluate on data with the run's classes"
        )
    if data.in_channels != run.input.in_channels:
        raise DataError(
            f"{cfg.data.name}: {data.in_channels}-channel images, the run's network takes "
            f"{run.input.in_channels}"
        )
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split {split}: use train, val or test")
    loader = make_loader(
        data,
        split,
        batch_size=cfg.data.eval_batch_size,
        augment=False,
        shuffle=False,
        num_workers=cfg.data.loader_workers,
        device=run.device,
    )
    parts: dict[str, list[torch.Tensor]] = {}
    labels = []
    for x, y in loader:
        for head, z in run.logits(to_device(x, run.device, channels_last=False)).items():
            parts.setdefault(head, []).append(z.cpu())
        labels.append(torch.as_tensor(y).cpu())
    y_all = torch.cat(labels).numpy().astype(np.int64)
    logits = {h: torch.cat(p).numpy() for h, p in parts.items()}
    heads = evaluate_heads(logits, y_all, run.groups, ece_bins=run.config.eval.ece_bins)
    return Evaluation(
        run_dir=run.run_dir,
        split=split,
        data={
            "name": cfg.data.name,
            "overrides": overrides,
            "size": int(len(y_all)),
            "val_protocol": cfg.data.val_protocol,
        },
        class_counts=[int(c) for c in run.class_counts],
        heads=heads,
    )


def _pct(v: float | None) -> str:
    return "—" if v is None or v != v else f"{100 * v:.1f}"


def evaluation_table(ev: Evaluation) -> Any:
    """Many / Medium / Few / Overall (and top-5, ECE) of every head, as a rich Table."""
    from rich.table import Table

    over = " ".join(ev.data["overrides"]) or "the run's own data"
    table = Table(
        title=f"{ev.split} accuracy (%) — {ev.data['name']} ({over}), {ev.data['size']} images"
    )
    for col in ("head", "Many", "Medium", "Few", "Overall", "top-1", "top-5", "ECE"):
        table.add_column(col, justify="left" if col == "head" else "right", no_wrap=True)
    for head, m in ev.heads.items():
        table.add_row(
            HEAD_LABELS.get(head, head),
            *(_pct(v) for v in (m.many, m.medium, m.few, m.overall, m.top1, m.top5, m.ece)),
        )
    table.caption = "shot groups: the run's train class counts"
    return table


def save_evaluation(ev: Evaluation, out_dir: str | Path) -> Path:
    """Write ``metrics.csv`` (one row per head), ``evaluation.json``, ``table.txt`` and
    ``per_class.png`` into ``out_dir``."""
    from rich.console import Console

    from ltray.plots import per_class_plot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["head", "split", "dataset", *_CSV_KEYS])
        for head, m in ev.heads.items():
            vals = [getattr(m, k) for k in _CSV_KEYS]
            w.writerow([head, ev.split, ev.data["name"], *("" if v is None else v for v in vals)])
    record = {
        "run_dir": str(ev.run_dir),
        "split": ev.split,
        "data": ev.data,
        "class_counts": ev.class_counts,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        # The per-class plot reads heads → "test"; the split evaluated is ``split``.
        "heads": {h: {"test": vars(m)} for h, m in ev.heads.items()},
    }
    (out / "evaluation.json").write_text(json.dumps(record, indent=1))
    console = Console(width=110, record=True, file=io.StringIO(), color_system=None)
    console.print(evaluation_table(ev))
    (out / "table.txt").write_text(console.export_text())
    per_class_plot(record, out / "per_class.png")
    return out
