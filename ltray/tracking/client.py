"""The MLflow client that never loses a result.

Every MLflow call of ltray goes through :class:`SpoolingClient`: each call is tried at once; if
the tracking server cannot be reached the call is appended to a local spool file (JSON lines)
and replayed, in order, before the next call and by :meth:`SpoolingClient.flush`. A sweep
therefore finishes when the server is down, and its runs appear in MLflow once the server is
back. A call the server refuses for good (an unknown run, an invalid value) is not spooled: it
is dropped with a warning and recorded in :attr:`SpoolingClient.refused`, so it can never block
the replay of what follows it.

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
from ltray.tracking.names import fraction_problems

__all__ = [
    "resolve_tracking_uri",
    "artifact_location",
    "SpoolingClient",
    "mlflow_params",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
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
# A tag value may hold 8000 characters; MLflow takes at most 1000 metrics per batch.
_MAX_TAG = 5000
_BATCH = 900

# How MLflow 3 marks an experiment's type (the experiment-type selector of the UI writes this
# tag): ltray's experiments train models, they are not GenAI apps.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# Errors of a call the server understood and refused: retrying cannot help.
_REFUSED = {
    "RESOURCE_DOES_NOT_EXIST",
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE",
    "BAD_REQUEST",
    "MALFORMED_REQUEST",
    "PERMISSION_DENIED",
}


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
    """An ``MlflowClient`` whose failed calls are spooled to ``spool`` and replayed later.

    The operations take JSON-able arguments only (that is what the spool holds). Higher-level
    logging (runs with their tags, dataset, results and model) is in :mod:`ltray.tracking.runs`.
    """

    def __init__(self, tracking_uri: str, spool: Path) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.spool = Path(spool)
        self.refused: list[str] = []  # "op: error" of each call the server refused for good
        self._warned = False
        self._down_until = 0.0

    # Picklable (Tune pickles callbacks): the MLflow client is rebuilt on unpickling.
    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "spool": self.spool}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["tracking_uri"], state["spool"])  # type: ignore[misc]

    # -- public operations (all spoolable, JSON arguments only) --------------------------------
    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created if needed; marked as a model-training
        experiment (:data:`EXPERIMENT_KIND`) unless it already says what it is."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            return self.client.create_experiment(
                name,
                artifact_location=artifact_location(self.tracking_uri, name),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
            self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id

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

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self._call("log_params", run_id, {k: str(v)[:_MAX_PARAM] for k, v in params.items()})

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items() if _is_number(v)}
        bad = fraction_problems(clean)
        if bad:  # a percent where ltray logs fractions: a bug, but never a lost result
            warnings.warn(f"metrics outside [0, 1]: {', '.join(bad[:5])}", stacklevel=2)
        if clean:
            self._call("log_metrics", run_id, clean, step)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self._call("set_tag", run_id, key, value)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self._call("set_tags", run_id, {k: str(v)[:_MAX_TAG] for k, v in tags.items()})

    def log_dataset(self, run_id: str, dataset: dict[str, Any]) -> None:
        """Log a dataset input (:func:`ltray.tracking.context.dataset_input`'s dict)."""
        self._call("log_dataset", run_id, dataset)

    def link_model(self, run_id: str, model_id: str, step: int = 0) -> None:
        """Show a logged model (its MLflow model id) as an output of another run."""
        self._call("link_model", run_id, model_id, step)

    def log_artifact(self, run_id: str, path: str) -> None:
        if Path(path).exists():
            self._call("log_artifact", run_id, str(path))

    def log_artifacts(self, run_id: str, folder: str, artifact_path: str | None = None) -> None:
        if Path(folder).is_dir():
            self._call("log_artifacts", run_id, str(folder), artifact_path)

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        self._call("set_terminated", run_id, status)

    def flush(self) -> bool:
        """Replay the spool; True when it is empty afterwards."""
        return self._replay(force=True)

    # -- machinery -----------------------------------------------------------------------------
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

    def _do(self, op: str, args: list[Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        if op == "create_run":
            local, experiment, run_name, tags = args
            ids = self._ids()
            ids[local] = self._create(experiment, run_name, tags)
            self._ids_path().write_text(json.dumps(ids))
            return
        args = [self.resolve(args[0]), *args[1:]]
        if args[0].startswith("pending-"):
            raise RuntimeError(f"run {args[0]} was never created")
        run_id = args[0]
        if op == "log_params":
            params = [Param(k, v) for k, v in args[1].items()]
            for i in range(0, len(params), 100):  # MLflow: at most 100 params per batch
                self.client.log_batch(run_id, params=params[i : i + 100])
        elif op == "log_metrics":
            _, metrics, step = args
            ts = int(time.time() * 1000)
            batch = [Metric(k, v, ts, step) for k, v in metrics.items()]
            for i in range(0, len(batch), _BATCH):
                self.client.log_batch(run_id, metrics=batch[i : i + _BATCH])
        elif op == "set_tag":
            _, key, value = args
            self.client.set_tag(
                run_id, key, self.resolve(value) if isinstance(value, str) else value
            )
        elif op == "set_tags":
            tags = [RunTag(k, self.resolve(v)) for k, v in args[1].items()]
            self.client.log_batch(run_id, tags=tags)
        elif op == "log_dataset":
            self.client.log_inputs(run_id, datasets=[_dataset_entity(args[1])])
        elif op == "link_model":
            from mlflow.entities import LoggedModelOutput

            _, model_id, step = args
            self.client.log_outputs(run_id, [LoggedModelOutput(model_id, step)])
        elif op == "log_artifact":
            self.client.log_artifact(*args)
        elif op == "log_artifacts":
            self.client.log_artifacts(*args)
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
                if _refused(exc):
                    self._refuse(op, exc)
                    return
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
                if not _refused(exc):
                    self._warn(exc)
                    break
                self._refuse(item["op"], exc)  # dropped: it must not block what follows
            done += 1
        rest = lines[done:]
        if rest:
            tmp = self.spool.with_suffix(".tmp")
            tmp.write_text("\n".join(rest) + "\n")
            os.replace(tmp, self.spool)
            return False
        self.spool.unlink()
        return True

    def _refuse(self, op: str, exc: Exception) -> None:
        text = f"{op}: {type(exc).__name__}: {str(exc)[:300]}"
        self.refused.append(text)
        warnings.warn(f"MLflow at {self.tracking_uri} refused {text}", stacklevel=4)

    def _warn(self, exc: Exception) -> None:
        self._down_until = time.time() + _RETRY_AFTER_S
        if not self._warned:
            warnings.warn(
                f"MLflow at {self.tracking_uri} unreachable ({type(exc).__name__}); results are "
                f"kept in {self.spool} and replayed when it is back",
                stacklevel=3,
            )
            self._warned = True


def _refused(exc: Exception) -> bool:
    """Whether the server understood the call and refused it (no retry can help)."""
    return getattr(exc, "error_code", None) in _REFUSED


def _dataset_entity(d: dict[str, Any]) -> Any:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(
        name=d["name"],
        digest=d["digest"],
        source_type=d["source_type"],
        source=d["source"],
        schema=d.get("schema"),
        profile=d.get("profile"),
    )
    tags = [InputTag(key="mlflow.data.context", value=d["context"])] if d.get("context") else []
    return DatasetInput(dataset=dataset, tags=tags)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
