"""OLTR and LFME for one epoch each on CIFAR-10-LT (rho = 100, ResNet-32) from the shared data.

The full rho = 100 split (12,406 train images; 9,800 test) takes several minutes per run on a
shared 2-core CPU, and the two methods need six runs (CE stage 1 + OLTR; three experts + student).
The split is therefore thinned here: every class keeps ceil(n_c / 20) of its train images (250,
150, 90, 54, 33, 20, 12, 7, 5, 3: still rho ≈ 100 with many, medium and few classes), the val
split as carved (20 per class), and 30 test images per class. Everything else is the real
pipeline: the same split selection, loaders, loop, evaluation and run directories.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ltray.config import load_config, save_config
from ltray.data import LTData
from ltray.fusion.cache import read_cache
from ltray.metrics import shot_groups
from ltray.train.context import LocalContext
from ltray.train.loop import run_training
from tests.lfme_runs import train_lfme

pytestmark = [pytest.mark.data, pytest.mark.slow]


def _thin(data: LTData, *, train_div: int = 20, test_per_class: int = 30) -> LTData:
    """Keep ceil(n_c / train_div) train images and test_per_class test images per class."""
    train_labels = data.labels("train")
    keep = np.concatenate(
        [
            np.flatnonzero(train_labels == c)[: math.ceil((train_labels == c).sum() / train_div)]
            for c in range(data.num_classes)
        ]
    )
    test_labels = data.labels("test")
    test_keep = np.concatenate(
        [np.flatnonzero(test_labels == c)[:test_per_class] for c in range(data.num_classes)]
    )
    data.pools = {
        **data.pools,
        "train": data.pools["train"].subset(np.sort(keep)),
        "test": data.pools["test"].subset(np.sort(test_keep)),
    }
    counts = np.bincount(data.labels("train"), minlength=data.num_classes).astype(np.int64)
    data.class_counts = counts
    th = data.split_info["thresholds"]
    data.groups = shot_groups(counts, th["many"], th["few"])
    return data


@pytest.fixture
def thin_cifar(monkeypatch: pytest.MonkeyPatch) -> None:
    import ltray.data
    import ltray.reproduce.driver
    import ltray.train.loop
    import ltray.validate

    original = ltray.data.prepare_data
    counted = ltray.validate.train_counts

    def prepare(*args: Any, **kwargs: Any) -> LTData:
        return _thin(original(*args, **kwargs))

    def counts(cfg: Any) -> Any:  # the validation pass counts the thinned split too
        n = counted(cfg)
        return None if n is None else -(-n // 20)

    monkeypatch.setattr(ltray.data, "prepare_data", prepare)
    monkeypatch.setattr(ltray.train.loop, "prepare_data", prepare)
    monkeypatch.setattr(ltray.reproduce.driver, "prepare_data", prepare)  # the plan's groups
    monkeypatch.setattr(ltray.validate, "train_counts", counts)


def _overrides(shared_data: Path) -> list[str]:
    return [
        "data.name=cifar10-lt",
        f"data.root={shared_data / 'cifar10'}",
        "data.imbalance_ratio=100",
        "model.backbone=resnet32",
        "data.batch_size=128",
        "train.epochs=1",
        "train.threads=2",
        "memory.init_epoch=1",
        "scaling.num_workers=0",
    ]


def _check(run_dir: Path) -> None:
    """The run reports every shot group, and its test numbers are those of its own cached test
    logits, recomputed here from the definition (mean per-class accuracy, overall and per
    group); a report that merely lies in [0, 1] would not be enough."""
    test = json.loads((run_dir / "results.json").read_text())["heads"]["linear"]["test"]
    assert all(test[g] is not None for g in ("many", "medium", "few"))
    cache = read_cache(run_dir)
    pred, y = cache.test.logits.argmax(1), cache.test.labels
    per_class = np.array([(pred[y == c] == c).mean() for c in range(cache.num_classes)])
    assert test["overall"] == pytest.approx(per_class.mean())
    for gid, group in enumerate(("many", "medium", "few")):
        assert test[group] == pytest.approx(per_class[cache.groups == gid].mean())


def test_oltr_one_epoch_on_cifar10_lt(shared_data: Path, thin_cifar: None, tmp_path: Path) -> None:
    base = _overrides(shared_data)
    stage1 = tmp_path / "ce"
    stage1.mkdir()
    cfg1 = load_config(None, base + ["train.method=ce"])
    save_config(cfg1, stage1 / "config.yaml")
    run_training(cfg1, stage1, LocalContext())
    out = tmp_path / "oltr"
    out.mkdir()
    cfg = load_config(None, base + ["train.method=oltr", f"oltr.stage1={stage1}"])
    assert run_training(cfg, out, LocalContext()) is not None
    assert (out / "table.txt").is_file()
    _check(out)


def test_lfme_one_epoch_on_cifar10_lt(shared_data: Path, thin_cifar: None, tmp_path: Path) -> None:
    student = train_lfme(_overrides(shared_data), tmp_path / "lfme")
    for name in ("many", "medium", "few"):
        assert (student.parent / f"expert-{name}" / "results.json").is_file()
    _check(student)
