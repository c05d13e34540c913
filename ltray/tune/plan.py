"""What a sweep will do, decided and checked before Ray starts.

    opts = SweepOptions(search={"num_samples": 16, "grace_period": 8}, name="kt1")
    space = sweep_space(space, opts)      # the space as this sweep runs it (nothing mutated)
    check_sweep(space, opts)              # every problem in one ConfigError
    plan(space, opts)                     # what `--dry-run` prints

The command line's ``--num-samples``, ``--max-concurrent``, ``--grace-period``,
``--reduction-factor``, ``--confirm`` and ``--seeds`` are overrides of the space file's
``search:`` section and are validated by the same pydantic model
(:class:`~ltray.tune.space.SearchSettings`), so a value the file may not hold is refused on the
command line with the same rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ltray.config import Config, flatten, plain_message
from ltray.errors import ConfigError, LtrayError, RunDirError
from ltray.resources import check_fits, local_resources, resolve_scaling
from ltray.tune.folder import sweep_paths
from ltray.tune.scoring import is_posthoc_metric, split_methods
from ltray.tune.space import POSTHOC, SearchSettings, Space
from ltray.validate import SELECT_KEYS, config_problems, format_problems, run_group_problems

__all__ = [
    "SweepOptions",
    "sweep_space",
    "asha_rungs",
    "asha_state",
    "plan",
    "check_sweep",
    "check_resume",
    "select_head_from_metric",
    "fit_resources",
]


@dataclass
class SweepOptions:
    """How to run a sweep, besides its space: where, under which name, with which MLflow, and
    ``search`` — overrides of the space's ``search:`` section (``num_samples``,
    ``max_concurrent``, ``grace_period``, ``reduction_factor``, ``confirm``, ``seeds``)."""

    search: dict[str, Any] = field(default_factory=dict)
    address: str | None = None
    name: str | None = None
    storage: str | None = None
    mlflow_uri: str | None = None
    mlflow: bool = True
    resume: bool = False
    from_run: str | None = None
    experiment: str | None = None
    register: str | None = None  # register the winner's model under this registry name
    callbacks: list[Any] = field(default_factory=list)  # extra Tune callbacks (library use)

    def given(self) -> dict[str, Any]:
        """The search overrides actually given (None means: the space file's)."""
        return {k: v for k, v in self.search.items() if v is not None}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _search_problems(space: Space, opts: SweepOptions) -> list[str]:
    given = opts.given()
    if not given:
        return []
    try:
        SearchSettings.model_validate({**space.spec.search.model_dump(), **given})
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else "?"
            shown = _flag(key) if key in given else f"search.{key}"
            out.append(f"{shown} {err.get('input')!r}: {plain_message(err)}")
        return out
    return []


def sweep_space(space: Space, opts: SweepOptions) -> Space:
    """``space`` with the command line's search overrides applied (validated by
    :class:`SearchSettings`; :func:`check_sweep` reports a bad one with its flag)."""
    given = opts.given()
    if not given:
        return space
    problems = _search_problems(space, opts)
    if problems:
        raise ConfigError("; ".join(problems))
    search = SearchSettings.model_validate({**space.spec.search.model_dump(), **given})
    return space.with_search(search)


def asha_rungs(epochs: int, grace: int, factor: int) -> list[int]:
    """The epochs at which ASHA compares trials and stops the worse ones (the scheduler's rungs:
    grace, grace·factor, ... up to the last epoch)."""
    rungs, t = [], grace
    while t <= epochs:
        rungs.append(t)
        t *= factor
    return rungs


def asha_state(space: Space) -> dict[str, Any] | None:
    """The cuts ASHA makes in this sweep, or None when it runs no scheduler (none asked for,
    several metrics, a post-hoc sweep, or a grace period past the last epoch)."""
    s = space.spec.search
    epochs = space.base.train.epochs
    if s.scheduler != "asha" or space.multi_objective or space.spec.kind == POSTHOC:
        return None
    if s.grace_period > epochs:
        return None
    return {
        "grace_period": s.grace_period,
        "reduction_factor": s.reduction_factor,
        "rungs": asha_rungs(epochs, s.grace_period, s.reduction_factor),
    }


def _scheduler_text(space: Space) -> str:
    asha = asha_state(space)
    epochs = space.base.train.epochs
    if asha is not None:
        return (
            f"asha: grace {asha['grace_period']}, reduction factor {asha['reduction_factor']}; "
            f"stops trials at epochs {', '.join(map(str, asha['rungs']))} of {epochs}"
        )
    if space.multi_objective:
        return "none (multi-objective)"
    if space.spec.search.scheduler == "asha" and space.spec.kind != POSTHOC:
        grace = space.spec.search.grace_period
        return f"none: the grace period {grace} is past the last epoch {epochs}"
    return "none"


def _posthoc_text(space: Space) -> str | None:
    methods = space.spec.search.posthoc
    if not methods:
        return None

    every, rungs = split_methods(methods)
    parts = []
    if every:
        parts.append(f"{', '.join(every)} at every report")
    if rungs:
        parts.append(f"{', '.join(rungs)} at ASHA's cuts and the last epoch")
    return "; ".join(parts) + " (val scores cross-fitted on val halves)"


def plan(space: Space, opts: SweepOptions) -> dict[str, Any]:
    """What a sweep would do (``--dry-run``), with nothing started. ``space`` is the sweep's
    (:func:`sweep_space` applied)."""
    s = space.spec.search
    where = sweep_paths(opts.name or space.name, opts.storage)
    sc = space.base.scaling
    out: dict[str, Any] = {
        "space": space.describe(),
        "kind": space.spec.kind,
        "method": space.spec.method,
        "metric": space.metrics,
        "mode": space.modes,
        "num_samples": s.num_samples,
        "max_concurrent": s.max_concurrent,
        "scheduler": _scheduler_text(space),
        "sampler": f"{s.sampler} (seed {s.seed})",
        "epochs": space.base.train.epochs,
        "trial": "in-process loop (no nested Train)"
        if sc.num_workers <= 1
        else f"nested TorchTrainer, {sc.num_workers} workers",
    }
    posthoc = _posthoc_text(space)
    if posthoc:
        out["post-hoc per trial"] = posthoc
    if s.confirm:
        out["confirm"] = (
            f"top {s.confirm} configurations x {s.seeds} training seeds at the full "
            f"{space.base.train.epochs} epochs, winner by mean {space.metrics[0]}"
        )
    out.update(
        storage=f"{where.storage}/{where.name}",
        sweep_dir=str(where.root),
        from_run=opts.from_run,
    )
    return out


def _check_from_run(space: Space, opts: SweepOptions) -> None:
    if space.spec.kind == POSTHOC and opts.from_run:
        cache = Path(opts.from_run) / "cache" / "meta.json"
        if not cache.is_file():
            raise RunDirError(
                f"--from {opts.from_run}: no feature cache ({cache} missing); pass a run "
                "directory written by `ltray train`"
            )
        # The run's shot groups, not the space's base config's, decide which metrics exist.

        meta = json.loads(cache.read_text())
        empty = run_group_problems(meta, space.metrics, run=f"--from {opts.from_run}")
        if empty:
            raise ConfigError(format_problems(empty))
    if space.spec.kind != POSTHOC and opts.from_run:
        raise ConfigError("--from applies to post-hoc spaces (kind: posthoc) only")


def check_sweep(space: Space, opts: SweepOptions) -> None:
    """Everything that can be checked before Ray starts, every problem in one ConfigError:
    the search overrides, ``--from``, the config a post-hoc sweep trains without ``--from``
    (the space file's own checks ran in :func:`~ltray.tune.space.load_space`) and, for a local
    sweep, whether one trial fits this machine. ``--dry-run`` runs exactly this."""

    problems = _search_problems(space, opts)
    asha_keys = {"grace_period", "reduction_factor"} & set(opts.given())
    if opts.resume and asha_keys:
        problems.append(
            "--resume keeps the sweep's ASHA settings; drop --grace-period/--reduction-factor, "
            "or start a new sweep with another --name"
        )
    if opts.given().get("confirm") and space.spec.kind == POSTHOC:
        problems.append("--confirm re-trains the best configurations: a train space only")
    if space.spec.kind == POSTHOC and not opts.from_run and not opts.resume:
        problems += [f"base: {x}" for x in config_problems(space.base)]
    try:
        _check_from_run(space, opts)
    except LtrayError as exc:
        problems.append(str(exc))
    if opts.address is None:  # a local sweep: decide and check resources before Ray starts
        try:
            fit_resources(space, local_resources(), "machine")
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(format_problems(problems, where=str(space.path)))


def check_resume(state: dict[str, Any], space: Space) -> None:
    """``--resume`` continues the sweep that was started: refuse a command whose config differs
    from the one saved with the sweep (and recorded in MLflow), naming every changed key."""

    saved = flatten(state.get("base", {}))
    now = flatten(space.base.model_dump(mode="json"))
    changed = [
        f"{k}={now[k]!r} (the sweep has {saved[k]!r})"
        for k in sorted(set(saved) & set(now))
        if saved[k] != now[k]
    ]
    if changed:
        raise ConfigError(
            f"--resume: this command changes the sweep's saved config: {'; '.join(changed)}; "
            "resume without these overrides, or start a new sweep with another --name"
        )


def select_head_from_metric(space: Space) -> Space:
    """Tuning ``val_<head>_<group>``: each trial picks its best epoch by that head and group
    too (``val_kt_few`` → the epoch with the best KT few-shot accuracy), so the checkpoint, the
    cache and the test numbers belong to the epoch the metric chose. Keys the base config sets
    explicitly are kept; a metric that is not an accuracy (ece), or one of the post-hoc stage
    (``val_posthoc_*``, ``val_best_*``: the heads are then chosen by the base's settings), leaves
    the selection alone. Returns a new space."""

    metric = space.metrics[0]
    if space.spec.kind == POSTHOC or not metric.startswith("val_") or is_posthoc_metric(metric):
        return space
    head, group = metric[len("val_") :].rsplit("_", 1)
    given = space.spec.base.get("eval", {})
    update: dict[str, Any] = {}
    if "select_head" not in given:
        update["select_head"] = head
    chosen = update.get("select_head", space.base.eval.select_head)
    if "select_group" not in given and group in SELECT_KEYS and chosen == head:
        update["select_group"] = group
    if not update:
        return space
    return space.with_base(
        space.base.model_copy(update={"eval": space.base.eval.model_copy(update=update)})
    )


def fit_resources(space: Space, have: dict[str, float], what: str) -> Space:
    """``space`` with ``scaling.use_gpu=auto`` resolved against ``have``; a trial that can never
    run there is refused (ConfigError naming the keys)."""
    base: Config = resolve_scaling(space.base, have)
    if space.spec.kind != POSTHOC:
        check_fits(base.scaling, have, what=what)
    return space.with_base(base)
