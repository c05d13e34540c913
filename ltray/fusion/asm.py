"""Adaptive switch module, ASM (docs/methods.md#asm): a small scorer deciding, per image, whether to
trust NCM instead of the linear head.

Input [top-k sorted linear logits (k = min(100, C)); LeakyReLU₀.₁(W₁ĥ + c₁)], W₁: d → 50; the
output layer is one linear unit over that concatenation, giving the score s. Target 1 ⇔ the linear
head is wrong AND NCM is right. BCE balanced over the binary label (each label carries half the
weight), SGD lr 0.1, 10 epochs over the cached TRAIN features, the epoch chosen by val F1 (at
σ(s) > 0.5); inference takes NCM's prediction where σ(s) > τ, τ chosen on val overall accuracy.

Where the switch learns (``fit_on``): on the train features the linear head is nearly always right
and every image sits inside its own class mean, so the target "switch to NCM" is rare there and
unlike val or test. ``fit_on=val_crossfit`` fits it on val instead, by K-fold cross-fitting: each
fold is scored by a switch trained on the other folds, the epoch and τ are chosen on those
out-of-fold scores, and the final switch is trained on all of val for the chosen epochs (the class
means still come from train).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

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
from ltray.fusion.select import EpochChoice, balanced_accuracy, grid, train_and_select

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
        description="z-score the top-k logits with the fit split's mean/std (an affine map the "
        "output layer could absorb; it only fixes SGD's conditioning on raw logit scales)",
    )
    fit_on: Literal["train", "val_crossfit"] = Field(
        "train",
        description="train: the cached train features, epoch and tau chosen on val; "
        "val_crossfit: K-fold cross-fitting on val (out-of-fold scores choose epoch and tau)",
    )
    folds: int = Field(5, ge=2, description="K of fit_on=val_crossfit (folds stratified by class)")


def _balanced_bce(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """BCE where positives and negatives each carry half the total weight."""
    n_pos = t.sum()
    n_neg = len(t) - n_pos
    w = torch.where(t > 0.5, 0.5 / n_pos.clamp_min(1), 0.5 / n_neg.clamp_min(1))
    return (F.binary_cross_entropy_with_logits(s, t, reduction="none") * w).sum() / w.sum()


def _stratified_folds(labels: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """fold id in [0, k) of every sample, each class dealt round-robin in a seeded order."""
    folds = torch.empty_like(labels)
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        folds[idx] = torch.arange(len(idx)) % k
    return folds


def _choose_tau(
    p: torch.Tensor,
    pred_d: torch.Tensor,
    pred_l: torch.Tensor,
    y: torch.Tensor,
    settings: ASMSettings,
    num_classes: int,
) -> tuple[float, float]:
    """(τ, its val overall accuracy): NCM's prediction where p > τ, the linear head's elsewhere."""
    taus = grid(settings.tau_min, settings.tau_max, settings.tau_step)
    accs = [balanced_accuracy(torch.where(p > tau, pred_d, pred_l), y, num_classes) for tau in taus]
    best = int(np.argmax(accs))
    return taus[best], accs[best]


@register_method(
    "asm",
    ASMSettings,
    summary="switch to NCM where σ(s) > τ; epoch by F1, τ on val",
    fits_on_train=True,
)
def fit_asm(
    train: SplitArrays, val: SplitArrays, ctx: FitContext, settings: ASMSettings
) -> FnFitted:
    """Fit the switch (on train, or cross-fitted on val: ``settings.fit_on``); epoch by val F1,
    τ by val overall accuracy."""
    k = min(settings.top_k, ctx.num_classes)
    memory = build_memory(train, ctx, settings.memory)

    def prepare(s: SplitArrays) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z_l, z_d = branches(s, memory, settings.metric)
        return z_l, z_d, asm_inputs(z_l, k), normalize(tensor(s.features))

    zl_va, zd_va, top_va, h_va = prepare(val)
    y_va = torch.as_tensor(val.labels, dtype=torch.long)
    t_va = asm_target(zl_va, zd_va, y_va)
    pred_l, pred_d = zl_va.argmax(1), zd_va.argmax(1)
    if settings.fit_on == "train":
        zl_tr, zd_tr, top_tr, h_tr = prepare(train)
        t_tr = asm_target(zl_tr, zd_tr, torch.as_tensor(train.labels, dtype=torch.long))
        mu, sd = _standardizer(top_tr, settings)
        net, choice = _fit_switch(
            (top_tr - mu) / sd,
            h_tr,
            t_tr,
            settings,
            lambda n: binary_f1(n.score((top_va - mu) / sd, h_va) > 0, t_va),
        )
        with torch.no_grad():
            p_va = torch.sigmoid(net.score((top_va - mu) / sd, h_va))
        epoch, f1, history, positive = choice.epoch, choice.score, choice.history, t_tr.mean()
    else:
        mu, sd = _standardizer(top_va, settings)
        x_va = (top_va - mu) / sd
        gen = torch.Generator().manual_seed(settings.seed)
        folds = _stratified_folds(y_va, settings.folds, gen)
        # oof[e, i]: the score of val image i after e epochs of a switch that never saw its fold
        oof = torch.zeros(settings.epochs + 1, len(y_va))
        for f in range(settings.folds):
            out, inn = folds == f, folds != f
            epoch_scores: list[torch.Tensor] = []

            def record(n: ASMNet, out: torch.Tensor = out, acc: list = epoch_scores) -> float:
                acc.append(n.score(x_va[out], h_va[out]))
                return float(len(acc))  # rising: leaves the last epoch's weights (unused)

            _fit_switch(x_va[inn], h_va[inn], t_va[inn], settings, record)
            oof[:, out] = torch.stack(epoch_scores)
        f1s = [binary_f1(oof[e] > 0, t_va) for e in range(1, settings.epochs + 1)] or [0.0]
        epoch = int(np.argmax(f1s)) + 1 if settings.epochs else 0
        f1, history = f1s[epoch - 1] if epoch else 0.0, f1s
        p_va = torch.sigmoid(oof[epoch])
        ticks = itertools.count()
        net, _ = _fit_switch(
            x_va,
            h_va,
            t_va,
            settings.model_copy(update={"epochs": epoch}),
            lambda n: float(next(ticks)),  # a rising score: the last epoch is kept
        )
        positive = t_va.mean()
    tau, val_score = _choose_tau(p_va, pred_d, pred_l, y_va, settings, ctx.num_classes)
    final = ASMNet(*(x.detach().clone() for x in net.tensors()))

    def fn(s: SplitArrays) -> Scores:
        with torch.no_grad():
            z_l, z_d, top, h = prepare(s)
            switch = torch.sigmoid(final.score((top - mu) / sd, h)) > tau
            return Scores(torch.where(switch[:, None], z_d, z_l).numpy())

    return FnFitted(
        fn,
        chosen={
            "fit_on": settings.fit_on,
            "epoch": epoch,
            "val_f1": f1,
            "tau": tau,
            "val_score": val_score,
            "fit_positive_rate": float(positive),
            "val_positive_rate": float(t_va.mean()),
            "val_f1_history": [round(v, 6) for v in history],
        },
    )


def _standardizer(top: torch.Tensor, settings: ASMSettings) -> tuple[torch.Tensor, torch.Tensor]:
    k = top.shape[1]
    if not settings.standardize:
        return torch.zeros(k), torch.ones(k)
    return top.mean(0), top.std(0).clamp_min(1e-6)


def _fit_switch(
    top: torch.Tensor,
    h: torch.Tensor,
    target: torch.Tensor,
    settings: ASMSettings,
    score: Callable[[ASMNet], float],
) -> tuple[ASMNet, EpochChoice]:
    """SGD on the balanced BCE from a seeded init; ``score(net)`` after each epoch picks the one
    kept (epoch 0, the init, is never kept unless there are no epochs)."""
    net = ASMNet.init(h.shape[1], top.shape[1], torch.Generator().manual_seed(settings.seed))

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return _balanced_bce(net.score(top[idx], h[idx]), target[idx])

    choice = train_and_select(
        net.tensors(),
        batch_loss,
        lambda g: torch.randperm(len(target), generator=g),
        lambda: score(net),
        **settings.sgd(),
        seed=settings.seed + 1,
        include_init=False,
    )
    return net, choice
