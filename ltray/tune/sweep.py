"""`ltray tune`'s driver: a Ray Tune sweep (OptunaSearch + ASHA) whose trials train or fit post hoc.

Three levels, as in Ray's examples:
  [1] :func:`run_sweep` — the Tune driver: validates, starts Ray, builds the Tuner, logs MLflow,
      and confirms the best configurations over seeds (:mod:`ltray.tune.confirm`);
  [2] a trial — :func:`~ltray.tune.trial.train_trial` (one training run) or
      :func:`~ltray.tune.trial.posthoc_trial` (one post-hoc fit over a cached run);
  [3] the training loop — in the trial process itself for single-worker trials (no nested
      Train start-up cost), or on the workers of a nested ``TorchTrainer`` otherwise.

The sweep's folder is described in :mod:`ltray.tune.folder`. ``--storage`` is a local path or a
URI (``s3://bucket/prefix``, ``gs://…``, any pyarrow filesystem, :mod:`ltray.storage`). With a
URI every file lives there: Tune writes through the filesystem, a trial trains into a scratch
folder on its node and uploads its run directory at every report and at the end, the driver reads
the trials back from the storage, and keeps only its MLflow bookkeeping in a local mirror
(uploaded at the end of the sweep).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ltray.config import Config
from ltray.errors import ConfigError, RunDirError
from ltray.launch import TRAIN_DRIVER, start_ray, unit_resources
from ltray.resources import cluster_resources, local_resources
from ltray.storage import Storage, pull_files, push_files
from ltray.tracking import (
    SpoolingClient,
    log_dataset,
    mlflow_params,
    parse_metric,
    resolve_tracking_uri,
    result_metrics,
    start_run,
)
from ltray.train.driver import train
from ltray.tune.asha import PersistentASHA
from ltray.tune.confirm import run_confirm
from ltray.tune.folder import DRIVER_FILES, SweepPaths, collect_trials, rank_trials, sweep_paths
from ltray.tune.mlflow_callback import MlflowSweepCallback, log_best_model
from ltray.tune.plan import (
    SweepOptions,
    asha_state,
    check_resume,
    check_sweep,
    fit_resources,
    select_head_from_metric,
    sweep_space,
)
from ltray.tune.space import POSTHOC, Space, to_tune
from ltray.tune.trial import trainable

__all__ = ["run_sweep", "trial_resources"]


def run_sweep(space: Space, opts: SweepOptions) -> dict[str, Any]:
    """[1] Run (or resume) a sweep; returns a summary with the best trial."""
    check_sweep(space, opts)
    space = sweep_space(space, opts)
    if opts.address is None:  # this machine: decided before Ray starts (a cluster's: after)
        space = fit_resources(space, local_resources(), "machine")
    where = sweep_paths(opts.name or space.name, opts.storage)
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

    num_samples = space.spec.search.num_samples
    max_concurrent = space.spec.search.max_concurrent
    asha = asha_state(space)
    space = select_head_from_metric(space)
    local = where.local()

    state: dict[str, Any] = (root / "sweep.json").read_json() if opts.resume else {}
    if opts.resume:
        if opts.address is None:
            check_resume(state, space)
        if where.remote:  # the MLflow run map of the sweep, when resumed from another machine
            pull_files(root, local, DRIVER_FILES)
    from_run = opts.from_run or state.get("from_run")
    base_trained = False
    if space.spec.kind == POSTHOC and not from_run:
        # No cached run given: train the base config once (the embedded default by default).

        in_process = space.base.scaling.model_copy(update={"num_workers": 0})
        base_run, _ = train(
            space.base.model_copy(update={"scaling": in_process}), out=local / "base_run"
        )
        from_run, base_trained = str(base_run), True
    from_store = None
    if space.spec.kind == POSTHOC:
        from_store = _remote_from_run(where, from_run, base_trained)

    nested = space.spec.kind != POSTHOC and space.base.scaling.num_workers > 1
    # Only nested trials need the dashboard (Train frees a stopped trial's placement group
    # through the State API, ray issue 54305); in-process trials start none: one service fewer
    # to come up, which failed to on a loaded machine (its start-up time is within noise on an
    # idle one).
    start_ray(opts.address, dashboard=nested)
    import ray

    if opts.address is not None:
        space = fit_resources(space, cluster_resources(), "cluster")
        if opts.resume:
            check_resume(state, space)
    if nested and ray.cluster_resources().get(TRAIN_DRIVER, 0) < 1:
        raise ConfigError(
            f"the cluster at {opts.address} has no {TRAIN_DRIVER!r} resource for nested trials; "
            f"start its head with `ray start --head --resources='{{\"{TRAIN_DRIVER}\": 100}}'`"
        )

    uri = resolve_tracking_uri(opts.mlflow_uri or space.base.tracking.mlflow_uri)
    experiment = opts.experiment or space.base.tracking.experiment
    callbacks = []
    if opts.mlflow:
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
        "max_concurrent": max_concurrent,
        "posthoc": space.spec.search.posthoc,
        "confirm": space.spec.search.confirm,
        "seeds": space.spec.search.seeds,
        "from_run": from_run,
        "mlflow_uri": uri,
        "mlflow_parent": parent,
        "experiment": experiment,
        "base": space.base.model_dump(mode="json"),
        "space": {k: v.model_dump() for k, v in space.spec.space.items()},
        # the cuts ASHA makes (None: no scheduler); a resumed sweep keeps the ones it started with
        "asha": state.get("asha") if opts.resume else asha,
        "started": state.get("started", time.time()),
    }
    (root / "sweep.json").write_json(state, indent=1)

    rungs = (state["asha"] or {}).get("rungs", [])
    trainable = _trainable(space, where, from_run, from_store, rungs)
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
            tune_config=_tune_config(space, num_samples, max_concurrent, asha, local),
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
    confirm = space.spec.search.confirm
    if confirm:
        # The winner is the confirmed one: only its model is registered.
        summary["confirm"] = run_confirm(
            root,
            local,
            top=confirm,
            seeds=space.spec.search.seeds,
            address=opts.address,
            max_concurrent=max_concurrent,
            mlflow=opts.mlflow,
            register=opts.register,
        )
    if opts.mlflow and parent is not None:
        client = SpoolingClient(uri, local / "mlflow_spool.jsonl")
        register = None if confirm else opts.register
        _finish_parent(client, local, parent, summary, from_run, register=register)
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
    log_best_model(client, sweep_dir, parent, best, register=register)
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


def trial_resources(base: Config, kind: str) -> dict[str, float]:
    """What Ray reserves for one trial's own process (``base.scaling.use_gpu`` resolved): one
    CPU for a post-hoc fit, else what a training run's process takes
    (:func:`ltray.launch.unit_resources`)."""
    if kind == POSTHOC:
        return {"CPU": 1.0}
    return unit_resources(base)


def _trainable(
    space: Space,
    where: SweepPaths,
    from_run: str | None,
    from_store: Storage | None,
    cuts: Sequence[int] = (),
) -> Any:
    # Trials get the sweep folder: a local path, or (``store``) the storage with the
    # filesystem this driver resolved, pickled with the trainable.
    meta: dict[str, Any] = {
        "base": space.base.model_dump(mode="json"),
        "name": where.name,
        "sweep_dir": None if where.remote else str(where.root.path),
        "store": where.root if where.remote else None,
        "posthoc": space.spec.search.posthoc,
        "cuts": list(cuts),
    }
    resources = trial_resources(space.base, space.spec.kind)
    if space.spec.kind == POSTHOC:
        meta.update(method=space.spec.method, from_run=from_run, from_store=from_store)
    return trainable(space.spec.kind, meta, resources)


def _tune_config(
    space: Space,
    num_samples: int,
    max_concurrent: int,
    asha: dict[str, Any] | None,
    folder: Path | None = None,
) -> Any:
    """Tune's config: Optuna's sampler, behind a concurrency limit, and ASHA when ``asha``
    (:func:`~ltray.tune.plan.asha_state`) says it cuts. ``folder``: the driver's sweep folder,
    where Optuna keeps its study (``optuna.db``: ``optuna-dashboard sqlite:///<file>`` and
    Optuna's API open it) and ASHA its rung records (``asha.json``, read back on --resume)."""
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
    storage = {}
    if folder is not None:
        db = Path(folder).resolve() / "optuna.db"
        storage = {
            "study_name": space.name,
            "storage": optuna.storages.RDBStorage(f"sqlite:///{db}"),
        }
    searcher = OptunaSearch(
        sampler=sampler,
        metric=space.metrics if multi else space.metrics[0],
        mode=space.modes if multi else space.modes[0],
        **storage,
    )
    scheduler = None
    if asha is not None:
        # max_t one past the last epoch: no forced stop at max_t. A rung can still fall on the
        # last epoch (grace 1, factor 2, 4 epochs) and stop a trial on its last report, so the
        # training loop writes its results and cache before that report.
        state = {} if folder is None else {"state_file": Path(folder) / "asha.json"}
        scheduler = (PersistentASHA if state else ASHAScheduler)(
            **state,
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
    trials = collect_trials(root, space.metrics, space.modes)
    ranked = rank_trials(trials, space.metrics[0], space.modes[0])
    return {
        "num_trials": len(trials),
        "errors": [str(e)[:500] for e in results.errors],
        "best": ranked[0] if ranked else None,
    }
