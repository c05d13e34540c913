"""MLflow for a reproduction: one parent run (options, table cells, table artifacts, the
datasets of its seeds) and one child run per stage-1 run trained (logged like an `ltray train`
run: params, dataset, test metrics, table, model), all written from the driver process (one
SQLite writer) through :mod:`ltray.tracking`.

Table cells are metrics named ``test_<row>_<group>_{mean,std}`` (``test_ce_overall_mean``,
``test_mixup_input_0.3_instance_few_std``), fractions in [0, 1] like every ltray metric; the
tables themselves (text, CSV, PNG) show percent.

The parent's id is kept in ``plan.json`` and the logged children in ``DIR/mlflow_runs.json``, so
``--resume`` adds to the same parent and never logs a run twice. With the server down, calls are
spooled and replayed later.
"""

from __future__ import annotations

import json
from pathlib import Path

from ltray.reproduce.plan import Plan, is_finished, run_config, write_plan
from ltray.reproduce.table import COLUMNS, TableRow
from ltray.tracking import (
    SpoolingClient,
    link_run_dir,
    log_dataset,
    log_results,
    log_run_model,
    metric_name,
    mlflow_params,
    start_run,
)

__all__ = ["log_reproduction", "row_metrics", "row_key"]


def _logged(out_dir: Path) -> dict[str, str]:
    path = out_dir / "mlflow_runs.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def row_key(prefix: str, key: str) -> str:
    """A table row as the ``head`` of a metric name: ``ce``, ``mixup_input_0.3_instance``."""
    return prefix + key.replace("/", "_").replace("—", "none")


def row_metrics(prefix: str, rows: list[TableRow]) -> dict[str, float]:
    """``test_<row>_<group>_mean`` / ``_std`` of every cell (fractions; absent cells left out)."""

    out: dict[str, float] = {}
    for row in rows:
        head = row_key(prefix, row.key)
        for col in COLUMNS:
            agg = row.cells[col]
            if agg is None:
                continue
            out[metric_name("test", head, col, "mean")] = agg.mean
            if agg.std is not None:
                out[metric_name("test", head, col, "std")] = agg.std
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

    client = SpoolingClient(uri, out_dir / "mlflow_spool.jsonl")
    if plan.mlflow_parent is None:
        opts = plan.opts
        plan.mlflow_parent = start_run(
            client,
            experiment,
            f"reproduce-{out_dir.name}",
            command="ltray reproduce",
            run_dir=out_dir,
            tags={"ltray.reproduce": str(out_dir)},
            params={
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
    datasets = {}
    for run in plan.runs:
        run_dir = out_dir / run.id
        if run.id in logged or not is_finished(run_dir):
            continue
        child = start_run(
            client,
            experiment,
            run.id,
            command="ltray reproduce",
            parent=client.resolve(parent),
            run_dir=run_dir,
            params=mlflow_params(run_config(plan, run, out_dir)),
        )
        ds = log_dataset(client, child, run_dir)
        if ds is not None:
            datasets.setdefault(ds["digest"], run_dir)
        log_results(client, child, run_dir)
        model = log_run_model(client, child, run_dir)
        client.set_terminated(child)
        link_run_dir(run_dir, client, child, model)
        logged[run.id] = client.resolve(child)
    (out_dir / "mlflow_runs.json").write_text(json.dumps(logged, indent=1))
    for run_dir in datasets.values():  # one split per seed: the parent used them all
        log_dataset(client, parent, run_dir)
    client.log_metrics(parent, {**row_metrics("", main), **row_metrics("mixup_", mixup)}, 0)
    for path in artifacts:
        client.log_artifact(parent, str(path))
    client.log_artifact(parent, str(out_dir / "plan.json"))
    if complete:
        client.set_terminated(parent)
    client.flush()
    return client.resolve(parent)
