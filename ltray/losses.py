"""Stage-1 losses: the classification losses (:data:`LOSSES`) and the KT branch
(docs/methods.md#kt).

Every loss takes a keyword ``reduction``: ``"mean"`` (default, a scalar), ``"sum"``, or
``"none"`` (one value per sample, [B]). The per-sample path is what mixup needs: it evaluates a
loss against both label sets and blends per sample (see :func:`ltray.mixup.mixed_loss`).

    loss_fn = LOSSES.get(cfg.loss.name, key="loss.name")
    l1 = loss_fn(out.logits, y, class_counts=counts)
    l2 = kt_branch_loss(out.kt_logits, d_scale(out.logits, z_d), y, phi=0.8, temperature=1.0)
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ltray.registry import Registry

__all__ = [
    "Reduction",
    "reduce_loss",
    "ClassificationLoss",
    "LOSSES",
    "cross_entropy",
    "balanced_softmax",
    "kt_branch_loss",
]

Reduction = Literal["mean", "sum", "none"]


class ClassificationLoss(Protocol):
    """``fn(logits [B, C], y [B], *, class_counts [C], reduction) -> scalar or [B]``."""

    def __call__(
        self, logits: Tensor, y: Tensor, *, class_counts: Tensor, reduction: Reduction = "mean"
    ) -> Tensor: ...


LOSSES: Registry[ClassificationLoss] = Registry("loss")


def reduce_loss(per_sample: Tensor, reduction: Reduction) -> Tensor:
    """[B] per-sample losses reduced as ``reduction`` says (``none`` keeps them)."""
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


@LOSSES.register("ce")
def cross_entropy(
    logits: Tensor, y: Tensor, *, class_counts: Tensor, reduction: Reduction = "mean"
) -> Tensor:
    """Softmax cross-entropy. ``class_counts`` [C] is accepted for a uniform signature, unused.

    Computed in float32: under autocast, half-precision log-softmax loses the small
    probabilities of tail classes.
    """
    del class_counts
    return reduce_loss(F.cross_entropy(logits.float(), y, reduction="none"), reduction)


@LOSSES.register("balanced_softmax")
def balanced_softmax(
    logits: Tensor, y: Tensor, *, class_counts: Tensor, reduction: Reduction = "mean"
) -> Tensor:
    """Balanced Softmax (Ren et al. 2020): cross-entropy on ``logits + log π``, π_c ∝ n_c.

    Args:
        logits: [B, C].
        y: [B].
        class_counts: [C] training images per class. A class with no image is counted as one so
            that its adjusted logit stays finite (log 0 = −inf would make the loss inf if that
            label ever occurred).
        reduction: ``mean`` | ``sum`` | ``none``.
    """
    counts = class_counts.to(device=logits.device, dtype=torch.float32).clamp_min(1.0)
    log_prior = counts.log() - counts.sum().log()
    adjusted = logits.float() + log_prior.unsqueeze(0)
    return reduce_loss(F.cross_entropy(adjusted, y, reduction="none"), reduction)


def kt_branch_loss(
    z_s: Tensor,
    z_teacher: Tensor | None,
    y: Tensor,
    *,
    phi: float,
    temperature: float,
    mask: str = "correct",
    reduction: Reduction = "mean",
) -> Tensor:
    """Second-branch (knowledge-transfer) loss L₂ of docs/methods.md#kt.

    With the teacher-correct mask m_i = [argmax z̃_d,i = y_i] the per-sample loss is

        ℓ_i = (1 − φ)·CE(z_s,i, y_i) + φ·T²·KL(p_T,i ‖ p_S,i)   if m_i
        ℓ_i = CE(z_s,i, y_i)                                     otherwise

    with p_T = softmax(z̃_d/T) (detached), p_S = softmax(z_s/T), KL = Σ_c p_T (log p_T − log p_S).

    Normalisation ("batch-mean"): ``reduction="mean"`` returns (1/B)·Σ_i ℓ_i, i.e. each of the
    three terms is summed over its own samples and divided by the whole batch size B — not by
    the size of its side of the mask. So a side with no samples contributes exactly 0, and the
    loss is a plain per-sample mean, which mixup can blend sample by sample.

    Args:
        z_s: [B, C] KT-head logits.
        z_teacher: [B, C] d-scaled NCM logits z̃_d (detached here); −inf entries (classes masked
            out of the memory) get probability 0 and add nothing to the KL. None means "no memory
            yet": L₂ is plain CE(z_s, y).
        y: [B] labels.
        phi: φ ∈ [0, 1], the weight of the distillation term on teacher-correct samples.
        temperature: T > 0.
        mask: ``correct`` (the dynamic mask above) or ``all`` (m_i = 1 wherever the memory
            has a teacher: every sample is distilled, right or wrong).
        reduction: ``mean`` | ``sum`` | ``none`` ([B] per-sample ℓ_i).
    """
    z_s = z_s.float()
    ce = F.cross_entropy(z_s, y, reduction="none")
    if z_teacher is None:
        return reduce_loss(ce, reduction)
    if z_teacher.shape != z_s.shape:
        raise ValueError(
            f"z_teacher must have the shape of z_s {tuple(z_s.shape)}, got {tuple(z_teacher.shape)}"
        )
    zt = z_teacher.detach().float()
    # A row with no finite teacher logit has no teacher at all: leave it out of the mask and give
    # it a finite stand-in so its (unused) softmax is not NaN, which would poison the backward.
    has_teacher = torch.isfinite(zt).any(dim=1)
    zt = torch.where(has_teacher.unsqueeze(1), zt, 0.0)
    if mask not in ("correct", "all"):
        raise ValueError(f"mask must be 'correct' or 'all', got {mask!r}")
    m = has_teacher & (zt.argmax(dim=1) == y) if mask == "correct" else has_teacher

    p_t = torch.softmax(zt / temperature, dim=1)  # exactly 0 where z̃_d = −inf
    log_p_s = torch.log_softmax(z_s / temperature, dim=1)
    # xlogy(0, 0) = 0, so masked classes never form 0·(−inf).
    kl = (torch.special.xlogy(p_t, p_t) - p_t * log_p_s).sum(dim=1)

    distilled = (1.0 - phi) * ce + phi * temperature**2 * kl
    per_sample = torch.where(m, distilled, ce)
    return reduce_loss(per_sample, reduction)
