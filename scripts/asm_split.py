"""Where should ASM's switch learn? Each `fit_on` choice on the same caches, side by side.

    python scripts/asm_split.py RUN_DIR [RUN_DIR ...] [--json asm.json]

For every run (e.g. the seeds of a reproduction) fits ASM with ``fit_on=train`` (the cached
train features) and ``fit_on=val_crossfit`` (5-fold cross-fitting on val), and prints test
accuracy per group (mean ± std over runs), the chosen τ and epoch, and how often the target
"linear wrong, NCM right" occurs where the switch learns vs on val. Choices use val only.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ltray.fusion import run_method
from ltray.fusion.cache import read_cache

CHOICES = ("train", "val_crossfit")
GROUPS = ("many", "medium", "few", "overall")


def _cell(values: list[float], scale: float = 100.0) -> str:
    m = scale * statistics.fmean(values)
    if len(values) < 2:
        return f"{m:.1f}"
    return f"{m:.1f} ± {scale * statistics.stdev(values):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows: dict[str, list[dict]] = {c: [] for c in (*CHOICES, "linear", "ncm")}
    for run in args.runs:
        cache = read_cache(run)
        for fit_on in CHOICES:
            res = run_method(cache, "asm", {"fit_on": fit_on})
            rows[fit_on].append({"test": vars(res.test), "chosen": res.chosen})
        for name in ("linear", "ncm"):
            res = run_method(cache, name)
            rows[name].append({"test": vars(res.test), "chosen": res.chosen})
    present = [g for g in GROUPS if all(r["test"].get(g) is not None for r in rows["linear"])]
    print(f"ASM fitted on each split, {len(args.runs)} run(s); test accuracy (%)\n")
    print("| row | " + " | ".join(present) + " | τ | epoch | target rate: fit split / val |")
    print("|---|" + "---|" * (len(present) + 3))
    for name, recs in rows.items():
        cells = [_cell([r["test"][g] for r in recs]) for g in present]
        if name in CHOICES:
            ch = [r["chosen"] for r in recs]
            extra = [
                ", ".join(f"{c['tau']:.2f}" for c in ch),
                ", ".join(str(c["epoch"]) for c in ch),
                f"{_cell([c['fit_positive_rate'] for c in ch])} / "
                f"{_cell([c['val_positive_rate'] for c in ch])} %",
            ]
        else:
            extra = ["", "", ""]
        label = f"ASM fit_on={name}" if name in CHOICES else name
        print(f"| {label} | " + " | ".join(cells + extra) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
