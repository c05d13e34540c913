"""Run post-hoc methods over a cache: fit on train + val, then report val and test.

    cache = read_cache(run_dir)
    result = run_method(cache, "llw", {"lr": 0.1, "epochs": 10, "seed": 0})
    result.chosen, result.val.overall, result.test.few

:func:`run_method` is the only place the test split meets a fitted method, and it does so only
after ``fit`` has returned: the fit functions never receive the cache or the test arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ltray.errors import CacheError

# Importing these modules registers their methods in FUSION_METHODS.
from ltray.fusion import asm as _asm  # noqa: F401
from ltray.fusion import baselines as _baselines  # noqa: F401
from ltray.fusion import llw as _llw  # noqa: F401
from ltray.fusion import rules as _rules  # noqa: F401
from ltray.fusion.base import FUSION_METHODS, FitContext, Fitted, parse_settings
from ltray.fusion.cache import FeatureCache, SplitArrays
from ltray.metrics import HeadMetrics, evaluate_logits

__all__ = [
    "FUSION_METHODS",
    "DISPLAY_ORDER",
    "MethodResult",
    "context_of",
    "missing_requirements",
    "available_methods",
    "uses_train",
    "fit_method",
    "evaluate_fitted",
    "run_defaults",
    "run_method",
]


DISPLAY_ORDER = (
    "linear",
    "kt",
    "ncm",
    "ncm_ema",
    "sum",
    "softmax_sum",
    "max_concat",
    "max_concat_prob",
    "weighted",
    "llw",
    "asm",
    "crt",
    "lws",
    "tau_norm",
    "logit_adj",
)


@dataclass
class MethodResult:
    """One method on one cache: the values chosen on val, val and test metrics, the settings used
    and arrays worth saving (``extras``)."""

    name: str
    chosen: dict[str, Any]
    val: HeadMetrics
    test: HeadMetrics
    settings: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)


def context_of(cache: FeatureCache) -> FitContext:
    """The non-split knowledge a method may use: TRAIN counts, groups, head parameters."""
    return FitContext(
        num_classes=cache.num_classes,
        class_counts=cache.class_counts,
        groups=cache.groups,
        params=dict(cache.params),
    )


def missing_requirements(cache: FeatureCache, name: str) -> list[str]:
    """What method ``name`` needs that ``cache`` lacks (empty when it can run)."""
    spec = FUSION_METHODS.get(name, key="method")
    missing = []
    for req in spec.requires:
        if req == "kt_logits":
            if cache.train.kt_logits is None or cache.test.kt_logits is None:
                missing.append("kt_logits (the run had no KT head)")
        elif req not in cache.params:
            missing.append(f"{req} in params.npz")
    return missing


def available_methods(cache: FeatureCache) -> list[str]:
    """Registered methods this cache can run, in :data:`DISPLAY_ORDER` (others after)."""
    names = FUSION_METHODS.names()
    ordered = [n for n in DISPLAY_ORDER if n in names] + [
        n for n in names if n not in DISPLAY_ORDER
    ]
    return [n for n in ordered if not missing_requirements(cache, n)]


def uses_train(name: str, settings: Mapping[str, Any] | None = None) -> bool:
    """Whether fitting method ``name`` with ``settings`` reads the train split's arrays (a full
    pass over train): always for methods trained on cached train features (LLW, ASM, cRT, LWS),
    and for ``memory=full`` (the default) of the methods built on the NCM branch."""
    spec = FUSION_METHODS.get(name, key="method")
    if spec.fits_on_train:
        return True
    return getattr(parse_settings(name, settings), "memory", None) == "full"


def fit_method(
    name: str,
    train: SplitArrays,
    val: SplitArrays,
    ctx: FitContext,
    settings: Mapping[str, Any] | None = None,
) -> Fitted:
    """Validate ``settings`` and fit method ``name`` on train and val only."""
    spec = FUSION_METHODS.get(name, key="method")
    return spec.fit(train, val, ctx, parse_settings(name, settings))


def evaluate_fitted(fitted: Fitted, split: SplitArrays, groups: np.ndarray) -> HeadMetrics:
    """Metrics of a fitted method on ``split`` (top-1, many/medium/few, overall, top-5, ECE)."""
    s = fitted.scores(split)
    return evaluate_logits(s.scores, np.asarray(split.labels), groups, probs=s.probs)


def run_defaults(
    cache: FeatureCache, name: str, settings: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``settings`` with what the run itself decided filled in: the NCM ``metric`` of a method
    that has one is the run's ``memory.metric`` (cache meta ``memory_metric``) unless set, so
    a ``memory.metric=euclidean`` run is fused with euclidean NCM, never a silent cosine."""
    out = dict(settings or {})
    spec = FUSION_METHODS.get(name, key="method")
    run_metric = cache.meta.get("memory_metric")
    if "metric" in spec.settings.model_fields and "metric" not in out and run_metric:
        out["metric"] = run_metric
    return out


def run_method(
    cache: FeatureCache, name: str, settings: Mapping[str, Any] | None = None
) -> MethodResult:
    """Fit ``name`` on the cache's train + val, then evaluate on val and test.

    Unknown names or settings keys raise :class:`~ltray.errors.ConfigError` listing the valid
    ones, before any work.
    """
    parsed = parse_settings(name, run_defaults(cache, name, settings))
    missing = missing_requirements(cache, name)
    if missing:
        raise CacheError(
            f"{cache.path}: method {name} needs {', '.join(missing)}; pick another method"
        )
    ctx = context_of(cache)
    fitted = FUSION_METHODS.get(name).fit(cache.train, cache.val, ctx, parsed)
    # Test meets the method only here, after fitting is over.
    return MethodResult(
        name=name,
        chosen=dict(fitted.chosen),
        val=evaluate_fitted(fitted, cache.val, ctx.groups),
        test=evaluate_fitted(fitted, cache.test, ctx.groups),
        settings=parsed.model_dump(),
        extras=dict(fitted.extras),
    )
