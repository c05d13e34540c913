"""Adaptive switch module, ASM (METHODS §4): a small scorer deciding, per image, whether to
trust NCM instead of the linear head.

Input [top-k sorted linear logits (k = min(100, C)); LeakyReLU₀.₁(W₁ĥ + c₁)], W₁: d → 50; the
output layer is one linear unit over that concatenation, giving the score s. Target 1 ⇔ the linear
head is wrong AND NCM is right. BCE balanced over the binary label (each label carries half the
weight), SGD lr 0.1, 10 epochs over the cached TRAIN features, the epoch chosen by val F1 (at
σ(s) > 0.5); inference takes NCM's prediction where σ(s) > τ, τ chosen on val overall accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
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
    tensor,
)
from ltray.fusion.ncm import normalize
from ltray.fusion.rules import FnFitted
from ltray.fusion.select import balanced_accuracy, grid, train_and_select

__all__ = ["ASMNet", "asm_target", "asm_inputs", "binary_f1", "ASMSettings", "fit_asm"]

HIDDEN = 50
NEG_SLOPE = 0.1


def asm_target(z_l: torch.Tensor, z_d: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N] float target: 1 where argmax z_l ≠ y and argmax z_d = y, else 0."""
    return ((z_l.argmax(1) != labels) & (z_d.argmax(1) == labels)).to(torch.float32)


def asm_inputs(z_l: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k linear logits of each row, sorted descending [N, k]."""
    return torch.topk(z_l, k, dim=1, sorted=True).values


@dataclass
class ASMNet:
    """Parameters: hidden W₁ [50, d], c₁ [50]; output u [k + 50], v [] (one score)."""

    w1: torch.Tensor
    c1: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor

    @classmethod
    def init(cls, d: int, k: int, gen: torch.Generator) -> ASMNet:
        """nn.Linear's default init U(±1/√fan_in), drawn from ``gen``."""

        def uni(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
            b = 1.0 / math.sqrt(fan_in)
            return ((torch.rand(shape, generator=gen) * 2 - 1) * b).requires_grad_(True)

        return cls(
            uni((HIDDEN, d), d),
            uni((HIDDEN,), d),
            uni((k + HIDDEN,), k + HIDDEN),
            uni((), k + HIDDEN),
        )

    def tensors(self) -> list[torch.Tensor]:
        return [self.w1, self.c1, self.u, self.v]

    def score(self, topk: torch.Tensor, h_hat: torch.Tensor) -> torch.Tensor:
        """s [N] from top-k logits [N, k] and normalised features ĥ [N, d]."""
        hidden = F.leaky_relu(h_hat @ self.w1.T + self.c1, NEG_SLOPE)
        return torch.cat([topk, hidden], 1) @ self.u + self.v


def binary_f1(pred: torch.Tensor, target: torch.Tensor) -> float:
    """F1 of boolean ``pred`` [N] against 0/1 ``target`` [N]; 0 when there is no positive."""
    t = target > 0.5
    tp = float((pred & t).sum())
    denom = float(pred.sum() + t.sum())
    return 2 * tp / denom if denom else 0.0


class ASMSettings(NCMSettings):
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(512, ge=1)
    seed: int = 0
    top_k: int = Field(100, ge=1, description="k = min(top_k, C)")
    tau_min: float = Field(0.05, gt=0, lt=1)
    tau_max: float = Field(0.95, gt=0, lt=1)
    tau_step: float = Field(0.05, gt=0)
    standardize: bool = Field(
        True,
        description="z-score the top-k logits with train mean/std (an affine map the output "
        "layer could absorb; it only fixes SGD's conditioning on raw logit scales)",
    )


def _balanced_bce(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """BCE where positives and negatives each carry half the total weight."""
    n_pos = t.sum()
    n_neg = len(t) - n_pos
    w = torch.where(t > 0.5, 0.5 / n_pos.clamp_min(1), 0.5 / n_neg.clamp_min(1))
    return (F.binary_cross_entropy_with_logits(s, t, reduction="none") * w).sum() / w.sum()


@register_method("asm", ASMSettings, summary="switch to NCM where σ(s) > τ; epoch by F1, τ on val")
def fit_asm(
    train: SplitArrays, val: SplitArrays, ctx: FitContext, settings: ASMSettings
) -> FnFitted:
    """Fit the switch on cached train features; epoch by val F1, τ by val overall accuracy."""
    k = min(settings.top_k, ctx.num_classes)
    memory = build_memory(train, ctx, settings.memory)

    def prepare(s: SplitArrays) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z_l, z_d = branches(s, memory, settings.metric)
        return z_l, z_d, asm_inputs(z_l, k), normalize(tensor(s.features))

    mu, sd = torch.zeros(k), torch.ones(k)
    zl_tr, zd_tr, top_tr, h_tr = prepare(train)
    if settings.standardize:
        mu, sd = top_tr.mean(0), top_tr.std(0).clamp_min(1e-6)
        top_tr = (top_tr - mu) / sd
    t_tr = asm_target(zl_tr, zd_tr, torch.as_tensor(train.labels, dtype=torch.long))
    zl_va, zd_va, top_va, h_va = prepare(val)
    top_va = (top_va - mu) / sd
    y_va = torch.as_tensor(val.labels, dtype=torch.long)
    t_va = asm_target(zl_va, zd_va, y_va)
    gen = torch.Generator().manual_seed(settings.seed)
    net = ASMNet.init(h_tr.shape[1], k, gen)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return _balanced_bce(net.score(top_tr[idx], h_tr[idx]), t_tr[idx])

    choice = train_and_select(
        net.tensors(),
        batch_loss,
        lambda g: torch.randperm(len(t_tr), generator=g),
        lambda: binary_f1(net.score(top_va, h_va) > 0, t_va),
        **settings.sgd(),
        seed=settings.seed + 1,
        include_init=False,
    )
    with torch.no_grad():
        p_va = torch.sigmoid(net.score(top_va, h_va))
    pred_l, pred_d = zl_va.argmax(1), zd_va.argmax(1)
    taus = grid(settings.tau_min, settings.tau_max, settings.tau_step)
    accs = [
        balanced_accuracy(torch.where(p_va > tau, pred_d, pred_l), y_va, ctx.num_classes)
        for tau in taus
    ]
    best = int(np.argmax(accs))
    tau = taus[best]
    final = ASMNet(*(x.detach().clone() for x in net.tensors()))

    def fn(s: SplitArrays) -> Scores:
        with torch.no_grad():
            z_l, z_d, top, h = prepare(s)
            switch = torch.sigmoid(final.score((top - mu) / sd, h)) > tau
            return Scores(torch.where(switch[:, None], z_d, z_l).numpy())

    return FnFitted(
        fn,
        chosen={
            "epoch": choice.epoch,
            "val_f1": choice.score,
            "tau": tau,
            "val_score": accs[best],
            "train_positive_rate": float(t_tr.mean()),
            "val_f1_history": [round(v, 6) for v in choice.history],
        },
    )
