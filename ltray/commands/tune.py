"""`ltray tune --space NAME_OR_FILE [options] [key=value ...]`: a Ray Tune + Optuna sweep.

ltray tune --list                          # the shipped spaces, a line each
ltray tune --space kt --dry-run            # a shipped space by name, from any folder
ltray tune --space my.yaml --confirm 3 --seeds 3
"""

from __future__ import annotations

import argparse
import sys

from ltray.errors import ConfigError
from ltray.tracking import resolve_tracking_uri, runs_table_url
from ltray.tune.folder import find_sweep
from ltray.tune.plan import SweepOptions, check_sweep, plan, sweep_space
from ltray.tune.report import curves_plot, importance_plot, report_tables
from ltray.tune.space import load_space, shipped_spaces


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="search hyperparameters with Ray Tune + Optuna (+ ASHA), every trial in MLflow",
        description="Run a sweep described by a search-space YAML (see search_spaces/). "
        "Trials train (kind: train) or fit a post-hoc method over a cached run (kind: posthoc).",
    )
    p.add_argument(
        "--space",
        help="a shipped space's name (kt, llw, ...: see --list) or a search-space YAML file",
    )
    p.add_argument("--list", action="store_true", help="list the shipped spaces and stop")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="overrides of the space's base config, e.g. train.epochs=4",
    )
    p.add_argument(
        "--address", help="Ray cluster address ('auto' or host:port); default: start a local Ray"
    )
    p.add_argument("--num-samples", type=int, help="number of trials (default: the space's)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: the space's)")
    p.add_argument(
        "--grace-period",
        type=int,
        metavar="EPOCHS",
        help="ASHA: epochs every trial runs before the first cut (default: the space's); "
        "early epochs may not rank trials as their last ones do (docs/results.md, KT sweep)",
    )
    p.add_argument(
        "--reduction-factor",
        type=int,
        help="ASHA: keep 1 in this many trials at each cut (default: the space's)",
    )
    p.add_argument(
        "--confirm",
        type=int,
        metavar="K",
        help="after the search, re-run the top K configurations over --seeds training seeds at "
        "the full budget (no early stopping); the winner is the best mean (default: the space's)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        metavar="S",
        help="training seeds of each confirmed configuration (default: the space's, 3)",
    )
    p.add_argument("--name", help="sweep name (default: the space file's name)")
    p.add_argument(
        "--storage",
        help="Tune storage: a local path or a pyarrow URI (s3://...); default $LTRAY_HOME/sweeps",
    )
    p.add_argument(
        "--mlflow-uri",
        help="MLflow tracking URI (default: sqlite:///"
        "$LTRAY_HOME/mlflow.db); use http://host:port for a server",
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment)")
    p.add_argument(
        "--register",
        metavar="NAME",
        help="register the best trial's model in the MLflow model registry under NAME",
    )
    p.add_argument(
        "--from",
        dest="from_run",
        metavar="RUN_DIR",
        help="post-hoc spaces: the `ltray train` run whose cache the trials fit on",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted sweep of this --name (finished trials stay)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the space and plan, run nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    if args.list:
        table = Table(title="shipped search spaces (ltray tune --space NAME)")
        for col in ("name", "kind", "what it searches"):
            table.add_column(col)
        for name, kind, text in shipped_spaces():
            table.add_row(name, kind, text)
        console.print(table)
        return 0
    if not args.space:
        raise ConfigError("ltray tune: give --space NAME_OR_FILE (see `ltray tune --list`)")
    if args.register and args.no_mlflow:
        raise ConfigError("--register NAME needs MLflow; drop --no-mlflow")
    space = load_space(args.space, args.overrides)  # every problem at once, before Ray starts
    search = {
        "num_samples": args.num_samples,
        "max_concurrent": args.max_concurrent,
        "grace_period": args.grace_period,
        "reduction_factor": args.reduction_factor,
        "confirm": args.confirm,
        "seeds": args.seeds,
    }
    opts = SweepOptions(
        search=search,
        address=args.address,
        name=args.name,
        storage=args.storage,
        mlflow_uri=args.mlflow_uri,
        mlflow=not args.no_mlflow,
        resume=args.resume,
        from_run=args.from_run,
        experiment=args.experiment,
        register=args.register,
    )
    check_sweep(space, opts)  # the same pass a real start runs, before Ray
    info = plan(sweep_space(space, opts), opts)
    table = Table(title=f"sweep plan: {args.space}", show_header=False)
    for key, value in info.items():
        if key == "space":
            for k, dom in value:
                table.add_row(f"search {k}", dom)
        else:
            table.add_row(key, str(value))
    console.print(table)
    if args.dry_run:
        return 0
    from ltray.tune.sweep import run_sweep  # Ray, Optuna, MLflow: only once the plan holds

    try:
        summary = run_sweep(space, opts)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune's own handler is set
        summary = {"interrupted": True}
    if summary.get("interrupted"):
        console.print(
            f"sweep interrupted; its state is saved. Continue it with:\n  ltray tune "
            f"--space {args.space} --name {info['storage'].rsplit('/', 1)[-1]} "
            f"--resume" + (f" --storage {args.storage}" if args.storage else "")
        )
        return 130

    sweep_dir = find_sweep(info["sweep_dir"])
    tables, _ = report_tables(sweep_dir)
    for t in tables:
        console.print(t)
    curves = curves_plot(sweep_dir, sweep_dir / "curves.png")
    if curves is not None:
        console.print(f"each trial per epoch: {curves}")
    importances = importance_plot(sweep_dir, sweep_dir / "importances.png")
    if importances is not None:
        console.print(f"importances: {importances}")
    if summary["errors"]:
        console.print(f"[red]{len(summary['errors'])} trial(s) failed; see the log above[/red]")
    console.print(f"sweep folder: {sweep_dir}\nreport again: ltray report {sweep_dir}")
    if not args.no_mlflow:
        uri = resolve_tracking_uri(args.mlflow_uri or space.base.tracking.mlflow_uri)
        experiment = args.experiment or space.base.tracking.experiment
        if uri.startswith("sqlite"):
            console.print(
                f"compare trials: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
                f"\n  then open {runs_table_url(uri, experiment)}",
                highlight=False,
            )
    return 1 if summary["errors"] and not summary["best"] else 0
