"""`ltray tune`: a Ray Tune sweep (OptunaSearch + ASHA) whose trials train or fit post hoc.

Three levels, as in Ray's examples:
  [1] :func:`run_sweep` — the Tune driver: validates, starts Ray, builds the Tuner, logs MLflow;
  [2] a trial — :func:`train_trial` (one training run) or :func:`posthoc_trial` (one post-hoc
      fit over a cached run);
  [3] the training loop — in the trial process itself for single-worker trials (no nested
      Train start-up cost), or on the workers of a nested ``TorchTrainer`` otherwise.

Sweep folder ``<storage>/<name>/``: Tune's own experiment state, plus ``ltray/`` with
``sweep.json`` (the space, metrics, MLflow parent), ``trials/<trial_id>/`` (one run directory
per trial), ``mlflow_runs.json`` (trial → MLflow run) and, when MLflow was unreachable,
``mlflow_spool.jsonl``.

``--storage`` is a local path or a URI (``s3://bucket/prefix``, ``gs://…``, any pyarrow
filesystem, :mod:`ltray.storage`). With a URI every file above lives there: Tune writes through
the filesystem, a trial trains into a scratch folder on its node and uploads its run directory
at every report and at the end, the driver reads the trials back from the storage, and keeps
only its MLflow bookkeeping in a local mirror (uploaded at the end of the sweep).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltray.config import Config
from ltray.errors import ConfigError, LtrayError, RunDirError
from ltray.paths import sweeps_dir
from ltray.resources import check_fits, cluster_resources, local_resources, resolve_scaling
from ltray.storage import FolderSync, Storage, driver_folder, node_scratch, pull_files, push_files
from ltray.tune.space import POSTHOC, Space, to_tune

__all__ = [
    "SweepOptions",
    "run_sweep",
    "train_trial",
    "posthoc_trial",
    "sweep_paths",
    "SweepPaths",
    "plan",
    "trial_resources",
    "check_sweep",
    "check_resume",
]

# The custom resource a nested trial's Train driver takes
# (docs/architecture.md#the-three-ray-levels).
TRAIN_DRIVER = "train_driver"


@dataclass
class SweepOptions:
    address: str | None = None
    num_samples: int | None = None
    max_concurrent: int | None = None
    grace_period: int | None = None  # ASHA's, in epochs; default: the space's
    reduction_factor: int | None = None
    name: str | None = None
    storage: str | None = None
    mlflow_uri: str | None = None
    mlflow: bool = True
    resume: bool = False
    from_run: str | None = None
    experiment: str | None = None
    register: str | None = None  # register the best trial's model under this registry name
    callbacks: list[Any] = field(default_factory=list)  # extra Tune callbacks (library use)


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> Config:
    """The base config with one trial's sampled values set (types kept, no string parsing)."""
    raw = copy.deepcopy(base)
    for key, value in params.items():
        _set_dotted(raw, key, value)
    return Config.model_validate(raw)


def _searched(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("__")}


def _write_trial_info(run_dir: Path, trial_id: str, config: dict[str, Any]) -> None:
    """``trial.json``: the trial's sampled values and where it ran (node, pid)."""
    import ray

    run_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "trial_id": trial_id,
        "params": _searched(config),
        "pid": os.getpid(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "run_dir": str(run_dir),  # a remote sweep's: the scratch folder on that node
    }
    (run_dir / "trial.json").write_text(json.dumps(info))


class _TrialFolder:
    """Where a trial writes its run directory. On a local storage: ``<sweep>/trials/<id>``
    itself. On a remote one: a scratch folder on this node, filled first with what the trial
    left in the storage (a trial restarted on another node, or restored, continues from it),
    and uploaded by :meth:`push`."""

    def __init__(self, meta: dict[str, Any], trial_id: str) -> None:
        store: Storage | None = meta.get("store")
        self.sync: FolderSync | None = None
        if store is None:
            self.path = Path(meta["sweep_dir"]) / "trials" / trial_id
            return
        remote = store / "trials" / trial_id
        self.path = node_scratch(meta["name"], trial_id)
        self.sync = FolderSync(self.path, remote)
        self.sync.pull(skip=("ray",))

    def push(self) -> None:
        if self.sync is not None:
            self.sync.push(skip=("ray",))

    def close(self) -> None:
        """Final upload; the scratch copy is removed."""
        if self.sync is not None:
            self.push()
            import shutil

            shutil.rmtree(self.path, ignore_errors=True)


