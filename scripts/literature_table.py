"""ltray's CIFAR-10-LT rows under both validation protocols, from the runs' own caches.

ltray makes every choice (best epoch, τ, w, LLW's epoch, ...) on a balanced val split carved out
of the test set and reports test on the rest; most papers choose on the test set itself
(val = test). This script reads the caches of one or more reproductions (``seed-K/<run>/cache``)
and prints, per row, mean ± std over seeds:

- **carved val** — ltray's protocol: choices on val, test on the remaining test images (the
  numbers of ``ltray reproduce``'s own table);
- **val = test** — the papers' protocol on the same runs: val and test together are the full
  test set (CIFAR-10: the 10,000 images); heads with no post-hoc choice (CE's linear head, the
  KT head, NCM) are scored on it, and every post-hoc method makes its choices on it and is
  scored on it. The training run's best epoch stays the one val chose (its cache holds that
  epoch only); with a step schedule the last 20 epochs barely move, so this is the closest
  like-for-like reading a cache allows.

    python scripts/literature_table.py runs/c10-200 --run kt --json runs/c10-200/literature.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HEADS = {"ce": "linear", "kt": "kt"}
POSTHOC = ("ncm", "logit_adj", "crt", "llw", "lws", "tau_norm", "weighted", "asm")


def _union(a: Any, b: Any) -> Any:
    from ltray.fusion.cache import SplitArrays

    return SplitArrays(
        features=np.concatenate([a.features, b.features]),
        logits=np.concatenate([a.logits, b.logits]),
        labels=np.concatenate([a.labels, b.labels]),
        kt_logits=None
        if a.kt_logits is None or b.kt_logits is None
        else np.concatenate([a.kt_logits, b.kt_logits]),
    )


def _val_is_test(cache: Any) -> Any:
    """The cache as the papers' protocol sees it: val and test are both the full test set."""
    from dataclasses import replace

    full = _union(cache.val, cache.test)
    return replace(cache, val=full, test=full)


def rows_of(run_dir: Path, methods: list[str], seed: int) -> dict[str, dict[str, float]]:
    """``{row: {"carved": overall, "val=test": overall}}`` for one run's cache."""
    from ltray.fusion.cache import read_cache
    from ltray.fusion.methods import run_method
    from ltray.metrics import evaluate_logits

    cache = read_cache(run_dir)
    papers = _val_is_test(cache)
    out: dict[str, dict[str, float]] = {}
    for row, head in HEADS.items():
        arrays = {"linear": (cache.test.logits, papers.test.logits)}
        if cache.test.kt_logits is not None:
            arrays["kt"] = (cache.test.kt_logits, papers.test.kt_logits)
        if head not in arrays:
            continue
        ours, theirs = arrays[head]
        out[row] = {
            "carved": evaluate_logits(ours, cache.test.labels, cache.groups).overall,
            "val=test": evaluate_logits(theirs, papers.test.labels, cache.groups).overall,
        }
    for method in methods:
        settings = {"seed": seed} if method in ("llw", "asm", "crt", "lws") else {}
        out[method] = {
            "carved": run_method(cache, method, settings).test.overall,
            "val=test": run_method(papers, method, settings).test.overall,
        }
    return out


def _pm(values: list[float]) -> str:
    from ltray.metrics import format_mean_std, mean_std

    found = mean_std(values)
    return format_mean_std(*found[:2]) if found else "—"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("dirs", nargs="+", type=Path, help="reproduction folders (seed-K/<run>/)")
    p.add_argument("--run", default="kt", help="the run kind whose cache serves every row")
    p.add_argument("--methods", default=",".join(POSTHOC), help="post-hoc rows")
    p.add_argument("--json", type=Path, help="also write the per-seed numbers here")
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    per_seed: dict[str, dict[str, list[float]]] = {}
    found = []
    for folder in args.dirs:
        for seed_dir in sorted(folder.glob("seed-*")):
            run = seed_dir / args.run
            if not (run / "cache" / "meta.json").is_file():
                continue
            seed = int(seed_dir.name.split("-", 1)[1])
            found.append(str(run))
            for row, vals in rows_of(run, methods, seed).items():
                for proto, v in vals.items():
                    per_seed.setdefault(row, {}).setdefault(proto, []).append(v)
    if not found:
        print(f"no {args.run} run with a cache under {', '.join(map(str, args.dirs))}")
        return 1
    print(f"runs: {', '.join(found)}")
    print("| row | carved val (ltray) | val = test (papers) |")
    print("|---|---:|---:|")
    for row, protos in per_seed.items():
        print(f"| {row} | {_pm(protos.get('carved', []))} | {_pm(protos.get('val=test', []))} |")
    if args.json:
        args.json.write_text(json.dumps({"runs": found, "rows": per_seed}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
