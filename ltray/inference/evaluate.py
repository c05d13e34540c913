"""Score a finished run on another split or dataset: every head, the run's own shot groups.

    run = ltray.load_run(run_dir)
    ev = evaluate_run(run, ["data.seed=1"], split="test")   # another seeded hold-out
    save_evaluation(ev, out_dir)                              # table.txt, metrics.csv, plot

Overrides are ``data.*`` keys applied to the run's own config (a bare ``seed=1`` means
``data.seed=1``); the images are preprocessed at the run's input size. Many / Medium / Few are
the run's groups (its train class counts and thresholds), not the new data's: the question is
how the classes the model saw rarely fare elsewhere. Classes are matched by name, and images
the run trained on or selected with are dropped from another split of its own source
(:mod:`ltray.inference.heldout`).

Post-hoc methods fitted by ``ltray fuse`` (the run's latest ``fusion/fuse-*/results.json``) are
scored too: each is fitted again on the run's cached train and val arrays with the settings
that folder recorded (fitting is seeded, so it makes the same choices; a choice that differs
is reported), then applied to the new split's features and logits.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltray.config import Config
from ltray.data import make_loader, prepare_data
from ltray.errors import ConfigError, DataError
from ltray.fusion.cache import SplitArrays, read_cache
from ltray.fusion.methods import context_of, evaluate_fitted, fit_method
from ltray.fusion.report import FUSE_RESULTS
from ltray.inference.heldout import absent_classes, drop_seen, match_classes
from ltray.inference.load import LoadedRun
from ltray.metrics import HeadMetrics
from ltray.plots import per_class_plot
from ltray.train.evaluate import evaluate_heads, to_device
from ltray.train.rundir import RunDir
from ltray.train.tables import HEAD_LABELS

__all__ = [
    "Evaluation",
    "evaluate_run",
    "evaluation_table",
    "save_evaluation",
    "latest_fuse",
    "posthoc_heads",
]

_CSV_KEYS = ("many", "medium", "few", "overall", "top1", "top5", "ece")


@dataclass
class Evaluation:
    """Metrics of every head of ``run_dir`` on ``split`` of the data ``data`` describes."""

    run_dir: Path
    split: str
    data: dict[str, Any]  # dataset name, overrides, split sizes
    class_counts: list[int]  # the run's train counts (its shot groups)
    heads: dict[str, HeadMetrics]
    posthoc_from: str | None = None  # the fuse folder whose methods were scored
    notes: list[str] = field(default_factory=list)


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
    return RunDir(run.run_dir).read_config(keys)


def latest_fuse(run_dir: Path) -> Path | None:
    """The newest ``RUN/fusion/fuse-*`` folder with its results (None: never fused)."""
    return RunDir(run_dir).latest_fusion()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return bool(np.isclose(float(a), float(b), rtol=1e-6, atol=1e-9))
    return a == b


def posthoc_heads(
    run: LoadedRun, fuse_dir: Path, arrays: Any
) -> tuple[dict[str, HeadMetrics], list[str]]:
    """Every method of ``fuse_dir/results.json`` fitted again on the run's cache (train and val
    only) with its recorded settings, scored on ``arrays`` (a :class:`SplitArrays` of the new
    split) → ({"posthoc:<method>": metrics}, notes)."""

    records = json.loads((fuse_dir / FUSE_RESULTS).read_text())
    cache = read_cache(run.run_dir)
    ctx = context_of(cache)
    heads: dict[str, HeadMetrics] = {}
    notes: list[str] = []
    for rec in records:
        name = rec["method"]
        fitted = fit_method(name, cache.train, cache.val, ctx, rec.get("settings") or {})
        chosen = json.loads(json.dumps(dict(fitted.chosen), default=float))
        if not _same(chosen, rec.get("chosen", {})):
            notes.append(
                f"{name}: fitted again, it chose {chosen} where {fuse_dir.name} chose "
                f"{rec.get('chosen')}"
            )
        heads[f"posthoc:{name}"] = evaluate_fitted(fitted, arrays, run.groups)
    return heads, notes


@torch.inference_mode()
def evaluate_run(
    run: LoadedRun,
    overrides: list[str] | None = None,
    *,
    split: str = "test",
    posthoc: str | Path | None = "latest",
) -> Evaluation:
    """Evaluate every head of ``run`` on ``split`` of its data with ``overrides``, and the
    post-hoc methods of a ``ltray fuse`` folder (``posthoc``: "latest" = the newest one when
    the run has any, a folder, or None).

    Classes are matched to the run's by name, and a split of the run's own source that is not
    the run's own split loses every image the run trained on or selected with
    (:mod:`ltray.inference.heldout`); both are said in ``notes`` and saved.

    Raises:
        ConfigError: an override is not a ``data.*`` key or is invalid.
        DataError: the data has classes the run does not know, other channels, or no image
            the run has not seen.
    """

    overrides = list(overrides or [])
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split {split}: use train, val or test")
    cfg = _data_config(run, overrides)
    data = prepare_data(cfg.data, write_splits=False)
    if data.in_channels != run.input.in_channels:
        raise DataError(
            f"{cfg.data.name}: {data.in_channels}-channel images, the run's network takes "
            f"{run.input.in_channels}"
        )
    data, notes = match_classes(run, data)
    data, dropped, dropped_notes = drop_seen(run, data, split)
    notes += dropped_notes
    # The network expects the normalisation it was trained with (the run's saved input spec),
    # not the statistics of the data evaluated now (its own split may differ).
    data.spec = replace(
        data.spec, mean=run.input.mean, std=run.input.std, stats="the run's saved input spec"
    )
    loader = make_loader(
        data,
        split,
        batch_size=cfg.data.eval_batch_size,
        augment=False,
        shuffle=False,
        num_workers=cfg.data.loader_workers,
        device=run.device,
    )
    fuse_dir = latest_fuse(run.run_dir) if posthoc == "latest" else posthoc
    if fuse_dir is not None and not (Path(fuse_dir) / FUSE_RESULTS).is_file():
        raise ConfigError(f"--posthoc {fuse_dir}: no results.json; pass a folder of `ltray fuse`")
    parts: dict[str, list[torch.Tensor]] = {}
    feats: list[torch.Tensor] = []
    labels = []
    for x, y in loader:
        f = run.net.backbone(to_device(x, run.device, channels_last=False)).float()
        for head, z in run.head_logits(f).items():
            parts.setdefault(head, []).append(z.cpu())
        feats.append(f.cpu())
        labels.append(torch.as_tensor(y).cpu())
    y_all = torch.cat(labels).numpy().astype(np.int64)
    logits = {h: torch.cat(p).numpy() for h, p in parts.items()}
    heads = evaluate_heads(logits, y_all, run.groups, ece_bins=run.config.eval.ece_bins)
    notes += absent_classes(run, y_all)
    if fuse_dir is not None:
        arrays = SplitArrays(
            features=torch.cat(feats).numpy(),
            logits=logits["linear"],
            labels=y_all,
            kt_logits=logits.get("kt"),
        )
        with torch.inference_mode(False), torch.enable_grad():  # LLW, ASM, cRT... train
            extra, refit_notes = posthoc_heads(run, Path(fuse_dir), arrays)
        heads.update(extra)
        notes += refit_notes
    return Evaluation(
        run_dir=run.run_dir,
        split=split,
        data={
            "name": cfg.data.name,
            "overrides": overrides,
            "size": int(len(y_all)),
            "val_protocol": cfg.data.val_protocol,
            **({"dropped": dropped} if dropped else {}),
        },
        class_counts=[int(c) for c in run.class_counts],
        heads=heads,
        posthoc_from=None if fuse_dir is None else str(fuse_dir),
        notes=notes,
    )


def _label(head: str) -> str:
    if head.startswith("posthoc:"):
        return f"{head.split(':', 1)[1]} (post-hoc)"
    return HEAD_LABELS.get(head, head)


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
        if head.startswith("posthoc:") and not any(
            h.startswith("posthoc:") for h in list(ev.heads)[: list(ev.heads).index(head)]
        ):
            table.add_section()
        table.add_row(
            _label(head),
            *(_pct(v) for v in (m.many, m.medium, m.few, m.overall, m.top1, m.top5, m.ece)),
        )
    table.caption = "shot groups: the run's train class counts" + (
        f"; post-hoc rows: methods of {Path(ev.posthoc_from).name}, fitted on the run's train "
        "and val"
        if ev.posthoc_from
        else ""
    )
    return table


def save_evaluation(ev: Evaluation, out_dir: str | Path) -> Path:
    """Write ``metrics.csv`` (one row per head), ``evaluation.json``, ``table.txt`` and
    ``per_class.png`` into ``out_dir``."""
    from rich.console import Console

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
        "posthoc_from": ev.posthoc_from,
        "notes": ev.notes,
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
