"""`ltray report SWEEP`: best trials, the Many / Medium / Few / Overall table, each categorical
choice at equal epochs, a plot of every trial per epoch, Pareto plot."""

from __future__ import annotations

import argparse
import json
import sys

from ltray.storage import driver_folder, mirror_path, pull_files, push_files
from ltray.tracking import SpoolingClient
from ltray.tune.folder import DRIVER_FILES, find_sweep
from ltray.tune.report import curves_plot, importance_plot, pareto_plot, report_tables


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="summarise a sweep: best trials, test table, Pareto front")
    p.add_argument("sweep", help="sweep folder (printed by `ltray tune`) or sweep name")
    p.add_argument("--top", type=int, default=5, help="trials to show")
    p.add_argument(
        "--epochs",
        type=int,
        nargs="+",
        help="epochs at which to compare each categorical parameter's choices (default: the "
        "epoch most trials stopped at, and the last)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    sweep_dir = find_sweep(args.sweep)  # a local folder or a folder on a URI storage
    if (sweep_dir / "mlflow_spool.jsonl").is_file() or (
        (mirror_path(sweep_dir) / "mlflow_spool.jsonl").is_file()
    ):
        # MLflow was unreachable during the sweep: replay what was kept (a remote sweep's
        # spool through the driver's local mirror, the storage updated afterwards).

        local = driver_folder(sweep_dir)
        if sweep_dir.remote:
            pull_files(sweep_dir, local, DRIVER_FILES)
        uri = (sweep_dir / "sweep.json").read_json()["mlflow_uri"]
        done = SpoolingClient(uri, local / "mlflow_spool.jsonl").flush()
        if sweep_dir.remote:
            push_files(sweep_dir, local, DRIVER_FILES)
        print(
            f"MLflow spool {'replayed' if done else 'still pending (server unreachable)'}: {uri}",
            file=sys.stderr,
        )
    tables, summary = report_tables(sweep_dir, top=args.top, epochs=args.epochs)
    console = Console(width=None if sys.stdout.isatty() else 160)
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
        return 0
    for t in tables:
        console.print(t)
    if "pareto" in summary:
        path = pareto_plot(sweep_dir, sweep_dir / "pareto.png")
        console.print(f"Pareto plot: {path}")
    path = curves_plot(sweep_dir, sweep_dir / "curves.png", top=args.top)
    if path is not None:
        console.print(f"each trial per epoch: {path}")
    path = importance_plot(sweep_dir, sweep_dir / "importances.png")
    if path is not None:
        console.print(f"importances: {path}")
    if (sweep_dir / "optuna.db").is_file():
        console.print(
            f"the Optuna study: optuna-dashboard sqlite:///{sweep_dir / 'optuna.db'}",
            highlight=False,
        )
    return 0
