"""What every ltray run tells MLflow about itself: where it came from (the command, the ltray
version and git commit, the user) and the data it used (a dataset input).

- Tags: ``mlflow.source.name`` (``ltray train``, ``ltray tune`` ...) and ``mlflow.source.type``
  (``LOCAL``), ``mlflow.source.git.commit`` (when ltray is imported from a git checkout; plus
  ``ltray.git.dirty``), ``mlflow.user``, ``ltray.version`` and ``ltray.command`` (the command
  line). They fill the Source, Version and User columns of the runs table.
- Dataset: named ``<source> ρ=<imbalance ratio> seed <seed>`` (``cifar10-lt ρ=100 seed 0``),
  its digest the SHA-256 of the split's list files (train, val and test ids with their labels,
  as `ltray data split` writes them) and its source the data root (``data.root``; for a source
  without one, such as the embedded digits, where the images come from). The run's
  ``split.json`` is where all of this is read from.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from ltray._version import __version__

__all__ = ["run_tags", "git_commit", "dataset_input", "dataset_of_run", "DATASET_CONTEXT"]

DATASET_CONTEXT = "training"  # the split was used to train (train), choose (val) and score (test)


@lru_cache(maxsize=1)
def git_commit() -> tuple[str, bool] | None:
    """(commit, dirty) of the git checkout ltray is imported from; ``None`` for an installed
    package (or a folder that is not ltray's own checkout, or no git)."""
    pkg = Path(__file__).resolve().parents[1]  # the ltray package folder
    try:
        top = subprocess.run(
            ["git", "-C", str(pkg), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
        if len(top) != 2 or Path(top[0]).resolve() / "ltray" != pkg:
            return None  # e.g. site-packages inside some other repository
        dirty = subprocess.run(
            ["git", "-C", top[0], "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return top[1], bool(dirty)


def run_tags(command: str, *, argv: list[str] | None = None) -> dict[str, str]:
    """The source tags of a run made by ``command`` (``"ltray train"``)."""
    argv = sys.argv if argv is None else argv
    tags = {
        "mlflow.source.name": command,
        "mlflow.source.type": "LOCAL",
        "ltray.version": __version__,
        "ltray.command": shlex.join(["ltray", *argv[1:]]) if argv else command,
    }
    commit = git_commit()
    if commit is not None:
        tags["mlflow.source.git.commit"] = commit[0]
        tags["ltray.git.dirty"] = str(commit[1]).lower()
    with contextlib.suppress(KeyError, OSError):  # no user name (some containers)
        tags["mlflow.user"] = getpass.getuser()
    return tags


def _digest(info: dict[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of the split's list files, in train, val, test order;
    when they are not on this machine, of the split's description."""
    h = hashlib.sha256()
    files = info.get("list_files") or {}
    try:
        for split in ("train", "val", "test"):
            h.update(split.encode() + b"\0" + Path(files[split]).read_bytes() + b"\0")
    except (KeyError, OSError):
        h = hashlib.sha256()
        keep = ("source", "root", "seed", "profile", "rho_requested", "sizes", "train_counts")
        h.update(json.dumps({k: info.get(k) for k in keep}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _rho(info: dict[str, Any]) -> str:
    rho = info.get("rho_requested")
    if rho is None:
        rho = info.get("rho")
    return "?" if rho is None else f"{float(rho):.3g}"


def dataset_input(info: dict[str, Any]) -> dict[str, Any]:
    """The MLflow dataset of a split (``split.json``'s content) as the JSON dict
    :meth:`SpoolingClient.log_dataset` logs: name, digest, source, source_type, profile and
    context. Built with ``mlflow.data``'s :class:`~mlflow.data.meta_dataset.MetaDataset`."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.meta_dataset import MetaDataset

    name = f"{info.get('source', 'data')} ρ={_rho(info)} seed {info.get('seed', '?')}"
    root = info.get("root")
    if root:
        local = next(s for s in get_registered_sources() if s._get_source_type() == "local")
        source = local(str(Path(root).expanduser().resolve()))
    else:  # images that come with a library (digits): say which
        source = CodeDatasetSource({"origin": str(info.get("origin") or info.get("source"))})
    ds = MetaDataset(source, name=name, digest=_digest(info)).to_dict()
    sizes = info.get("sizes") or {}
    profile = {
        "num_classes": info.get("num_classes"),
        **{f"{k}_images": v for k, v in sizes.items()},
        "rho": info.get("rho"),
        "profile": info.get("profile"),
        "val_protocol": info.get("val_protocol"),
        "shot_groups": info.get("group_sizes"),
    }
    ds["profile"] = json.dumps({k: v for k, v in profile.items() if v is not None})
    ds["context"] = DATASET_CONTEXT
    return ds


def dataset_of_run(run_dir: Path) -> dict[str, Any] | None:
    """:func:`dataset_input` of a run directory's ``split.json`` (``None`` without one)."""
    path = Path(run_dir) / "split.json"
    if not path.is_file():
        return None
    try:
        return dataset_input(json.loads(path.read_text()))
    except (ValueError, OSError):
        return None