def train_trial(config: dict[str, Any]) -> None:
    """[2] One Tune trial that trains; ``config`` = sampled keys + ``__ltray__`` settings."""
    from ray import tune

    meta = config["__ltray__"]
    cfg = trial_config(meta["base"], _searched(config))
    trial_id = tune.get_context().get_trial_id()
    folder = _TrialFolder(meta, trial_id)
    run_dir = folder.path
    _write_trial_info(run_dir, trial_id, config)
    from ltray.config import save_config

    save_config(cfg, run_dir / "config.yaml")
    folder.push()
    if (run_dir / "results.json").is_file():
        # A restored trial whose training had already finished (the sweep was interrupted
        # while Tune recorded its end): hand its last result back instead of redoing it.
        from ltray.train.rundir import read_metrics

        tune.report(read_metrics(run_dir)[-1])
        return
    if cfg.scaling.num_workers <= 1:
        # [3] in this process: a one-worker trial does not pay the nested-Train start-up cost.
        from ltray.train.context import SyncingContext, TuneContext
        from ltray.train.loop import run_training

        ctx = TuneContext() if folder.sync is None else SyncingContext(TuneContext(), folder.sync)
        run_training(cfg, run_dir, ctx)
        folder.close()
        return

    from ray.tune.integration.ray_train import TuneReportCallback

    from ltray.train.driver import make_trainer

    # [3] on the workers of a nested Train run, named after the trial: a Tune-level retry of
    # this trial resumes its Train run from the last checkpoint. With a remote storage, rank 0
    # keeps the run directory on its own node and uploads it (``store``).
    store = None if folder.sync is None else folder.sync.dest
    make_trainer(
        cfg,
        run_dir,
        name=f"train_{trial_id}",
        callbacks=[TuneReportCallback()],
        store=store,
        scratch=(meta["name"], trial_id),
    ).fit()
    if folder.sync is not None:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)  # rank 0 uploaded everything


def _local_cache(meta: dict[str, Any]) -> str:
    """The run whose cache a post-hoc trial reads: ``--from`` (or the base run) itself on a
    local storage; on a remote one, its cache fetched once per node from the sweep's storage."""
    store: Storage | None = meta.get("from_store")
    if store is None:
        return meta["from_run"]
    local = node_scratch(meta["name"], "from_run")
    if not (local / "cache" / "meta.json").is_file():
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="fetch-", dir=local.parent))
        (store / "cache").download(tmp / "cache")
        with contextlib.suppress(OSError):  # another trial of this node may have won
            (tmp / "cache").rename(local / "cache")
        shutil.rmtree(tmp, ignore_errors=True)
    return str(local)


def posthoc_trial(config: dict[str, Any]) -> None:
    """[2] One Tune trial fitting a post-hoc method over a cached run (seconds, no training)."""
    from ray import tune

    from ltray.fusion import run_method
    from ltray.fusion.cache import read_cache

    meta = config["__ltray__"]
    method = config.get("method", meta["method"])
    settings = {
        k.split(".", 1)[1]: v for k, v in _searched(config).items() if k.startswith(f"{method}.")
    }
    trial_id = tune.get_context().get_trial_id()
    folder = _TrialFolder(meta, trial_id)
    run_dir = folder.path
    _write_trial_info(run_dir, trial_id, config)
    cache = read_cache(_local_cache(meta))
    t0 = time.time()
    res = run_method(cache, method, settings)
    metrics: dict[str, Any] = {"fit_time_s": time.time() - t0}
    for split, m in (("val", res.val), ("test", res.test)):
        for key, value in m.summary().items():
            if value is not None:
                metrics[f"{split}_fused_{key}"] = float(value)
    for key, value in res.chosen.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[f"chosen_{key}"] = float(value)
    metrics["epoch"] = 1
    from ltray.train.rundir import append_metrics

    append_metrics(run_dir, metrics)
    folder.close()
    tune.report(metrics)


