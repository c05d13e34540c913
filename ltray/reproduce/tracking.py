"""MLflow for a reproduction: one parent run (options, table metrics, table artifacts) and one
child run per stage-1 run trained, all written from the driver process (one SQLite writer).

The parent's id is kept in ``plan.json`` and the logged children in ``DIR/mlflow_runs.json``, so
``--resume`` adds to the same parent and never logs a run twice. Calls go through
:class:`~ltray.tracking.SpoolingClient`: with the server down they are replayed later.
"""

from __future__ import annotations

import json
from pathlib import Path

from ltray.reproduce.plan import Plan, is_finished, run_config, write_plan
from ltray.reproduce.table import COLUMNS, TableRow

__all__ = ["log_reproduction"]


def _logged(out_dir: Path) -> dict[str, str]:
    path = out_dir / "mlflow_runs.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _row_metrics(prefix: str, rows: list[TableRow]) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in rows:
        key = row.key.replace("/", "_").replace("—", "none")
        for col in COLUMNS:
            agg = row.cells[col]
            if agg is None:
                continue
            out[f"{prefix}{key}_{col}_mean"] = 100 * agg.mean
            if agg.std is not None:
                out[f"{prefix}{key}_{col}_std"] = 100 * agg.std
    return out


def log_reproduction(
    plan: Plan,
    out_dir: Path,
    *,
    uri: str,
    experiment: str,
    main: list[TableRow],
    mixup: list[TableRow],
    artifacts: list[Path],
    complete: bool,
) -> str:
    """Log (or extend) the parent run and a child per finished stage-1 run; returns the parent's
    id. The parent is closed (FINISHED) only when ``complete``."""
    from ltray.tracking import SpoolingClient, final_test_metrics, mlflow_params

    client = SpoolingClient(uri, out_dir / "mlflow_spool.jsonl")
    if plan.mlflow_parent is None:
        plan.mlflow_parent = client.create_run(
            experiment, f"reproduce-{out_dir.name}", {"ltray.reproduce": str(out_dir)}
        )
        write_plan(plan, out_dir)
        opts = plan.opts
        client.log_params(
            plan.mlflow_parent,
            {
                "source": plan.source,
                "seeds": opts.seeds,
                "methods": ",".join(opts.methods),
                "mixup.alphas": ",".join(f"{a:g}" for a in opts.mixup.alphas),
                "mixup.variants": ",".join(opts.mixup.variants),
                "mixup.samplers": ",".join(opts.mixup.samplers),
                "mixup.enabled": opts.mixup.enabled,
                "cli_overrides": " ".join(plan.cli_overrides),
            },
        )
    parent = plan.mlflow_parent
    write_plan(plan, out_dir)  # keeps the parent id and the tracking URI for --resume
    logged = _logged(out_dir)
    for run in plan.runs:
        run_dir = out_dir / run.id
        if run.id in logged or not is_finished(run_dir):
            continue
        child = client.create_run(
            experiment,
            run.id,
            {"mlflow.parentRunId": client.resolve(parent), "ltray.run_dir": str(run_dir)},
        )
        client.log_params(child, mlflow_params(run_config(plan, run, out_dir)))
        results = json.loads((run_dir / "results.json").read_text())
        client.log_metrics(child, final_test_metrics(results), step=int(results["best_epoch"]))
        client.log_artifact(child, str(run_dir / "table.txt"))
        client.set_terminated(child)
        logged[run.id] = client.resolve(child)
    (out_dir / "mlflow_runs.json").write_text(json.dumps(logged, indent=1))
    client.log_metrics(parent, {**_row_metrics("", main), **_row_metrics("mixup_", mixup)}, 0)
    for path in artifacts:
        client.log_artifact(parent, str(path))
    client.log_artifact(parent, str(out_dir / "plan.json"))
    if complete:
        client.set_terminated(parent)
    client.flush()
    return client.resolve(parent)
