"""Where ltray keeps things by default.

``LTRAY_HOME`` (default ``~/.ltray``) holds ``runs/`` (one folder per `ltray train` run),
``sweeps/`` (Ray Tune storage of `ltray tune`), ``mlflow.db`` (the default MLflow store) and
``cache/`` (decoded datasets). Every path here is absolute: Ray chdirs into trial folders.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = [
    "ltray_home",
    "runs_dir",
    "sweeps_dir",
    "data_cache_dir",
    "default_mlflow_uri",
    "new_run_dir",
]


def ltray_home() -> Path:
    return Path(os.environ.get("LTRAY_HOME", Path.home() / ".ltray")).expanduser().resolve()


def runs_dir() -> Path:
    return ltray_home() / "runs"


def sweeps_dir() -> Path:
    return ltray_home() / "sweeps"


def data_cache_dir() -> Path:
    return ltray_home() / "cache"


def default_mlflow_uri() -> str:
    return "sqlite:///" + str(ltray_home() / "mlflow.db")


def new_run_dir(prefix: str, parent: Path | None = None) -> Path:
    """A new, unused run folder ``<parent>/<prefix>-YYYYmmdd-HHMMSS[-N]`` (never an old one)."""
    parent = parent or runs_dir()
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = parent / (f"{prefix}-{stamp}" + (f"-{i}" if i else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder under {parent}")
