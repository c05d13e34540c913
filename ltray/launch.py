"""How the orchestration commands (`ltray tune`, `ltray reproduce`) put work on Ray.

One place decides, for both commands:

- **Ray's start** — :func:`start_ray`: a local Ray with the custom :data:`TRAIN_DRIVER`
  resource and training workers at the daemons' priority, or an existing cluster;
- **what one unit of work asks for** — :func:`unit_resources`: a single-worker run trains in
  the process of its trial or task and takes one worker's share; a multi-worker run only drives
  a nested Ray Train trainer, whose workers reserve their own resources, so it takes one
  ``train_driver`` unit instead of a core (a driver holding a core deadlocks a small machine);
- **how a single-worker run trains** — :func:`in_process`;
- **post-hoc fits written as JSON** — :func:`fit_posthoc`, the documents a reproduction's
  table and a two-level sweep's trial read back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ltray.config import Config
from ltray.fusion.cache import read_cache
from ltray.train import driver

__all__ = [
    "TRAIN_DRIVER",
    "start_ray",
    "unit_resources",
    "task_options",
    "in_process",
    "method_settings",
    "posthoc_doc",
    "fit_posthoc",
]

# The custom resource a nested run's Train driver takes (docs/architecture.md#the-three-ray-levels).
# A local Ray gets 1,000 of them; on a cluster start the head with
# `ray start --head --resources='{"train_driver": 100}'`.
TRAIN_DRIVER = "train_driver"


def start_ray(
    address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = False
) -> bool:
    """Start a local Ray (``address`` None or ``"local"``) or join ``address``; True when this
    call started or joined it, False when Ray was already up in this process.

    A local Ray gets the ``train_driver`` resource and keeps training workers at the daemons'
    priority (:data:`ltray.train.driver.TRAINING_RAY`); ``dashboard`` only where Train frees a
    stopped trial's placement group through the State API (nested sweeps, ray issue 54305).
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {}
    if address in (None, "local"):
        kwargs["resources"] = {TRAIN_DRIVER: 1000}
        kwargs["_system_config"] = dict(driver.TRAINING_RAY)
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
    driver.ray_init(address, dashboard=dashboard, **kwargs)
    return True


def unit_resources(cfg: Config) -> dict[str, float]:
    """What Ray reserves for the process of one training run (a trial or a task), with
    ``scaling.use_gpu`` already resolved: one worker's share for a run trained in that process
    (``scaling.gpus_per_worker=0.25`` packs four on a GPU), one ``train_driver`` unit for a
    run that drives a nested Train trainer."""
    sc = cfg.scaling
    if sc.num_workers <= 1:
        return sc.worker_resources()
    return {TRAIN_DRIVER: 1.0}


def task_options(cfg: Config) -> dict[str, Any]:
    """:func:`unit_resources` as the options of a Ray task (``num_cpus``, ``num_gpus``,
    ``resources``)."""
    res = dict(unit_resources(cfg))
    return {
        "num_cpus": res.pop("CPU", 0.0),
        "num_gpus": res.pop("GPU", 0.0),
        "resources": res,
    }


def in_process(cfg: Config) -> Config:
    """A single-worker run as the in-process loop (no nested Train start-up), with as many torch
    threads as cores it holds unless ``train.threads`` says otherwise."""
    train = cfg.train
    if train.threads is None:
        train = train.model_copy(update={"threads": max(1, int(cfg.scaling.cpus_per_worker))})
    scaling = cfg.scaling.model_copy(update={"num_workers": 0})
    return cfg.model_copy(update={"scaling": scaling, "train": train})


def method_settings(method: str, settings: Mapping[str, Any] | None, seed: int) -> dict[str, Any]:
    """``settings`` of post-hoc ``method`` with its ``seed`` set to ``seed`` when it has one and
    the settings do not name it."""
    from ltray.fusion.methods import FUSION_METHODS

    fields = FUSION_METHODS.get(method).settings.model_fields
    out = dict(settings or {})
    if "seed" in fields and "seed" not in out:
        out["seed"] = seed
    return out


def posthoc_doc(result: Any, *, seed: int, cache: str) -> dict[str, Any]:
    """The JSON document of one fitted post-hoc method (:class:`ltray.fusion.MethodResult`):
    what was chosen on val, the settings, val and test metrics."""
    return {
        "method": result.name,
        "seed": seed,
        "cache": cache,
        "chosen": {k: v for k, v in result.chosen.items() if "history" not in k},
        "settings": result.settings,
        "val": result.val.summary(),
        "test": result.test.summary(),
    }


def _write_atomic(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float))
    tmp.replace(path)


def fit_posthoc(
    run_dir: Path,
    paths: Mapping[str, Path],
    *,
    seed: int,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> float:
    """Fit each method of ``paths`` on the cache of ``run_dir`` (choices on val, test only
    reported) and write its document to ``paths[method]``; a document already there is kept.
    Returns the seconds spent."""
    from ltray.fusion.methods import run_method

    t0 = time.time()
    todo = {m: p for m, p in paths.items() if not Path(p).is_file()}
    if not todo:
        return 0.0
    cache = read_cache(run_dir)
    for method, path in todo.items():
        res = run_method(cache, method, method_settings(method, (settings or {}).get(method), seed))
        _write_atomic(Path(path), posthoc_doc(res, seed=seed, cache=str(run_dir)))
    return time.time() - t0
