"""`ltray train [--config FILE|PRESET] [key=value ...] [--out DIR | --resume RUN_DIR]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ltray.errors import ConfigError
from ltray.presets import load_train_config
from ltray.train.driver import load_run_config, train
from ltray.train.tables import results_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one model (default: offline digits-LT, KT + memory, all heads evaluated)",
        description="Train a ResNet with the class-mean memory and the KT head through Ray "
        "Train; evaluate every head; write a run directory with the feature cache.",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted config overrides, e.g. train.lr=0.05 data.imbalance_ratio=50",
    )
    p.add_argument(
        "--config",
        help="YAML config (same keys as the overrides) or a preset name (e.g. cifar10-lt-30: "
        "one run of its config; its reproduce: section is for `ltray reproduce`)",
    )
    p.add_argument(
        "--out",
        help="new run directory (default: a new folder under "
        "$LTRAY_HOME/runs, LTRAY_HOME defaults to ~/.ltray)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped run from its last checkpoint with its saved config; an "
        "override may only add epochs (train.epochs=N) or change scaling.*, tracking.*, "
        "train.threads, train.max_failures, data.loader_workers (any other change is refused)",
    )
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    if args.resume and (args.config or args.out):
        raise ConfigError("--resume continues a run with its saved config; drop --config/--out")
    if args.resume:
        cfg = load_run_config(Path(args.resume).expanduser().resolve(), args.overrides)
    else:
        cfg = load_train_config(args.config, args.overrides)
    console = Console(width=None if sys.stdout.isatty() else 160)
    run_dir, results = train(cfg, out=args.out, resume=args.resume, address=args.address)
    console.print(results_table(results))
    console.print(f"run directory: {run_dir}")
    return 0
