"""MLflow models: a network logged in MLflow's PyTorch flavour, the model registry, and the run
behind a ``runs:/`` URI. What the model is (which head, its example input, its metadata) is
decided by :mod:`ltray.inference.model`; the MLflow calls are here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LoggedModel",
    "using_tracking_uri",
    "log_pytorch_model",
    "register_model",
    "run_tags_of",
]


@dataclass(frozen=True)
class LoggedModel:
    """A model logged to a run: its ``runs:/<run id>/<name>`` URI and MLflow model id."""

    uri: str
    model_id: str | None


@contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (``log_model`` has no client form) pointed at ``uri``; the caller's
    tracking URI, and ``MLFLOW_TRACKING_URI`` which ``set_tracking_uri`` rewrites, restored."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    env = os.environ.get("MLFLOW_TRACKING_URI")
    was = utils._tracking_uri  # None: taken from the environment or MLflow's default
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(was)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def log_pytorch_model(
    model: Any,
    example: Any,
    output: Any,
    *,
    run_id: str,
    tracking_uri: str,
    name: str,
    metadata: dict[str, Any],
    requirements: list[tuple[str, list[str]]],
) -> LoggedModel:
    """Log ``model`` (an ``nn.Module``) to run ``run_id`` under ``name`` with ``example`` (a numpy
    batch) as input example, the signature inferred from ``example`` → ``output``, and
    ``metadata``. ``requirements``: (serialization format, pip requirements) tried in order —
    the first format that saves wins (``torch.export``'s ``pt2`` fails on some networks)."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    signature = infer_signature(example, output)
    with using_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id):
        for i, (fmt, reqs) in enumerate(requirements):
            try:
                info = mlflow.pytorch.log_model(
                    model,
                    name=name,
                    input_example=example,
                    signature=signature,
                    metadata={**metadata, "serialization_format": fmt},
                    pip_requirements=reqs,
                    serialization_format=fmt,
                )
                break
            except Exception:  # noqa: BLE001 - torch.export raises many types
                if i == len(requirements) - 1:
                    raise
    return LoggedModel(f"runs:/{run_id}/{name}", getattr(info, "model_id", None))


def register_model(model_uri: str, name: str, *, tracking_uri: str) -> str:
    """Register ``model_uri`` (``runs:/<id>/model``) in the MLflow model registry as a new
    version of ``name``; returns ``models:/<name>/<version>``."""
    import mlflow

    with using_tracking_uri(tracking_uri):
        version = mlflow.register_model(model_uri, name)
    return f"models:/{name}/{version.version}"


def run_tags_of(run_id: str, tracking_uri: str) -> dict[str, str]:
    """The tags of an MLflow run (``LookupError`` naming the store when it cannot be read)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        return dict(client.get_run(run_id).data.tags)
    except Exception as exc:  # noqa: BLE001 - any lookup failure is the same user error
        raise LookupError(f"no such MLflow run at {tracking_uri} ({type(exc).__name__})") from None
