"""`ltray confirm SWEEP [--top K] [--seeds S]`: a finished sweep's best configurations trained
again over new seeds at the full budget; the winner by val mean (ties: lower std).

    ltray confirm ~/.ltray/sweeps/kt/ltray --top 3 --seeds 3
    ltray confirm kt --top 3 --seeds 3 --register kt-best     # a sweep name, and the registry

The same as ``ltray tune ... --confirm K --seeds S`` at the end of a search (docs:
:mod:`ltray.tune.confirm`). Interrupted, the same command continues it.
"""

from __future__ import annotations

import argparse
import sys

from ltray.errors import ConfigError
from ltray.storage import driver_folder
from ltray.tune.confirm import format_confirm, run_confirm
from ltray.tune.folder import find_sweep


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "confirm",
        help="re-run a sweep's top configurations over seeds; winner by mean",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep", help="sweep folder (printed by `ltray tune`) or sweep name")
    p.add_argument("--top", type=int, default=3, help="configurations to confirm (default 3)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds each (default 3)")
    p.add_argument(
        "--metric",
        help="rank and score the configurations by this val metric instead of the sweep's "
        "(e.g. val_kt_overall in a two-level sweep: its single-level winner)",
    )
    p.add_argument("--max-concurrent", type=int, help="runs at once (default: the sweep's)")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument(
        "--register", metavar="NAME", help="register the winner's model under NAME in MLflow"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    problems = [
        f"--{flag} {value}: must be >= 1"
        for flag, value in (("top", args.top), ("seeds", args.seeds))
        if value < 1
    ]
    if args.max_concurrent is not None and args.max_concurrent < 1:
        problems.append(f"--max-concurrent {args.max_concurrent}: must be >= 1")
    if args.register and args.no_mlflow:
        problems.append("--register NAME needs MLflow; drop --no-mlflow")
    if args.metric is not None and not args.metric.startswith("val_"):
        problems.append(f"--metric {args.metric}: rank on a val metric (val_...), never on test")
    if problems:
        raise ConfigError("; ".join(problems))
    root = find_sweep(args.sweep)
    table = run_confirm(
        root,
        driver_folder(root),
        top=args.top,
        seeds=args.seeds,
        metric=args.metric,
        address=args.address,
        max_concurrent=args.max_concurrent,
        mlflow=not args.no_mlflow,
        register=args.register,
    )
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(format_confirm(table))
    if not table["complete"]:
        console.print("[yellow]some runs did not finish; run the same command to continue[/]")
        return 1
    return 0
