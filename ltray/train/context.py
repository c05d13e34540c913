"""Where the training loop runs: in-process, inside a Ray Train worker, or inside a Tune trial.

The loop (:func:`ltray.train.loop.run_training`) is written once against :class:`LoopContext`.
Three implementations bind it to its host:

- :class:`LocalContext` — plain process, no Ray (``scaling.num_workers=0``, unit tests).
- :class:`RayTrainContext` — a Ray Train worker: ``ray.train.report`` with a checkpoint (rank 0
  attaches it; every rank reports, since report is a barrier), ``ray.train.get_checkpoint`` after
  a worker-group restart.
- :class:`TuneContext` — a single-worker Tune function trial: ``ray.tune.report`` directly, so a
  one-worker trial does not pay the nested Tune→Train start-up cost.

:class:`SyncingContext` wraps any of them when the run directory is a scratch copy of a folder on
a remote storage (``ltray tune --storage s3://…``): before each report, rank 0 uploads what the
epoch changed, so the driver reads the metrics it is told about.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "LoopContext",
    "LocalContext",
    "RayTrainContext",
    "TuneContext",
    "SyncingContext",
    "STATE_FILE",
]

STATE_FILE = "state.pt"


class LoopContext(Protocol):
    world_size: int
    rank: int
    local_rank: int  # index of this worker among the workers of its node (picks its GPU)

    def report(self, metrics: dict[str, Any], state_path: Path | None) -> None:
        """Report one epoch's metrics; ``state_path`` (rank 0) is a checkpoint file to keep."""

    def restored_state(self) -> Path | None:
        """A checkpoint file to resume from after a restart of this worker group, if any."""


@dataclass
class LocalContext:
    """In-process loop; ``reports`` collects every report (tests read it)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    def __post_init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def report(self, metrics: dict[str, Any], state_path: Path | None) -> None:
        self.reports.append(dict(metrics))

    def restored_state(self) -> Path | None:
        return None


class _CheckpointDir:
    """Copy a state file into a fresh temporary directory a Ray Checkpoint can take over."""

    def __init__(self, state_path: Path) -> None:
        self.tmp = tempfile.mkdtemp(prefix="ltray-ckpt-")
        shutil.copy2(state_path, os.path.join(self.tmp, STATE_FILE))

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _restore_dir() -> str:
    """A temporary folder for a restored checkpoint, removed when the worker process exits
    (the loop reads the state from it once, at start)."""
    path = tempfile.mkdtemp(prefix="ltray-restore-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


class RayTrainContext:
    """Inside ``train_loop_per_worker`` of a Ray Train ``TorchTrainer``."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.world_size = ctx.get_world_size()
        self.rank = ctx.get_world_rank()
        self.local_rank = ctx.get_local_rank()

    def report(self, metrics: dict[str, Any], state_path: Path | None) -> None:
        import ray.train

        if state_path is None:
            ray.train.report(metrics)
            return
        holder = _CheckpointDir(state_path)
        try:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(holder.tmp))
        finally:
            holder.close()

    def restored_state(self) -> Path | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        # The checkpoint may live on remote storage: materialise it locally.
        local = ckpt.to_directory(_restore_dir())
        path = Path(local) / STATE_FILE
        return path if path.is_file() else None


class TuneContext:
    """A single-worker Tune function trial: the loop runs in the trial process itself."""

    world_size = 1
    rank = 0
    local_rank = 0

    def report(self, metrics: dict[str, Any], state_path: Path | None) -> None:
        from ray import tune

        if state_path is None:
            tune.report(metrics)
            return
        holder = _CheckpointDir(state_path)
        try:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(holder.tmp))
        finally:
            holder.close()

    def restored_state(self) -> Path | None:
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        local = ckpt.to_directory(_restore_dir())
        path = Path(local) / STATE_FILE
        return path if path.is_file() else None


# Uploaded at the end only: the per-epoch copy of the latest state is the checkpoint Tune or
# Train persists with the report itself.
_NOT_EACH_EPOCH = ("checkpoints/last.pt", "ray")


class SyncingContext:
    """A :class:`LoopContext` whose rank 0 uploads the run directory (:class:`FolderSync`)
    before each report; the caller pushes once more after the loop for the final files."""

    def __init__(self, inner: Any, sync: Any) -> None:
        self.inner = inner
        self.sync = sync
        self.world_size = inner.world_size
        self.rank = inner.rank
        self.local_rank = getattr(inner, "local_rank", inner.rank)

    def report(self, metrics: dict[str, Any], state_path: Path | None) -> None:
        if self.rank == 0:
            self.sync.push(skip=_NOT_EACH_EPOCH)
        self.inner.report(metrics, state_path)

    def restored_state(self) -> Path | None:
        return self.inner.restored_state()
