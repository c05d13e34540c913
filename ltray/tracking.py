"""MLflow tracking that never loses a result.

Everything goes through :class:`SpoolingClient`: each MLflow call is tried at once; if the
tracking server cannot be reached the call is appended to a local spool file (JSON lines) and
replayed, in order, before the next call and by :meth:`SpoolingClient.flush`. A sweep therefore
finishes when the server is down, and its runs appear in MLflow once the server is back.

Default store: an absolute ``sqlite:///$LTRAY_HOME/mlflow.db`` (Ray chdirs into trial folders,
so a relative URI would point elsewhere in every process).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from ltray.config import Config, flatten
from ltray.paths import default_mlflow_uri, ltray_home

__all__ = [
    "resolve_tracking_uri",
    "SpoolingClient",
    "log_train_run",
    "log_run_model",
    "mlflow_params",
    "final_test_metrics",
]

log = logging.getLogger(__name__)

# After a failed call, calls go straight to the spool for this long (a dead server is not
# waited on at every metric), then the spool is tried again.
_RETRY_AFTER_S = 20.0

# An unreachable server should cost seconds, not MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

# MLflow caps a param value at 6000 characters (older servers: 500); keep values short.
_MAX_PARAM = 500


def resolve_tracking_uri(uri: str | None) -> str:
    """None → the default SQLite store; a relative ``sqlite:///`` path or a plain path → an
    absolute ``sqlite:///`` URI; ``http(s)://``, ``databricks`` ... unchanged."""
    if not uri:
        ltray_home().mkdir(parents=True, exist_ok=True)
        return default_mlflow_uri()
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if not path.startswith("/"):
            return "sqlite:///" + str(Path(path).resolve())
        return uri
    if "://" not in uri:
        return "sqlite:///" + str(Path(uri).expanduser().resolve())
    return uri


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment of a local SQLite store keeps its artifacts: ``mlartifacts/`` next
    to the database (the default store's under ``$LTRAY_HOME``), never MLflow's ``./mlruns`` of
    whatever directory the command ran in. ``None`` for a server: it decides."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri[len("sqlite:///") :])
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment) or "default"
    return (db.parent / "mlartifacts" / safe).as_uri()


def mlflow_params(cfg: Config) -> dict[str, str]:
    """The flattened config as MLflow params (``train.lr`` → ``"0.1"``)."""
    flat = flatten(cfg.model_dump(mode="json"))
    return {k: str(v)[:_MAX_PARAM] for k, v in flat.items()}


