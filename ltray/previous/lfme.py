"""LFME (Xiang et al., "Learning From Multiple Experts", 2020): experts per shot group, one student.

Two training methods (their rules: :mod:`ltray.previous.methods`):

- ``train.method=lfme_expert`` with ``lfme.subset=many|medium|few``: an ordinary run trained on
  the train images of that shot group's classes only (the "cardinality-adjacent subset"). Its
  classifier has one row per subset class; outside the subset its logits are a constant
  ``ABSENT_LOGIT``, so the standard evaluation reports the expert's subset accuracy and 0
  elsewhere.
- ``train.method=lfme`` with ``lfme.experts=[RUN_DIR, ...]``: the student, a stage-1 network
  trained with CE plus the experts' knowledge distillation, under two schedules:

  * self-paced expert selection: at each epoch start the student's val accuracy A_S^k on subset
    k (classification among the subset's classes, as the expert does) is compared with the
    expert's A_E^k; the KD weight is w_k = 1 while A_S^k ≤ α·A_E^k, then decays linearly to 0 at
    A_S^k = A_E^k (:func:`self_paced_weight`);
  * curriculum instance selection: expert k distills only on its subset's instances whose expert
    confidence p_k(y|x) is among the easiest fraction q(e) of that subset's train images, q
    growing linearly from ``lfme.curriculum_start`` to 1 over ``lfme.curriculum_epochs``
    (:func:`curriculum_fraction`, :func:`confidence_threshold`).

  L = CE(z, y) + λ · Σ_k w_k · (1/B) Σ_{i ∈ subset k, selected} T² · KL(p_k(·|x_i) ‖ p_S(·|x_i)),
  both distributions taken over subset k's classes at temperature T.

- `ltray reproduce --methods lfme` trains the experts (one per non-empty shot group) and then
  the student, each a normal run directory (:mod:`ltray.reproduce.plan`).

The experts are frozen (``requires_grad=False``, eval mode) and held by the method, not the
network: they are not in the student's checkpoints, DDP never sees them, and the loop's
``net.train()`` cannot put their BatchNorm back into training mode. Every Ray Train worker loads
them and computes the same weights and thresholds (the val pass is deterministic), so no
collective is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltray.config import Config
from ltray.data import LTData, make_loader
from ltray.errors import ConfigError, DataError
from ltray.losses import LOSSES
from ltray.metrics import GROUP_NAMES
from ltray.models import LTNet, build_backbone, build_network
from ltray.previous.runs import (
    build_device,
    check_same_split,
    group_classes,
    load_run,
    restrict_train_classes,
)
from ltray.train.step import StepContext, StepResult

__all__ = [
    "ABSENT_LOGIT",
    "self_paced_weight",
    "curriculum_fraction",
    "confidence_threshold",
    "kd_per_sample",
    "SubsetLinear",
    "build_expert_net",
    "subset_id",
    "build_expert",
    "expert_data",
    "expert_loss",
    "Student",
]

ABSENT_LOGIT = -1.0e4  # an expert's logit for a class outside its subset (finite, fp16-safe)


# ----------------------------------------------------------------------------- pure math


def self_paced_weight(student_acc: Tensor, expert_acc: Tensor, *, alpha: float) -> Tensor:
    """Per-expert KD weight from val accuracies [K] → [K] in [0, 1].

    w = 1 if A_S ≤ α·A_E, else max(0, 1 − (A_S − α·A_E) / ((1 − α)·A_E)); an expert with
    A_E ≤ 0 has nothing to teach (w = 0). With α = 1 the weight is a step at A_S = A_E.
    """
    s, e = student_acc.double(), expert_acc.double()
    start = alpha * e
    span = ((1.0 - alpha) * e).clamp_min(1e-12)
    w = (1.0 - (s - start) / span).clamp(0.0, 1.0)
    w = torch.where(s <= start, torch.ones_like(w), w)
    return torch.where(e > 0, w, torch.zeros_like(w)).float()


def curriculum_fraction(epoch: float, *, start: float, epochs: int) -> float:
    """q(e) = min(1, start + (1 − start) · e / epochs): the fraction of easiest instances used."""
    if epochs <= 0:
        return 1.0
    return float(min(1.0, start + (1.0 - start) * max(epoch, 0.0) / epochs))


def confidence_threshold(confidences: Tensor, fraction: float) -> float:
    """The confidence τ such that the ``ceil(fraction · N)`` most confident of ``confidences``
    [N] satisfy conf ≥ τ (+inf when that count is 0: nothing selected)."""
    n = confidences.numel()
    k = math.ceil(fraction * n - 1e-9)
    if k <= 0 or n == 0:
        return math.inf
    return float(torch.sort(confidences.flatten(), descending=True).values[min(k, n) - 1])


def kd_per_sample(student: Tensor, teacher: Tensor, *, temperature: float) -> Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)) per row: student, teacher [B, K] → [B] (float32)."""
    t = temperature
    log_p_s = F.log_softmax(student.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher.float() / t, dim=1)
    return (t * t) * (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)


