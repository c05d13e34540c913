"""LFME's whole pipeline for tests: the runs `ltray reproduce --methods lfme --seeds 1` plans
(one expert per non-empty shot group, then the student), trained one after the other in the
test's process (no Ray)."""

from __future__ import annotations

from pathlib import Path


def train_lfme(overrides: list[str], out: Path, preset: str = "quick") -> Path:
    """Train the plan's LFME runs under ``out``; returns the student's run directory."""
    from ltray.reproduce.driver import plan_of
    from ltray.reproduce.plan import run_config
    from ltray.reproduce.runner import run_one
    from ltray.reproduce.setup import CliOptions, load_reproduction

    cli = CliOptions(seeds=1, methods=["lfme"], no_mixup=True)
    plan = plan_of(load_reproduction(preset, overrides, cli))
    for run in plan.runs:  # in dependency order: the experts first
        run_one(run_config(plan, run, out), out / run.id)
    return out / plan.row_run("lfme", 0)
