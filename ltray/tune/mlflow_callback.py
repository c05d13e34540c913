"""One MLflow parent run per sweep, one child run per trial, logged from the Tune driver.

Logging from the driver (one process) avoids SQLite's "database is locked" with concurrent
trials. The trial → run-id map is persisted in the sweep folder, so a resumed sweep
(`ltray tune --resume`) keeps exactly one child run per trial. Every call goes through
:class:`~ltray.tracking.SpoolingClient`: with the server down, trials still finish and their
records are replayed once it is back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ltray.storage import local_copy
from ltray.tracking import SpoolingClient, final_test_metrics

__all__ = ["MlflowSweepCallback", "trial_metrics"]

_ARTIFACTS = ("config.yaml", "results.json", "table.txt", "per_class.png", "metrics.csv")


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numbers of one Tune result worth logging (val/train/test metrics, lr, speed)."""
    keep = ("val_", "train_", "test_", "lr", "images_per_s", "epoch_time_s", "fused_")
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
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.sweep_dir = sweep_dir
        self.base_params = base_params
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

    def _run_id(self, trial: Any) -> str:
        runs = self._runs()
        if trial.trial_id not in runs:
            run_id = self.client.create_run(
                self.experiment,
                f"trial-{trial.trial_id}",
                {"mlflow.parentRunId": self.parent_run_id, "ltray.trial_id": trial.trial_id},
            )
            runs[trial.trial_id] = run_id
            self._save_runs(runs)
            searched = {k: v for k, v in trial.config.items() if not k.startswith("__")}
            self.client.log_params(run_id, {**self.base_params, **searched})
        return runs[trial.trial_id]

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
        self.client.log_metrics(self._run_id(trial), trial_metrics(result), step=step)
        steps[trial.trial_id] = step
        steps_path.write_text(json.dumps(steps))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_id(trial)
        trial_dir = local_copy(self.sweep_dir, f"trials/{trial.trial_id}")  # remote: fetched
        results_path = trial_dir / "results.json"
        if results_path.is_file():
            results = json.loads(results_path.read_text())
            self.client.log_metrics(
                run_id, final_test_metrics(results), step=int(results["best_epoch"])
            )
            for name in _ARTIFACTS:
                self.client.log_artifact(run_id, str(trial_dir / name))
        else:
            self.client.set_tag(run_id, "ltray.stopped_early", "true")
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.client.set_terminated(self._run_id(trial), "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.client.flush()
