"""The run directory: everything one `ltray train` run leaves behind.

```
RUN_DIR/
  config.yaml          resolved config (written by the driver before training starts)
  split.json           what data was used (source, seed, protocol, counts)
  metrics.jsonl        one line per reported epoch, append-only (restarts add lines, never erase)
  metrics.csv          the same, last record per epoch
  checkpoints/last.pt  checkpoints/best.pt (best val score of eval.select_head and
                       select_group; none when no epoch had one: results say "last")
  results.json         val/test metrics of every head with the best-val checkpoint
  table.txt            the Many / Medium / Few / Overall table
  per_class.png        per-class test accuracy against train class frequency
  cache/               train/val/test features + logits as Parquet (ltray.fusion.cache)
```
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltray.config import Config, config_hash
from ltray.fusion.cache import SplitArrays, write_meta, write_split
from ltray.metrics import GROUP_NAMES, HeadMetrics
from ltray.train.tables import render_table, results_table

__all__ = [
    "checkpoint_path",
    "save_checkpoint",
    "append_metrics",
    "write_split_info",
    "read_metrics",
    "parse_metrics",
    "progress_line",
    "write_cache",
    "input_spec",
    "write_results",
    "render_table",
    "results_table",
    "write_worker_pid",
]


def checkpoint_path(run_dir: Path, which: str) -> Path:
    return Path(run_dir) / "checkpoints" / f"{which}.pt"


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, state: dict[str, Any], *, is_best: bool) -> Path:
    """Write ``last.pt`` (and ``best.pt``) atomically; returns the path of ``last.pt``."""
    last = checkpoint_path(run_dir, "last")
    last.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(state, last)
    if is_best:
        _atomic_save(state, checkpoint_path(run_dir, "best"))
    return last


def write_worker_pid(run_dir: Path, rank: int) -> None:
    """Record the worker's pid (tests and users can find the process that trains)."""
    path = Path(run_dir) / "workers" / f"rank{rank}.pid"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(os.getpid()))


def write_split_info(run_dir: Path, info: dict[str, Any]) -> Path:
    """``split.json``: what data the run used (``LTData.split_info``; the dataset input that
    :mod:`ltray.tracking` logs is read from it)."""
    path = Path(run_dir) / "split.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=1, default=str))
    return path


def append_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Append one epoch to ``metrics.jsonl`` and rewrite ``metrics.csv`` (last per epoch)."""
    run_dir = Path(run_dir)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(metrics) + "\n")
    rows = read_metrics(run_dir)
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    tmp = run_dir / "metrics.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, run_dir / "metrics.csv")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch records, the last one reported for each epoch, in epoch order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return parse_metrics(path.read_text())


def parse_metrics(text: str) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` text: the last one of each epoch, in epoch order."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        if line.strip():
            rec = json.loads(line)
            by_epoch[int(rec["epoch"])] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def _fmt_eta(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(m: dict[str, Any], cfg: Config) -> str:
    heads = [h for h in ("linear", "ncm_ema", "ncm_full", "kt") if f"val_{h}_overall" in m]
    val = "  ".join(f"{h} {100 * m[f'val_{h}_overall']:.1f}" for h in heads)
    star = " *" if m.get("is_best") else ""
    return (
        f"[ltray] epoch {m['epoch']}/{cfg.train.epochs}  loss {m['train_loss']:.3f}  "
        f"lr {m['lr']:.4f}  val {val}{star}  {m['images_per_s']:.0f} img/s  "
        f"ETA {_fmt_eta(m['eta_s'])}"
    )


def write_cache(
    run_dir: Path, cfg: Config, data: Any, splits: dict[str, SplitArrays], net: Any
) -> Path:
    """Write the post-hoc cache (features, logits, labels, class counts, head, EMA memory)."""
    cache_dir = Path(run_dir) / "cache"
    h = config_hash(cfg)
    for split, arrays in splits.items():
        write_split(cache_dir, split, arrays, config_hash=h)
    params = {
        "linear_weight": net.linear.weight.detach().float().cpu().numpy(),
        "linear_bias": net.linear.bias.detach().float().cpu().numpy(),
    }
    kt_head = getattr(net, "kt_head", None)
    if kt_head is not None:  # the KT head's weights and bias, beside the linear head's
        params["kt_weight"] = kt_head.weight.detach().float().cpu().numpy()
        params["kt_bias"] = kt_head.bias.detach().float().cpu().numpy()
    if net.memory is not None and bool(net.memory.initialized):
        params["memory_ema"] = net.memory.means.detach().float().cpu().numpy()
        params["memory_ema_valid"] = net.memory.valid.detach().float().cpu().numpy()
    write_meta(
        cache_dir,
        config_hash=h,
        class_counts=data.class_counts,
        many_threshold=cfg.data.many_threshold,
        few_threshold=cfg.data.few_threshold,
        val_protocol=cfg.data.val_protocol,
        params=params,
        extra={
            "memory_metric": cfg.memory.metric,
            "dataset": cfg.data.name,
            # What `ltray.load_run` needs to label and preprocess new images without the data.
            "class_names": [str(c) for c in data.class_names],
            "input": input_spec(data),
        },
    )
    return cache_dir


def input_spec(data: Any) -> dict[str, Any]:
    """How images enter the network: family, channels, size, normalisation (``mean``/``std``
    of [0, 1] pixels, the dataset's own for a user's ImageFolder or list files; ``stats`` says
    where they came from) and the train-time augmentation the run used. `ltray predict`,
    ``ltray.load_run`` and the exported model read it from the cache's ``meta.json``."""
    spec = data.spec
    return {
        "family": data.family,
        "in_channels": int(data.in_channels),
        "image_size": int(data.image_size),
        "small_input": bool(data.small_input),
        "native_size": int(spec.image_size),
        "pad": int(spec.pad),
        "flip": bool(spec.flip),
        "crop_scale": list(spec.crop_scale) if spec.crop_scale else None,
        "color_jitter": float(spec.color_jitter),
        "mean": [float(v) for v in spec.mean],
        "std": [float(v) for v in spec.std],
        "stats": str(spec.stats),
    }


def write_results(run_dir: Path, cfg: Config, data: Any, results: dict[str, Any]) -> dict[str, Any]:
    """Serialise per-head metrics to ``results.json`` and draw ``per_class.png``."""
    run_dir = Path(run_dir)
    heads: dict[str, dict[str, HeadMetrics]] = results["heads"]
    out = {
        "best_epoch": results["best_epoch"],
        # "best": the epoch with the best val score of select_head/select_group; "last": no
        # epoch had one (the tables say so instead of calling the last epoch best).
        "checkpoint": results.get("checkpoint", "best"),
        "select_head": cfg.eval.select_head,
        "select_group": cfg.eval.select_group,
        "val_protocol": cfg.data.val_protocol,
        "class_counts": [int(c) for c in data.class_counts],
        "groups_present": {
            name: bool((np.asarray(data.groups) == gid).any())
            for gid, name in enumerate(GROUP_NAMES)
        },
        "heads": {
            head: {split: vars(m) for split, m in per_split.items()}
            for head, per_split in heads.items()
        },
    }
    (run_dir / "results.json").write_text(json.dumps(out, indent=1))
    (run_dir / "table.txt").write_text(render_table(out))
    from ltray.plots import per_class_plot

    per_class_plot(out, run_dir / "per_class.png")
    return out
