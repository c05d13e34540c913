"""`ltray reproduce` as library calls: plan a reproduction, run it on Ray, write the tables.

from ltray.reproduce import load_reproduction, start, finish

rep = load_reproduction("quick", cli=CliOptions(seeds=2))
plan, out_dir = start(rep, out=None)          # validates the data, writes plan.json
result = finish(plan, out_dir)                # trains, fits, aggregates, logs
# later, after an interruption:
plan, out_dir = resume("…/reproduce-quick-…")
result = finish(plan, out_dir)                # only what is not finished yet
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltray.data import prepare_data
from ltray.errors import ConfigError, RunDirError
from ltray.metrics import GROUP_NAMES
from ltray.paths import ltray_home, new_run_dir
from ltray.reproduce.plan import (
    Plan,
    build_plan,
    pending_posthoc,
    pending_runs,
    read_plan,
    run_config,
    write_plan,
)
from ltray.reproduce.report import Tables, build_tables, collect_records, save_tables
from ltray.reproduce.runner import Outcome, execute
from ltray.reproduce.setup import Reproduction
from ltray.reproduce.tracking import log_reproduction
from ltray.tracking import resolve_tracking_uri
from ltray.validate import config_problems, format_problems

__all__ = ["Result", "plan_of", "start", "resume", "finish", "default_out_dir"]


@dataclass
class Result:
    """What :func:`finish` produced."""

    out_dir: Path
    outcome: Outcome
    tables: Tables
    paths: list[Path]
    mlflow_run: str | None = None

    @property
    def complete(self) -> bool:
        return not self.outcome.failed


def default_out_dir(source: str) -> Path:
    """A new folder ``$LTRAY_HOME/reproductions/reproduce-<name>-<stamp>``."""

    name = Path(source).stem if source.endswith((".yaml", ".yml")) else source
    return new_run_dir(f"reproduce-{name}", parent=ltray_home() / "reproductions")


def _groups_present(rep: Reproduction) -> list[str]:
    """The split's non-empty shot groups (validates the data before anything starts)."""
    import numpy as np

    groups = np.asarray(prepare_data(rep.cfg.data).groups)
    return [name for gid, name in enumerate(GROUP_NAMES) if (groups == gid).any()]


def plan_of(rep: Reproduction) -> Plan:
    """The plan of ``rep`` (reads the data to find its shot groups; writes nothing)."""
    return build_plan(
        rep.cfg,
        rep.raw,
        rep.options,
        groups_present=_groups_present(rep),
        source=rep.source,
        cli_overrides=rep.cli_overrides,
        notes=rep.notes,
    )


def start(rep: Reproduction, out: str | Path | None = None) -> tuple[Plan, Path]:
    """Plan a new reproduction in ``out`` (new or empty) and write ``plan.json``."""

    plan = plan_of(rep)
    check_runs(plan)
    if out is None:
        out_dir = default_out_dir(rep.source)
    else:
        out_dir = Path(out).expanduser().resolve()
        if out_dir.exists() and any(out_dir.iterdir()):
            raise RunDirError(
                f"--out {out_dir}: the directory exists and is not empty; choose a new path, or "
                f"continue that reproduction with `ltray reproduce --resume {out_dir}`"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
    write_plan(plan, out_dir)
    return plan, out_dir


def check_runs(plan: Plan) -> None:
    """Every planned run's config passes ltray's validation, before Ray and before any folder
    is made (the directories of earlier runs a run reads do not exist yet: not checked)."""

    problems = []
    for run in plan.runs:
        cfg = run_config(plan, run, Path("/nonexistent-reproduction"))
        problems += [
            f"{run.id}: {p}"
            for p in config_problems(cfg)
            if not any(p.startswith(key) for key in run.refs)
        ]
    if problems:
        raise ConfigError(format_problems(problems, where=plan.source))


def resume(out_dir: str | Path) -> tuple[Plan, Path]:
    """Read the plan of an earlier reproduction."""
    path = Path(out_dir).expanduser().resolve()
    if not path.is_dir():
        raise RunDirError(f"--resume {path}: no such directory; pass the DIR of a reproduction")
    return read_plan(path), path


def _tracking(plan: Plan, mlflow_uri: str | None) -> tuple[str, str] | None:
    """(uri, experiment) when MLflow logging is on: ``--mlflow-uri`` or ``tracking.mlflow``."""

    tracking = plan.base.get("tracking") or {}
    # A resumed reproduction keeps logging where it started (plan.json holds the URI).
    mlflow_uri = mlflow_uri or plan.mlflow_uri
    if not (mlflow_uri or tracking.get("mlflow")):
        return None
    uri = resolve_tracking_uri(mlflow_uri or tracking.get("mlflow_uri"))
    plan.mlflow_uri = uri
    return uri, tracking.get("experiment", "ltray")


def finish(
    plan: Plan,
    out_dir: Path,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    mlflow_uri: str | None = None,
    console: Any = None,
    train: bool = True,
) -> Result:
    """Train and fit what is not finished (unless ``train`` is False: tables of what is finished
    so far), then aggregate, save and (optionally) log."""
    if train:
        outcome = execute(plan, out_dir, address=address, num_cpus=num_cpus, console=console)
    else:
        outcome = Outcome(skipped=[r.id for r in plan.runs if r not in pending_runs(plan, out_dir)])
    records = collect_records(plan, out_dir)
    tables = build_tables(plan, records)
    paths = save_tables(tables, records, out_dir)
    complete = not pending_runs(plan, out_dir) and not pending_posthoc(plan, out_dir)
    run_id = None
    tracking = _tracking(plan, mlflow_uri)
    if tracking is not None:
        run_id = log_reproduction(
            plan,
            out_dir,
            uri=tracking[0],
            experiment=tracking[1],
            main=tables.main,
            mixup=tables.mixup,
            artifacts=paths,
            complete=complete,
        )
    return Result(out_dir, outcome, tables, paths, run_id)
