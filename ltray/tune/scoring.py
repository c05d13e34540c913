"""The two-level search: every report of a training trial scored on the post-hoc stage too.

A train space may name post-hoc methods, as a list or with settings::

    search:
      posthoc: [logit_adj, weighted, ncm, llw, crt]      # or {llw: {epochs: 20}, ...}
      metric: val_best_overall                           # or val_posthoc_llw_overall, ...

Each trial then fits those methods on its own arrays — train and val only, never test — with
their settings chosen on val exactly as ``ltray fuse`` does (:func:`ltray.fusion.fit_method`),
and every report carries, beside the heads' ``val_<head>_<group>``:

- ``val_posthoc_<m>_<group>`` — the method's **cross-fitted** val accuracy: val is split into
  two class-stratified halves; the method is fitted on train + one half (its choices — τ, w,
  an epoch, a threshold — made on that half) and scores the other, and the other way round;
  every val image is scored by a fit that never saw it. This is the search metric's value,
  so a trial is not credited for a choice tuned on the images that score it.
- ``val_posthoc_<m>_insample_<group>`` — fitted on train + all of val and scored on the same
  val, as ``ltray fuse`` prints it (optimistic: kept to measure the gap).
- ``val_best_<group>`` — the best of the heads and the cross-fitted methods by ``overall``,
  with ``best_source`` naming it (``head:kt``, ``posthoc:llw``).
- at the last report also ``test_posthoc_<m>_<group>`` of the deployable fit (train + all of
  val, the best checkpoint's cache), written to ``RUN/fusion/fuse-*/`` as ``ltray fuse``
  would, so ``ltray evaluate`` / ``ltray predict`` serve the winner's post-hoc model.

**Cadence.** Methods whose fit reads no train arrays (logit adjustment, τ-norm, and the methods
on the NCM branch with the run's EMA memory) are fitted at every report; those that read them
(LLW, cRT, LWS, ASM, and ``memory=full``) need a pass over train and are fitted at ASHA's cuts,
at the trial's first report and at its last, their latest values carried in between
(``posthoc_epoch`` says from which epoch). ASHA compares trials only at its cuts, so it always
compares fresh values; Optuna reads the last report. **NCM-based methods default to the EMA
memory** (``memory=ema``) in a two-level sweep, the run's own memory module; give
``memory: full`` in their settings to use the full pass instead (fitted at the cuts then).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ltray.errors import ConfigError
from ltray.fusion.cache import SplitArrays, read_cache
from ltray.fusion.report import save_results
from ltray.metrics import HeadMetrics, evaluate_logits
from ltray.tracking.names import GROUPS, SCORES, parse_metric

if TYPE_CHECKING:
    from ltray.fusion.base import FitContext
    from ltray.fusion.cache import SplitArrays

# The fusion package (torch) is imported inside the functions that fit: reading and checking a
# space file (`ltray tune --dry-run`) stays light.

__all__ = [
    "posthoc_head",
    "is_posthoc_metric",
    "method_settings",
    "split_methods",
    "posthoc_problems",
    "val_halves",
    "cross_fit",
    "PosthocScorer",
]

_PREFIX = "posthoc_"


def posthoc_head(method: str, *, insample: bool = False) -> str:
    """The head name of a post-hoc method's scores in a trial's metrics."""
    return f"{_PREFIX}{method}" + ("_insample" if insample else "")


def is_posthoc_metric(name: str) -> bool:
    """``val_posthoc_llw_overall``, ``val_best_few``... (the post-hoc stage's metrics)."""
    parsed = parse_metric(name)
    return parsed is not None and (parsed[1] == "best" or parsed[1].startswith(_PREFIX))


def method_settings(
    methods: Sequence[str] | Mapping[str, Mapping[str, Any] | None], seed: int
) -> dict[str, dict[str, Any]]:
    """``search.posthoc`` as ``{method: settings}``: NCM-based methods on the EMA memory unless
    their settings say otherwise; methods with a seed get the trial's ``train.seed``."""
    from ltray.fusion.methods import FUSION_METHODS  # torch: only with post-hoc methods

    given = dict.fromkeys(methods) if not isinstance(methods, Mapping) else dict(methods)
    out: dict[str, dict[str, Any]] = {}
    for name, values in given.items():
        settings = dict(values or {})
        fields = FUSION_METHODS.get(name, key="search.posthoc").settings.model_fields
        if "memory" in fields:
            settings.setdefault("memory", "ema")
        if "seed" in fields:
            settings.setdefault("seed", seed)
        out[name] = settings
    return out


def split_methods(
    methods: Sequence[str] | Mapping[str, Mapping[str, Any] | None],
) -> tuple[list[str], list[str]]:
    """(fitted at every report, fitted at the cuts and the ends): whether a fit reads train."""
    from ltray.fusion.methods import uses_train

    settings = method_settings(methods, seed=0)
    every = [m for m, s in settings.items() if not uses_train(m, s)]
    cuts = [m for m, s in settings.items() if uses_train(m, s)]
    return every, cuts


def posthoc_problems(
    methods: Sequence[str] | Mapping[str, Any], metrics: Sequence[str], *, memory: bool
) -> list[str]:
    """Problems of ``search.posthoc`` and of the post-hoc metrics a sweep selects on, before
    Ray: unknown methods or settings, a metric of a method not fitted, a memory-based method
    without a memory (``memory``: the trials build one)."""
    from ltray.fusion.methods import FUSION_METHODS, parse_settings

    out = []
    known = FUSION_METHODS.names()
    given = dict.fromkeys(methods) if not isinstance(methods, Mapping) else dict(methods)
    for name, values in given.items():
        if name not in known:
            out.append(f"search.posthoc: unknown method {name!r}; known: {', '.join(known)}")
            continue
        fields = FUSION_METHODS.get(name).settings.model_fields
        values = {**({"memory": "ema"} if "memory" in fields else {}), **(values or {})}
        try:
            parsed = parse_settings(name, values)
        except ConfigError as exc:
            out.append(f"search.posthoc.{name}: {exc}")
            continue
        needs_ema = "memory_ema" in FUSION_METHODS.get(name).requires or (
            getattr(parsed, "memory", None) == "ema"
        )
        if needs_ema and not memory:
            out.append(
                f"search.posthoc: {name} uses the EMA memory and the trials build none "
                "(memory.enabled=false); set memory.enabled=true or give it memory: full"
            )
    for m in metrics:
        if not is_posthoc_metric(m):
            continue
        split, head, group, stat = parse_metric(m) or ("", "", "", None)
        if split != "val" or stat is not None or group not in SCORES:
            out.append(f"search.metric={m}: post-hoc metrics are val_posthoc_<method>_<group>")
            continue
        if head == "best":
            if group not in GROUPS:
                out.append(f"search.metric={m}: val_best_ takes one of {', '.join(GROUPS)}")
            continue
        method = head[len(_PREFIX) :].removesuffix("_insample")
        if method not in given:
            out.append(
                f"search.metric={m}: {method} is not in search.posthoc "
                f"({', '.join(given) or 'empty'}); add it there or choose another metric"
            )
    return out


def val_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of val, stratified by class (each class's images shuffled with ``seed`` and
    dealt alternately, the first to the smaller half): index arrays into ``labels``."""
    rng = np.random.default_rng(seed)
    a, b = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        first, second = (a, b) if len(a) <= len(b) else (b, a)
        first.extend(idx[0::2])
        second.extend(idx[1::2])
    return np.sort(np.asarray(a, dtype=np.int64)), np.sort(np.asarray(b, dtype=np.int64))


def _subset(split: SplitArrays, idx: np.ndarray) -> SplitArrays:

    return SplitArrays(
        features=split.features[idx],
        logits=split.logits[idx],
        labels=split.labels[idx],
        kt_logits=None if split.kt_logits is None else split.kt_logits[idx],
    )


def cross_fit(
    method: str,
    settings: Mapping[str, Any],
    train: SplitArrays,
    val: SplitArrays,
    context: FitContext,
    *,
    seed: int,
) -> tuple[HeadMetrics, HeadMetrics]:
    """(cross-fitted, in-sample) val metrics of ``method``: out-of-fold scores over the two
    halves of :func:`val_halves`, and the fit on all of val scored on it."""
    from ltray.fusion.methods import evaluate_fitted, fit_method

    halves = val_halves(val.labels, seed)
    scores = np.zeros((len(val), context.num_classes), dtype=np.float32)
    probs: np.ndarray | None = None
    for fit_idx, score_idx in (halves, halves[::-1]):
        fitted = fit_method(method, train, _subset(val, fit_idx), context, settings)
        out = fitted.scores(_subset(val, score_idx))
        scores[score_idx] = out.scores
        if out.probs is not None:
            if probs is None:
                probs = np.zeros_like(scores)
            probs[score_idx] = out.probs
    oof = evaluate_logits(scores, val.labels, context.groups, probs=probs)
    whole = fit_method(method, train, val, context, settings)
    return oof, evaluate_fitted(whole, val, context.groups)


def _named(split: str, head: str, m: HeadMetrics) -> dict[str, float]:
    return {f"{split}_{head}_{k}": float(v) for k, v in m.summary().items() if v is not None}


@dataclass
class PosthocScorer:
    """The epoch hook of a two-level trial (:data:`ltray.train.evaluate.EpochHook`).

    ``methods``: ``{method: settings}`` (:func:`method_settings`); ``cuts``: the epochs ASHA
    compares trials at; ``seed``: the val halves' seed; ``deploy``: at the last report, fit
    each method on the run's cache as ``ltray fuse`` does and write it to ``fusion/fuse-*``.
    """

    methods: dict[str, dict[str, Any]]
    cuts: tuple[int, ...] = ()
    seed: int = 0
    deploy: bool = True
    _carried: dict[str, float] = field(default_factory=dict, repr=False)

    def __call__(self, arrays: Any) -> dict[str, Any]:
        every, at_cuts = split_methods(self.methods)
        fresh = arrays.last or arrays.epoch in self.cuts or not self._carried
        todo = every + (at_cuts if fresh else [])
        metrics: dict[str, Any] = {}
        ctx: FitContext = arrays.context
        for method in todo:
            if "memory_ema" in _needs(method, self.methods[method]) and (
                "memory_ema" not in ctx.params
            ):
                continue  # before the memory's init epoch: nothing to fit yet
            train = arrays.train() if method in at_cuts else _empty_like(arrays.val)
            oof, insample = cross_fit(
                method, self.methods[method], train, arrays.val, ctx, seed=self.seed
            )
            metrics.update(_named("val", posthoc_head(method), oof))
            metrics.update(_named("val", posthoc_head(method, insample=True), insample))
        if fresh and at_cuts:
            carried = {k: v for k, v in metrics.items() if _method_of(k) in at_cuts}
            self._carried = {**carried, "posthoc_epoch": float(arrays.epoch)}
        elif at_cuts:
            metrics.update(self._carried)
        if not at_cuts:
            metrics["posthoc_epoch"] = float(arrays.epoch)
        metrics.update(self._best(arrays.heads, metrics))
        if arrays.last and self.deploy:
            metrics.update(self._deploy(arrays.run_dir))
        return metrics

    def _best(self, heads: Mapping[str, HeadMetrics], metrics: Mapping[str, Any]) -> dict:
        """``val_best_<group>`` and ``best_source``: the head or cross-fitted method with the best
        val overall (ties: heads first, then methods in ``search.posthoc`` order)."""
        candidates: list[tuple[str, dict[str, float]]] = [
            (f"head:{h}", {g: getattr(m, g) for g in GROUPS}) for h, m in heads.items()
        ]
        for method in self.methods:
            prefix = f"val_{posthoc_head(method)}_"
            if f"{prefix}overall" in metrics:
                candidates.append(
                    (f"posthoc:{method}", {g: metrics.get(prefix + g) for g in GROUPS})
                )
        source, best = max(candidates, key=lambda c: c[1]["overall"])
        out: dict[str, Any] = {f"val_best_{g}": float(v) for g, v in best.items() if v is not None}
        out["best_source"] = source
        return out

    def _deploy(self, run_dir: Path) -> dict[str, float]:
        """The deployable fits at the end (train + all of val, as ``ltray fuse``), written to a
        ``fusion/fuse-*`` folder of the run; their test metrics for the trial's record."""
        from ltray.fusion.methods import run_method

        cache = read_cache(run_dir)
        results = [run_method(cache, m, s) for m, s in self.methods.items()]
        save_results(Path(run_dir), results, cache.class_counts)
        out: dict[str, float] = {}
        for r in results:
            out.update(_named("test", posthoc_head(r.name), r.test))
        return out


def _needs(method: str, settings: Mapping[str, Any]) -> tuple[str, ...]:
    from ltray.fusion.methods import FUSION_METHODS

    spec = FUSION_METHODS.get(method)
    extra = ("memory_ema",) if settings.get("memory") == "ema" else ()
    return tuple(spec.requires) + extra


def _method_of(metric: str) -> str | None:
    parsed = parse_metric(metric)
    if parsed is None or not parsed[1].startswith(_PREFIX):
        return None
    return parsed[1][len(_PREFIX) :].removesuffix("_insample")


def _empty_like(split: SplitArrays) -> SplitArrays:
    """A train split with no rows, handed to methods whose fit never reads train."""

    return SplitArrays(
        features=split.features[:0],
        logits=split.logits[:0],
        labels=split.labels[:0],
        kt_logits=None if split.kt_logits is None else split.kt_logits[:0],
    )
