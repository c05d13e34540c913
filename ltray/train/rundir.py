"""The run directory: everything one `ltray train` run leaves behind, read and written by
:class:`RunDir` alone.

```
RUN_DIR/
  config.yaml          resolved config (written by the driver before training starts; after
                       a resume that changed an allowed key, the config the run continues
                       with: ltray.train.resume)
  config.before-resume-<n>.yaml   the config.yaml a resume replaced
  resumes.jsonl        one line per `ltray train --resume` (epochs done, changed keys)
  timing.json          where the loop's time went (set-up, training, evaluation, final pass)
  workers/rank<R>.pid  the process of each worker
  fusion/fuse-*/       post-hoc results (`ltray fuse`, a two-level sweep's trial)
  eval/                `ltray evaluate` on other data
  mlflow_run.json      the MLflow run (store, run id, model URI) when tracked
  split.json           what data was used (source, seed, protocol, counts, list files)
  metrics.jsonl        one line per reported epoch, append-only (restarts add lines, never erase)
  metrics.csv          the same, last record per epoch
  checkpoints/last.pt  checkpoints/best.pt (best val score of eval.select_head and
                       select_group; none when no epoch had one: results say "last")
  results.json         val/test metrics of every head with the best-val checkpoint
  table.txt            the Many / Medium / Few / Overall table
  per_class.png        per-class test accuracy against train class frequency
  cache/               train/val/test features + logits as Parquet (ltray.fusion.cache), and
                       input_example.npy: two raw test images (the exported model's example)
```
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ltray.config import Config, build_config, config_hash, drop_retired, read_yaml, save_config
from ltray.errors import RunDirError
from ltray.fusion.cache import FeatureCache, SplitArrays, read_cache, write_meta, write_split
from ltray.fusion.report import FUSE_RESULTS, FUSION_DIR
from ltray.metrics import GROUP_NAMES, HeadMetrics
from ltray.paths import new_run_dir
from ltray.plots import per_class_plot
from ltray.train.tables import render_table

__all__ = ["RunDir", "parse_metrics", "progress_line", "input_spec", "pixel_examples"]


class RunDir:
    """A run folder, and the one reader and writer of its files: everything else asks it.

    ``RunDir(path)`` creates nothing; writers make the folders they write into. The file names
    are class constants (a remote sweep reads a trial's files through :mod:`ltray.storage` by
    these names). Loading or saving a checkpoint imports torch; everything else is light, so a
    command can read a finished run (its config, results, metrics) before torch loads.
    """

    CONFIG = "config.yaml"
    SPLIT = "split.json"
    METRICS = "metrics.jsonl"
    METRICS_CSV = "metrics.csv"
    CHECKPOINTS = "checkpoints"
    RESULTS = "results.json"
    TABLE = "table.txt"
    PER_CLASS = "per_class.png"
    TIMING = "timing.json"
    CACHE = "cache"
    INPUT_EXAMPLE = "input_example.npy"
    FUSION = FUSION_DIR
    EVAL = "eval"
    WORKERS = "workers"
    RESUMES = "resumes.jsonl"
    MLFLOW_LINK = "mlflow_run.json"
    RAY = "ray"  # Ray Train's own checkpoints of a run trained through it
    #: what a tracked run logs to MLflow as artifacts
    ARTIFACTS = (CONFIG, RESULTS, TABLE, PER_CLASS, METRICS_CSV)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ---------------------------------------------------------------------------- config

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    def read_config(self, overrides: list[str] | None = None) -> Config:
        """The run's resolved config (``overrides`` applied on top), every problem reported
        with the file and line; a folder without one is a :class:`RunDirError`."""
        if not self.config_path.is_file():
            raise RunDirError(
                f"{self.config_path}: missing; pass a run directory written by `ltray train`"
            )
        raw, lines = read_yaml(self.config_path)
        return build_config(
            drop_retired(raw),
            source=str(self.config_path),
            lines=lines,
            overrides=list(overrides or []),
        )

    def write_config(self, cfg: Config) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config_path)
        return self.config_path

    # ----------------------------------------------------------------------------- split

    def write_split(self, info: dict[str, Any]) -> Path:
        """``split.json``: what data the run used (``LTData.split_info``; the dataset input
        that :mod:`ltray.tracking` logs is read from it)."""
        path = self.path / self.SPLIT
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info, indent=1, default=str))
        return path

    def read_split(self) -> dict[str, Any]:
        """The run's ``split.json`` ({} for a run written without one)."""
        path = self.path / self.SPLIT
        return json.loads(path.read_text()) if path.is_file() else {}

    # --------------------------------------------------------------------------- metrics

    def append_metrics(self, metrics: dict[str, Any]) -> None:
        """Append one epoch to ``metrics.jsonl`` and rewrite ``metrics.csv`` (last per epoch)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / self.METRICS, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        rows = self.read_metrics()
        keys: list[str] = []
        for row in rows:
            keys.extend(k for k in row if k not in keys)
        tmp = self.path / (self.METRICS_CSV + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path / self.METRICS_CSV)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Per-epoch records, the last one reported for each epoch, in epoch order."""
        path = self.path / self.METRICS
        return parse_metrics(path.read_text()) if path.is_file() else []

    # ----------------------------------------------------------------------- checkpoints

    def checkpoint(self, which: str) -> Path:
        """``checkpoints/<which>.pt`` (``best`` or ``last``), whether it exists or not."""
        return self.path / self.CHECKPOINTS / f"{which}.pt"

    def has_checkpoint(self, which: str) -> bool:
        return self.checkpoint(which).is_file()

    def model_checkpoint(self) -> Path | None:
        """The weights a finished run is used with: ``best.pt`` (the best val epoch), else
        ``last.pt`` (no epoch had a val score of the selection metric), else None."""
        for which in ("best", "last"):
            if self.has_checkpoint(which):
                return self.checkpoint(which)
        return None

    def save_checkpoint(self, state: dict[str, Any], *, is_best: bool) -> Path:
        """Write ``last.pt`` (and ``best.pt``) atomically; returns the path of ``last.pt``."""
        import torch

        last = self.checkpoint("last")
        last.parent.mkdir(parents=True, exist_ok=True)
        for path in (last, self.checkpoint("best")) if is_best else (last,):
            tmp = path.with_suffix(".tmp")
            torch.save(state, tmp)
            os.replace(tmp, path)
        return last

    @staticmethod
    def load_state(path: Path) -> dict[str, Any]:
        """A checkpoint's state, tensors on the CPU, loaded with ``weights_only=True``."""
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)

    def problems(self, key: str, how: str) -> list[str]:
        """Why this folder cannot serve as the finished run a config key names (``key``: e.g.
        ``oltr.stage1``; ``how``: the settings to train one with), [] when it can."""
        if not self.config_path.is_file():
            return [
                f"{key}={self.path}: not a run directory of `ltray train` (no {self.CONFIG}); "
                f"train it with `ltray train {how}` and pass its directory"
            ]
        if not self.has_checkpoint("best"):
            return [
                f"{key}={self.path}: no {self.CHECKPOINTS}/best.pt (no evaluated epoch); finish "
                f"it with `ltray train --resume {self.path}`"
            ]
        return []

    def resumes(self) -> list[dict[str, Any]]:
        """Every record of ``resumes.jsonl`` (one per `ltray train --resume`), oldest first."""
        path = self.path / self.RESUMES
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def record_resume(self, cfg: Config, changes: dict[str, tuple[Any, Any]]) -> Path:
        """Append this resume to ``resumes.jsonl`` (when, the epochs done, the changed keys);
        when the config changed, keep the earlier ``config.yaml`` as
        ``config.before-resume-<n>.yaml`` and write ``cfg`` as the run's config."""
        n = len(self.resumes()) + 1
        done = [int(r["epoch"]) for r in self.read_metrics()]
        record: dict[str, Any] = {
            "resume": n,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "epochs_done": max(done, default=0),
            "changes": {k: {"old": a, "new": b} for k, (a, b) in changes.items()},
        }
        if changes:
            kept = self.path / f"config.before-resume-{n}.yaml"
            shutil.copyfile(self.config_path, kept)
            self.write_config(cfg)
            record["previous_config"] = kept.name
        path = self.path / self.RESUMES
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
        return path

    def write_worker_pid(self, rank: int) -> None:
        """Record the worker's pid (tests and users can find the process that trains)."""
        path = self.path / self.WORKERS / f"rank{rank}.pid"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(os.getpid()))

    def write_timing(self, timing: dict[str, float]) -> None:
        (self.path / self.TIMING).write_text(json.dumps(timing))

    # --------------------------------------------------------------------------- results

    def results(self) -> dict[str, Any] | None:
        """``results.json`` (the best checkpoint's metrics of every head), None before the run
        finished (or when the file is unreadable: an interrupted write)."""
        path = self.path / self.RESULTS
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def is_finished(self) -> bool:
        """A run is finished once its ``results.json`` exists and parses (written after the
        cache, so the post-hoc stage can read it)."""
        return self.results() is not None

    def write_results(self, cfg: Config, data: Any, results: dict[str, Any]) -> dict[str, Any]:
        """Serialise per-head metrics to ``results.json`` (and ``table.txt``) and draw
        ``per_class.png``."""

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
        (self.path / self.RESULTS).write_text(json.dumps(out, indent=1))
        (self.path / self.TABLE).write_text(render_table(out))
        per_class_plot(out, self.path / self.PER_CLASS)
        return out

    # ----------------------------------------------------------------------------- cache

    @property
    def cache_dir(self) -> Path:
        return self.path / self.CACHE

    def has_cache(self) -> bool:
        return (self.cache_dir / "meta.json").is_file()

    def read_cache(self) -> FeatureCache:
        """The run's feature cache (:func:`ltray.fusion.cache.read_cache`)."""
        return read_cache(self.path)

    def cache_meta(self) -> dict[str, Any]:
        """The cache's ``meta.json`` ({} for a run without a cache)."""
        path = self.cache_dir / "meta.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_cache(self, cfg: Config, data: Any, splits: dict[str, SplitArrays], net: Any) -> Path:
        """Write the post-hoc cache (features, logits, labels, class counts, head, EMA memory,
        the input spec and two raw test images)."""
        from ltray.train.evaluate import head_params

        cache_dir = self.cache_dir
        h = config_hash(cfg)
        for split, arrays in splits.items():
            write_split(cache_dir, split, arrays, config_hash=h)
        write_meta(
            cache_dir,
            config_hash=h,
            class_counts=data.class_counts,
            many_threshold=cfg.data.many_threshold,
            few_threshold=cfg.data.few_threshold,
            val_protocol=cfg.data.val_protocol,
            params=head_params(net),
            extra={
                "memory_metric": cfg.memory.metric,
                "dataset": cfg.data.name,
                # What `ltray.load_run` needs to label and preprocess new images without data.
                "class_names": [str(c) for c in data.class_names],
                "input": input_spec(data),
            },
        )
        # Two real test images, raw: the exported model's input example (ltray.inference.model).
        np.save(cache_dir / self.INPUT_EXAMPLE, pixel_examples(data), allow_pickle=False)
        return cache_dir

    def input_example(self) -> np.ndarray | None:
        """The run's two raw test images (None: a run written before they were saved)."""
        path = self.cache_dir / self.INPUT_EXAMPLE
        return np.load(path, allow_pickle=False) if path.is_file() else None

    # ------------------------------------------------------------------ fusion, evaluation

    def new_fusion_dir(self) -> Path:
        """A new ``fusion/fuse-<timestamp>[-N]`` folder (earlier ones are never touched)."""
        return new_run_dir("fuse", parent=self.path / self.FUSION)

    def latest_fusion(self) -> Path | None:
        """The newest ``fusion/fuse-*`` folder with a ``results.json`` (None: never fused)."""
        found = sorted(
            (self.path / self.FUSION).glob(f"fuse-*/{FUSE_RESULTS}"), key=lambda p: p.parent.name
        )
        return found[-1].parent if found else None

    @property
    def eval_dir(self) -> Path:
        return self.path / self.EVAL

    def mlflow_link(self) -> dict[str, Any] | None:
        """``mlflow_run.json`` (store, run id, model URI), None when the run was never tracked."""
        path = self.path / self.MLFLOW_LINK
        return json.loads(path.read_text()) if path.is_file() else None

    def write_mlflow_link(self, info: dict[str, Any]) -> None:
        (self.path / self.MLFLOW_LINK).write_text(json.dumps(info))


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


def pixel_examples(data: Any, n: int = 2) -> np.ndarray:
    """uint8 [n, C, N, N]: the first test image of each of the first ``n`` classes, as raw
    pixels (the exported model's input; N = the decode size, or the crop size of file-backed
    splits)."""
    labels = np.asarray(data.labels("test"))
    picks = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)[:n]]
    pool = data.pools["test"]
    if pool.images is not None:
        return np.ascontiguousarray(pool.images[picks])
    ds = data.dataset("test", augment=False, normalize=False)
    return np.stack([np.asarray(ds[i][0], dtype=np.uint8) for i in picks])


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
