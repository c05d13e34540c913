"""Per-trial overhead of `ltray tune`, single-worker and 2-worker nested trials side by side.

overhead = a trial's wall time seen by the Tune driver (trial start → trial complete)
           − the time spent inside the training loop (``timing.json`` the loop writes:
             data, model, epochs and the final evaluation)

Single-worker trials run the loop in the trial process itself; 2-worker trials start a nested
Ray Train ``TorchTrainer``. Target: single-worker overhead <= 3 s.

    python scripts/bench_tune.py [--trials 3] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback


class TrialClock(Callback):
    """Driver-side wall clock of every trial (start → complete), written to a JSON file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _update(self, trial_id: str, key: str) -> None:
        p = Path(self.path)
        data = json.loads(p.read_text()) if p.is_file() else {}
        data.setdefault(trial_id, {})[key] = time.time()
        p.write_text(json.dumps(data))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update(trial.trial_id, "start")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update(trial.trial_id, "end")


def sweep(workers: int, trials: int, epochs: int, root: Path) -> list[float]:
    """Run a sweep of ``trials`` trials with ``workers`` workers each; return the overheads."""
    from ltray.tune import search
    from ltray.tune.space import load_space

    space_path = root / f"space-{workers}.yaml"
    space_path.write_text(f"""
base:
  train: {{epochs: {epochs}, threads: 1}}
space:
  kt.phi: {{type: float, low: 0.0, high: 1.0}}
search: {{metric: val_kt_overall, mode: max, num_samples: {trials}, max_concurrent: 1,
          scheduler: none, seed: 0}}
scaling: {{num_workers: {workers}, cpus_per_worker: 1}}
""")
    space = load_space(space_path)
    clock = root / f"clock-{workers}.json"
    search.run_sweep(
        space,
        search.SweepOptions(
            name=f"bench-{workers}w",
            storage=str(root / "storage"),
            mlflow=False,
            callbacks=[TrialClock(str(clock))],
        ),
    )
    walls = json.loads(clock.read_text())
    overheads = []
    for trial_id, t in walls.items():
        timing = (
            root / "storage" / f"bench-{workers}w" / "ltray" / "trials" / trial_id / ("timing.json")
        )
        loop_s = json.loads(timing.read_text())["loop_s"]
        overheads.append(t["end"] - t["start"] - loop_s)
    return overheads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    root = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    os.environ.setdefault("LTRAY_HOME", str(root / "home"))
    one = sweep(1, args.trials, args.epochs, root)
    two = sweep(2, args.trials, args.epochs, root)
    for label, xs in (
        ("single-worker trials (in-process loop)", one),
        ("2-worker nested Train trials", two),
    ):
        print(
            f"{label}: overhead mean {statistics.mean(xs):.1f} s, median "
            f"{statistics.median(xs):.1f} s (each, in order: "
            f"{', '.join(f'{x:.1f}' for x in xs)})"
        )
    print(
        f"target: single-worker <= 3 s (mean {statistics.mean(one):.1f} s); nested / single "
        f"mean overhead {statistics.mean(two) / max(statistics.mean(one), 1e-9):.1f}x"
    )


if __name__ == "__main__":
    main()
