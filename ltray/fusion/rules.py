"""Reference heads (linear, KT, NCM) and the fixed fusion rules (docs/methods.md#fusion-rules).

Each rule combines the linear logits z_l [N, C] with the d-scaled NCM logits z̃_d [N, C]. The
NCM memory is built from the cached TRAIN features at fit time; only ``weighted`` chooses a value
(w, on val).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from ltray.fusion.base import (
    FitContext,
    MethodSettings,
    NCMSettings,
    Scores,
    SplitArrays,
    branches,
    build_memory,
    register_method,
    tensor,
)
from ltray.fusion.ncm import ncm_logits
from ltray.fusion.select import grid, weighted_scores

__all__ = [
    "FnFitted",
    "sum_rule",
    "softmax_sum_rule",
    "max_concat_rule",
    "max_concat_prob_rule",
    "weighted_rule",
]


@dataclass
class FnFitted:
    """A fitted method given by a function of the split."""

    fn: Callable[[SplitArrays], Scores]
    chosen: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def scores(self, split: SplitArrays) -> Scores:
        return self.fn(split)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


# --- pure rules over (z_l, z̃_d) -----------------------------------------------------------


def sum_rule(z_l: torch.Tensor, z_d: torch.Tensor) -> torch.Tensor:
    """z_l + z̃_d [N, C]."""
    return z_l + z_d


def softmax_sum_rule(z_l: torch.Tensor, z_d: torch.Tensor) -> torch.Tensor:
    """(σ(z_l) + σ(z̃_d)) / 2 [N, C]: probabilities (the /2 keeps rows summing to 1)."""
    return 0.5 * (torch.softmax(z_l, 1) + torch.softmax(z_d, 1))


def max_concat_rule(
    z_l: torch.Tensor,
    z_d: torch.Tensor,
    *,
    tie_break: Literal["linear", "ncm"] = "linear",
    rtol: float = 1e-5,
) -> torch.Tensor:
    """Faithful max-concat: scores max(z_l[c], z̃_d[c]) [N, C] with an explicit tie-break.

    d-scaling maps max z̃_d onto max z_l, so the two branches' top classes tie (up to float
    rounding). Tie rule: when the preferred branch's top class reaches the fused maximum within
    ``rtol`` × (max z_l − min z_l), that class wins (its score is raised one ulp above the
    maximum); ``tie_break="linear"`` (default) prefers argmax z_l, ``"ncm"`` argmax z̃_d. So with
    the default the rule predicts the linear head's class unless z̃_d strictly exceeds max z_l.
    """
    fused = torch.maximum(z_l, z_d)
    top = fused.amax(1)
    pref = z_l if tie_break == "linear" else z_d
    cls = pref.argmax(1)
    rows = torch.arange(len(fused))
    tol = rtol * (z_l.amax(1) - z_l.amin(1)).clamp_min(1e-12)
    tied = fused[rows, cls] >= top - tol
    bumped = torch.nextafter(top, torch.full_like(top, float("inf")))
    fused[rows[tied], cls[tied]] = bumped[tied]
    return fused


def max_concat_prob_rule(z_l: torch.Tensor, z_d: torch.Tensor) -> torch.Tensor:
    """Calibrated max-concat on probabilities: max(σ(z_l)[c], σ(z̃_d)[c]) [N, C] (unnormalised;
    ties between classes go to the lower class index, as argmax does)."""
    return torch.maximum(torch.softmax(z_l, 1), torch.softmax(z_d, 1))


def weighted_rule(z_l: torch.Tensor, z_d: torch.Tensor, w: float) -> torch.Tensor:
    """w·z_l + (1 − w)·z̃_d [N, C]; a branch of weight 0 is left out (so w = 1 is exactly z_l even
    where z̃_d is −inf)."""
    if w == 1.0:
        return z_l.clone()
    if w == 0.0:
        return z_d.clone()
    return w * z_l + (1.0 - w) * z_d


# --- registered methods ------------------------------------------------------------------


@register_method("linear", summary="the plain linear head z_l (reference)")
def fit_linear(
    train: SplitArrays, val: SplitArrays, ctx: FitContext, settings: MethodSettings
) -> FnFitted:
    """The plain linear head (reference row)."""
    return FnFitted(lambda s: Scores(np.asarray(s.logits, dtype=np.float32)))


@register_method("kt", requires=("kt_logits",), summary="the cached KT head z_s (reference)")
def fit_kt(
    train: SplitArrays, val: SplitArrays, ctx: FitContext, settings: MethodSettings
) -> FnFitted:
    """The cached knowledge-transfer head (reference row)."""

    def fn(s: SplitArrays) -> Scores:
        assert s.kt_logits is not None
        return Scores(np.asarray(s.kt_logits, dtype=np.float32))

    return FnFitted(fn)


def _ncm_fitted(train: SplitArrays, ctx: FitContext, settings: NCMSettings) -> FnFitted:
    memory = build_memory(train, ctx, settings.memory)

    def fn(s: SplitArrays) -> Scores:
        return Scores(_np(ncm_logits(tensor(s.features), memory, metric=settings.metric)))

    return FnFitted(fn)


@register_method("ncm", NCMSettings, summary="nearest class mean, full-pass memory")
def fit_ncm(
    train: SplitArrays, val: SplitArrays, ctx: FitContext, settings: NCMSettings
) -> FnFitted:
    """Nearest class mean over the memory (default: full pass over cached train features)."""
    return _ncm_fitted(train, ctx, settings)


class NCMEMASettings(MethodSettings):
    metric: Literal["cosine", "euclidean"] = "cosine"


@register_method(
    "ncm_ema",
    NCMEMASettings,
    requires=("memory_ema",),
    summary="nearest class mean, the run's EMA memory",
)
def fit_ncm_ema(
    train: SplitArrays, val: SplitArrays, ctx: FitContext, settings: NCMEMASettings
) -> FnFitted:
    """Nearest class mean over the EMA memory saved by training."""
    return _ncm_fitted(train, ctx, NCMSettings(memory="ema", metric=settings.metric))


def _rule_method(
    rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, probs: bool = False
):  # noqa: ANN202 - returns a fit function
    def fit(
        train: SplitArrays, val: SplitArrays, ctx: FitContext, settings: NCMSettings
    ) -> FnFitted:
        memory = build_memory(train, ctx, settings.memory)

        def fn(s: SplitArrays) -> Scores:
            out = _np(rule(*branches(s, memory, settings.metric)))
            return Scores(out, probs=out / out.sum(1, keepdims=True) if probs else None)

        return FnFitted(fn)

    return fit


register_method("sum", NCMSettings, summary="argmax(z_l + z̃_d)")(_rule_method(sum_rule))
register_method("softmax_sum", NCMSettings, summary="argmax(σ(z_l) + σ(z̃_d))")(
    _rule_method(softmax_sum_rule, probs=True)
)
register_method("max_concat_prob", NCMSettings, summary="argmax max(σ(z_l), σ(z̃_d))")(
    _rule_method(max_concat_prob_rule, probs=True)
)


class MaxConcatSettings(NCMSettings):
    tie_break: Literal["linear", "ncm"] = Field(
        "linear", description="which branch's top class wins the (always present) tie"
    )


@register_method(
    "max_concat", MaxConcatSettings, summary="argmax max(z_l, z̃_d), ties → the linear class"
)
def fit_max_concat(
    train: SplitArrays, val: SplitArrays, ctx: FitContext, settings: MaxConcatSettings
) -> FnFitted:
    """Faithful max-concat with an explicit tie-break (see :func:`max_concat_rule`)."""
    memory = build_memory(train, ctx, settings.memory)

    def fn(s: SplitArrays) -> Scores:
        z_l, z_d = branches(s, memory, settings.metric)
        return Scores(_np(max_concat_rule(z_l, z_d, tie_break=settings.tie_break)))

    return FnFitted(fn, chosen={"tie_break": settings.tie_break})


class WeightedSettings(NCMSettings):
    w_min: float = Field(0.0, ge=0, le=1)
    w_max: float = Field(1.0, ge=0, le=1)
    w_step: float = Field(0.05, gt=0, le=1)


@register_method("weighted", WeightedSettings, summary="argmax(w·z_l + (1−w)·z̃_d), w on val")
def fit_weighted(
    train: SplitArrays, val: SplitArrays, ctx: FitContext, settings: WeightedSettings
) -> FnFitted:
    """Weighted rule; w chosen on val from the grid w_min..w_max step w_step (first on ties)."""
    memory = build_memory(train, ctx, settings.memory)
    z_l, z_d = branches(val, memory, settings.metric)
    ws = grid(settings.w_min, settings.w_max, settings.w_step)
    scores = weighted_scores(
        z_l, z_d, torch.as_tensor(val.labels, dtype=torch.long), ws, ctx.num_classes
    )
    best = int(np.argmax(scores))
    w = ws[best]

    def fn(s: SplitArrays) -> Scores:
        return Scores(_np(weighted_rule(*branches(s, memory, settings.metric), w)))

    return FnFitted(fn, chosen={"w": w, "val_score": scores[best]})
