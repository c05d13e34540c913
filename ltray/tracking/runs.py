"""What every command logs, the same way: a run with its source tags, params, dataset input,
per-epoch and final metrics (one naming scheme, fractions), artifacts and model.

`ltray train` (:func:`log_train_run`), `ltray tune` (:mod:`ltray.tune.mlflow_callback` and the
sweep's parent run), `ltray reproduce` (:mod:`ltray.reproduce.tracking`) and `ltray fuse`
(:func:`log_fusion`) are all built from :func:`start_run`, :func:`log_dataset`,
:func:`log_epochs`, :func:`log_results`, :func:`log_run_model` and :func:`link_run_dir`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ltray.config import Config
from ltray.tracking.client import SpoolingClient, mlflow_params, resolve_tracking_uri
from ltray.tracking.context import dataset_of_run, run_tags
from ltray.tracking.models import LoggedModel, log_model
from ltray.tracking.names import (
    chosen_metrics,
    fused_head,
    head_metrics,
    result_metrics,
)
from ltray.train.rundir import RunDir

__all__ = [
    "RUN_ARTIFACTS",
    "RUN_LINK",
    "MODEL_NAME",
    "start_run",
    "log_dataset",
    "log_epochs",
    "log_results",
    "log_run_model",
    "link_run_dir",
    "read_run_link",
    "log_train_run",
    "log_fusion",
    "runs_table_url",
]

RUN_ARTIFACTS = RunDir.ARTIFACTS
RUN_LINK = RunDir.MLFLOW_LINK  # in a run directory: the store and run it was logged to
MODEL_NAME = "model"  # a run's network in MLflow: runs:/<run id>/model


def start_run(
    client: SpoolingClient,
    experiment: str,
    name: str,
    *,
    command: str,
    parent: str | None = None,
    run_dir: Path | str | None = None,
    tags: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
) -> str:
    """Create a run of ``command`` (``"ltray tune"``) with the source tags
    (:func:`~ltray.tracking.context.run_tags`), ``mlflow.parentRunId`` under ``parent``,
    ``ltray.run_dir`` (what ``ltray.load_run("runs:/<id>")`` opens), ``tags`` and ``params``.
    Returns the run id (``pending-…`` while the server is unreachable)."""
    all_tags = run_tags(command)
    if parent is not None:
        all_tags["mlflow.parentRunId"] = parent
    if run_dir is not None:
        all_tags["ltray.run_dir"] = str(run_dir)
    all_tags.update(tags or {})
    run_id = client.create_run(experiment, name, all_tags)
    if params:
        client.log_params(run_id, params)
    return run_id


def log_dataset(client: SpoolingClient, run_id: str, run_dir: Path | str) -> dict[str, Any] | None:
    """Log the dataset input of the split ``run_dir/split.json`` describes; returns it (or
    ``None`` when the run directory has no split)."""
    ds = dataset_of_run(Path(run_dir))
    if ds is not None:
        client.log_dataset(run_id, ds)
    return ds


def log_epochs(client: SpoolingClient, run_id: str, run_dir: Path | str) -> None:
    """Every epoch of ``metrics.jsonl`` at its epoch as step."""
    for rec in RunDir(run_dir).read_metrics():
        client.log_metrics(run_id, rec, step=int(rec["epoch"]))


def log_results(
    client: SpoolingClient,
    run_id: str,
    run_dir: Path | str,
    results: dict[str, Any] | None = None,
    *,
    artifacts: Iterable[str] = RUN_ARTIFACTS,
) -> None:
    """The best checkpoint's test metrics (``test_<head>_<group>``, at the best epoch) and the
    run's result files."""
    run_dir = Path(run_dir)
    if results is None:
        results = RunDir(run_dir).results()
    client.log_metrics(run_id, result_metrics(results), step=int(results["best_epoch"]))
    for name in artifacts:
        client.log_artifact(run_id, str(run_dir / name))


def log_run_model(client: SpoolingClient, run_id: str, run_dir: Path) -> LoggedModel | None:
    """Log the run's network (its ``eval.select_head``) in MLflow's PyTorch flavour under
    ``model`` (:func:`ltray.tracking.models.log_model`). A run that only reached the spool, or a
    failure, costs a warning, never the results; a run without a checkpoint has no model."""
    if RunDir(run_dir).model_checkpoint() is None:
        return None
    real = client.resolve(run_id)
    if real.startswith("pending-"):
        warnings.warn(
            f"MLflow unreachable: the model of {run_dir} is not logged; "
            "`ltray.load_run(run_dir)` loads it from the run directory",
            stacklevel=2,
        )
        return None
    try:
        from ltray.inference import load_run

        return log_model(load_run(run_dir), run_id=real, tracking_uri=client.tracking_uri)
    except Exception as exc:  # noqa: BLE001 - logging the model must not lose the run
        warnings.warn(
            f"model of {run_dir} not logged to MLflow run {real} ({type(exc).__name__}: {exc})",
            stacklevel=2,
        )
        return None