# ------------------------------------------------------------------------------ experts


class SubsetLinear(nn.Module):
    """A dot-product head over K subset classes, seen as a C-class head.

    ``weight`` [C, d] (zero rows outside the subset) and ``bias`` [C] (``ABSENT_LOGIT`` outside)
    reproduce the logits, so the loop's cache writer reads it like any ``nn.Linear``.

    Args:
        dim: d.
        num_classes: C.
        classes: [K] the subset's class ids.
    """

    classes: Tensor

    def __init__(self, dim: int, num_classes: int, classes: Tensor) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.inner = nn.Linear(dim, len(classes))
        self.register_buffer("classes", classes.long().clone())

    @property
    def weight(self) -> Tensor:
        w = self.inner.weight
        return w.new_zeros(self.num_classes, w.shape[1]).index_copy(0, self.classes, w)

    @property
    def bias(self) -> Tensor:
        b = self.inner.bias
        return b.new_full((self.num_classes,), ABSENT_LOGIT).index_copy(0, self.classes, b)

    def forward(self, h: Tensor) -> Tensor:
        """[B, d] → [B, C]."""
        z = self.inner(h)
        out = z.new_full((h.shape[0], self.num_classes), ABSENT_LOGIT)
        return out.index_copy(1, self.classes, z)


def build_expert_net(
    cfg: Config, *, num_classes: int, in_channels: int, small_input: bool, classes: Tensor
) -> LTNet:
    """The expert network: backbone + :class:`SubsetLinear` (+ memory), no KT head."""
    backbone = build_backbone(cfg.model.backbone, in_channels=in_channels, small_input=small_input)

    def subset_head(dim: int) -> SubsetLinear:
        head = SubsetLinear(dim, num_classes, classes)
        backbone.init_head(head.inner)
        return head

    return build_network(
        cfg,
        num_classes=num_classes,
        in_channels=in_channels,
        small_input=small_input,
        kt_head=False,
        memory=cfg.memory.enabled,
        linear=subset_head,
        backbone=backbone,
    )


def subset_id(name: str | None, *, key: str) -> int:
    """The shot group (0 many, 1 medium, 2 few) an expert trains on."""
    if name not in GROUP_NAMES:
        raise ConfigError(
            f"{key}: train.method=lfme_expert needs the shot group it trains on; set "
            f"lfme.subset to one of {', '.join(GROUP_NAMES)}"
        )
    return GROUP_NAMES.index(name)


def build_expert(
    cfg: Config, *, num_classes: int, in_channels: int, small_input: bool, groups: Any
) -> LTNet:
    """The expert of ``lfme.subset``: its subset's classes from the split's shot ``groups``."""
    gid = subset_id(cfg.lfme.subset, key="lfme.subset")
    classes = group_classes(groups, gid)
    if len(classes) == 0:
        raise DataError(
            f"lfme.subset={cfg.lfme.subset}: this split has no {cfg.lfme.subset}-shot class; "
            "train experts only for the groups the split has"
        )
    return build_expert_net(
        cfg,
        num_classes=num_classes,
        in_channels=in_channels,
        small_input=small_input,
        classes=classes,
    )


