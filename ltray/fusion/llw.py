"""Learned logit weighting, LLW (docs/methods.md#llw): z = a₁⊙z_l + b₁ + a₂⊙z̃_d + b₂, a, b ∈ R^C.

Initialised a = 1, b = 0 (so the initial fused logits are the sum rule's), trained with
cross-entropy on the fused logits under class-balanced sampling over the cached TRAIN branches
(computed once, so no backbone pass per epoch), SGD lr 0.2, momentum 0.9, no weight decay, 10
epochs; the epoch is chosen on val. The learned weights are applied exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field

from ltray.fusion.base import (
    FitContext,
    NCMSettings,
    Scores,
    SplitArrays,
    branches,
    build_memory,
    register_method,
)
from ltray.fusion.rules import FnFitted
from ltray.fusion.select import balanced_accuracy, class_balanced_indices, train_and_select

__all__ = ["LLWParams", "llw_logits", "init_llw", "LLWSettings", "fit_llw"]


@dataclass
class LLWParams:
    """Per-class weights a₁, a₂ and biases b₁, b₂, each [C]."""

    a1: torch.Tensor
    b1: torch.Tensor
    a2: torch.Tensor
    b2: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        return [self.a1, self.b1, self.a2, self.b2]


def init_llw(num_classes: int) -> LLWParams:
    """a = 1, b = 0 (trainable): the fused logits start as z_l + z̃_d."""

    def full(v: float) -> torch.Tensor:
        return torch.full((num_classes,), v, dtype=torch.float32, requires_grad=True)

    return LLWParams(a1=full(1.0), b1=full(0.0), a2=full(1.0), b2=full(0.0))


def llw_logits(z_l: torch.Tensor, z_d: torch.Tensor, p: LLWParams) -> torch.Tensor:
    """a₁⊙z_l + b₁ + a₂⊙z̃_d + b₂ [N, C] for z_l, z̃_d [N, C]. A class masked in z̃_d (−inf)
    stays −inf, without NaN gradients."""
    masked = ~torch.isfinite(z_d)
    z_d0 = z_d.masked_fill(masked, 0.0)
    out = p.a1 * z_l + p.b1 + p.a2 * z_d0 + p.b2
    return out.masked_fill(masked, float("-inf"))


class LLWSettings(NCMSettings):
    lr: float = Field(0.2, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(512, ge=1)
    seed: int = 0
    include_init: bool = Field(
        True, description="epoch 0 (a=1, b=0: the sum rule) is a val candidate"
    )


@register_method(
    "llw",
    LLWSettings,
    summary="learned per-class logit weights, epoch on val",
    fits_on_train=True,
)
def fit_llw(
    train: SplitArrays, val: SplitArrays, ctx: FitContext, settings: LLWSettings
) -> FnFitted:
    """Fit LLW on cached train branches; choose the epoch by val overall accuracy."""
    memory = build_memory(train, ctx, settings.memory)
    zl_tr, zd_tr = branches(train, memory, settings.metric)
    y_tr = torch.as_tensor(train.labels, dtype=torch.long)
    zl_va, zd_va = branches(val, memory, settings.metric)
    y_va = torch.as_tensor(val.labels, dtype=torch.long)
    params = init_llw(ctx.num_classes)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(llw_logits(zl_tr[idx], zd_tr[idx], params), y_tr[idx])

    def val_score() -> float:
        pred = llw_logits(zl_va, zd_va, params).argmax(1)
        return balanced_accuracy(pred, y_va, ctx.num_classes)

    choice = train_and_select(
        params.tensors(),
        batch_loss,
        lambda gen: class_balanced_indices(y_tr, len(y_tr), gen),
        val_score,
        **settings.sgd(),
        seed=settings.seed,
        include_init=settings.include_init,
    )
    final = LLWParams(*(t.detach().clone() for t in params.tensors()))

    def fn(s: SplitArrays) -> Scores:
        with torch.no_grad():
            return Scores(llw_logits(*branches(s, memory, settings.metric), final).numpy())

    extras = {k: getattr(final, k).numpy() for k in ("a1", "b1", "a2", "b2")}
    return FnFitted(
        fn,
        chosen={
            "epoch": choice.epoch,
            "val_score": choice.score,
            "val_history": [round(v, 6) for v in choice.history],
        },
        extras=extras,
    )
