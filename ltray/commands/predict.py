"""`ltray predict RUN IMAGES... [--head NAME] [--topk K] [--out preds.csv]`: label new images.

    ltray predict ~/.ltray/runs/digits-lt-kt-... photos/ one.png --topk 3 --out preds.csv

IMAGES are files or folders (searched recursively). Images PIL cannot read are listed in one
warning and written to the CSV with the reason; the others are still predicted. The exit code
is 0 when at least one image was predicted.
"""

from __future__ import annotations

import argparse
from typing import Any

from ltray.errors import DataError
from ltray.tracking import load_run

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "predict",
        help="top-k labels and probabilities of new images with a finished run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="run directory of `ltray train`, or runs:/<id>")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    p.add_argument("--head", help="linear, ncm_ema, ncm_full or kt (default: eval.select_head)")
    p.add_argument("--topk", type=int, default=5, help="labels per image (default 5)")
    p.add_argument("--out", help="write the predictions as CSV here")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from ltray.inference.images import collect_images
    from ltray.inference.predict import predict_images, write_predictions_csv

    paths = collect_images(args.images)  # missing paths fail before the model is loaded
    loaded = load_run(args.run, device=args.device)
    console = Console(width=max(Console().width, 110))
    err = Console(stderr=True)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("predicting", total=len(paths))
        result = predict_images(
            loaded,
            paths,
            head=args.head,
            topk=args.topk,
            batch_size=args.batch_size,
            progress=lambda n: bar.advance(task, n),
        )
    table = Table(title=f"{loaded.run_dir.name}: {result.head} head, top-{result.topk}")
    table.add_column("image", no_wrap=True)
    for r in range(1, result.topk + 1):
        table.add_column(f"#{r}", justify="right", no_wrap=True)
    shown = result.predictions[:50]
    for pred in shown:
        pairs = zip(pred.labels, pred.probs, strict=True)
        table.add_row(str(pred.path), *(f"{label} {100 * p:.1f}%" for label, p in pairs))
    if shown:
        console.print(table)
    if len(result.predictions) > len(shown):
        console.print(f"… {len(result.predictions) - len(shown)} more (see --out)")
    if args.out:
        console.print(f"predictions written to {write_predictions_csv(result, args.out)}")
    if result.failed:
        lines = "\n".join(f"  {p}: {why}" for p, why in result.failed)
        print(
            f"ltray: warning: {len(result.failed)} of {len(paths)} images could not be read "
            f"and were skipped:\n{lines}",
            file=sys.stderr,
        )
    if not result.predictions:
        raise DataError(f"none of the {len(paths)} images could be read")
    return 0
