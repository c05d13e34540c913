"""Why does the KT head land where it does? Measured from finished KT runs, nothing retrained.

    python scripts/kt_report.py RUN_DIR [RUN_DIR ...] [--plot kt.png] [--json kt.json]

For each `ltray train` run with ``train.method=kt`` (e.g. the seeds of a reproduction:
``runs/c10-30/seed-*/kt``), mean ± std over the runs given:

  1. test accuracy per shot group of the linear head, the KT head and the two NCM heads
     (``results.json``);
  2. the KT mask over training: per epoch and group, the share of train samples the KT loss
     distils (``train_kt_mask_*`` in ``metrics.jsonl``; with ``kt.mask=correct`` this is the
     NCM teacher's accuracy on the augmented train batches);
  3. what each head learnt about the class prior: the slope of its per-class bias and weight
     norm against log n_c (``cache/params.npz``): a head whose bias rises with n_c favours the
     head classes the way plain CE does.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from ltray.metrics import format_mean_std, mean_std
from ltray.train.rundir import RunDir

GROUPS = ("many", "medium", "few", "overall")
HEADS = ("linear", "kt", "ncm_ema", "ncm_full")


def _mean_std(values: list[float]) -> str:
    found = mean_std(values)
    return format_mean_std(*found[:2]) if found else "—"


def _slope(y: np.ndarray, counts: np.ndarray) -> float:
    """Least-squares slope of ``y`` against log n_c."""
    x = np.log(counts.astype(float))
    return float(np.polyfit(x, y, 1)[0])


def read_run(run: Path) -> dict[str, Any]:
    results = json.loads((run / "results.json").read_text())
    records = RunDir(run).read_metrics()  # one record per epoch, a resumed run's repeats dropped
    params = dict(np.load(run / "cache" / "params.npz"))
    counts = np.asarray(results["class_counts"])
    prior = {}
    for head in ("linear", "kt"):
        if f"{head}_bias" in params:
            w, b = params[f"{head}_weight"], params[f"{head}_bias"]
            prior[head] = {
                "bias_slope": _slope(b - b.mean(), counts),
                "norm_slope": _slope(np.linalg.norm(w, axis=1), counts),
            }
    tallied = [r for r in records if "train_kt_mask_overall" in r]  # epochs with a teacher
    mask = {g: [r.get(f"train_kt_mask_{g}", float("nan")) for r in tallied] for g in GROUPS}
    mask["epoch"] = [r["epoch"] for r in tallied]
    return {
        "run": str(run),
        "present": [g for g, ok in results["groups_present"].items() if ok] + ["overall"],
        "test": {h: results["heads"][h]["test"] for h in HEADS if h in results["heads"]},
        "mask": mask,
        "prior": prior,
        "best_epoch": results.get("best_epoch"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--plot", type=Path, help="write the mask-over-training plot here")
    ap.add_argument("--json", type=Path, help="also write every number to this JSON file")
    args = ap.parse_args()
    runs = [read_run(r) for r in args.runs]
    groups = [g for g in GROUPS if all(g in r["present"] for r in runs)]

    print(f"## Test accuracy per group, mean ± std over {len(runs)} run(s)\n")
    print("| head | " + " | ".join(groups) + " |")
    print("|---|" + "---|" * len(groups))
    for head in HEADS:
        if not all(head in r["test"] for r in runs):
            continue
        cells = [_mean_std([r["test"][head][g] for r in runs]) for g in groups]
        print(f"| {head} | " + " | ".join(cells) + " |")

    print("\n## KT mask: share of train samples distilled, per group (mean over runs)\n")
    epochs = min(len(r["mask"]["overall"]) for r in runs)
    shown = sorted({0, epochs // 4, epochs // 2, (3 * epochs) // 4, epochs - 1} - {-1})
    print("| epoch | " + " | ".join(groups) + " |")
    print("|---|" + "---|" * len(groups))
    for e in shown:
        cells = []
        for g in groups:
            vals = [r["mask"][g][e] for r in runs if len(r["mask"][g]) > e]
            cells.append(_mean_std(vals) if vals else "-")
        print(f"| {runs[0]['mask']['epoch'][e]} | " + " | ".join(cells) + " |")

    print("\n## What each head learnt about the class prior (slope against log n_c)\n")
    print("| head | bias slope | weight-norm slope |")
    print("|---|---|---|")
    for head in ("linear", "kt"):
        b = [r["prior"][head]["bias_slope"] for r in runs if head in r["prior"]]
        n = [r["prior"][head]["norm_slope"] for r in runs if head in r["prior"]]
        if b:
            print(
                f"| {head} | {statistics.fmean(b):+.3f} ({len(b)} runs) | "
                f"{statistics.fmean(n):+.3f} |"
            )

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.6))
        for g in groups:
            series = np.array([r["mask"][g][:epochs] for r in runs], dtype=float)
            x = np.asarray(runs[0]["mask"]["epoch"][:epochs])
            ax.plot(x, series.mean(0), label=g)
            if len(runs) > 1:
                ax.fill_between(x, series.min(0), series.max(0), alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel("share of train samples distilled")
        ax.set_ylim(0, 1)
        ax.set_title("KT mask (NCM teacher right) per shot group")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\nplot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
