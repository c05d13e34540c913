"""Decoupling baselines on the same cache: cRT, LWS, τ-norm, logit adjustment
(docs/methods.md#decoupling-baselines).

(NCM is registered in :mod:`ltray.fusion.rules`.) cRT and LWS train over the cached TRAIN
features/logits under class-balanced sampling; every value (epoch, τ) is chosen on val.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ltray.errors import ConfigError
from ltray.fusion.base import (
    FitContext,
    MethodSettings,
    Scores,
    SplitArrays,
    register_method,
    tensor,
)
from ltray.fusion.rules import FnFitted
from ltray.fusion.select import (
    balanced_accuracy,
    class_balanced_indices,
    grid,
    select_on_grid,
    train_and_select,
)

__all__ = [
    "tau_norm_logits",
    "logit_adjusted",
    "log_prior",
    "fit_crt",
    "fit_lws",
    "fit_tau_norm",
    "fit_logit_adj",
]


def tau_norm_logits(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tau: float
) -> torch.Tensor:
    """h · (W_c / ‖W_c‖^τ) + b_c [N, C] for h [N, d], W [C, d], b [C] (bias kept as trained, so
    τ = 0 is exactly the linear head)."""
    w = weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12).pow(tau)
    out = features @ w.T
    return out + bias if bias is not None else out


def log_prior(class_counts: np.ndarray) -> torch.Tensor:
    """log π [C] with π_c = n_c / Σn; a class with no train image counts as 1 (finite prior)."""
    counts = torch.as_tensor(np.maximum(class_counts, 1), dtype=torch.float32)
    return torch.log(counts / counts.sum())


def logit_adjusted(z_l: torch.Tensor, log_pi: torch.Tensor, tau: float) -> torch.Tensor:
    """Post-hoc logit adjustment z_l − τ·log π [N, C]."""
    return z_l - tau * log_pi


def _require_head(ctx: FitContext, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if "linear_weight" not in ctx.params:
        raise ConfigError(
            f"method {name}: the cache's params.npz lacks linear_weight; rerun `ltray train` "
            "(it saves the linear head) or pick another method"
        )
    bias = ctx.params.get("linear_bias")
    return tensor(ctx.params["linear_weight"]), tensor(bias) if bias is not None else None


class GridSettings(MethodSettings):
    tau_min: float = Field(0.0, ge=0)
    tau_max: float = Field(2.0, ge=0)
    tau_step: float = Field(0.1, gt=0)


class TauNormSettings(GridSettings):
    # keep: z = h·W_c/‖W_c‖^τ + b_c (τ = 0 is the linear head); drop: leave out the trained
    # bias, which carries the class prior too (Kang et al.'s classifier has none); val: choose
    # keep or drop on val together with τ (a tie keeps the bias).
    bias: Literal["keep", "drop", "val"] = "val"


@register_method(
    "tau_norm", TauNormSettings, requires=("linear_weight",), summary="W_c/‖W_c‖^τ, τ on val"
)
def fit_tau_norm(
    train: SplitArrays, val: SplitArrays, ctx: FitContext, settings: TauNormSettings
) -> FnFitted:
    """τ-normalised classifier; τ (tau_min..tau_max step tau_step) and whether the trained
    bias stays (``bias``) chosen on val."""
    weight, trained_bias = _require_head(ctx, "tau_norm")
    h_va, y_va = tensor(val.features), torch.as_tensor(val.labels, dtype=torch.long)
    options = ["keep", "drop"] if settings.bias == "val" else [settings.bias]
    if trained_bias is None:
        options = ["drop"]  # a bias-free head: nothing to keep
    best = None
    for option in options:
        b = trained_bias if option == "keep" else None
        choice = select_on_grid(
            grid(settings.tau_min, settings.tau_max, settings.tau_step),
            lambda t, b=b: balanced_accuracy(
                tau_norm_logits(h_va, weight, b, t).argmax(1), y_va, ctx.num_classes
            ),
        )
        if best is None or choice.score > best[1].score:
            best = (option, choice, b)
    option, choice, bias = best

    def fn(s: SplitArrays) -> Scores:
        return Scores(tau_norm_logits(tensor(s.features), weight, bias, choice.value).numpy())

    return FnFitted(fn, chosen={"tau": choice.value, "bias": option, "val_score": choice.score})


@register_method("logit_adj", GridSettings, summary="z_l − τ·log π, τ on val")
def fit_logit_adj(
    train: SplitArrays, val: SplitArrays, ctx: FitContext, settings: GridSettings
) -> FnFitted:
    """Post-hoc logit adjustment with the TRAIN prior; τ chosen on val."""
    log_pi = log_prior(ctx.class_counts)
    z_va, y_va = tensor(val.logits), torch.as_tensor(val.labels, dtype=torch.long)
    choice = select_on_grid(
        grid(settings.tau_min, settings.tau_max, settings.tau_step),
        lambda t: balanced_accuracy(
            logit_adjusted(z_va, log_pi, t).argmax(1), y_va, ctx.num_classes
        ),
    )

    def fn(s: SplitArrays) -> Scores:
        return Scores(logit_adjusted(tensor(s.logits), log_pi, choice.value).numpy())

    return FnFitted(fn, chosen={"tau": choice.value, "val_score": choice.score})


class CRTSettings(MethodSettings):
    lr: float = Field(0.2, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(512, ge=1)
    cosine: bool = True
    seed: int = 0


@register_method(
    "crt", CRTSettings, summary="re-trained linear head, class-balanced", fits_on_train=True
)
def fit_crt(
    train: SplitArrays, val: SplitArrays, ctx: FitContext, settings: CRTSettings
) -> FnFitted:
    """Classifier re-training: a re-initialised Linear(d, C) on cached train features under
    class-balanced sampling; the epoch chosen on val."""
    h_tr, y_tr = tensor(train.features), torch.as_tensor(train.labels, dtype=torch.long)
    h_va, y_va = tensor(val.features), torch.as_tensor(val.labels, dtype=torch.long)
    gen = torch.Generator().manual_seed(settings.seed)
    bound = 1.0 / float(np.sqrt(h_tr.shape[1]))
    w = (torch.rand(ctx.num_classes, h_tr.shape[1], generator=gen) * 2 - 1) * bound
    b = (torch.rand(ctx.num_classes, generator=gen) * 2 - 1) * bound
    w.requires_grad_(True)
    b.requires_grad_(True)
    choice = train_and_select(
        [w, b],
        lambda idx: F.cross_entropy(h_tr[idx] @ w.T + b, y_tr[idx]),
        lambda g: class_balanced_indices(y_tr, len(y_tr), g),
        lambda: balanced_accuracy((h_va @ w.T + b).argmax(1), y_va, ctx.num_classes),
        **settings.sgd(),
        seed=settings.seed + 1,
        include_init=False,
        cosine=settings.cosine,
    )
    w_f, b_f = w.detach().clone(), b.detach().clone()

    def fn(s: SplitArrays) -> Scores:
        return Scores((tensor(s.features) @ w_f.T + b_f).numpy())

    return FnFitted(fn, chosen={"epoch": choice.epoch, "val_score": choice.score})


class LWSSettings(CRTSettings):
    epochs: int = Field(5, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    include_init: bool = Field(True, description="epoch 0 (f = 1: the linear head) is a candidate")


@register_method(
    "lws",
    LWSSettings,
    summary="learned per-class scales f⊙z_l, class-balanced",
    fits_on_train=True,
)
def fit_lws(
    train: SplitArrays, val: SplitArrays, ctx: FitContext, settings: LWSSettings
) -> FnFitted:
    """Learnable weight scaling: z = f ⊙ z_l with only f [C] trained (init 1) under
    class-balanced sampling over cached train logits; the epoch chosen on val."""
    z_tr, y_tr = tensor(train.logits), torch.as_tensor(train.labels, dtype=torch.long)
    z_va, y_va = tensor(val.logits), torch.as_tensor(val.labels, dtype=torch.long)
    f = torch.ones(ctx.num_classes, requires_grad=True)
    choice = train_and_select(
        [f],
        lambda idx: F.cross_entropy(z_tr[idx] * f, y_tr[idx]),
        lambda g: class_balanced_indices(y_tr, len(y_tr), g),
        lambda: balanced_accuracy((z_va * f).argmax(1), y_va, ctx.num_classes),
        **settings.sgd(),
        seed=settings.seed,
        include_init=settings.include_init,
        cosine=settings.cosine,
    )
    f_f = f.detach().clone()

    def fn(s: SplitArrays) -> Scores:
        return Scores((tensor(s.logits) * f_f).numpy())

    return FnFitted(
        fn,
        chosen={"epoch": choice.epoch, "val_score": choice.score},
        extras={"scales": f_f.numpy()},
    )
