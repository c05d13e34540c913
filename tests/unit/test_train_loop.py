"""The training loop in-process (no Ray): resume equality, run-directory contents, schedules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ltray.config import load_config
from ltray.fusion.cache import read_cache
from ltray.train.context import LocalContext
from ltray.train.loop import load_state, run_training
from ltray.train.rundir import read_metrics
from ltray.train.schedule import lr_factor

TINY = ["train.epochs=3", "data.batch_size=64", "train.threads=1", "memory.init_epoch=1"]


class _Stop(Exception):
    pass


class StopAfter(LocalContext):
    """A host that dies right after the report of epoch ``n`` (as a killed job would)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def report(self, metrics, state_path):
        super().report(metrics, state_path)
        if metrics["epoch"] == self.n:
            raise _Stop


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_state(run_dir / "checkpoints" / "last.pt")["model"]


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path: Path) -> None:
    cfg = load_config(None, TINY + ["mixup.variant=input"])
    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir()
    part.mkdir()
    run_training(cfg, full, LocalContext(), finalize=False)
    with pytest.raises(_Stop):
        run_training(cfg, part, StopAfter(2), finalize=False)
    assert [m["epoch"] for m in read_metrics(part)] == [1, 2]
    run_training(
        cfg, part, LocalContext(), resume_from=part / "checkpoints" / "last.pt", finalize=False
    )
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # The memory (a buffer) is part of the weights and was initialised at the end of epoch 1.
    assert bool(a["memory.initialized"])
    # Nothing written before the stop is lost: epochs 1-2 keep their records.
    assert [m["epoch"] for m in read_metrics(part)] == [1, 2, 3]


def test_run_writes_results_cache_and_plots(tmp_path: Path) -> None:
    cfg = load_config(None, TINY)
    ctx = LocalContext()
    results = run_training(cfg, tmp_path, ctx)
    assert results is not None
    assert {"linear", "ncm_ema", "ncm_full", "kt"} <= set(results["heads"])
    for name in ("results.json", "table.txt", "per_class.png", "metrics.csv", "metrics.jsonl"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["heads"]["kt"]["test"]["overall"] == results["heads"]["kt"]["test"]["overall"]
    cache = read_cache(tmp_path)
    assert cache.train.features.shape[1] == 64  # ResNet-32 features
    assert cache.val.logits.shape[1] == cache.num_classes == 10
    assert cache.train.kt_logits is not None and "memory_ema" in cache.params
    # Every epoch reports val metrics of every head once the memory exists.
    assert "val_ncm_ema_overall" in ctx.reports[-1] and "val_kt_few" in ctx.reports[-1]
    text = (tmp_path / "table.txt").read_text()
    assert "KT head" in text and "Many" in text


def test_warmup_step_and_cosine_schedules() -> None:
    step = load_config(
        None,
        [
            "train.epochs=200",
            "train.schedule=step",
            "train.warmup_epochs=5",
            "train.milestones=[160,180]",
            "train.gammas=[0.01,0.0001]",
        ],
    ).train
    assert [lr_factor(step, e) for e in (0, 0.5, 4.9, 5, 159.9, 160, 185)] == [
        0.2,
        0.2,
        1.0,
        1.0,
        1.0,
        0.01,
        0.0001,
    ]
    cos = load_config(None, ["train.epochs=10"]).train
    assert lr_factor(cos, 0) == 1.0
    assert lr_factor(cos, 5) == pytest.approx(0.5)
    assert lr_factor(cos, 10) == pytest.approx(0.0)
