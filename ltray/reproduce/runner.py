"""Run a plan on Ray: every unfinished run and post-hoc fit as a Ray task, in priority order.

    outcome = execute(plan, out_dir, console=console)

Ray seams, numbered:
  [1] :func:`execute` starts (or joins) Ray (:func:`ltray.launch.start_ray`) and keeps as many
      runs in flight as the cluster holds: independent runs share the CPUs/GPUs in parallel; a
      run that reads another one (OLTR its CE run, the LFME student its experts, the post-hoc
      fits the CE run) is submitted when that run has finished. Ready work goes in priority
      order (post-hoc fits, the main table's runs, then the Mixup study), so on a small cluster
      the main table completes first.
  [2] :func:`train_task` runs one training run inside a Ray worker: the in-process loop for a
      single-worker run, a nested ``TorchTrainer`` otherwise (the task then holds a
      ``train_driver`` resource, not a core, as a sweep's trial does: :mod:`ltray.launch`).
  [3] :func:`posthoc_task` fits the post-hoc methods of one seed on its CE run's cache.
Finished runs (``results.json``) and fitted methods (their JSON) are never submitted again.

Why a queue of its own rather than every task submitted at once with its upstream runs as Ray
task dependencies: Ray starts a task whose arguments became ready *after* the tasks already
waiting for a core. Measured with ``python scripts/ray_dependency_order.py`` (Ray 2.60, one
CPU; submitted: upstream, dependent, four fillers): started ``upstream, filler-0, filler-1,
filler-2, filler-3, dependent``. With Ray's order, an OLTR run would wait behind every Mixup
run of every seed (72 for the ``cifar10-lt`` preset) and the main table would be complete
only at the very end; the queue below submits it as soon as its CE run has finished.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltray import launch
from ltray.config import Config
from ltray.reproduce.plan import (
    Plan,
    is_finished,
    pending_posthoc,
    pending_runs,
    posthoc_path,
    run_config,
)
from ltray.resources import cluster_resources, resolve_scaling
from ltray.train.driver import train
from ltray.train.rundir import RunDir

__all__ = ["Outcome", "execute", "train_task", "posthoc_task", "run_one", "fit_posthoc"]


@dataclass
class Outcome:
    """What :func:`execute` did: runs trained (id → seconds), skipped as finished, failed."""

    trained: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0


# ------------------------------------------------------------------------------ [2] one run


def run_one(cfg: Config, run_dir: Path) -> float:
    """Train one run into ``run_dir`` (resuming from its last checkpoint if it has one); returns
    the wall time. A directory left without a checkpoint by an interrupted start is restarted."""

    t0 = time.time()
    if is_finished(run_dir):
        return 0.0
    if cfg.scaling.num_workers <= 1:
        cfg = launch.in_process(cfg)
    if RunDir(run_dir).has_checkpoint("last"):
        train(cfg, resume=run_dir)
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        train(cfg, out=run_dir)
    return time.time() - t0


def train_task(config: dict[str, Any], run_dir: str, log: str, *upstream: Any) -> float:
    """[2] Ray task: one run; its stdout goes to ``log``. ``upstream``: the results of the runs it
    waits for (only their completion matters)."""
    cfg = Config.model_validate(config)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh, contextlib.redirect_stdout(fh):
        return run_one(cfg, Path(run_dir))


# ------------------------------------------------------------------------------ [3] post hoc


def fit_posthoc(
    ce_dir: Path, out_dir: Path, seed: int, methods: list[str], settings: dict[str, Any]
) -> float:
    """Fit ``methods`` on the cache of ``ce_dir`` (choices on val) and write one JSON each
    (``seed-K/posthoc/<method>.json``)."""
    paths = {m: posthoc_path(out_dir, seed, m) for m in methods}
    return launch.fit_posthoc(ce_dir, paths, seed=seed, settings=settings)


def posthoc_task(
    ce_dir: str, out_dir: str, seed: int, methods: list[str], settings: dict[str, Any], *up: Any
) -> float:
    """[3] Ray task: the post-hoc methods of one seed."""
    return fit_posthoc(Path(ce_dir), Path(out_dir), seed, methods, settings)


# ------------------------------------------------------------------------------ [1] driver


def _resolved(cfg: Config) -> Config:

    return resolve_scaling(cfg, cluster_resources())


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:300]


@dataclass
class _Job:
    """A task not submitted yet: its id, the ids it waits for, and how to submit it."""

    id: str
    depends: list[str]
    submit: Callable[[], Any]


def _jobs(plan: Plan, out_dir: Path) -> list[_Job]:
    """Unfinished work in priority order: post-hoc fits (short), the main table's runs, then the
    Mixup study, so the main table is complete first when the cluster is small."""
    import ray

    train_remote = ray.remote(max_retries=0)(train_task)
    posthoc_remote = ray.remote(max_retries=0)(posthoc_task)
    todo = {r.id for r in pending_runs(plan, out_dir)}
    jobs: list[_Job] = []
    for seed, methods in pending_posthoc(plan, out_dir).items():
        ce = plan.ce_run(seed)
        args = (str(out_dir / ce), str(out_dir), seed, methods, plan.opts.posthoc)
        opts = {"name": f"seed-{seed}/posthoc", "num_cpus": 1}
        jobs.append(
            _Job(
                f"seed-{seed}/posthoc",
                [ce] if ce in todo else [],
                lambda a=args, o=opts: posthoc_remote.options(**o).remote(*a),
            )
        )
    runs = [r for r in plan.runs if r.id in todo]
    # Stable sort: the CE/KT runs of every seed first (every other row builds on them), then
    # OLTR and LFME, then the Mixup study; plan order otherwise.
    for run in sorted(runs, key=lambda r: (r.kind == "mixup", r.kind not in ("ce", "kt"))):
        cfg = run_config(plan, run, out_dir)
        log = out_dir / "logs" / (run.id.replace("/", "__") + ".log")
        args = (cfg.model_dump(mode="json"), str(out_dir / run.id), str(log))
        opts = {"name": run.id, **launch.task_options(_resolved(cfg))}
        jobs.append(
            _Job(
                run.id,
                [d for d in run.depends if d in todo],
                lambda a=args, o=opts: train_remote.options(**o).remote(*a),
            )
        )
    return jobs


def _slots(plan: Plan) -> int:
    """How many runs the cluster holds at once (Ray enforces the resources; this only keeps
    the queue in priority order instead of Ray's first-come order)."""
    import ray

    sc = _resolved(Config.model_validate(plan.base)).scaling
    total = ray.cluster_resources()
    per_run = sc.cpus_per_worker * max(1, sc.num_workers)
    slots = max(1, int(total.get("CPU", 1) // per_run))
    if sc.gpu() and total.get("GPU", 0) > 0:
        per_gpu = sc.gpus_per_worker * max(1, sc.num_workers)
        slots = min(slots, max(1, int(total["GPU"] // per_gpu)))
    return slots


def _fail_orphans(queue: list[_Job], outcome: Outcome, console: Any) -> None:
    """Drop the queued jobs whose upstream run failed, recording why."""
    for job in list(queue):
        bad = [d for d in job.depends if d in outcome.failed]
        if bad:
            queue.remove(job)
            outcome.failed[job.id] = f"not run: {bad[0]} failed"
            _say(console, f"{job.id}: [red]SKIPPED[/], {bad[0]} failed")


def _say(console: Any, text: str) -> None:
    if console is not None:
        console.print(f"[reproduce] {text}", highlight=False, markup=False)


def _run_queue(queue: list[_Job], slots: int, outcome: Outcome, console: Any) -> None:
    """Submit ready jobs in priority order, at most ``slots`` at once, until all have ended."""
    import ray

    in_flight: dict[Any, str] = {}
    total = len(queue)
    while queue or in_flight:
        _fail_orphans(queue, outcome, console)
        for job in list(queue):
            if len(in_flight) >= slots:
                break
            if all(d in outcome.trained for d in job.depends):
                queue.remove(job)
                in_flight[job.submit()] = job.id
        if not in_flight:
            break
        # A short timeout returns to Python often, so Ctrl-C (SIGINT) is handled promptly.
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
        if not ready:
            continue
        rid = in_flight.pop(ready[0])
        try:
            outcome.trained[rid] = float(ray.get(ready[0]))
            status = f"done in {outcome.trained[rid]:.0f} s"
        except Exception as exc:  # noqa: BLE001 - a failed run must not stop the others
            outcome.failed[rid] = _first_line(exc)
            status = f"[red]FAILED[/]: {outcome.failed[rid]}"
        n = len(outcome.trained) + len(outcome.failed)
        _say(console, f"({n}/{total}) {rid}: {status}")


def execute(
    plan: Plan,
    out_dir: Path,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    console: Any = None,
) -> Outcome:
    """[1] Train every unfinished run and fit every unfitted post-hoc method of ``plan``."""
    t0 = time.time()
    outcome = Outcome()
    out_dir = Path(out_dir)
    if not pending_runs(plan, out_dir) and not pending_posthoc(plan, out_dir):
        outcome.skipped = [r.id for r in plan.runs]
        return outcome
    import ray

    started = launch.start_ray(address, num_cpus=num_cpus)
    try:
        todo = {r.id for r in pending_runs(plan, out_dir)}
        outcome.skipped = [r.id for r in plan.runs if r.id not in todo]
        _run_queue(_jobs(plan, out_dir), _slots(plan), outcome, console)
    finally:
        if started:
            ray.shutdown()
    outcome.wall_s = time.time() - t0
    return outcome