def link_run_dir(
    run_dir: Path, client: SpoolingClient, run_id: str, model: LoggedModel | None = None
) -> None:
    """Write ``RUN_DIR/mlflow_run.json`` (store, run id, model URI), so that `ltray fuse RUN_DIR`
    adds to the same run. Nothing is written while the run is still ``pending-…``."""
    real = client.resolve(run_id)
    if real.startswith("pending-"):
        return
    info: dict[str, Any] = {"tracking_uri": client.tracking_uri, "run_id": real}
    if model is not None:
        info["model_uri"] = model.uri
        info["model_id"] = model.model_id
    RunDir(run_dir).write_mlflow_link(info)


def read_run_link(run_dir: Path) -> dict[str, Any] | None:
    """``mlflow_run.json`` of a run directory, ``None`` when it was never tracked."""
    return RunDir(run_dir).mlflow_link()


def log_train_run(cfg: Config, run_dir: Path, results: dict[str, Any]) -> str | None:
    """Log a finished `ltray train` run: params, dataset, per-epoch metrics, test metrics,
    artifacts and model; write ``mlflow_run.json`` so `ltray fuse` can add to the same run."""
    uri = resolve_tracking_uri(cfg.tracking.mlflow_uri)
    client = SpoolingClient(uri, Path(run_dir) / "mlflow_spool.jsonl")
    try:
        run_id = start_run(
            client,
            cfg.tracking.experiment,
            Path(run_dir).name,
            command="ltray train",
            run_dir=run_dir,
            params=mlflow_params(cfg),
        )
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"MLflow at {uri} unreachable ({exc}); run not logged", stacklevel=2)
        return None
    log_dataset(client, run_id, run_dir)
    log_epochs(client, run_id, run_dir)
    log_results(client, run_id, run_dir, results)
    model = log_run_model(client, run_id, run_dir)
    client.set_terminated(run_id)
    link_run_dir(Path(run_dir), client, run_id, model)
    return client.resolve(run_id)


def fusion_metrics(results: Sequence[Any]) -> dict[str, float]:
    """`ltray fuse`'s numbers: ``{val,test}_fused_<method>_<group>`` and
    ``chosen_<method>_<setting>`` per method (``MethodResult`` objects)."""
    out: dict[str, float] = {}
    for r in results:
        head = fused_head(r.name)
        out.update(head_metrics("val", head, r.val.summary()))
        out.update(head_metrics("test", head, r.test.summary()))
        out.update(chosen_metrics(r.chosen, r.name))
    return out


def log_fusion(run_dir: Path, out_dir: Path, results: Sequence[Any]) -> str | None:
    """Add `ltray fuse`'s results (:func:`fusion_metrics`, and ``out_dir`` as artifacts under
    ``fusion/<folder>``) to the run named in ``RUN_DIR/mlflow_run.json``.

    Returns a warning text when they did not reach MLflow (the local results are kept), else
    None; a run directory that was never tracked → None."""
    info = read_run_link(Path(run_dir))
    if info is None:
        return None
    try:
        client = SpoolingClient(info["tracking_uri"], Path(run_dir) / "mlflow_spool.jsonl")
        run_id = info["run_id"]
        client.log_metrics(run_id, fusion_metrics(results), step=0)
        client.log_artifacts(run_id, str(out_dir), f"fusion/{Path(out_dir).name}")
    except Exception as exc:  # noqa: BLE001 - tracking must never lose the local results
        msg = (
            f"could not log to MLflow ({type(exc).__name__}: {exc}); results are kept in {out_dir}"
        )
        warnings.warn(msg, stacklevel=2)
        return msg
    if client.refused:
        msg = f"could not log to MLflow ({client.refused[0]}); results are kept in {out_dir}"
    elif client.spool.is_file():
        msg = (
            f"could not log to MLflow at {client.tracking_uri} (unreachable); results are kept "
            f"in {out_dir} and sent from {client.spool} by the next `ltray fuse {run_dir}`"
        )
    else:
        return None
    warnings.warn(msg, stacklevel=2)
    return msg


def runs_table_url(tracking_uri: str, experiment: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The address of ``experiment``'s runs table in an MLflow UI at ``ui``. MLflow 3.17's UI
    opens every experiment on its GenAI overview unless the address (or the sidebar's
    "Model training" switch) asks for the machine-learning workflow; the experiment's
    ``mlflow.experimentKind`` tag is what earlier MLflow 3 UIs read instead."""
    from mlflow import MlflowClient

    exp = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    where = f"experiments/{exp.experiment_id}/runs" if exp is not None else "experiments"
    return f"{ui.rstrip('/')}/#/{where}?workflowType=machine_learning"
