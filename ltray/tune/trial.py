"""[2] One trial of a sweep: the function Ray Tune calls with the sampled values.

- :func:`train_trial` trains one configuration: the loop in the trial's own process for a
  single-worker trial (no nested Train start-up cost), or a nested Ray Train trainer named after
  the trial otherwise; with ``search.posthoc`` every report also carries the post-hoc stage's
  val scores (:mod:`ltray.tune.scoring`);
- :func:`posthoc_trial` fits one post-hoc method over a cached run (seconds, no training).

A trial writes its run directory under the sweep's ``trials/<trial_id>/``; on a remote storage
it trains in a scratch folder of its node and uploads it at every report and at the end.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

from ltray.config import Config, saved_config, set_dotted
from ltray.fusion.cache import read_cache
from ltray.fusion.methods import run_method
from ltray.storage import FolderSync, Storage, node_scratch
from ltray.train.context import SyncingContext, TuneContext
from ltray.train.driver import make_trainer
from ltray.train.loop import run_training
from ltray.train.rundir import RunDir
from ltray.tune.scoring import PosthocScorer, method_settings

__all__ = [
    "trial_config",
    "train_trial",
    "posthoc_trial",
    "confirm_trial",
    "searched",
    "trainable",
]


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> Config:
    """The base config with one trial's sampled values set (types kept, no string parsing)."""
    raw = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(raw, key, value)
    return saved_config(raw)  # a sweep saved by an earlier version may hold retired keys


def searched(config: dict[str, Any]) -> dict[str, Any]:
    """The sampled values of a trial's config (ltray's own settings left out)."""
    return {k: v for k, v in config.items() if not k.startswith("__")}


def _write_trial_info(run_dir: Path, trial_id: str, config: dict[str, Any]) -> None:
    """``trial.json``: the trial's sampled values and where it ran (node, pid)."""
    import ray

    run_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "trial_id": trial_id,
        "params": searched(config),
        "pid": os.getpid(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "run_dir": str(run_dir),  # a remote sweep's: the scratch folder on that node
    }
    (run_dir / "trial.json").write_text(json.dumps(info))


class TrialFolder:
    """Where a trial writes its run directory. On a local storage: ``<sweep>/trials/<id>``
    itself. On a remote one: a scratch folder on this node, filled first with what the trial
    left in the storage (a trial restarted on another node, or restored, continues from it),
    and uploaded by :meth:`push`."""

    def __init__(self, meta: dict[str, Any], trial_id: str) -> None:
        store: Storage | None = meta.get("store")
        sub = meta.get("trials", "trials")
        self.sync: FolderSync | None = None
        if store is None:
            self.path = Path(meta["sweep_dir"]) / sub / trial_id
            return
        remote = store / sub / trial_id
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


def _posthoc_scorer(meta: dict[str, Any], cfg: Config) -> Any:
    """The two-level trial's epoch hook (:class:`~ltray.tune.scoring.PosthocScorer`), or None
    when the space names no post-hoc methods."""
    if not meta.get("posthoc"):
        return None

    return PosthocScorer(
        methods=method_settings(meta["posthoc"], cfg.train.seed),
        cuts=tuple(meta.get("cuts") or ()),
        seed=cfg.train.seed,
    )


def train_trial(config: dict[str, Any]) -> None:
    """[2] One Tune trial that trains; ``config`` = sampled keys + ``__ltray__`` settings."""
    from ray import tune

    meta = config["__ltray__"]
    cfg = trial_config(meta["base"], searched(config))
    trial_id = tune.get_context().get_trial_id()
    folder = TrialFolder(meta, trial_id)
    run_dir = folder.path
    _write_trial_info(run_dir, trial_id, config)

    RunDir(run_dir).write_config(cfg)
    folder.push()
    if RunDir(run_dir).is_finished():
        # A restored trial whose training had already finished (the sweep was interrupted
        # while Tune recorded its end): hand its last result back instead of redoing it.

        tune.report(RunDir(run_dir).read_metrics()[-1])
        return
    hook = _posthoc_scorer(meta, cfg)
    if cfg.scaling.num_workers <= 1:
        # [3] in this process: a one-worker trial does not pay the nested-Train start-up cost.

        ctx = TuneContext() if folder.sync is None else SyncingContext(TuneContext(), folder.sync)
        run_training(cfg, run_dir, ctx, epoch_hook=hook)
        folder.close()
        return

    from ray.tune.integration.ray_train import TuneReportCallback

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
        epoch_hook=hook,
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

    meta = config["__ltray__"]
    method = config.get("method", meta["method"])
    settings = {
        k.split(".", 1)[1]: v for k, v in searched(config).items() if k.startswith(f"{method}.")
    }
    trial_id = tune.get_context().get_trial_id()
    folder = TrialFolder(meta, trial_id)
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

    RunDir(run_dir).append_metrics(metrics)
    folder.close()
    tune.report(metrics)


def confirm_trial(config: dict[str, Any]) -> None:
    """[2] A confirmation run (:mod:`ltray.tune.confirm`): one configuration (``config["cand"]``,
    the values a search trial sampled, and its training seed ``train.seed``), trained as a
    search trial is."""
    cand = {k: v for k, v in config["cand"].items() if not k.startswith("__")}
    if "train.seed" in config:  # a confirmation planned before the seed moved into ``cand``
        cand["train.seed"] = config["train.seed"]
    train_trial({**cand, "__ltray__": config["__ltray__"]})


_TRIALS = {"train": train_trial, "posthoc": posthoc_trial, "confirm": confirm_trial}


def trainable(kind: str, meta: dict[str, Any], resources: dict[str, float]) -> Any:
    """The function Tune runs for each trial of a sweep of ``kind`` (``train``, ``posthoc``,
    ``confirm``), with ltray's settings ``meta`` bound and ``resources`` reserved per trial."""
    from ray import tune

    fn = _TRIALS[kind]

    def trial(config: dict[str, Any]) -> None:
        fn({**config, "__ltray__": meta})

    trial.__name__ = f"ltray_{kind}_trial"
    return tune.with_resources(trial, resources)
