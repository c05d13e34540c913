"""A run's config is the run's: what ``ltray train --resume`` may change, and the record of it.

    changes = check_resume(saved, cfg, run_dir)     # ConfigError naming every refused key
    RunDir(run_dir).record_resume(cfg, changes)     # config.yaml := cfg, the old one kept

A checkpoint continues the run that wrote it. Resuming with another learning rate, KT setting or
data split would train one model under two configs while ``config.yaml`` and ``split.json``
describe only the first, so every key is frozen except :data:`RESUME_ALLOWED`: where the run
executes and how it is logged, and more epochs. The check runs before Ray starts; the loop
checks it again on the checkpoint itself (:func:`run_hash`, stamped in every checkpoint).

Each resume appends a line to ``resumes.jsonl`` (when, the epochs done, the changes); when
something changed, the earlier ``config.yaml`` is kept as ``config.before-resume-<n>.yaml`` and
``config.yaml`` becomes the config the run continues with. No torch here: the driver runs it
before anything heavy is imported.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ltray.config import Config, flatten
from ltray.errors import ConfigError
from ltray.train.rundir import RunDir

__all__ = [
    "RESUME_ALLOWED",
    "allowed_on_resume",
    "run_hash",
    "config_changes",
    "check_resume",
]

# Keys a resumed run may change: none of them changes what the model is trained on or how.
# ``train.epochs`` may only grow (the schedule is stretched from there on, as `ltray train
# --resume RUN train.epochs=N` documents); scaling and tracking decide where the run executes
# and how it is logged; threads, Ray's restart budget and loader processes only how fast.
RESUME_ALLOWED: dict[str, str] = {
    "train.epochs": "more epochs (never fewer)",
    "scaling.*": "workers, GPUs, CPUs per worker",
    "tracking.*": "MLflow logging",
    "train.threads": "torch threads",
    "train.max_failures": "Ray's restart budget",
    "data.loader_workers": "DataLoader processes",
}


def allowed_on_resume(key: str) -> bool:
    """Whether the dotted ``key`` may change when a run is resumed."""
    return any(key.startswith(k[:-1]) if k.endswith("*") else key == k for k in RESUME_ALLOWED)


def run_hash(cfg: Config) -> str:
    """A hash of everything that makes the run what it is: the config without the keys a
    resume may change. Stamped in every checkpoint; a checkpoint whose hash differs was
    written by another run (or another config) and is never continued."""
    flat = flatten(cfg.model_dump(mode="json"))
    keep = {k: v for k, v in flat.items() if not allowed_on_resume(k)}
    blob = json.dumps(keep, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def config_changes(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old value, new value)}`` of every key that differs."""
    a, b = flatten(old.model_dump(mode="json")), flatten(new.model_dump(mode="json"))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def check_resume(saved: Config, cfg: Config, run_dir: Path) -> dict[str, tuple[Any, Any]]:
    """The changes ``cfg`` makes to the run's ``saved`` config, when every one is allowed.

    Raises:
        ConfigError: a change outside :data:`RESUME_ALLOWED` (or fewer epochs), naming each
            key with its old → new value and the fix.
    """
    changes = config_changes(saved, cfg)
    refused = [k for k in changes if not allowed_on_resume(k)]
    old_epochs, new_epochs = saved.train.epochs, cfg.train.epochs
    if new_epochs < old_epochs:
        refused.insert(0, "train.epochs")
    if not refused:
        return changes
    shown = "; ".join(f"{k} {_show(changes[k][0])} → {_show(changes[k][1])}" for k in refused)
    overrides = " ".join(f"{k}={_show(changes[k][1])}" for k in refused)
    epochs = (
        f" (train.epochs may only grow: the run was set for {old_epochs})"
        if "train.epochs" in refused
        else ""
    )
    raise ConfigError(
        f"--resume {run_dir}: {shown} would change the run{epochs}; a resumed run keeps its "
        f"config except {', '.join(RESUME_ALLOWED)}; drop these overrides, or start a new run "
        f"from its config: `ltray train --config {RunDir(run_dir).config_path} {overrides}`"
    )
