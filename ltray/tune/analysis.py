"""What a finished sweep says about itself: do ASHA's cuts rank trials as their last epochs do,
which grace period would have kept the best trials, and which settings mattered.

Pure functions over the records of :func:`ltray.tune.folder.collect_trials` (each trial's
``curve``: epoch → the sweep metric; ``params``; ``epochs``): ``ltray report`` prints them.

- :func:`rung_correlations` — Spearman's ρ between the metric at an epoch and at the sweep's
  last epoch, over the trials that reached both (scipy.stats.spearmanr). ASHA only stops
  trials, so the trials that reached the end are the ones it kept: ρ is measured on them and on
  fewer trials the later the epoch; read it with its ``n``.
- :func:`grace_advice` — for every grace period g (the sweep's reduction factor kept), whether
  ASHA cutting at g, g·f, ... would have kept the final top trials: at each of its cuts, each of
  them must rank within the top 1/f of the trials that reached that epoch in this sweep. The
  smallest such g is the advice (with ρ at g, so a lucky cut on few trials is visible).
- :func:`importances` — Optuna's ``optuna.importance.get_param_importances`` (fANOVA) on a study
  made of the trials that ran every epoch, valued by their last epoch's metric: trials ASHA
  stopped early carry values from fewer epochs and would credit whatever made them stop.
"""

from __future__ import annotations

import math
from typing import Any

from ltray.tune.plan import asha_rungs

__all__ = ["rung_correlations", "grace_advice", "importances", "optuna_distribution"]


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    from scipy.stats import spearmanr

    rho = float(spearmanr(a, b).statistic)
    return None if math.isnan(rho) else rho


def rung_correlations(
    trials: list[dict[str, Any]], last: int, epochs: list[int] | None = None
) -> list[dict[str, Any]]:
    """``[{"epoch": e, "n": trials, "rho": ρ or None}]`` for each epoch of ``epochs`` (default
    every epoch before ``last``): ρ between the metric at ``e`` and at ``last``."""
    done = [t for t in trials if last in t.get("curve", {})]
    out = []
    for e in epochs if epochs is not None else range(1, last):
        both = [t for t in done if e in t["curve"]]
        rho = _spearman([t["curve"][e] for t in both], [t["curve"][last] for t in both])
        out.append({"epoch": e, "n": len(both), "rho": rho})
    return out


def _kept(trials: list[dict[str, Any]], top: list[str], cut: int, factor: int, mode: str) -> bool:
    reached = [t for t in trials if cut in t.get("curve", {})]
    keep = max(1, math.ceil(len(reached) / factor))
    sign = -1 if mode == "max" else 1
    order = sorted(reached, key=lambda t: sign * t["curve"][cut])
    kept = {t["trial_id"] for t in order[:keep]}
    return all(tid in kept for tid in top)


def grace_advice(
    trials: list[dict[str, Any]], last: int, factor: int, mode: str, *, top: int = 1
) -> dict[str, Any]:
    """For each grace period g: the cuts ASHA (reduction factor ``factor``) would make and
    whether they keep the final ``top`` trials; ``advice``: the smallest g that does (None:
    too few finished trials to say)."""

    done = [t for t in trials if last in t.get("curve", {})]
    sign = -1 if mode == "max" else 1
    best = [t["trial_id"] for t in sorted(done, key=lambda t: sign * t["curve"][last])[:top]]
    rhos = {r["epoch"]: r for r in rung_correlations(trials, last)}
    rows = []
    for g in range(1, last):
        cuts = [c for c in asha_rungs(last, g, factor) if c < last]
        if not cuts:
            continue
        kept = bool(best) and all(_kept(trials, best, c, factor, mode) for c in cuts)
        rows.append({"grace": g, "cuts": cuts, "keeps_top": kept, **_rho(rhos.get(g))})
    advice = next((r["grace"] for r in rows if r["keeps_top"]), None) if len(done) >= 2 else None
    return {"top": best, "finished": len(done), "rows": rows, "advice": advice}


def _rho(row: dict[str, Any] | None) -> dict[str, Any]:
    return {"rho": None, "n": 0} if row is None else {"rho": row["rho"], "n": row["n"]}


def optuna_distribution(param: dict[str, Any]) -> Any:
    """The Optuna distribution of one space entry (``type``, ``low``, ``high``, ``log``,
    ``step``, ``choices``: :class:`ltray.tune.space.Param` as saved in ``sweep.json``)."""
    import optuna

    kind = param["type"]
    if kind == "categorical":
        return optuna.distributions.CategoricalDistribution(list(param["choices"]))
    if kind == "int":
        return optuna.distributions.IntDistribution(
            int(param["low"]), int(param["high"]), log=bool(param.get("log")), step=1
        )
    return optuna.distributions.FloatDistribution(
        float(param["low"]),
        float(param["high"]),
        log=bool(param.get("log")),
        step=param.get("step") or None,
    )


def importances(
    trials: list[dict[str, Any]],
    space: dict[str, dict[str, Any]],
    last: int,
    mode: str,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"n": trials used, "importances": {param: share}}`` from Optuna's fANOVA on the trials
    that reached epoch ``last`` (valued there); ``importances`` is empty with a ``why`` when
    fewer than 3 such trials exist or no searched value varies among them."""
    import optuna

    done = [t for t in trials if last in t.get("curve", {})]
    if len(done) < 3:
        return {"n": len(done), "importances": {}, "why": "fewer than 3 trials ran every epoch"}
    dists = {k: optuna_distribution(p) for k, p in space.items()}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for t in done:
        params = {k: v for k, v in t["params"].items() if k in dists}
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: dists[k] for k in params},
                value=float(t["curve"][last]),
            )
        )
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as exc:  # e.g. no parameter varies
        return {"n": len(done), "importances": {}, "why": str(exc)}
    return {"n": len(done), "importances": {k: float(v) for k, v in found.items()}}
