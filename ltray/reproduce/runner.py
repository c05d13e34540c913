"""Run a plan on Ray: every unfinished run as a Ray task, dependencies as object references.

    outcome = execute(plan, out_dir, console=console)

Ray seams, numbered:
  [1] :func:`execute` starts (or joins) Ray and keeps as many runs in flight as the cluster
      holds: independent runs share the CPUs/GPUs in parallel; a run that reads another one (OLTR
      its CE run, the LFME student its experts, the post-hoc fits the CE run) is submitted when
      that run has finished. Ready work goes in priority order (post-hoc fits, the main table's
      runs, then the Mixup study), so on a small cluster the main table completes first.
  [2] :func:`train_task` runs one training run inside a Ray worker: the in-process loop for a
      single-worker run (no nested Train start-up cost), a nested ``TorchTrainer`` otherwise
      (the task then holds a ``train_driver`` resource, not a core, as in ``ltray tune``).
  [3] :func:`posthoc_task` fits the post-hoc methods of one seed on its CE run's cache.
Finished runs (``results.json``) and fitted methods (their JSON) are never submitted again.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltray.config import Config
from ltray.reproduce.plan import (
    Plan,
    is_finished,
    pending_posthoc,
    pending_runs,
    posthoc_path,
    run_config,
)

__all__ = ["Outcome", "execute", "train_task", "posthoc_task", "run_one", "fit_posthoc"]

TRAIN_DRIVER = "train_driver"  # same custom resource as ltray.tune.search


@dataclass
class Outcome:
    """What :func:`execute` did: runs trained (id → seconds), skipped as finished, failed."""

    trained: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0


# ------------------------------------------------------------------------------ [2] one run


def _in_process(cfg: Config) -> Config:
    """A single-worker run as the in-process loop, with as many torch threads as cores held."""
    train = cfg.train
    if train.threads is None:
        train = train.model_copy(update={"threads": max(1, int(cfg.scaling.cpus_per_worker))})
    scaling = cfg.scaling.model_copy(update={"num_workers": 0})
    return cfg.model_copy(update={"scaling": scaling, "train": train})


def run_one(cfg: Config, run_dir: Path) -> float:
    """Train one run into ``run_dir`` (resuming from its last checkpoint if it has one); returns
    the wall time. A directory left without a checkpoint by an interrupted start is restarted."""
    from ltray.train.driver import train

    t0 = time.time()
    if is_finished(run_dir):
        return 0.0
    if cfg.scaling.num_workers <= 1:
        cfg = _in_process(cfg)
    if (run_dir / "checkpoints" / "last.pt").is_file():
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


def _method_settings(method: str, settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """Settings of ``method`` with its seed set to the reproduction seed (if it has one)."""
    from ltray.fusion import FUSION_METHODS

    fields = FUSION_METHODS.get(method).settings.model_fields
    return {**settings, **({"seed": seed} if "seed" in fields and "seed" not in settings else {})}


def fit_posthoc(
    ce_dir: Path, out_dir: Path, seed: int, methods: list[str], settings: dict[str, Any]
) -> float:
    """Fit ``methods`` on the cache of ``ce_dir`` (choices on val) and write one JSON each."""
    from ltray.fusion import run_method
    from ltray.fusion.cache import read_cache

    t0 = time.time()
    cache = read_cache(ce_dir)
    for method in methods:
        path = posthoc_path(out_dir, seed, method)
        if path.is_file():
            continue
        res = run_method(cache, method, _method_settings(method, settings.get(method, {}), seed))
        doc = {
            "method": method,
            "seed": seed,
            "cache": str(ce_dir),
            "chosen": {k: v for k, v in res.chosen.items() if "history" not in k},
            "settings": res.settings,
            "val": res.val.summary(),
            "test": res.test.summary(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=float))
        tmp.replace(path)
    return time.time() - t0


def posthoc_task(
    ce_dir: str, out_dir: str, seed: int, methods: list[str], settings: dict[str, Any], *up: Any
) -> float:
    """[3] Ray task: the post-hoc methods of one seed."""
    return fit_posthoc(Path(ce_dir), Path(out_dir), seed, methods, settings)


# ------------------------------------------------------------------------------ [1] driver


def _resolved(cfg: Config) -> Config:
    from ltray.resources import cluster_resources, resolve_scaling

    return resolve_scaling(cfg, cluster_resources())


def _resources(cfg: Config) -> dict[str, Any]:
    sc = _resolved(cfg).scaling
    if sc.num_workers > 1:
        return {"num_cpus": 0, "resources": {TRAIN_DRIVER: 1}}
    res = sc.worker_resources()
    return {"num_cpus": res["CPU"], "num_gpus": res.get("GPU", 0)}


def _start_ray(plan: Plan, address: str | None, num_cpus: int | None) -> bool:
    """Start a local Ray (or join ``address``); True when this call started it."""
    import ray

    from ltray.train.driver import TRAINING_RAY, ray_init

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {}
    if address in (None, "local"):
        kwargs["resources"] = {TRAIN_DRIVER: 1000}
        kwargs["_system_config"] = dict(TRAINING_RAY)
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
    ray_init(address, dashboard=False, **kwargs)
    return True


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
        opts = {"name": run.id, **_resources(cfg)}
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

    started = _start_ray(plan, address, num_cpus)
    try:
        todo = {r.id for r in pending_runs(plan, out_dir)}
        outcome.skipped = [r.id for r in plan.runs if r.id not in todo]
        _run_queue(_jobs(plan, out_dir), _slots(plan), outcome, console)
    finally:
        if started:
            ray.shutdown()
    outcome.wall_s = time.time() - t0
    return outcome