@dataclass
class SweepPaths:
    """Where a sweep lives. ``storage``: the ``--storage`` as shown (an absolute path or a URI);
    ``root``: ltray's sweep folder ``<storage>/<name>/ltray`` on its filesystem; ``local``: the
    driver's own folder of it (``root`` itself on a local path, a mirror for a URI:
    :func:`ltray.storage.driver_folder`)."""

    storage: str
    name: str
    top: Storage  # the storage itself: Tune's storage_path / storage_filesystem

    @property
    def root(self) -> Storage:
        return self.top / self.name / "ltray"

    @property
    def remote(self) -> bool:
        return self.top.remote

    def local(self) -> Path:
        """The driver's folder (created; a remote sweep's mirror points back at ``root``)."""
        return driver_folder(self.root)


def sweep_paths(space: Space, opts: SweepOptions) -> SweepPaths:
    """Where the sweep's files go (nothing is created)."""
    top = Storage.at(opts.storage or sweeps_dir())
    return SweepPaths(storage=top.uri, name=opts.name or space.name, top=top)


def plan(space: Space, opts: SweepOptions) -> dict[str, Any]:
    """What a sweep would do (``--dry-run``), with nothing started."""
    s = space.spec.search
    where = sweep_paths(space, opts)
    sc = space.base.scaling
    return {
        "space": space.describe(),
        "kind": space.spec.kind,
        "method": space.spec.method,
        "metric": space.metrics,
        "mode": space.modes,
        "num_samples": _counts(space, opts)[0],
        "max_concurrent": _counts(space, opts)[1],
        "scheduler": _scheduler_text(space, opts),
        "sampler": f"{s.sampler} (seed {s.seed})",
        "epochs": space.base.train.epochs,
        "trial": "in-process loop (no nested Train)"
        if sc.num_workers <= 1
        else f"nested TorchTrainer, {sc.num_workers} workers",
        "storage": f"{where.storage}/{where.name}",
        "sweep_dir": str(where.root),
        "from_run": opts.from_run,
    }


def _check_from_run(space: Space, opts: SweepOptions) -> None:
    if space.spec.kind == POSTHOC and opts.from_run:
        cache = Path(opts.from_run) / "cache" / "meta.json"
        if not cache.is_file():
            raise RunDirError(
                f"--from {opts.from_run}: no feature cache ({cache} missing); pass a run "
                "directory written by `ltray train`"
            )
        # The run's shot groups, not the space's base config's, decide which metrics exist.
        from ltray.validate import format_problems, run_group_problems

        meta = json.loads(cache.read_text())
        empty = run_group_problems(meta, space.metrics, run=f"--from {opts.from_run}")
        if empty:
            raise ConfigError(format_problems(empty))
    if space.spec.kind != POSTHOC and opts.from_run:
        raise ConfigError("--from applies to post-hoc spaces (kind: posthoc) only")


def _counts(space: Space, opts: SweepOptions) -> tuple[int, int]:
    """(num_samples, max_concurrent): the command line's when given (0 included), else the
    space file's."""
    s = space.spec.search
    n = s.num_samples if opts.num_samples is None else opts.num_samples
    c = s.max_concurrent if opts.max_concurrent is None else opts.max_concurrent
    return n, c


def _asha(space: Space, opts: SweepOptions) -> tuple[int, int]:
    """(grace_period, reduction_factor): the command line's when given, else the space file's."""
    s = space.spec.search
    g = s.grace_period if opts.grace_period is None else opts.grace_period
    f = s.reduction_factor if opts.reduction_factor is None else opts.reduction_factor
    return g, f


