"""Helpers shared by the previous works: reading an earlier ltray run, build-time passes, subsets.

OLTR's stage 2 starts from a stage-1 run and LFME's student from expert runs; both are ordinary
run directories (``config.yaml`` + ``checkpoints/best.pt``), read here with the checks that make a
mismatch fail in ``build``, before any training:

    prev = load_run(Path(cfg.oltr.stage1), key="oltr.stage1", methods=("ce", "kt"))
    check_same_split(cfg, prev.cfg, key="oltr.stage1")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ltray.config import Config
from ltray.data import LTData, make_loader
from ltray.data.counts import effective_profile
from ltray.errors import ConfigError, RunDirError
from ltray.train.rundir import RunDir

__all__ = [
    "PreviousRun",
    "load_run",
    "check_same_split",
    "load_submodule",
    "build_device",
    "restrict_train_classes",
    "group_classes",
    "class_means",
]

# The data keys that decide the split (and so the classes, counts and shot groups).
_SPLIT_KEYS = (
    "name",
    "imbalance_ratio",
    "profile",
    "seed",
    "train_list",
    "val_list",
    "test_list",
    "num_classes",
    "val_protocol",
    "val_per_class",
    "many_threshold",
    "few_threshold",
)


@dataclass
class PreviousRun:
    """An earlier run: its directory, resolved config and the model ``state_dict`` of best.pt."""

    run_dir: Path
    cfg: Config
    state: dict[str, Tensor]


def load_run(run_dir: str | Path, *, key: str, methods: tuple[str, ...]) -> PreviousRun:
    """Read ``run_dir/config.yaml`` and ``run_dir/checkpoints/best.pt`` (``weights_only``).

    Args:
        run_dir: a run directory of ``ltray train``.
        key: the config key that named it (for messages), e.g. ``oltr.stage1``.
        methods: the ``train.method`` values accepted for that run.

    Raises:
        RunDirError: the directory, its config or its best checkpoint is missing.
        ConfigError: the run was trained with another method.
    """
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise RunDirError(
            f"{key}={run_dir}: no such run directory; train it first "
            f"(`ltray train train.method={methods[0]} ...`) and pass its directory"
        )
    run = RunDir(path)
    problems = run.problems(key, f"train.method={methods[0]}")
    if problems:
        raise RunDirError(problems[0])
    cfg = run.read_config()
    if cfg.train.method not in methods:
        raise ConfigError(
            f"{key}={run_dir}: the run was trained with train.method={cfg.train.method}, "
            f"expected one of {', '.join(methods)}"
        )
    state = RunDir.load_state(run.checkpoint("best"))
    return PreviousRun(run_dir=path, cfg=cfg, state=state["model"])


def check_same_split(cfg: Config, other: Config, *, key: str) -> None:
    """Raise ``ConfigError`` unless both configs describe the same data split (``profile``
    compared as resolved: an unset profile and the one it resolves to make the same split)."""

    def value(data: Any, k: str) -> Any:
        return effective_profile(data) if k == "profile" else getattr(data, k)

    diff = [
        f"data.{k}: {value(other.data, k)!r} there, {value(cfg.data, k)!r} here"
        for k in _SPLIT_KEYS
        if value(cfg.data, k) != value(other.data, k)
    ]
    if diff:
        raise ConfigError(
            f"{key}: the run was trained on another split ({'; '.join(diff)}); "
            "use the same data settings as that run"
        )


def load_submodule(module: nn.Module, state: dict[str, Tensor], *, prefix: str, key: str) -> None:
    """Load the entries ``prefix.*`` of a checkpoint into ``module`` (strict)."""
    sub = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
    try:
        module.load_state_dict(sub, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(
            f"{key}: the checkpoint's `{prefix}` does not fit this model ({first}); "
            "use the same model.backbone and data as that run"
        ) from None


def build_device(cfg: Config) -> torch.device:
    """The device the loop trains on (build-time passes run there, then the net moves back)."""
    if cfg.scaling.use_gpu in (True, "auto") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def group_classes(groups: np.ndarray, group: int) -> Tensor:
    """Sorted class ids [K] of shot group ``group`` (0 many, 1 medium, 2 few)."""
    return torch.from_numpy(np.flatnonzero(np.asarray(groups) == group)).long()


def restrict_train_classes(data: LTData, classes: Tensor) -> int:
    """Keep only the train images of ``classes`` in ``data`` (val/test, counts and groups stay).

    The loop builds its loaders after ``method.build``, so a method that calls this in ``build``
    trains on the subset. Returns the number of train images kept.
    """
    labels = data.labels("train")
    keep = np.flatnonzero(np.isin(labels, classes.numpy()))
    data.pools = {**data.pools, "train": data.pools["train"].subset(keep)}
    return len(keep)


@torch.no_grad()
def class_means(
    fn: Any, data: LTData, *, device: torch.device, batch_size: int, num_classes: int
) -> tuple[Tensor, Tensor]:
    """Per-class means [C, d] and counts [C] of ``fn(x)`` (raw, not normalised) over the train
    split with eval transforms; ``fn`` maps images [B, ...] to features [B, d]."""
    loader = make_loader(data, "train", batch_size=batch_size, augment=False, shuffle=False)
    sums: Tensor | None = None
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for x, y in loader:
        h = fn(x.to(device)).double().cpu()
        s = torch.zeros(num_classes, h.shape[1], dtype=torch.float64).index_add_(0, y, h)
        sums = s if sums is None else sums + s
        counts += torch.bincount(y, minlength=num_classes).double()
    if sums is None:
        raise RunDirError("the train split is empty; nothing to compute class means from")
    means = sums / counts.clamp_min(1.0).unsqueeze(1)
    return means.float(), counts.float()
