"""One MLflow parent run per sweep, one child run per trial, logged from the Tune driver.

Logging from the driver (one process) avoids SQLite's "database is locked" with concurrent
trials. The trial → run-id map is persisted in the sweep folder, so a resumed sweep
(`ltray tune --resume`) keeps exactly one child run per trial. This module decides *when* to
log; what is logged, and every MLflow call, is :mod:`ltray.tracking`'s (a trial's run is made
like any other run: source tags, params, dataset input, per-epoch metrics, test metrics,
artifacts and model). With the server down, trials still finish and their records are replayed
once it is back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ltray.storage import local_copy
from ltray.tracking import (
    LoggedModel,
    SpoolingClient,
    link_run_dir,
    log_dataset,
    log_results,
    log_run_model,
    read_run_link,
    register_model,
    start_run,
)
from ltray.train.rundir import RunDir

__all__ = ["MlflowSweepCallback", "trial_metrics", "log_best_model"]


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numbers of one Tune result worth logging (val/train/test metrics, lr, speed, the
    values a post-hoc fit chose), named as :mod:`ltray.tracking.names` says."""
    keep = ("val_", "train_", "test_", "lr", "images_per_s", "epoch_time_s", "chosen_")
    return {
        k: float(v)
        for k, v in result.items()
        if k.startswith(keep) and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class MlflowSweepCallback(Callback):
    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment: str,
        parent_run_id: str,
        sweep_dir: str,
        base_params: dict[str, str],
        from_run: str | None = None,
        unpack: str | None = None,
    ) -> None:
        """``from_run``: the cached run a post-hoc sweep fits (its trials train nothing);
        ``unpack``: a key of the trial config holding a dict of sampled values (a confirmation's
        ``cand``), logged as params of their own."""
        self.unpack = unpack
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.sweep_dir = sweep_dir
        self.base_params = base_params
        self.from_run = from_run
        self._client: SpoolingClient | None = None

    # Tune pickles callbacks into the experiment state; keep only plain data.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self) -> SpoolingClient:
        if self._client is None:
            self._client = SpoolingClient(
                self.tracking_uri, Path(self.sweep_dir) / "mlflow_spool.jsonl"
            )
        return self._client

    @property
    def _map_path(self) -> Path:
        return Path(self.sweep_dir) / "mlflow_runs.json"

    def _runs(self) -> dict[str, str]:
        return json.loads(self._map_path.read_text()) if self._map_path.is_file() else {}

    def _save_runs(self, runs: dict[str, str]) -> None:
        tmp = self._map_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(runs, indent=1))
        os.replace(tmp, self._map_path)

    def _trial_dir(self, trial: Any) -> Path:
        return Path(self.sweep_dir) / "trials" / trial.trial_id

    def _run_id(self, trial: Any) -> str:
        runs = self._runs()
        if trial.trial_id not in runs:
            config = dict(trial.config)
            unpack = getattr(self, "unpack", None)
            if unpack and isinstance(config.get(unpack), dict):
                config.update(config.pop(unpack))
            searched = {k: v for k, v in config.items() if not k.startswith("__")}
            run_id = start_run(
                self.client,
                self.experiment,
                f"trial-{trial.trial_id}",
                command="ltray tune",
                parent=self.parent_run_id,
                run_dir=self._trial_dir(trial),
                tags={"ltray.trial_id": trial.trial_id},
                params={**self.base_params, **searched},
            )
            runs[trial.trial_id] = run_id
            self._save_runs(runs)
        return runs[trial.trial_id]

    def _log_dataset(self, trial: Any, run_id: str) -> None:
        """The split the trial trained on (its ``split.json``), or, for a post-hoc trial, the
        split of the run whose cache it fits."""
        for where in (self._trial_dir(trial), getattr(self, "from_run", None)):
            if where and log_dataset(self.client, run_id, where) is not None:
                return

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run_id(trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        # A resumed trial may report an epoch again: log each epoch once.
        steps_path = Path(self.sweep_dir) / "mlflow_steps.json"
        steps = json.loads(steps_path.read_text()) if steps_path.is_file() else {}
        if step <= steps.get(trial.trial_id, 0):
            return
        run_id = self._run_id(trial)
        if trial.trial_id not in steps:  # its first result: the split is written by now
            self._log_dataset(trial, run_id)
        self.client.log_metrics(run_id, trial_metrics(result), step=step)
        steps[trial.trial_id] = step
        steps_path.write_text(json.dumps(steps))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_id(trial)
        rel = f"trials/{trial.trial_id}"
        trial_dir = local_copy(self.sweep_dir, rel)  # a remote sweep: its top files fetched
        if RunDir(trial_dir).is_finished():
            # The model needs the checkpoint and the cache too (a local sweep: the same path).
            trial_dir = local_copy(self.sweep_dir, rel, recursive=True)
            log_results(self.client, run_id, trial_dir)
            model = log_run_model(self.client, run_id, trial_dir)
            link_run_dir(trial_dir, self.client, run_id, model)
        elif getattr(self, "from_run", None) is not None:
            link_run_dir(trial_dir, self.client, run_id)  # a post-hoc fit: logged per result
        else:
            self.client.set_tag(run_id, "ltray.stopped_early", "true")
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.client.set_terminated(self._run_id(trial), "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.client.flush()


def log_best_model(
    client: Any, sweep_dir: Path, parent: str, best: dict[str, Any], *, register: str | None
) -> None:
    """The best trial's network as an MLflow model in its child run (logged when the trial
    ended, else now; a post-hoc sweep's trials have none), shown as the parent run's model too;
    the parent run's ``ltray.best_model`` tag points at it; with ``register``, it becomes a new
    version of that registered model."""

    runs_path = sweep_dir / "mlflow_runs.json"
    if not best.get("trial_id") or not runs_path.is_file():
        return
    child = json.loads(runs_path.read_text()).get(best["trial_id"])
    if not child:
        return
    trial_dir = Path(best.get("dir") or "")
    if not RunDir(trial_dir).has_checkpoint("best"):
        # A remote sweep's trial is fetched whole (checkpoint and cache) into the driver's mirror.
        trial_dir = local_copy(sweep_dir, f"trials/{best['trial_id']}", recursive=True)
    if not RunDir(trial_dir).has_checkpoint("best"):
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
