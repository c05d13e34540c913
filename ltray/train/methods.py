"""Training methods: what one optimiser step computes, registered by ``train.method``.

The loop (:mod:`ltray.train.loop`) owns data, optimiser, schedule, memory updates, evaluation,
checkpoints and reporting; a :class:`TrainMethod` owns the network it trains and the loss of one
batch. Built in:

- ``kt`` (default): CE (or balanced softmax) on the linear head + the KT branch distilled from
  the d-scaled NCM teacher (docs/methods.md#kt), every term mixed when mixup is on
  (docs/methods.md#mixup).
- ``ce``: the same network without the KT head: the plain baseline (the memory is still kept,
  so both NCM heads are evaluated).

A method implements :class:`TrainMethod`; inheriting :class:`MethodDefaults` supplies the
optional hooks' default behaviour. The previous works (OLTR, LFME) add themselves to
:data:`TRAIN_METHODS` from :mod:`ltray.previous`, which imports this module, never the other way
round; :func:`ltray.train.catalog.get_method` imports both and resolves ``train.method``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from ltray.config import Config
from ltray.losses import LOSSES, kt_branch_loss
from ltray.metrics import GROUP_NAMES
from ltray.mixup import MixPlan, apply_mix, dominant_labels, mixed_loss, sample_mixup
from ltray.models import LTNet, NetOutput, build_network, d_scale
from ltray.registry import Registry

if TYPE_CHECKING:
    from ltray.data import LTData

__all__ = [
    "StepContext",
    "StepResult",
    "TrainMethod",
    "MethodDefaults",
    "TRAIN_METHODS",
    "TrainForward",
    "StandardMethod",
]


@dataclass
class StepContext:
    """What a loss may use besides the batch: config, train class counts [C] (float), shot
    groups [C], the epoch and a seeded generator for mixup."""

    cfg: Config
    class_counts: torch.Tensor
    groups: torch.Tensor
    epoch: int
    generator: torch.Generator


@dataclass
class StepResult:
    """One step's loss and what the loop records of it.

    ``parts``: per-sample means (averaged over the epoch weighted by batch size);
    ``tallies``: (hits, total) pairs summed over the epoch and reported as hits / total, e.g.
    the KT mask rate of one shot group. Values may be floats or 0-d tensors; tensors stay on
    the device until the epoch ends (no host sync per step on a GPU).
    """

    loss: torch.Tensor
    out: NetOutput
    memory_labels: torch.Tensor  # labels for the memory's EMA update ([B])
    parts: dict[str, Any] = field(default_factory=dict)
    tallies: dict[str, tuple[Any, Any]] = field(default_factory=dict)


class TrainMethod(Protocol):
    """A training method, as the loop (:func:`ltray.train.loop.run_training`) calls it.

    Per run, in this order: ``prepare_data`` → ``build`` → ``param_groups`` → ``sampler`` →
    ``wrap``; then ``loss`` once per batch. ``build``, ``wrap`` and ``loss`` are the method
    itself; ``prepare_data``, ``param_groups`` and ``sampler`` are hooks whose default
    behaviour :class:`MethodDefaults` provides, so a method overrides only what it changes.
    """

    def build(
        self, cfg: Config, *, num_classes: int, in_channels: int, small_input: bool, data: Any
    ) -> LTNet:
        """The network: an :class:`LTNet` or a subclass with the same attributes (``backbone``,
        ``linear``, ``kt_head``, ``memory``; ``forward`` → :class:`NetOutput`)."""
        ...

    def wrap(self, net: LTNet, cfg: Config) -> nn.Module:
        """The module DDP wraps: its ``forward(x, plan)`` must cover every trained parameter."""
        ...

    def loss(
        self, net: LTNet, fwd: nn.Module, x: torch.Tensor, y: torch.Tensor, sc: StepContext
    ) -> StepResult:
        """One batch's loss (x [B, ...], y [B]) and what the loop records of it."""
        ...

    def prepare_data(self, data: LTData, cfg: Config) -> LTData:
        """Called before ``build``; may narrow the data (an LFME expert keeps one shot group's
        train images). Default: ``data`` unchanged."""
        ...

    def param_groups(self, net: LTNet, cfg: Config) -> list[dict[str, Any]]:
        """SGD parameter groups; a group's ``"lr_scale"`` multiplies the scheduled lr (OLTR:
        a slower stage-1 backbone). Default: one group of every parameter that requires grad."""
        ...

    def sampler(self, cfg: Config) -> str:
        """The train sampler's registered name. Default: ``data.sampler``; a method may
        prescribe its own (OLTR: class-aware sampling)."""
        ...


class MethodDefaults:
    """The default behaviour of :class:`TrainMethod`'s hooks; methods inherit it."""

    def prepare_data(self, data: LTData, cfg: Config) -> LTData:
        return data

    def param_groups(self, net: LTNet, cfg: Config) -> list[dict[str, Any]]:
        return [{"params": [p for p in net.parameters() if p.requires_grad]}]

    def sampler(self, cfg: Config) -> str:
        return cfg.data.sampler


TRAIN_METHODS: Registry[Callable[[], TrainMethod]] = Registry("training method")


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


class StandardMethod(MethodDefaults):
    """``kt`` and ``ce``: linear head by CE/balanced softmax, optional KT branch, mixup."""

    def __init__(self, *, kt: bool) -> None:
        self.kt = kt

    def build(
        self, cfg: Config, *, num_classes: int, in_channels: int, small_input: bool, data: Any
    ) -> LTNet:
        if not self.kt and cfg.kt.enabled:
            cfg = cfg.model_copy(update={"kt": cfg.kt.model_copy(update={"enabled": False})})
        return build_network(
            cfg, num_classes=num_classes, in_channels=in_channels, small_input=small_input
        )

    def wrap(self, net: LTNet, cfg: Config) -> nn.Module:
        return TrainForward(net, detach_kt=cfg.kt.detach_feature)

    def loss(
        self, net: LTNet, fwd: nn.Module, x: torch.Tensor, y: torch.Tensor, sc: StepContext
    ) -> StepResult:
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
                tallies = _teacher_tallies(teacher, y, sc.groups)
            weight = _class_balance(sc.class_counts) if cfg.kt.class_balance else None

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


def _class_balance(class_counts: torch.Tensor) -> torch.Tensor:
    """[C] weights N/(C·n_c): mean 1 under instance sampling, every class's total equal."""
    counts = class_counts.float().clamp_min(1.0)
    return counts.sum() / (len(counts) * counts)


def _teacher_tallies(
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


TRAIN_METHODS.register("kt")(lambda: StandardMethod(kt=True))
TRAIN_METHODS.register("ce")(lambda: StandardMethod(kt=False))
