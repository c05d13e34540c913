"""`ltray train`'s driver: prepare the run directory, then run the loop through Ray Train.

Three levels, as in Ray's examples:
  [1] :func:`train` (this module): validates, writes the config, starts Ray, builds the trainer;
  [2] a ``TorchTrainer`` with ``scaling.num_workers`` workers (DDP when > 1);
  [3] :func:`train_loop_per_worker` on every worker → :func:`ltray.train.loop.run_training`.
``scaling.num_workers=0`` runs the loop in this process without Ray.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ltray.config import Config, build_config, read_yaml, save_config
from ltray.errors import RunDirError
from ltray.paths import new_run_dir

__all__ = [
    "train",
    "make_trainer",
    "train_loop_per_worker",
    "prepare_run_dir",
    "load_run_config",
    "ray_init",
]

# Ray Train throttles ray.train.report to one call per health-check interval (2 s by default);
# small epochs would wait on it, so poll faster.
# Worker prints go straight to stdout (Train V2's print patch would show every line twice).
_RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """[3] Runs on every Ray Train worker."""
    import logging

    from ray.train.v2._internal.execution import context as train_context

    from ltray.config import Config
    from ltray.train.context import RayTrainContext
    from ltray.train.loop import run_training

    # Ray Train logs every report at INFO, under a logger named by its file path.
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    cfg = Config.model_validate(config["config"])
    resume = Path(config["resume_from"]) if config.get("resume_from") else None
    run_training(cfg, Path(config["run_dir"]), RayTrainContext(), resume_from=resume)


def prepare_run_dir(cfg: Config, out: str | Path | None, *, prefix: str) -> Path:
    """A fresh run directory. An existing non-empty ``out`` is refused: never overwrite a run."""
    if out is None:
        return new_run_dir(prefix)
    path = Path(out).expanduser().resolve()
    if path.exists() and any(path.iterdir()):
        raise RunDirError(
            f"--out {path}: the directory exists and is not empty; choose a new path, or continue "
            f"that run with `ltray train --resume {path}`"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_run_config(run_dir: Path, overrides: list[str]) -> Config:
    """The resolved config of an earlier run, plus overrides (e.g. ``train.epochs=30``)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise RunDirError(
            f"{path}: no config.yaml; --resume takes a run directory of `ltray train`"
        )
    raw, lines = read_yaml(path)
    return build_config(raw, source=str(path), lines=lines, overrides=overrides)


def ray_init(address: str | None = None, *, dashboard: bool = True, **kwargs: Any) -> None:
    """Start (or connect to) Ray once. The dashboard is needed by Tune sweeps only: Train V2
    frees the placement group of a trial ASHA stops through the State API (ray issue 54305)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.update(_RAY_ENV)
    if address is None or address == "local":
        kwargs.setdefault("include_dashboard", dashboard)
    ray.init(address=address, runtime_env={"env_vars": dict(_RAY_ENV)}, **kwargs)


def make_trainer(
    cfg: Config,
    run_dir: Path,
    *,
    name: str,
    resume_from: Path | None = None,
    callbacks: list[Any] | None = None,
) -> Any:
    """[2] The ``TorchTrainer`` running :func:`train_loop_per_worker` with ``cfg.scaling``;
    Ray's checkpoints go to ``run_dir/ray/<name>``."""
    import ray.train
    from ray.train.torch import TorchTrainer

    sc = cfg.scaling
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "run_dir": str(run_dir),
            "resume_from": str(resume_from) if resume_from else None,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers,
            use_gpu=sc.use_gpu,
            resources_per_worker={"CPU": sc.cpus_per_worker, **({"GPU": 1} if sc.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(run_dir / "ray"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=callbacks or [],
        ),
    )


def train(
    cfg: Config,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    address: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """[1] Run one training job; returns (run directory, results)."""
    from ltray.data import prepare_data

    resume_from = None
    if resume is not None:
        run_dir = Path(resume).expanduser().resolve()
        last = run_dir / "checkpoints" / "last.pt"
        if not last.is_file():
            raise RunDirError(f"{last}: no checkpoint to resume from; start a new run instead")
        resume_from = last
    else:
        # Validate the data before anything expensive: a bad root or list file fails here.
        data = prepare_data(cfg.data)
        run_dir = prepare_run_dir(cfg, out, prefix=f"{cfg.data.name}-{cfg.train.method}")
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "split.json").write_text(json.dumps(data.split_info, indent=1, default=str))
    attempt = len(list(run_dir.glob("ray/train-*"))) if (run_dir / "ray").is_dir() else 0

    if cfg.scaling.num_workers == 0:
        from ltray.train.context import LocalContext
        from ltray.train.loop import run_training

        run_training(cfg, run_dir, LocalContext(), resume_from=resume_from)
    else:
        ray_init(address)
        # A new name per attempt: a reused name would pick up old Ray checkpoints.
        make_trainer(cfg, run_dir, name=f"train-{attempt}", resume_from=resume_from).fit()
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise RunDirError(f"{results_path}: training ended without results; see the log above")
    results = json.loads(results_path.read_text())
    if cfg.tracking.mlflow:
        from ltray.tracking import log_train_run

        log_train_run(cfg, run_dir, results)
    return run_dir, results
