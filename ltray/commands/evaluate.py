"""`ltray evaluate RUN [data.key=value ...] [--split test] [--out DIR]`: every head of a finished
run on another split or dataset, with the run's own Many / Medium / Few groups.

    ltray evaluate ~/.ltray/runs/digits-lt-kt-...                  # its own test split again
    ltray evaluate RUN data.seed=1                                 # another seeded hold-out
    ltray evaluate runs:/<mlflow run id> data.imbalance_ratio=1 --split val

Classes are matched to the run's by name (another order is remapped, an unknown class refused);
on another split of the run's own source, every image the run trained on or selected with (its
train and val splits) is dropped, and the note says how many.

Post-hoc methods of the run's newest ``ltray fuse`` folder are scored too (``--posthoc none``
skips them, ``--posthoc DIR`` picks another folder): fitted again on the run's cached train and
val with the recorded settings, applied to the new split.

Writes ``metrics.csv``, ``evaluation.json``, ``table.txt`` and ``per_class.png`` to ``--out``
(default: ``RUN/eval/<split>-<timestamp>/``).
"""

from __future__ import annotations

import argparse
from typing import Any

from ltray.errors import ConfigError
from ltray.fusion.report import FUSE_RESULTS
from ltray.tracking import load_run
from ltray.train.rundir import RunDir

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score every head of a finished run on another split or dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="run directory of `ltray train`, or runs:/<id>")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="data.key=value",
        help="data overrides on top of the run's config, e.g. data.seed=1",
    )
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", help="output folder (default: RUN/eval/<split>-<timestamp>)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--posthoc",
        default="latest",
        metavar="latest|none|DIR",
        help="also score the post-hoc methods of a `ltray fuse` folder, fitted again on the "
        "run's cache (default: the run's newest RUN/fusion/fuse-*, when it has one)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    # Checked before torch and the run are loaded.
    if args.posthoc not in ("latest", "none") and not Path(args.posthoc, FUSE_RESULTS).is_file():
        raise ConfigError(
            f"--posthoc {args.posthoc}: no results.json; pass a folder of `ltray fuse` "
            "(RUN/fusion/fuse-*), latest or none"
        )
    from rich.console import Console

    from ltray.inference.evaluate import evaluate_run, evaluation_table, save_evaluation

    console = Console(width=max(Console().width, 110))
    loaded = load_run(args.run, device=args.device)
    posthoc = None if args.posthoc == "none" else args.posthoc
    ev = evaluate_run(loaded, args.overrides, split=args.split, posthoc=posthoc)
    out = (
        Path(args.out)
        if args.out
        else (RunDir(loaded.run_dir).eval_dir / f"{args.split}-{time.strftime('%Y%m%d-%H%M%S')}")
    )
    save_evaluation(ev, out)
    console.print(evaluation_table(ev))
    for note in ev.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    console.print(f"saved to {out}", highlight=False)
    return 0
