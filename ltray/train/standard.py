"""The implementation of the built-in ``kt`` and ``ce`` methods (:class:`StandardMethod` in
:mod:`ltray.train.methods` is their light description): the module DDP wraps and one batch's loss.

    L = CE(z_l, y) (or balanced softmax) + φ·L_KT + (1 − φ)·CE(z_s, y)   (docs/methods.md#kt)

every term mixed per sample when mixup is on (docs/methods.md#mixup).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ltray.losses import LOSSES, kt_branch_loss
from ltray.metrics import GROUP_NAMES
from ltray.mixup import MixPlan, apply_mix, dominant_labels, mixed_loss, sample_mixup
from ltray.models import LTNet, NetOutput, d_scale
from ltray.train.step import StepContext, StepResult

__all__ = ["TrainForward", "standard_loss", "class_balance", "teacher_tallies"]


class TrainForward(nn.Module):
    """backbone → (manifold mix) → heads in one ``forward``, so DDP sees the whole graph."""

    def __init__(self, net: LTNet, *, detach_kt: bool) -> None:
        super().__init__()
        self.net = net
        self.detach_kt = detach_kt

    def forward(self, x: torch.Tensor, plan: MixPlan | None = None) -> NetOutput:
        h = self.net.backbone(x)
        if plan is not None:
            h = apply_mix(h, plan)
        return self.net.heads(h, detach_kt=self.detach_kt)


def standard_loss(
    net: LTNet, fwd: nn.Module, x: torch.Tensor, y: torch.Tensor, sc: StepContext
) -> StepResult:
    """One batch of ``kt`` / ``ce``: the linear head's loss, the KT branch where the network has
    a KT head, mixup where configured."""
    cfg = sc.cfg
    plan = None
    if cfg.mixup.variant != "none":
        plan = sample_mixup(
            y,
            variant=cfg.mixup.variant,
            alpha=cfg.mixup.alpha,
            groups=sc.groups,
            generator=sc.generator,
        )
        if cfg.mixup.variant != "manifold":
            x = apply_mix(x, plan)
    out: NetOutput = fwd(x, plan if cfg.mixup.variant == "manifold" else None)
    cls_fn = LOSSES.get(cfg.loss.name, key="loss.name")

    def batch_loss(per_sample: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        # Every loss term is mixed the same way: λ·ℓ(y_a) + (1 − λ)·ℓ(y_b) per mixed sample.
        return per_sample(y).mean() if plan is None else mixed_loss(per_sample, y, plan)

    loss = batch_loss(
        lambda t: cls_fn(out.logits, t, class_counts=sc.class_counts, reduction="none")
    )
    parts: dict[str, Any] = {"loss_cls": loss.detach()}
    tallies: dict[str, tuple[Any, Any]] = {}
    if out.kt_logits is not None:
        kt_logits, memory = out.kt_logits, net.memory
        teacher = None  # before the memory exists the KT head learns by plain CE
        if memory is not None and memory.is_initialized:
            # Teacher: NCM logits from the EMA memory, d-scaled onto the linear range.
            z_d = memory.logits(out.features.detach().float())
            teacher = d_scale(out.logits.detach().float(), z_d)
            tallies = teacher_tallies(teacher, y, sc.groups)
        weight = class_balance(sc.class_counts) if cfg.kt_class_balance else None

        def kt_loss(t: torch.Tensor) -> torch.Tensor:
            per = kt_branch_loss(
                kt_logits,
                teacher,
                t,
                phi=cfg.kt.phi,
                temperature=cfg.kt.temperature,
                mask=cfg.kt.mask,
                reduction="none",
            )
            return per if weight is None else per * weight[t]

        loss_kt = batch_loss(kt_loss)
        parts["loss_kt"] = loss_kt.detach()
        loss = loss + loss_kt
    labels = dominant_labels(y, plan) if plan is not None else y
    return StepResult(loss, out, labels, parts, tallies)


def class_balance(class_counts: torch.Tensor) -> torch.Tensor:
    """[C] weights N/(C·n_c): mean 1 under instance sampling, every class's total equal."""
    counts = class_counts.float().clamp_min(1.0)
    return counts.sum() / (len(counts) * counts)


def teacher_tallies(
    teacher: torch.Tensor, y: torch.Tensor, groups: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Where the NCM teacher is right on this batch, per shot group: the KT mask rate (with
    ``kt.mask=correct`` exactly the samples that are distilled). 0-d tensors, no host sync."""
    right = (teacher.argmax(dim=1) == y).float()
    g = groups.to(y.device)[y]
    out = {}
    for gid, name in enumerate(GROUP_NAMES):
        sel = (g == gid).float()
        out[f"kt_mask_{name}"] = ((right * sel).sum(), sel.sum())
    out["kt_mask_overall"] = (right.sum(), torch.tensor(float(len(y)), device=y.device))
    return out
