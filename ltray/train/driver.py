"""`ltray train`'s driver: prepare the run directory, then run the loop through Ray Train.

Three levels, as in Ray's examples:
  [1] :func:`train` (this module): validates, writes the config, starts Ray, builds the trainer;
  [2] a Ray Train trainer with ``scaling.num_workers`` workers: a ``TorchTrainer`` (DDP over a
      torch process group) when there are several, the plain ``DataParallelTrainer`` for one
      worker, which has no process group to set up;
  [3] :func:`train_loop_per_worker` on every worker → :func:`ltray.train.loop.run_training`.
``scaling.num_workers=0`` runs the loop in this process without Ray.

Start-up is kept short for a local one-worker run: the driver imports no torch, validates the
data without decoding anything new, and starts Ray without the dashboard (only Tune sweeps
need it); ``scripts/bench_train.py`` measures wall time minus the loop's own time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ltray.config import Config
from ltray.data import prepare_data
from ltray.data.transforms import input_line
from ltray.errors import RunDirError
from ltray.paths import new_run_dir
from ltray.resources import check_fits, cluster_resources, local_resources, resolve_scaling
from ltray.storage import FolderSync, node_scratch
from ltray.tracking import log_train_run
from ltray.train.context import LocalContext, RayTrainContext, SyncingContext
from ltray.train.priority import deprioritize_ray_helpers
from ltray.train.resume import check_resume
from ltray.train.rundir import RunDir
from ltray.validate import check_config, ignored_settings

__all__ = [
    "train",
    "make_trainer",
    "interruptible_trainer_class",
    "train_loop_per_worker",
    "prepare_run_dir",
    "load_run_config",
    "TRAINING_RAY",
    "ray_init",
]

# Ray Train throttles ray.train.report to one call per health-check interval (2 s by default);
# small epochs would wait on it, so poll faster.
# Worker prints go straight to stdout (Train V2's print patch would show every line twice).
# The preemption watcher and Prometheus metrics are actors and callbacks a local run has no use for.
# Set for the whole job (not per actor), so Ray can hand its pre-started worker processes to
# the Train controller and workers instead of starting new ones.
_RAY_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
}


# A Ray instance of one `ltray train` on its own machine. On 2 cores a training step runs two
# threads that wait for each other, so every wake-up of a Ray daemon stalls both: an idle Ray
# (defaults) cost the independent reference loop 20% of its speed here (149 -> 119 images/s).
# These settings make the daemons poll less (idle Ray CPU 9.4% -> 4.8% of a core) and start no
# idle worker processes (Train's actors carry their own runtime env and cannot use them).
_QUIET_LOCAL_RAY: dict[str, Any] = {
    # Ray runs every worker process at nice 15 (its daemons at 0), so each daemon wake-up
    # preempts a training thread at once; training runs at 0 here and the daemons and helper
    # actors are lowered instead (ltray.train.priority).
    "worker_niceness": 0,
    "enable_worker_prestart": False,
    "prestart_worker_first_driver": False,
    "memory_monitor_refresh_ms": 0,  # the OOM killer's poll: a single local job needs none
    "enable_metrics_collection": False,
    "metrics_report_interval_ms": 60_000,
    "raylet_report_resources_period_milliseconds": 1_000,
    "raylet_check_gc_period_milliseconds": 1_000,
    "kill_idle_workers_interval_ms": 1_000,
    "debug_dump_period_milliseconds": 60_000,
    "gcs_pull_resource_loads_period_milliseconds": 5_000,
    "event_stats": False,
}


# What every Ray this process starts for training keeps from the above, even where it runs many
# jobs (sweeps, reproductions): training workers at the daemons' priority, not below them (at
# Ray's nice 15, three reproduction runs here trained at 36 instead of 50 images/s each while
# anything else ran on the machine).
TRAINING_RAY: dict[str, Any] = {"worker_niceness": 0}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """[3] Runs on every Ray Train worker."""
    import logging

    import ray.train
    from ray.train.v2._internal.execution import context as train_context

    from ltray.train.loop import run_training

    # Ray Train logs every report at INFO, under a logger named by its file path.
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    cfg = Config.model_validate(config["config"])
    if config.get("own_cluster") and ray.train.get_context().get_local_rank() == 0:
        deprioritize_ray_helpers()  # this run's Ray instance is ours: see ltray.train.priority
    resume = Path(config["resume_from"]) if config.get("resume_from") else None
    store = config.get("store")
    hook = config.get("epoch_hook")
    if store is None:
        run_training(
            cfg, Path(config["run_dir"]), RayTrainContext(), resume_from=resume, epoch_hook=hook
        )
        return
    # The run directory lives on a remote storage (a trial of `ltray tune --storage s3://…`):
    # every rank works in a scratch folder of its own node; rank 0 starts from what the run
    # left in the storage and uploads it at each report and at the end.

    ctx = RayTrainContext()
    run_dir = node_scratch(*config["scratch"], f"rank{ctx.rank}")
    sync = FolderSync(run_dir, store)
    if ctx.rank == 0:
        sync.pull(skip=("ray",))
    run_training(cfg, run_dir, SyncingContext(ctx, sync), resume_from=resume, epoch_hook=hook)
    if ctx.rank == 0:
        sync.push(skip=("ray",))
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)


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
    """The resolved config of an earlier run, plus overrides (e.g. ``train.epochs=30``; which
    keys a resumed run may change: :data:`ltray.train.resume.RESUME_ALLOWED`)."""
    return RunDir(run_dir).read_config(overrides)


def ray_init(address: str | None = None, *, dashboard: bool = True, **kwargs: Any) -> None:
    """Start (or connect to) Ray once. The dashboard is needed by Tune sweeps only: Train V2
    frees the placement group of a trial ASHA stops through the State API (ray issue 54305).
    A local Ray binds its dashboard (when started) to 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return
    if address is None or address == "local":
        kwargs.setdefault("include_dashboard", dashboard)
        kwargs.setdefault("dashboard_host", "127.0.0.1")
    ray.init(address=address, runtime_env=driver_runtime_env(address), **kwargs)


