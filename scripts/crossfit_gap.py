"""How optimistic is a post-hoc method's val score, in-sample against cross-fitted?

A two-level sweep's trial reports, for every method of ``search.posthoc``, its val accuracy
fitted and scored on all of val (``val_posthoc_<m>_insample_overall``, what `ltray fuse`
prints) and cross-fitted on val halves (``val_posthoc_<m>_overall``), and at its last report
the deployable fit's test accuracy (``test_posthoc_<m>_overall``). Over the finished trials of a
sweep this prints, per method, the mean of (val − test) for both val scores: the optimism the
in-sample choice adds and the part cross-fitting removes.

    python scripts/crossfit_gap.py ~/.ltray/sweeps/kt-posthoc/ltray [--json gap.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from ltray.storage import Storage
from ltray.train.rundir import RunDir, parse_metrics


def gaps(sweep: Path) -> dict[str, dict[str, float]]:
    """``{method: {"trials", "insample_minus_test", "crossfit_minus_test", ...}}`` in points."""
    per: dict[str, dict[str, list[float]]] = {}
    for trial in sorted((Storage.at(sweep) / "trials").children(), key=lambda t: t.name):
        records = parse_metrics((trial / RunDir.METRICS).read_text(missing_ok=True) or "")
        last = records[-1] if records else {}
        for key, test in last.items():
            if not (key.startswith("test_posthoc_") and key.endswith("_overall")):
                continue
            m = key[len("test_posthoc_") : -len("_overall")]
            ins = last.get(f"val_posthoc_{m}_insample_overall")
            cf = last.get(f"val_posthoc_{m}_overall")
            if ins is None or cf is None:
                continue
            d = per.setdefault(m, {"ins": [], "cf": [], "test": []})
            d["ins"].append(100 * ins)
            d["cf"].append(100 * cf)
            d["test"].append(100 * test)
    out = {}
    for m, d in sorted(per.items()):
        out[m] = {
            "trials": len(d["test"]),
            "val_insample": statistics.fmean(d["ins"]),
            "val_crossfit": statistics.fmean(d["cf"]),
            "test": statistics.fmean(d["test"]),
            "insample_minus_test": statistics.fmean(
                a - t for a, t in zip(d["ins"], d["test"], strict=True)
            ),
            "crossfit_minus_test": statistics.fmean(
                a - t for a, t in zip(d["cf"], d["test"], strict=True)
            ),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("sweep", type=Path, help="a sweep folder (<storage>/<name>/ltray)")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    out = gaps(args.sweep)
    if not out:
        print(f"{args.sweep}: no finished trial reports post-hoc test metrics")
        return 1
    cols = ("method", "trials", "val in-sample", "val cross-fitted", "test")
    print("| " + " | ".join(cols) + " | in-sample − test | cross-fitted − test |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m, g in out.items():
        print(
            f"| {m} | {g['trials']} | {g['val_insample']:.1f} | {g['val_crossfit']:.1f} | "
            f"{g['test']:.1f} | {g['insample_minus_test']:+.2f} | {g['crossfit_minus_test']:+.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
