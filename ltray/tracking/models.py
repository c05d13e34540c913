"""MLflow models: a run's network logged in MLflow's PyTorch flavour (:func:`log_model`: the
:class:`~ltray.inference.model.PixelModel` of one head, a real input example, its metadata),
the model registry, and the run behind a ``runs:/`` URI (:func:`load_run` takes either).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ltray._version import __version__
from ltray.errors import RunDirError
from ltray.tracking.client import resolve_tracking_uri
from ltray.train.rundir import RunDir

if TYPE_CHECKING:
    from ltray.inference.load import LoadedRun

MODEL_ARTIFACT = "model"

__all__ = [
    "MODEL_ARTIFACT",
    "LoggedModel",
    "log_model",
    "resolve_run",
    "load_run",
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


def log_model(
    run: LoadedRun, *, run_id: str, tracking_uri: str, head: str | None = None
) -> LoggedModel:
    """Log ``run``'s ``head`` (default: its ``eval.select_head``) as a :class:`PixelModel` to
    the MLflow run ``run_id`` in the PyTorch flavour under ``model``: the input example is two
    real uint8 images of the run's data (``run.input_example()``), the signature (uint8
    [-1, C_in, N, N] → float32 [-1, C]) is inferred from it, and the class names, input spec
    and input format are metadata (the MLflow calls:
    :func:`ltray.tracking.models.log_pytorch_model`). Returns the model's
    ``runs:/<run id>/model`` URI and MLflow model id."""
    import torch

    head = head or run.config.eval.select_head
    if head not in run.heads:
        head = "linear"
    model = run.model(head).cpu()
    s = run.input
    example = torch.from_numpy(run.input_example())
    with torch.inference_mode():
        out = model(example)
    metadata: dict[str, Any] = {
        "ltray_version": __version__,
        "head": head,
        "class_names": run.class_names,
        "input": {k: v for k, v in vars(s).items()},
        "input_format": (
            f"uint8 [B, {s.in_channels}, {s.pixel_size}, {s.pixel_size}], values 0..255, "
            f"channels first ({'gray' if s.in_channels == 1 else 'RGB'}); normalised inside "
            "with input.mean / input.std"
            + (f", resized to {s.image_size}" if s.image_size != s.pixel_size else "")
            + (
                f"; resize to {round(s.image_size * 256 / 224)} and centre-crop to "
                f"{s.image_size} first"
                if s.family == "imagenet"
                else ""
            )
        ),
        "run_dir": str(run.run_dir),
    }
    torch_req = f"torch=={torch.__version__.split('+')[0]}"
    # torch.export (``pt2``) first: the saved graph loads without ltray installed. A network
    # export cannot trace is pickled instead, which needs ltray to load.
    return log_pytorch_model(
        model,
        example.numpy(),
        out.numpy(),
        run_id=run_id,
        tracking_uri=tracking_uri,
        name=MODEL_ARTIFACT,
        metadata=metadata,
        requirements=[("pt2", [torch_req]), ("pickle", [torch_req, f"ltray=={__version__}"])],
    )


def resolve_run(run: str | Path, *, tracking_uri: str | None = None) -> tuple[Path, str | None]:
    """A run directory, or an MLflow ``runs:/<id>`` URI (the folder its ``ltray.run_dir`` tag
    names) → (run directory, MLflow run id or None). ``tracking_uri`` defaults to
    ``MLFLOW_TRACKING_URI``, else ltray's default store."""
    text = str(run)
    if text.startswith("runs:/"):
        return _from_mlflow(text, tracking_uri), text[len("runs:/") :].strip("/").split("/")[0]
    path = Path(text).expanduser().resolve()
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory; pass a folder written by `ltray train`")
    return path, None


def _from_mlflow(uri: str, tracking_uri: str | None) -> Path:
    import os

    run_id = uri[len("runs:/") :].strip("/").split("/")[0]
    store = resolve_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    try:
        tags = run_tags_of(run_id, store)
    except LookupError as exc:
        raise RunDirError(
            f"{uri}: {exc}; set MLFLOW_TRACKING_URI to the store the run was logged to"
        ) from None
    local = tags.get("ltray.run_dir")
    if local and RunDir(local).config_path.is_file():
        return Path(local)
    raise RunDirError(
        f"{uri}: the run's directory {local or '(unknown)'} is not on this machine; copy it "
        f"here, or load the network alone with mlflow.pytorch.load_model('{uri}/model')"
    )


def load_run(run: str | Path, *, device: Any = "cpu", tracking_uri: str | None = None) -> LoadedRun:
    """:func:`ltray.inference.load_run` for a run directory or an MLflow ``runs:/<run id>`` URI
    of one (the folder its ``ltray.run_dir`` tag names; ``tracking_uri``: the store, default
    ``MLFLOW_TRACKING_URI``, else ltray's). ``ltray.load_run`` is this function."""
    from ltray.inference.load import load_run as load_folder

    run_dir, run_id = resolve_run(run, tracking_uri=tracking_uri)
    loaded = load_folder(run_dir, device=device)
    loaded.mlflow_run_id = run_id
    return loaded