class SpoolingClient:
    """An ``MlflowClient`` whose failed calls are spooled to ``spool`` and replayed later."""

    def __init__(self, tracking_uri: str, spool: Path) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.spool = Path(spool)
        self._warned = False
        self._down_until = 0.0

    # -- public operations (all spoolable, JSON arguments only) --------------------------------
    def __getstate__(self) -> dict[str, Any]:
        # Picklable (Tune pickles callbacks): the MLflow client is rebuilt on unpickling.
        return {"tracking_uri": self.tracking_uri, "spool": self.spool}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["tracking_uri"], state["spool"])  # type: ignore[misc]

    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp:
            return exp.experiment_id
        return self.client.create_experiment(
            name, artifact_location=artifact_location(self.tracking_uri, name)
        )

    def create_run(self, experiment: str, run_name: str, tags: dict[str, str]) -> str:
        """Create a run and return its id. While the server is unreachable the creation is
        spooled and a local ``pending-…`` id is returned; :meth:`resolve` maps it to the real id
        once the spool has been replayed."""
        if self._replay():
            try:
                return self._create(experiment, run_name, tags)
            except Exception as exc:  # noqa: BLE001 - any transport/server failure spools
                self._warn(exc)
        local = f"pending-{uuid.uuid4().hex}"
        self._spool_op("create_run", [local, experiment, run_name, tags])
        return local

    def resolve(self, run_id: str) -> str:
        """The real id of a run created while the server was down (itself otherwise)."""
        return self._ids().get(run_id, run_id)

    def _create(self, experiment: str, run_name: str, tags: dict[str, str]) -> str:
        # A tag naming a run created while the server was down (a child's
        # mlflow.parentRunId=pending-…) is rewritten to that run's real id.
        tags = {k: self.resolve(v) if isinstance(v, str) else v for k, v in tags.items()}
        pending = [k for k, v in tags.items() if isinstance(v, str) and v.startswith("pending-")]
        if pending:
            raise RuntimeError(f"tag {pending[0]} names run {tags[pending[0]]}, not created yet")
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=tags)
        return run.info.run_id

    def _ids_path(self) -> Path:
        return self.spool.with_name(self.spool.name + ".ids.json")

    def _ids(self) -> dict[str, str]:
        path = self._ids_path()
        return json.loads(path.read_text()) if path.is_file() else {}

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self._call("log_params", run_id, {k: str(v)[:_MAX_PARAM] for k, v in params.items()})

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items() if _is_number(v)}
        self._call("log_metrics", run_id, clean, step)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self._call("set_tag", run_id, key, value)

    def log_artifact(self, run_id: str, path: str) -> None:
        if Path(path).exists():
            self._call("log_artifact", run_id, str(path))

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        self._call("set_terminated", run_id, status)

    def flush(self) -> bool:
        """Replay the spool; True when it is empty afterwards."""
        return self._replay(force=True)

    # -- machinery -----------------------------------------------------------------------------
    def _do(self, op: str, args: list[Any]) -> None:
        from mlflow.entities import Metric, Param

        if op == "create_run":
            local, experiment, run_name, tags = args
            ids = self._ids()
            ids[local] = self._create(experiment, run_name, tags)
            self._ids_path().write_text(json.dumps(ids))
            return
        args = [self.resolve(args[0]), *args[1:]]
        if args[0].startswith("pending-"):
            raise RuntimeError(f"run {args[0]} was never created")
        if op == "log_params":
            run_id, params = args
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        elif op == "log_metrics":
            run_id, metrics, step = args
            ts = int(time.time() * 1000)
            self.client.log_batch(
                run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()]
            )
        elif op == "set_tag":
            run_id, key, value = args
            self.client.set_tag(
                run_id, key, self.resolve(value) if isinstance(value, str) else value
            )
        elif op == "log_artifact":
            self.client.log_artifact(*args)
        elif op == "set_terminated":
            self.client.set_terminated(*args)
        else:  # pragma: no cover - the spool only holds the ops above
            raise ValueError(op)

    def _call(self, op: str, *args: Any) -> None:
        if self._replay():
            try:
                self._do(op, list(args))
                return
            except Exception as exc:  # noqa: BLE001 - any transport/server failure spools
                self._warn(exc)
        self._spool_op(op, list(args))

    def _spool_op(self, op: str, args: list[Any]) -> None:
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool, "a") as f:
            f.write(json.dumps({"op": op, "args": args}) + "\n")

    def _replay(self, *, force: bool = False) -> bool:
        if not self.spool.is_file():
            return True
        if not force and time.time() < self._down_until:
            return False  # the server failed moments ago: spool without waiting on it again
        lines = [ln for ln in self.spool.read_text().splitlines() if ln.strip()]
        done = 0
        for line in lines:
            item = json.loads(line)
            try:
                self._do(item["op"], item["args"])
            except Exception as exc:  # noqa: BLE001
                self._warn(exc)
                break
            done += 1
        rest = lines[done:]
        if rest:
            tmp = self.spool.with_suffix(".tmp")
            tmp.write_text("\n".join(rest) + "\n")
            os.replace(tmp, self.spool)
            return False
        self.spool.unlink()
        return True

    def _warn(self, exc: Exception) -> None:
        self._down_until = time.time() + _RETRY_AFTER_S
        if not self._warned:
            warnings.warn(
                f"MLflow at {self.tracking_uri} unreachable ({type(exc).__name__}); results are "
                f"kept in {self.spool} and replayed when it is back",
                stacklevel=3,
            )
            self._warned = True


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def log_train_run(cfg: Config, run_dir: Path, results: dict[str, Any]) -> str:
    """Log a finished `ltray train` run (params, per-epoch metrics, test metrics, artifacts)
    and write ``mlflow_run.json`` so `ltray fuse` can add to the same run."""
    from ltray.train.rundir import read_metrics

    uri = resolve_tracking_uri(cfg.tracking.mlflow_uri)
    client = SpoolingClient(uri, Path(run_dir) / "mlflow_spool.jsonl")
    try:
        run_id = client.create_run(
            cfg.tracking.experiment, Path(run_dir).name, {"ltray.run_dir": str(run_dir)}
        )
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"MLflow at {uri} unreachable ({exc}); run not logged", stacklevel=2)
        return None
    client.log_params(run_id, mlflow_params(cfg))
    for rec in read_metrics(run_dir):
        client.log_metrics(run_id, rec, step=int(rec["epoch"]))
    client.log_metrics(run_id, final_test_metrics(results), step=int(results["best_epoch"]))
    for name in ("config.yaml", "results.json", "table.txt", "per_class.png", "metrics.csv"):
        client.log_artifact(run_id, str(Path(run_dir) / name))
    log_run_model(client, run_id, run_dir)
    client.set_terminated(run_id)
    run_id = client.resolve(run_id)
    (Path(run_dir) / "mlflow_run.json").write_text(
        json.dumps({"tracking_uri": uri, "run_id": run_id})
    )
    return run_id


def log_run_model(client: SpoolingClient, run_id: str, run_dir: Path) -> str | None:
    """Log the run's network (its ``eval.select_head``) in MLflow's PyTorch flavour under
    ``model`` (:func:`ltray.inference.model.log_model`); returns the model URI. A run that only
    reached the spool, or a failure, costs a warning, never the results."""
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
        from ltray.inference.model import log_model

        return log_model(load_run(run_dir), run_id=real, tracking_uri=client.tracking_uri)
    except Exception as exc:  # noqa: BLE001 - logging the model must not lose the run
        warnings.warn(
            f"model of {run_dir} not logged to MLflow run {real} ({type(exc).__name__}: {exc})",
            stacklevel=2,
        )
        return None


def final_test_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``{"test_kt_overall": ..., ...}`` from ``results.json`` (absent groups left out)."""
    out: dict[str, float] = {}
    for head, per_split in results["heads"].items():
        for key in ("many", "medium", "few", "overall", "top1", "top5", "ece"):
            v = per_split["test"].get(key)
            if v is not None:
                out[f"test_{head}_{key}"] = float(v)
    return out
