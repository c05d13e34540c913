"""The end of a run: the best-val weights scored on every split, the feature cache and the
results written (:func:`finalize_run`), as :func:`ltray.train.loop.run_training` calls it after
its last epoch (and `ltray evaluate`-style code can call it on a loaded network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltray.config import Config
from ltray.data import LTData, make_loader
from ltray.models import LTNet, class_sums, normalize
from ltray.train.evaluate import evaluate_heads, extract, head_logits
from ltray.train.rundir import RunDir

__all__ = ["finalize_run", "select_metric", "memory_args"]


def select_metric(cfg: Config) -> str:
    """The val metric whose best value picks the checkpoint, e.g. ``val_kt_few``."""
    return f"val_{cfg.eval.select_head}_{cfg.eval.select_group}"


def memory_args(net: LTNet) -> dict[str, Any]:
    mem = net.memory
    if mem is None or not bool(mem.initialized):
        return {"ema_means": None, "ema_valid": None}
    return {"ema_means": mem.means.detach().float(), "ema_valid": mem.valid}


def finalize_run(
    cfg: Config,
    run_dir: Path,
    net: LTNet,
    data: LTData,
    device: torch.device,
    *,
    reload: bool = True,
    val: Any = None,
) -> dict[str, Any]:
    """Evaluate the best-val weights on every split; write the cache, ``results.json``, the
    table and the per-class plot.

    ``reload=False``: ``net`` already holds the best weights (the best epoch was the last one);
    ``val``: that epoch's val arrays, reused instead of a second pass.
    """
    run = RunDir(run_dir)
    best_path = run.checkpoint("best")
    checkpoint = "best"
    if not best_path.is_file():
        # No epoch ever had a val score of the selection metric: say so, never call it best.
        best_path, checkpoint = run.checkpoint("last"), "last"
        print(
            f"[ltray] WARNING: no epoch reported {select_metric(cfg)} (eval.select_head/"
            "select_group); the results are those of the last epoch, not a best-val one",
            flush=True,
        )
    state = RunDir.load_state(best_path)
    if reload:
        net.load_state_dict(state["model"])
    splits = {} if val is None else {"val": val}
    for split in ("train", "val", "test"):
        if split in splits:
            continue
        loader = make_loader(
            data,
            split,
            batch_size=cfg.data.eval_batch_size,
            augment=False,
            shuffle=False,  # cache rows in the split's list-file order (train too)
            num_workers=cfg.data.loader_workers,
            device=device,
        )
        splits[split] = extract(net, loader, device, channels_last=cfg.train.channels_last)
    splits = {s: splits[s] for s in ("train", "val", "test")}
    train = splits["train"]
    full = _sums_from_arrays(train.features, train.labels, data.num_classes)
    results: dict[str, Any] = {
        "best_epoch": int(state["epoch"]) + 1,
        "checkpoint": checkpoint,
        "heads": {},
    }
    for split in ("val", "test"):
        arrays = splits[split]
        heads = evaluate_heads(
            head_logits(arrays, metric=cfg.memory.metric, **memory_args(net), full_sums=full),
            arrays.labels,
            data.groups,
            ece_bins=cfg.eval.ece_bins,
        )
        for head, m in heads.items():
            results["heads"].setdefault(head, {})[split] = m
    run.write_cache(cfg, data, splits, net)
    return run.write_results(cfg, data, results)


def _sums_from_arrays(
    features: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:

    return class_sums(normalize(torch.from_numpy(features)), torch.from_numpy(labels), num_classes)
