"""Mixup for the stage-1 study (docs/methods.md#mixup): input, manifold, tail-only and head-only.

A :class:`MixPlan` is drawn once per minibatch and applied to whatever is mixed (images for
``input``/``tail``/``head``, features for ``manifold``); every loss term is then blended the
same way through its per-sample (``reduction="none"``) path:

    plan = sample_mixup(y, variant="input", alpha=0.1, groups=groups, generator=g)
    out = net(apply_mix(x, plan))
    ce = mixed_loss(lambda t: loss_fn(out.logits, t, class_counts=n, reduction="none"), y, plan)
    kt = mixed_loss(
        lambda t: kt_branch_loss(out.kt_logits, z_t, t, phi=0.8, temperature=1.0,
                                 reduction="none"), y, plan)
    memory.step(out.features, dominant_labels(y, plan))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ltray.losses import Reduction, reduce_loss

__all__ = [
    "Variant",
    "FEW",
    "MixPlan",
    "sample_mixup",
    "apply_mix",
    "mixed_loss",
    "dominant_labels",
]

Variant = Literal["input", "manifold", "tail", "head"]

# Shot-group id of few-shot classes (0 many, 1 medium, 2 few: ltray.metrics.shot_groups).
FEW = 2


@dataclass
class MixPlan:
    """One minibatch's mixing decision.

    Attributes:
        lam: λ ∈ [0, 1], the weight of the sample itself (label y_a = y).
        perm: [B] partner index of each sample (label y_b = y[perm]).
        mix: [B] bool, which samples are mixed (all True for input and manifold mixup).
    """

    lam: float
    perm: Tensor
    mix: Tensor


def sample_mixup(
    labels: Tensor,
    *,
    variant: Variant,
    alpha: float,
    groups: Tensor | None,
    generator: torch.Generator,
    within_group: bool = False,
) -> MixPlan:
    """Draw λ ~ Beta(α, α), a partner permutation and the set of mixed samples.

    Args:
        labels: [B] labels of the batch.
        variant: ``input`` / ``manifold``: every sample is mixed; ``tail``: only samples whose
            label is few-shot; ``head``: only samples whose label is not few-shot.
        alpha: α > 0 of the Beta distribution.
        groups: [C] shot group per class (0 many, 1 medium, 2 few); needed by ``tail``/``head``.
        generator: a CPU ``torch.Generator``; the whole plan is a function of its state.
        within_group: for ``tail``/``head``, draw partners only among the mixed samples, so a
            few-shot image is never blended with a head image. Default False: partners come from
            the whole batch (a mixed sample is one whose own label is in the group).

    Returns:
        A :class:`MixPlan` on the device of ``labels``.
    """
    if alpha <= 0:
        raise ValueError(f"`alpha > 0` must hold, but got alpha={alpha}")
    if variant not in ("input", "manifold", "tail", "head"):
        raise ValueError(f"variant must be one of input, manifold, tail, head, got {variant!r}")
    b = labels.shape[0]
    # torch has no seeded Beta sampler; a numpy generator seeded from `generator` keeps the plan
    # a deterministic function of the torch generator's state.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))

    if variant in ("input", "manifold"):
        mix = torch.ones(b, dtype=torch.bool)
    else:
        if groups is None:
            raise ValueError(f"variant {variant!r} needs `groups` (shot group per class)")
        few = torch.as_tensor(groups).cpu()[labels.cpu().long()] == FEW
        mix = few if variant == "tail" else ~few

    if within_group and variant in ("tail", "head"):
        perm = torch.arange(b)
        idx = mix.nonzero().squeeze(1)
        perm[idx] = idx[torch.randperm(idx.numel(), generator=generator)]
    else:
        perm = torch.randperm(b, generator=generator)
    return MixPlan(lam=lam, perm=perm.to(labels.device), mix=mix.to(labels.device))


def apply_mix(t: Tensor, plan: MixPlan) -> Tensor:
    """λ·t + (1 − λ)·t[perm] on the rows in ``plan.mix``; other rows unchanged.

    Args:
        t: [B, ...] images or features.
    """
    mixed = plan.lam * t + (1.0 - plan.lam) * t[plan.perm]
    mask = plan.mix.view(-1, *([1] * (t.dim() - 1)))
    return torch.where(mask, mixed, t)


def mixed_loss(
    loss_fn: Callable[[Tensor], Tensor],
    y: Tensor,
    plan: MixPlan,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    """Blend a per-sample loss over both label sets: λ·ℓ(y_a) + (1 − λ)·ℓ(y_b) on mixed rows,
    ℓ(y) on the others.

    Args:
        loss_fn: targets [B] -> per-sample losses [B] (a loss called with ``reduction="none"``).
        y: [B] the batch's own labels y_a.
        plan: the batch's :class:`MixPlan`.
        reduction: ``mean`` (over all B samples, mixed or not), ``sum`` or ``none`` ([B]).
    """
    loss_a = loss_fn(y)
    loss_b = loss_fn(y[plan.perm])
    per_sample = torch.where(plan.mix, plan.lam * loss_a + (1.0 - plan.lam) * loss_b, loss_a)
    return reduce_loss(per_sample, reduction)


def dominant_labels(y: Tensor, plan: MixPlan) -> Tensor:
    """[B] label of the larger share of each sample (λ ≥ 0.5 → y_a, else y_b on mixed rows),
    for the memory update."""
    if plan.lam >= 0.5:
        return y
    return torch.where(plan.mix, y[plan.perm], y)
