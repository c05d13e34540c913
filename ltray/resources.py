"""What one run or trial asks Ray for, and whether the machine (or cluster) can ever give it.

Every command resolves ``scaling.use_gpu=auto`` and checks the fit *before* a trial is
scheduled: a request no node can satisfy would otherwise sit PENDING forever while Ray's
autoscaler prints warnings.

    have = local_resources()                     # {"CPU": 2.0, "GPU": 0.0}, starts nothing
    cfg = resolve_scaling(cfg, have)             # use_gpu=auto -> True/False
    check_fits(cfg.scaling, have, where="scaling")   # ConfigError naming the keys and the fix
"""

from __future__ import annotations

import os
from typing import Any

from ltray.config import Config, ScalingConfig
from ltray.errors import ConfigError

__all__ = ["local_resources", "cluster_resources", "resolve_scaling", "check_fits", "run_request"]


def _local_gpus() -> int:
    """GPUs Ray would detect on this machine, found the way Ray finds them (no Ray started,
    no torch imported)."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        manager = get_accelerator_manager_for_resource("GPU")
        return int(manager.get_current_node_num_accelerators()) if manager else 0
    except Exception:  # noqa: BLE001 - no driver library, odd platform: no GPU to use
        return 0


def local_resources() -> dict[str, float]:
    """CPUs and GPUs of this machine as a local Ray would see them."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return {"CPU": float(cpus), "GPU": float(_local_gpus())}


def cluster_resources() -> dict[str, float]:
    """Total resources of the Ray cluster this process is connected to."""
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}


def resolve_scaling(cfg: Config, have: dict[str, float]) -> Config:
    """``cfg`` with ``scaling.use_gpu=auto`` decided by whether ``have`` holds a GPU."""
    sc = cfg.scaling
    if sc.use_gpu != "auto":
        return cfg
    use = have.get("GPU", 0.0) > 0
    return cfg.model_copy(update={"scaling": sc.model_copy(update={"use_gpu": use})})


def run_request(sc: ScalingConfig) -> dict[str, float]:
    """Resources of one run (all its workers together); 0 workers run in the caller's process
    and count as one."""
    n = max(1, sc.num_workers)
    per = sc.worker_resources()
    return {k: v * n for k, v in per.items()}


def check_fits(
    sc: ScalingConfig, have: dict[str, float], *, where: str = "scaling", what: str = "machine"
) -> None:
    """Raise ``ConfigError`` when one run can never be scheduled on ``have`` (CPUs, GPUs)."""
    need = run_request(sc)
    problems: list[str] = []
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    workers = max(1, sc.num_workers)
    if need["CPU"] > cpus:
        fit = max(cpus / workers, 0.0)
        fix = (
            f"set {where}.cpus_per_worker={_num(fit)}"
            if fit >= 0.1
            else f"set {where}.num_workers={int(cpus)} {where}.cpus_per_worker=1"
        )
        problems.append(
            f"{where}.num_workers={sc.num_workers} x {where}.cpus_per_worker="
            f"{_num(sc.cpus_per_worker)} asks for {_num(need['CPU'])} CPUs but the {what} has "
            f"{_num(cpus)}; {fix}"
        )
    if sc.use_gpu is True and need.get("GPU", 0.0) > gpus:
        fix = (
            f"set {where}.use_gpu=auto (train on the CPU here)"
            if gpus == 0
            else f"set {where}.num_workers={int(gpus / sc.gpus_per_worker)}"
        )
        problems.append(
            f"{where}.use_gpu=true asks for {_num(need.get('GPU', 0.0))} GPUs but the {what} "
            f"has {_num(gpus)}; {fix}"
        )
    if problems:
        raise ConfigError("; ".join(problems))


def _num(v: Any) -> str:
    return f"{float(v):g}"