def _job_runtime_env() -> dict[str, Any]:
    """The runtime env of the Ray job this process runs in (``ray job submit
    --runtime-env…``), {} outside a submitted job. Ray merges it with ray.init's and refuses
    a field or an env var set by both."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return dict(json.loads(raw).get("runtime_env") or {})
    except (ValueError, AttributeError):
        return {}


def driver_runtime_env(address: str | None) -> dict[str, Any]:
    """ray.init's runtime env: ltray's Ray settings for every worker and, on a cluster, ltray
    itself (``py_modules``: the installed package, uploaded once per content hash), so worker
    nodes need its dependencies (the cluster image) but not ltray. Not shipped when the job
    already brings the code (``ray job submit --working-dir`` / ``py_modules``) or with
    ``LTRAY_SHIP_CODE=0`` (ltray preinstalled on every node)."""
    job = _job_runtime_env()
    env = {k: v for k, v in _RAY_ENV.items() if k not in (job.get("env_vars") or {})}
    out: dict[str, Any] = {"env_vars": env}
    remote = address not in (None, "local")
    brought = job.get("working_dir") or job.get("py_modules")
    if remote and not brought and os.environ.get("LTRAY_SHIP_CODE", "1") != "0":
        out["py_modules"] = [str(Path(__file__).resolve().parents[1])]  # the ltray package
        if "excludes" not in job:
            out["excludes"] = ["__pycache__/", "*.pyc"]
    return out


def interruptible_trainer_class(trainer_cls: type) -> type:
    """``trainer_cls`` whose Ctrl-C ends ``fit()`` with a ``KeyboardInterrupt``.

    Ray Train's own SIGINT handler (``DataParallelTrainer._register_sigint_handler``, Ray 2.60)
    aborts the controller and then calls ``sys.exit(0)`` from inside the handler, so the
    command ended with exit code 1 and no word. Here the first Ctrl-C aborts the run the same
    way (the workers stop; every epoch whose checkpoint and metrics line were written stays)
    and raises ``KeyboardInterrupt``, which the CLI turns into one line and exit code 130."""

    class Interruptible(trainer_cls):  # type: ignore[misc, valid-type]
        def _register_sigint_handler(self, controller: Any) -> None:
            import contextlib
            import signal

            import ray

            def on_sigint(signum: int, frame: Any) -> None:
                signal.signal(signal.SIGINT, signal.default_int_handler)  # a 2nd Ctrl-C: now
                # A controller that has gone already has nothing left to stop.
                with contextlib.suppress(ray.exceptions.RayError):
                    ray.get(controller.abort.remote())
                raise KeyboardInterrupt

            signal.signal(signal.SIGINT, on_sigint)

    Interruptible.__name__ = Interruptible.__qualname__ = trainer_cls.__name__
    return Interruptible


def make_trainer(
    cfg: Config,
    run_dir: Path,
    *,
    name: str,
    resume_from: Path | None = None,
    callbacks: list[Any] | None = None,
    own_cluster: bool = False,
    store: Any = None,
    scratch: tuple[str, ...] = (),
    epoch_hook: Any = None,
) -> Any:
    """[2] The trainer running :func:`train_loop_per_worker` with ``cfg.scaling`` (whose
    ``use_gpu`` must be resolved); Ray's checkpoints go to ``run_dir/ray/<name>``.

    ``own_cluster``: this process started the Ray instance for this run alone, so the helpers
    that guard a shared cluster are left out (:mod:`ltray.train.lean`).
    ``store``: the run directory is this :class:`~ltray.storage.Storage` folder (a remote
    sweep's trial): Ray's checkpoints go to its ``ray/<name>`` through its filesystem and the
    workers train in node scratch folders named by ``scratch``, rank 0 uploading to it.
    ``epoch_hook``: rank 0's :data:`~ltray.train.evaluate.EpochHook` (pickled to the workers).
    """
    import ray.train

    sc = cfg.scaling
    if sc.num_workers > 1:
        from ray.train.torch import TorchTrainer as trainer_cls
    else:
        # One worker needs no torch process group: the generic trainer skips its set-up (and
        # keeps torch out of the Train controller).
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer as trainer_cls
    if own_cluster:
        from ltray.train.lean import lean_trainer_class  # Ray's classes, subclassed at import

        trainer_cls = lean_trainer_class(trainer_cls)
    trainer_cls = interruptible_trainer_class(trainer_cls)
    return trainer_cls(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "run_dir": str(run_dir),
            "resume_from": str(resume_from) if resume_from else None,
            "own_cluster": own_cluster,
            "store": store,
            "scratch": list(scratch),
            "epoch_hook": epoch_hook,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers,
            use_gpu=sc.gpu(),
            resources_per_worker=sc.worker_resources(),
        ),
        run_config=ray.train.RunConfig(
            name=name,
            **(
                {"storage_path": str(run_dir / RunDir.RAY)}
                if store is None
                else {"storage_path": (store / "ray").path, "storage_filesystem": store.fs}
            ),
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

    resume_from = None
    if resume is not None:
        run_dir = Path(resume).expanduser().resolve()
        resume_from = RunDir(run_dir).checkpoint("last")
        if not resume_from.is_file():
            raise RunDirError(
                f"{resume_from}: no checkpoint to resume from; start a new run instead"
            )
        saved = load_run_config(run_dir, [])
        check_resume(saved, cfg, run_dir)  # the run's config is the run's: refused before Ray
    check_config(cfg)  # every problem a registry or the schema knows, before data and Ray
    for note in ignored_settings(cfg):
        print(f"[ltray] note: {note}", flush=True)
    # What the run may use: this machine, or the cluster it joins (connecting starts nothing).
    if cfg.scaling.num_workers > 0 and address is not None:
        ray_init(address, dashboard=False)
        have, what = cluster_resources(), "cluster"
    else:
        have, what = local_resources(), "machine"
    cfg = resolve_scaling(cfg, have)
    if cfg.scaling.num_workers > 0:
        check_fits(cfg.scaling, have, what=what)
    data = None
    if resume is not None:
        changes = check_resume(saved, cfg, run_dir)  # the allowed ones, scaling resolved
        for key, (was, now) in changes.items():
            print(f"[ltray] resume: {key} {was} → {now}", flush=True)
    else:
        # Validate the data before anything expensive: a bad root or list file fails here.
        data = prepare_data(cfg.data)
        for note in data.split_info.get("notes", []):
            print(f"[ltray] {note}", flush=True)
        print(f"[ltray] input: {input_line(data)}", flush=True)
    fresh = False  # whether this call made the run directory
    if data is not None:
        fresh = out is None or not Path(out).expanduser().exists()
        run_dir = prepare_run_dir(cfg, out, prefix=f"{cfg.data.name}-{cfg.train.method}")
        RunDir(run_dir).write_config(cfg)
        RunDir(run_dir).write_split(data.split_info)
    if resume is not None:
        RunDir(run_dir).record_resume(cfg, changes)  # config.yaml := what the run continues with
    try:
        _run(cfg, run_dir, resume_from=resume_from, address=address)
    except BaseException:
        if resume is None:
            _discard_unstarted(run_dir, remove=fresh)
        raise
    results = RunDir(run_dir).results()
    if results is None:
        raise RunDirError(
            f"{run_dir / RunDir.RESULTS}: training ended without results; see the log above"
        )
    if cfg.tracking.mlflow:
        log_train_run(cfg, run_dir, results)
    return run_dir, results


def _run(cfg: Config, run_dir: Path, *, resume_from: Path | None, address: str | None) -> None:
    """The loop in this process (``scaling.num_workers=0``) or through a Ray Train trainer."""
    ray_dir = run_dir / RunDir.RAY
    attempt = len(list(ray_dir.glob("train-*"))) if ray_dir.is_dir() else 0
    if cfg.scaling.num_workers == 0:
        from ltray.train.loop import run_training

        run_training(cfg, run_dir, LocalContext(), resume_from=resume_from)
        return
    import ray

    own = address is None and not ray.is_initialized()
    # Ray pre-starts idle worker processes for a new job; Train's actors cannot use them
    # (they carry their own runtime env), so on a machine of our own they only cost CPU.
    extra = {"_system_config": dict(_QUIET_LOCAL_RAY)} if own else {}
    ray_init(address, dashboard=False, **extra)
    # A new name per attempt: a reused name would pick up old Ray checkpoints.
    make_trainer(
        cfg, run_dir, name=f"train-{attempt}", resume_from=resume_from, own_cluster=own
    ).fit()


def _discard_unstarted(run_dir: Path, *, remove: bool) -> None:
    """A run that failed before its first checkpoint cannot be resumed: leave no folder that
    `ltray train --resume` would refuse (``remove``: the folder itself was made by this call)."""
    import shutil

    if not run_dir.is_dir() or RunDir(run_dir).has_checkpoint("last"):
        return
    for child in run_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    if remove:
        run_dir.rmdir()