def expert_data(data: Any, cfg: Config) -> Any:
    """Keep the train images of the expert's shot group only (val/test stay whole)."""
    classes = group_classes(data.groups, subset_id(cfg.lfme.subset, key="lfme.subset"))
    if len(classes):
        restrict_train_classes(data, classes)
    return data


def expert_loss(net: LTNet, fwd: nn.Module, x: Tensor, y: Tensor, sc: StepContext) -> StepResult:
    """CE among the subset's classes (labels mapped to the subset's local ids)."""
    out = fwd(x)
    head = net.linear
    assert isinstance(head, SubsetLinear)
    local = torch.searchsorted(head.classes, y)
    z = out.logits.index_select(1, head.classes)
    counts = sc.class_counts.index_select(0, head.classes)
    cls_fn = LOSSES.get(sc.cfg.loss.name, key="loss.name")
    loss = cls_fn(z, local, class_counts=counts)
    return StepResult(loss, out, y, {"loss_cls": float(loss.detach())})


# ------------------------------------------------------------------------------ student


@dataclass
class Expert:
    """A loaded, frozen expert: its subset id, classes [K], net, val accuracy and the sorted
    confidences p(y|x) [N_k] of its subset's train images (eval transforms)."""

    group: int
    classes: Tensor
    net: LTNet
    val_acc: float
    confidences: Tensor