def asha_rungs(epochs: int, grace: int, factor: int) -> list[int]:
    """The epochs at which ASHA compares trials and stops the worse ones (the scheduler's rungs:
    grace, grace·factor, ... up to the last epoch)."""
    rungs, t = [], grace
    while t <= epochs:
        rungs.append(t)
        t *= factor
    return rungs


def _asha_state(space: Space, opts: SweepOptions) -> dict[str, Any] | None:
    """The cuts ASHA makes in this sweep, or None when it runs no scheduler (none asked for,
    several metrics, a post-hoc sweep, or a grace period past the last epoch)."""
    grace, factor = _asha(space, opts)
    epochs = space.base.train.epochs
    if (
        space.spec.search.scheduler != "asha"
        or space.multi_objective
        or space.spec.kind == POSTHOC
        or grace > epochs
    ):
        return None
    return {
        "grace_period": grace,
        "reduction_factor": factor,
        "rungs": asha_rungs(epochs, grace, factor),
    }


def _scheduler_text(space: Space, opts: SweepOptions) -> str:
    asha = _asha_state(space, opts)
    if asha is not None:
        return (
            f"asha: grace {asha['grace_period']}, reduction factor {asha['reduction_factor']}; "
            f"stops trials at epochs {', '.join(map(str, asha['rungs']))} of "
            f"{space.base.train.epochs}"
        )
    if space.multi_objective:
        return "none (multi-objective)"
    if space.spec.search.scheduler == "asha" and space.spec.kind != POSTHOC:
        return (
            f"none: the grace period {_asha(space, opts)[0]} is past the last epoch "
            f"{space.base.train.epochs}"
        )
    return "none"


def check_sweep(space: Space, opts: SweepOptions) -> None:
    """Everything that can be checked before Ray starts, every problem in one ConfigError:
    the options, ``--from``, the config a post-hoc sweep trains without ``--from`` (the space
    file's own checks ran in :func:`~ltray.tune.space.load_space`) and, for a local sweep,
    whether one trial fits this machine. ``--dry-run`` runs exactly this."""
    from ltray.validate import config_problems, format_problems

    problems = []
    for flag, value in zip(
        ("--num-samples", "--max-concurrent"), _counts(space, opts), strict=True
    ):
        if value < 1:
            problems.append(f"{flag} {value}: must be >= 1")
    grace, factor = _asha(space, opts)
    if grace < 1:
        problems.append(f"--grace-period {grace}: must be >= 1 (epochs)")
    if factor < 2:
        problems.append(f"--reduction-factor {factor}: must be >= 2")
    if opts.resume and (opts.grace_period is not None or opts.reduction_factor is not None):
        problems.append(
            "--resume keeps the sweep's ASHA settings; drop --grace-period/--reduction-factor, "
            "or start a new sweep with another --name"
        )
    if space.spec.kind == POSTHOC and not opts.from_run and not opts.resume:
        problems += [f"base: {x}" for x in config_problems(space.base)]
    try:
        _check_from_run(space, opts)
    except LtrayError as exc:
        problems.append(str(exc))
    if opts.address is None:  # a local sweep: decide and check resources before Ray starts
        try:
            _fit_resources(space, local_resources(), "machine")
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(format_problems(problems, where=str(space.path)))


def check_resume(state: dict[str, Any], space: Space) -> None:
    """``--resume`` continues the sweep that was started: refuse a command whose config differs
    from the one saved with the sweep (and recorded in MLflow), naming every changed key."""
    from ltray.config import flatten

    saved = flatten(state.get("base", {}))
    now = flatten(space.base.model_dump(mode="json"))
    changed = [
        f"{k}={now[k]!r} (the sweep has {saved[k]!r})"
        for k in sorted(set(saved) & set(now))
        if saved[k] != now[k]
    ]
    if changed:
        raise ConfigError(
            f"--resume: this command changes the sweep's saved config: {'; '.join(changed)}; "
            "resume without these overrides, or start a new sweep with another --name"
        )


