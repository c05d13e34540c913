"""A sweep's folder: where it lives, what its driver keeps, and its trials read back.

Layout of ``<storage>/<name>/`` (``--storage`` is a local path or a URI such as
``s3://bucket/sweeps``, read and written through :mod:`ltray.storage`)::

    <name>/                      Tune's own experiment state (Tuner.restore reads it)
    <name>/ltray/sweep.json      the space, metrics, ASHA's cuts, the MLflow parent run
    <name>/ltray/trials/<id>/    one run directory per trial (trial.json, config.yaml,
                                 metrics.jsonl, checkpoints/, cache/, results.json, posthoc/)
    <name>/ltray/summary.json    the best trial when the sweep ended
    <name>/ltray/optuna.db       the Optuna study (SQLite): `optuna-dashboard sqlite:///...`
    <name>/ltray/confirm/        the confirmation runs (top K configurations x S seeds)
    <name>/ltray/mlflow_runs.json, mlflow_steps.json, mlflow_spool.jsonl   the driver's own

Nothing here starts Ray or talks to MLflow: `ltray report` reads a finished sweep with this
module alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltray.errors import RunDirError
from ltray.paths import sweeps_dir
from ltray.storage import Storage, driver_folder, is_uri
from ltray.train.rundir import RunDir, parse_metrics

__all__ = [
    "DRIVER_FILES",
    "SweepPaths",
    "sweep_paths",
    "find_sweep",
    "collect_trials",
    "rank_trials",
]

# What the sweep's driver keeps in its own folder (the Optuna study, MLflow's trial → run map,
# logged epochs, the spool of calls MLflow could not take): a remote sweep's are uploaded at
# its end.
DRIVER_FILES = (
    "optuna.db",
    "asha.json",
    "mlflow_runs.json",
    "mlflow_steps.json",
    "mlflow_spool.jsonl",
    "mlflow_spool.jsonl.ids.json",
)


@dataclass
class SweepPaths:
    """Where a sweep lives. ``storage``: the ``--storage`` as shown (an absolute path or a URI);
    ``root``: ltray's sweep folder ``<storage>/<name>/ltray`` on its filesystem; ``local``: the
    driver's own folder of it (``root`` itself on a local path, a mirror for a URI:
    :func:`ltray.storage.driver_folder`)."""

    storage: str
    name: str
    top: Storage  # the storage itself: Tune's storage_path / storage_filesystem

    @property
    def root(self) -> Storage:
        return self.top / self.name / "ltray"

    @property
    def remote(self) -> bool:
        return self.top.remote

    def local(self) -> Path:
        """The driver's folder (created; a remote sweep's mirror points back at ``root``)."""
        return driver_folder(self.root)


def sweep_paths(name: str, storage: str | None = None) -> SweepPaths:
    """Where sweep ``name`` goes under ``storage`` (default ``$LTRAY_HOME/sweeps``); nothing
    is created."""
    top = Storage.at(storage or sweeps_dir())
    return SweepPaths(storage=top.uri, name=name, top=top)


def find_sweep(sweep: str | Path | Storage) -> Storage:
    """A sweep folder from a path or URI (the sweep, its ``ltray/`` folder) or a name under
    the default storage."""
    if isinstance(sweep, Storage):
        cands = [sweep, sweep / "ltray"]
    elif is_uri(sweep):
        top = Storage.at(sweep)
        cands = [top, top / "ltray"]
    else:
        cands = [Storage.at(p) for p in (sweep, Path(sweep) / "ltray")]
        cands.append(Storage.at(sweeps_dir() / str(sweep) / "ltray"))
    for cand in cands:
        if (cand / "sweep.json").is_file():
            return cand
    raise RunDirError(
        f"{sweep}: no sweep found (looked for sweep.json in {', '.join(map(str, cands))}); "
        "pass the folder `ltray tune` printed"
    )


def _best(values: list[float], mode: str) -> float:
    return max(values) if mode == "max" else min(values)


def collect_trials(
    sweep_dir: Path | Storage, metrics: list[str], modes: list[str]
) -> list[dict[str, Any]]:
    """One record per trial: params, epochs reported, the best value of each metric over its
    epochs, and the test metrics of its best-val checkpoint when it finished."""
    out = []
    for trial_dir in (Storage.at(sweep_dir) / "trials").children():
        info = (trial_dir / "trial.json").read_json(missing_ok=True)
        if info is None:
            continue
        records = parse_metrics((trial_dir / "metrics.jsonl").read_text(missing_ok=True) or "")
        best: dict[str, float] = {}
        curve = {
            int(r["epoch"]): float(r[metrics[0]])
            for r in records
            if isinstance(r.get(metrics[0]), (int, float)) and "epoch" in r
        }
        for metric, mode in zip(metrics, modes, strict=True):
            vals = [float(r[metric]) for r in records if isinstance(r.get(metric), (int, float))]
            if vals:
                best[metric] = _best(vals, mode)
        results = (trial_dir / RunDir.RESULTS).read_json(missing_ok=True)
        out.append(
            {
                "trial_id": info["trial_id"],
                "params": info["params"],
                "epochs": len(records),
                "metrics": best,
                "curve": curve,  # epoch -> the first metric's value at that epoch
                "last": records[-1] if records else {},
                "finished": results is not None
                or bool(records and "test_fused_overall" in records[-1]),
                "results": results,
                "dir": str(trial_dir),
            }
        )
    return out


def rank_trials(trials: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    scored = [t for t in trials if metric in t["metrics"]]
    return sorted(scored, key=lambda t: t["metrics"][metric], reverse=mode == "max")