@torch.no_grad()
def _subset_pass(
    net: LTNet, loader: Any, classes: Tensor, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(confidence of the true class [N_k], correct [N_k]) of ``net``'s subset logits over the
    images of ``classes`` in ``loader``."""
    was = net.training
    net.eval()
    conf, correct = [], []
    cls = classes.to(device)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        m = torch.isin(y, cls)
        if not bool(m.any()):
            continue
        z = net(x[m]).logits.float().index_select(1, cls)
        local = torch.searchsorted(cls, y[m])
        p = torch.softmax(z, dim=1)
        conf.append(p.gather(1, local[:, None]).squeeze(1).cpu())
        correct.append((z.argmax(1) == local).cpu())
    net.train(was)
    if not conf:
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat(conf), torch.cat(correct)


def load_expert(
    run_dir: str, cfg: Config, data: LTData, *, in_channels: int, small_input: bool
) -> tuple[LTNet, int, Tensor]:
    """Load an ``lfme_expert`` run as a frozen net in eval mode; returns (net, group, classes)."""
    key = f"lfme.experts ({run_dir})"
    prev = load_run(Path(run_dir), key=key, methods=("lfme_expert",))
    check_same_split(cfg, prev.cfg, key=key)
    gid = subset_id(prev.cfg.lfme.subset, key=key)
    classes = group_classes(data.groups, gid)
    net = build_expert_net(
        prev.cfg,
        num_classes=data.num_classes,
        in_channels=in_channels,
        small_input=small_input,
        classes=classes,
    )
    try:
        net.load_state_dict(prev.state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(
            f"{key}: the checkpoint does not fit its own config ({str(exc).splitlines()[0]})"
        ) from None
    net.requires_grad_(False)
    return net.eval(), gid, classes


class Student:
    """The student's training state (see the module docstring): the frozen experts, their val
    accuracies and train confidences, and the self-paced weights of the current epoch. Held by
    :class:`ltray.previous.methods.StudentMethod`."""

    def __init__(self) -> None:
        self.experts: list[Expert] = []
        self._val_loader: Any = None
        self._epoch = -1
        self._weights: list[float] = []

    def build(
        self, cfg: Config, *, num_classes: int, in_channels: int, small_input: bool, data: Any
    ) -> LTNet:
        if not cfg.lfme.experts:
            raise ConfigError(
                "lfme.experts: train.method=lfme needs the expert run dirs; train them with "
                "`ltray train train.method=lfme_expert lfme.subset=many ...` (one per shot "
                "group), or let `ltray reproduce --methods lfme` train all of them"
            )
        device = build_device(cfg)
        train_loader = make_loader(
            data, "train", batch_size=cfg.data.eval_batch_size, augment=False, shuffle=False
        )
        self._val_loader = make_loader(
            data, "val", batch_size=cfg.data.eval_batch_size, augment=False
        )
        seen: dict[int, str] = {}
        for run_dir in cfg.lfme.experts:
            net, gid, classes = load_expert(
                run_dir, cfg, data, in_channels=in_channels, small_input=small_input
            )
            if gid in seen:
                raise ConfigError(
                    f"lfme.experts: {seen[gid]} and {run_dir} are both {GROUP_NAMES[gid]}-shot "
                    "experts; give one expert per shot group"
                )
            seen[gid] = run_dir
            net.to(device)
            conf, _ = _subset_pass(net, train_loader, classes, device)
            _, correct = _subset_pass(net, self._val_loader, classes, device)
            val_acc = float(correct.float().mean()) if len(correct) else 0.0
            self.experts.append(
                Expert(gid, classes, net, val_acc, torch.sort(conf, descending=True).values)
            )
        return build_network(
            cfg,
            num_classes=num_classes,
            in_channels=in_channels,
            small_input=small_input,
            kt_head=False,
            memory=cfg.memory.enabled,
        )

    def _epoch_start(self, net: LTNet, sc: StepContext, device: torch.device) -> None:
        """Self-paced expert selection: the student's val accuracy per expert subset → w_k."""
        accs = []
        for e in self.experts:
            _, correct = _subset_pass(net, self._val_loader, e.classes, device)
            accs.append(float(correct.float().mean()) if len(correct) else 0.0)
        student = torch.tensor(accs)
        expert = torch.tensor([e.val_acc for e in self.experts])
        w = self_paced_weight(student, expert, alpha=sc.cfg.lfme.selection_alpha)
        self._weights = [float(v) for v in w]
        self._epoch = sc.epoch

    def loss(self, net: LTNet, fwd: nn.Module, x: Tensor, y: Tensor, sc: StepContext) -> StepResult:
        cfg = sc.cfg
        lf = cfg.lfme
        if sc.epoch != self._epoch:
            for e in self.experts:
                e.net.to(x.device)
            self._epoch_start(net, sc, x.device)
        out = fwd(x)
        cls_fn = LOSSES.get(cfg.loss.name, key="loss.name")
        loss_cls = cls_fn(out.logits, y, class_counts=sc.class_counts)
        q = curriculum_fraction(
            sc.epoch, start=lf.curriculum_start, epochs=lf.curriculum_epochs or cfg.train.epochs
        )
        parts = {"loss_cls": float(loss_cls.detach()), "curriculum_q": q}
        kd_total = out.logits.new_zeros((), dtype=torch.float32)
        for e, w in zip(self.experts, self._weights, strict=True):
            name = GROUP_NAMES[e.group]
            parts[f"w_{name}"] = w
            cls = e.classes.to(y.device)
            m = torch.isin(y, cls)
            if w == 0.0 or not bool(m.any()):
                parts[f"loss_kd_{name}"] = 0.0
                continue
            with torch.no_grad():
                t = e.net(x[m]).logits.float().index_select(1, cls)
                local = torch.searchsorted(cls, y[m])
                conf = torch.softmax(t, dim=1).gather(1, local[:, None]).squeeze(1)
                selected = conf >= confidence_threshold(e.confidences, q)
            s = out.logits[m].index_select(1, cls)
            kd = (kd_per_sample(s, t, temperature=lf.temperature) * selected).sum() / len(y)
            parts[f"loss_kd_{name}"] = float(kd.detach())
            kd_total = kd_total + w * kd
        loss = loss_cls + lf.kd_weight * kd_total
        return StepResult(loss, out, y, parts)