def run_sweep(space: Space, opts: SweepOptions) -> dict[str, Any]:
    """[1] Run (or resume) a sweep; returns a summary with the best trial."""
    check_sweep(space, opts)
    where = sweep_paths(space, opts)
    name, root = where.name, where.root
    exp_path = f"{where.storage}/{name}"
    if opts.resume:
        if not (root / "sweep.json").is_file():
            raise RunDirError(f"--resume: no sweep at {root}; check --name/--storage")
    elif (root / "sweep.json").is_file():
        raise RunDirError(
            f"a sweep named {name!r} exists at {exp_path}; continue it with --resume or "
            "choose another --name"
        )

    num_samples, max_concurrent = _counts(space, opts)
    asha = _asha_state(space, opts)
    space = _select_head_from_metric(space)
    local = where.local()
    from ltray.tracking import mlflow_params, resolve_tracking_uri
    from ltray.tune.report import DRIVER_FILES

    state: dict[str, Any] = (root / "sweep.json").read_json() if opts.resume else {}
    if opts.resume:
        check_resume(state, space)
        if where.remote:  # the MLflow run map of the sweep, when resumed from another machine
            pull_files(root, local, DRIVER_FILES)
    from_run = opts.from_run or state.get("from_run")
    base_trained = False
    if space.spec.kind == POSTHOC and not from_run:
        # No cached run given: train the base config once (the embedded default by default).
        from ltray.train.driver import train

        in_process = space.base.scaling.model_copy(update={"num_workers": 0})
        base_run, _ = train(
            space.base.model_copy(update={"scaling": in_process}), out=local / "base_run"
        )
        from_run, base_trained = str(base_run), True
    from_store = None
    if space.spec.kind == POSTHOC:
        from_store = _remote_from_run(where, from_run, base_trained)

    from ltray.train.driver import TRAINING_RAY, ray_init

    nested = space.spec.kind != POSTHOC and space.base.scaling.num_workers > 1
    # A local Ray always gets the custom resource nested trials' Train drivers take
    # (docs/architecture.md#the-three-ray-levels). Only nested trials need the dashboard (Train
    # frees a stopped trial's placement group through the State API, ray issue 54305); in-process
    # trials start none: one service fewer to come up, which failed to on a loaded machine (its
    # start-up time is within noise on an idle one).
    ray_init(
        opts.address,
        dashboard=nested,
        **(
            {}
            if opts.address
            else {"resources": {TRAIN_DRIVER: 1000}, "_system_config": dict(TRAINING_RAY)}
        ),
    )
    import ray

    if opts.address is not None:
        _fit_resources(space, cluster_resources(), "cluster")
    if nested and ray.cluster_resources().get(TRAIN_DRIVER, 0) < 1:
        raise ConfigError(
            f"the cluster at {opts.address} has no {TRAIN_DRIVER!r} resource for nested trials; "
            f"start its head with `ray start --head --resources='{{\"{TRAIN_DRIVER}\": 100}}'`"
        )

    uri = resolve_tracking_uri(opts.mlflow_uri or space.base.tracking.mlflow_uri)
    experiment = opts.experiment or space.base.tracking.experiment
    callbacks = []
    if opts.mlflow:
        from ltray.tracking import SpoolingClient, start_run
        from ltray.tune.mlflow_callback import MlflowSweepCallback

        parent = state.get("mlflow_parent")
        if parent is None:
            client = SpoolingClient(uri, local / "mlflow_spool.jsonl")
            parent = start_run(
                client,
                experiment,
                f"sweep-{name}",
                command="ltray tune",
                run_dir=local,
                tags={"ltray.sweep": name},
                params={
                    "space": space.path.name,
                    "kind": space.spec.kind,
                    "metric": ",".join(space.metrics),
                    "num_samples": num_samples,
                    **{f"space.{k}": v for k, v in space.describe()},
                },
            )
            client.log_artifact(parent, str(space.path))
        callbacks.append(
            MlflowSweepCallback(
                tracking_uri=uri,
                experiment=experiment,
                parent_run_id=parent,
                sweep_dir=str(local),
                base_params=mlflow_params(space.base),
                from_run=from_run if space.spec.kind == POSTHOC else None,
            )
        )
    else:
        parent = None

    state = {
        "name": name,
        "storage": where.storage,
        "space_file": str(space.path.resolve()),
        "kind": space.spec.kind,
        "method": space.spec.method,
        "metric": space.metrics,
        "mode": space.modes,
        "num_samples": num_samples,
        "from_run": from_run,
        "mlflow_uri": uri,
        "mlflow_parent": parent,
        "experiment": experiment,
        "base": space.base.model_dump(mode="json"),
        # the cuts ASHA makes (None: no scheduler); a resumed sweep keeps the ones it started with
        "asha": state.get("asha") if opts.resume else asha,
        "started": state.get("started", time.time()),
    }
    (root / "sweep.json").write_json(state, indent=1)

    trainable = _trainable(space, where, from_run, from_store)
    from ray import tune

    # A URI storage: Tune writes through the filesystem resolved here (the same one the trials
    # and this driver use), given as a path on it.
    fs = {"storage_filesystem": where.top.fs} if where.remote else {}
    tune_path = where.top.path if where.remote else where.storage
    if opts.resume:
        tuner = tune.Tuner.restore(
            f"{tune_path}/{name}",
            trainable,
            resume_unfinished=True,
            resume_errored=True,
            **fs,
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=to_tune(space),
            tune_config=_tune_config(space, num_samples, max_concurrent, asha),
            run_config=tune.RunConfig(
                name=name,
                storage_path=tune_path,
                callbacks=[*callbacks, *opts.callbacks],
                failure_config=tune.FailureConfig(max_failures=1),
                # Ray keeps the best checkpoint by the sweep metric and the latest one.
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=1,
                    checkpoint_score_attribute=space.metrics[0],
                    checkpoint_score_order=space.modes[0],
                ),
                verbose=1,
                **fs,
            ),
        )
    try:
        results = tuner.fit()
    finally:
        if where.remote:  # the driver's MLflow bookkeeping joins the sweep in the storage
            push_files(root, local, DRIVER_FILES)
    summary = _summary(space, results, root)
    # Fewer ended trials than samples: interrupted (Ctrl-C); Tune saved its state.
    summary["interrupted"] = results.num_terminated + results.num_errors < num_samples
    (local / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if where.remote:
        (root / "summary.json").upload_file(local / "summary.json")
    if summary["interrupted"]:
        # Interrupted (Ctrl-C): the state is saved; the parent run stays open for --resume.
        return summary
    if opts.mlflow and parent is not None:
        from ltray.tracking import SpoolingClient

        client = SpoolingClient(uri, local / "mlflow_spool.jsonl")
        _finish_parent(client, local, parent, summary, from_run, register=opts.register)
        if where.remote:
            push_files(root, local, DRIVER_FILES)
    return summary


def _finish_parent(
    client: Any,
    sweep_dir: Path,
    parent: str,
    summary: dict[str, Any],
    from_run: str | None,
    *,
    register: str | None,
) -> None:
    """The sweep's parent run at the end: the best trial's numbers under their own names (the
    best value of each sweep metric over its epochs, its test metrics), its dataset and model,
    ``summary.json``; then closed."""
    from ltray.tracking import log_dataset, parse_metric, result_metrics

    best = summary.get("best") or {}
    if best:
        client.set_tag(parent, "ltray.best_trial", best["trial_id"])
        metrics = dict(best.get("metrics", {}))
        if best.get("results"):
            metrics.update(result_metrics(best["results"]))
        else:  # a post-hoc fit reports val and test once
            last = best.get("last") or {}
            metrics.update({k: v for k, v in last.items() if parse_metric(k) and k not in metrics})
        client.log_metrics(parent, metrics, step=0)
        for where in (best.get("dir"), from_run):
            if where and log_dataset(client, parent, where) is not None:
                break
    client.log_artifact(parent, str(sweep_dir / "summary.json"))
    _log_best_model(client, sweep_dir, parent, best, register=register)
    client.set_terminated(parent)
    client.flush()


def _remote_from_run(where: SweepPaths, from_run: str | None, trained: bool) -> Storage | None:
    """A post-hoc sweep on a remote storage: the run its trials fit on, in the storage (the
    base run the driver trained, uploaded whole; or ``--from``'s cache), so trials on any node
    can fetch it. None on a local storage (trials read ``from_run`` itself)."""
    if not where.remote or from_run is None:
        return None
    base = where.root / "base_run"
    if trained:
        base.upload(Path(from_run))
        return base
    if (base / "cache" / "meta.json").is_file():  # resumed: the base run is there already
        return base
    given = where.root / "from_run"
    if not (given / "cache" / "meta.json").is_file():
        (given / "cache").upload(Path(from_run) / "cache")
    return given


def _log_best_model(
    client: Any, sweep_dir: Path, parent: str, best: dict[str, Any], *, register: str | None
) -> None:
    """The best trial's network as an MLflow model in its child run (logged when the trial
    ended, else now; a post-hoc sweep's trials have none), shown as the parent run's model too;
    the parent run's ``ltray.best_model`` tag points at it; with ``register``, it becomes a new
    version of that registered model."""
    from ltray.storage import local_copy
    from ltray.tracking import LoggedModel, log_run_model, read_run_link, register_model

    runs_path = sweep_dir / "mlflow_runs.json"
    if not best.get("trial_id") or not runs_path.is_file():
        return
    child = json.loads(runs_path.read_text()).get(best["trial_id"])
    if not child:
        return
    trial_dir = Path(best.get("dir") or "")
    if not (trial_dir / "checkpoints" / "best.pt").is_file():
        # A remote sweep's trial is fetched whole (checkpoint and cache) into the driver's mirror.
        trial_dir = local_copy(sweep_dir, f"trials/{best['trial_id']}", recursive=True)
    if not (trial_dir / "checkpoints" / "best.pt").is_file():
        return
    link = read_run_link(trial_dir) or {}
    if link.get("model_uri") and link.get("run_id") == client.resolve(child):
        model: LoggedModel | None = LoggedModel(link["model_uri"], link.get("model_id"))
    else:
        model = log_run_model(client, child, trial_dir)
    if model is None:
        return
    client.set_tag(parent, "ltray.best_model", model.uri)
    if model.model_id:
        client.link_model(parent, model.model_id)
    if register:
        import warnings

        try:
            version = register_model(model.uri, register, tracking_uri=client.tracking_uri)
        except Exception as exc:  # noqa: BLE001 - the sweep's results are kept regardless
            warnings.warn(
                f"--register {register}: {model.uri} not registered ({exc})", stacklevel=2
            )
            return
        client.set_tag(parent, "ltray.registered_model", version)


def _select_head_from_metric(space: Space) -> Space:
    """Tuning ``val_<head>_<group>``: pick each trial's best epoch by that head and group too
    (``val_kt_few`` → the epoch with the best KT few-shot accuracy), so the checkpoint, the
    cache and the test numbers belong to the epoch the metric chose. Keys the base config sets
    explicitly are kept; a metric that is not an accuracy (ece) leaves the group alone."""
    from ltray.validate import SELECT_KEYS

    metric = space.metrics[0]
    if space.spec.kind == POSTHOC or not metric.startswith("val_"):
        return space
    head, group = metric[len("val_") :].rsplit("_", 1)
    given = space.spec.base.get("eval", {})
    update: dict[str, Any] = {}
    if "select_head" not in given:
        update["select_head"] = head
    chosen = update.get("select_head", space.base.eval.select_head)
    if "select_group" not in given and group in SELECT_KEYS and chosen == head:
        update["select_group"] = group
    if update:
        space.base = space.base.model_copy(
            update={"eval": space.base.eval.model_copy(update=update)}
        )
    return space


def _fit_resources(space: Space, have: dict[str, float], what: str) -> None:
    """Resolve ``scaling.use_gpu=auto`` for the sweep and refuse trials that can never run."""
    space.base = resolve_scaling(space.base, have)
    if space.spec.kind != POSTHOC:
        check_fits(space.base.scaling, have, what=what)


def trial_resources(base: Config, kind: str) -> dict[str, float]:
    """What Ray reserves for one trial's own process (``base.scaling.use_gpu`` resolved).

    A post-hoc fit takes one CPU; a single-worker training trial runs the loop in its own
    process and takes one worker's share (``scaling.gpus_per_worker=0.25`` packs four such
    trials on a GPU); a multi-worker trial only drives a nested Train run, whose workers
    reserve their own resources, so it takes the custom ``train_driver`` resource, not a core.
    """
    sc = base.scaling
    if kind == POSTHOC:
        return {"CPU": 1.0}
    if sc.num_workers <= 1:
        return sc.worker_resources()
    return {TRAIN_DRIVER: 1.0}


def _trainable(
    space: Space, where: SweepPaths, from_run: str | None, from_store: Storage | None
) -> Any:
    from ray import tune

    # Trials get the sweep folder: a local path, or (``store``) the storage with the
    # filesystem this driver resolved, pickled with the trainable.
    meta: dict[str, Any] = {
        "base": space.base.model_dump(mode="json"),
        "name": where.name,
        "sweep_dir": None if where.remote else str(where.root.path),
        "store": where.root if where.remote else None,
    }
    resources = trial_resources(space.base, space.spec.kind)
    if space.spec.kind == POSTHOC:
        meta.update(method=space.spec.method, from_run=from_run, from_store=from_store)
        fn = posthoc_trial
    else:
        fn = train_trial

    def trial(config: dict[str, Any]) -> None:
        fn({**config, "__ltray__": meta})

    trial.__name__ = f"ltray_{space.spec.kind}_trial"
    return tune.with_resources(trial, resources)


def _tune_config(
    space: Space, num_samples: int, max_concurrent: int, asha: dict[str, Any] | None
) -> Any:
    """Tune's config: Optuna's sampler, behind a concurrency limit, and ASHA when ``asha``
    (:func:`_asha_state`) says it cuts."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    s = space.spec.search
    sampler = (
        optuna.samplers.TPESampler(seed=s.seed)
        if s.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=s.seed)
    )
    multi = space.multi_objective
    searcher = OptunaSearch(
        sampler=sampler,
        metric=space.metrics if multi else space.metrics[0],
        mode=space.modes if multi else space.modes[0],
    )
    scheduler = None
    if asha is not None:
        # max_t one past the last epoch: no forced stop at max_t. A rung can still fall on the
        # last epoch (grace 1, factor 2, 4 epochs) and stop a trial on its last report, so the
        # training loop writes its results and cache before that report.
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric=space.metrics[0],
            mode=space.modes[0],
            max_t=space.base.train.epochs + 1,
            grace_period=asha["grace_period"],
            reduction_factor=asha["reduction_factor"],
        )
    return tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=max_concurrent),
        scheduler=scheduler,
        num_samples=num_samples,
        max_concurrent_trials=max_concurrent,
        # Function trials reuse their actor: no new Python process + torch import per trial.
        reuse_actors=True,
    )


def _summary(space: Space, results: Any, root: Storage) -> dict[str, Any]:
    from ltray.tune.report import collect_trials, rank_trials

    trials = collect_trials(root, space.metrics, space.modes)
    ranked = rank_trials(trials, space.metrics[0], space.modes[0])
    return {
        "num_trials": len(trials),
        "errors": [str(e)[:500] for e in results.errors],
        "best": ranked[0] if ranked else None,
    }
