"""Evaluation of every head: feature extraction over a split and per-head metrics.

Heads: ``linear`` (dot-product head), ``ncm_ema`` (NCM with the EMA memory), ``ncm_full`` (NCM
with a full-pass memory over the train split, eval transforms), ``kt`` (the KT head).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from ltray.fusion.base import FitContext
from ltray.fusion.cache import SplitArrays
from ltray.metrics import HeadMetrics, evaluate_logits
from ltray.models import LTNet, class_sums, ncm_logits, normalize

__all__ = [
    "HEADS",
    "to_device",
    "inference_backbone",
    "extract",
    "full_pass_sums",
    "head_logits",
    "evaluate_heads",
    "flat_metrics",
    "head_params",
    "EpochArrays",
    "EpochHook",
]

HEADS = ("linear", "ncm_ema", "ncm_full", "kt")

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def to_device(x: torch.Tensor, device: torch.device, *, channels_last: bool) -> torch.Tensor:
    """Images onto ``device`` (asynchronously from pinned memory) in the model's memory format;
    a no-op for batches already made there (:class:`~ltray.data.device.DeviceBatches`)."""
    if channels_last and x.dim() == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


def inference_backbone(backbone: nn.Module) -> nn.Module:
    """``backbone`` as the evaluation passes run it: an eval-mode copy with every BatchNorm
    folded into the convolution that feeds it (W' = W·γ/σ, b' = β − γ·μ/σ with the running
    statistics). The same function up to float rounding, one pass over the activations less per
    BN layer: ResNet-32 on 2 CPU threads evaluates 368 instead of 300 images/s (batch 512). The
    copy is made per pass (the weights change every epoch); ``backbone`` itself is untouched.
    """
    model = copy.deepcopy(backbone).eval()
    try:
        return fuse(model, inplace=True)
    except Exception:  # noqa: BLE001 - FX cannot trace it (e.g. data-dependent control flow):
        return model  # the unfolded eval copy computes the same features


# Folding costs a copy and an FX trace of the backbone (0.13 s for ResNet-32 on the slower
# 2-core machine) and saves about a fifth of each batch's forward: it pays from a few batches
# on. A small split (digits-LT's val: one batch) runs the network as it is; a split gets the
# same choice every time, so a pass and its repetition give the same numbers.
FOLD_MIN_BATCHES = 4


def _pass_backbone(backbone: nn.Module, loader: Batches) -> nn.Module:
    """The backbone one pass over ``loader`` runs: folded when the pass is long enough."""
    try:
        fold = len(loader) >= FOLD_MIN_BATCHES  # type: ignore[arg-type]
    except TypeError:  # an iterable of unknown length: fold
        fold = True
    return inference_backbone(backbone) if fold else backbone


@torch.inference_mode()
def extract(
    net: LTNet, loader: Batches, device: torch.device, *, channels_last: bool = True
) -> SplitArrays:
    """Run ``net`` in eval mode over ``loader``: features [N, d], logits [N, C], labels [N]."""
    was_training = net.training
    net.eval()
    # The plain network's forward is backbone then heads: run the pass's backbone in its place.
    backbone = _pass_backbone(net.backbone, loader) if type(net).forward is LTNet.forward else None
    feats, logits, kt, labels = [], [], [], []
    for x, y in loader:
        x = to_device(x, device, channels_last=channels_last)
        out = net(x) if backbone is None else net.heads(backbone(x))
        feats.append(out.features.float())
        logits.append(out.logits.float())
        if out.kt_logits is not None:
            kt.append(out.kt_logits.float())
        labels.append(torch.as_tensor(y))
    net.train(was_training)

    def host(parts: list[torch.Tensor]) -> np.ndarray:
        return torch.cat(parts).cpu().numpy()  # one device-to-host copy per array

    return SplitArrays(
        features=host(feats),
        logits=host(logits),
        labels=host(labels).astype(np.int64),
        kt_logits=host(kt) if kt else None,
    )


@torch.no_grad()  # not inference_mode: the sums are all-reduced in place afterwards
def full_pass_sums(
    net: LTNet,
    loader: Batches,
    device: torch.device,
    num_classes: int,
    *,
    channels_last: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums [C, d] and counts [C] of normalised features over ``loader`` (eval mode)."""
    was_training = net.training
    net.eval()
    sums: torch.Tensor | None = None
    counts = torch.zeros(num_classes, device=device)
    backbone = _pass_backbone(net.backbone, loader)
    for x, y in loader:
        h = backbone(to_device(x, device, channels_last=channels_last)).float()
        s, c = class_sums(normalize(h), torch.as_tensor(y, device=device), num_classes)
        sums = s if sums is None else sums + s
        counts += c
    net.train(was_training)
    assert sums is not None, "empty train loader"
    return sums, counts


def _means(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    valid = counts > 0
    means = sums / counts.clamp_min(1).unsqueeze(1)
    return means, valid


def head_logits(
    arrays: SplitArrays,
    *,
    metric: str,
    ema_means: torch.Tensor | None,
    ema_valid: torch.Tensor | None,
    full_sums: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, np.ndarray]:
    """Logits [N, C] of each available head over cached ``arrays``."""
    feats = torch.from_numpy(arrays.features)
    out = {"linear": arrays.logits}
    if ema_means is not None:
        out["ncm_ema"] = ncm_logits(
            feats,
            ema_means.cpu(),
            metric=metric,
            valid=ema_valid.cpu() if ema_valid is not None else None,
        ).numpy()
    if full_sums is not None:
        means, valid = _means(full_sums[0].cpu(), full_sums[1].cpu())
        out["ncm_full"] = ncm_logits(feats, means, metric=metric, valid=valid).numpy()
    if arrays.kt_logits is not None:
        out["kt"] = arrays.kt_logits
    return out


def evaluate_heads(
    logits: dict[str, np.ndarray], labels: np.ndarray, groups: np.ndarray, *, ece_bins: int
) -> dict[str, HeadMetrics]:
    return {
        head: evaluate_logits(z, labels, groups, ece_bins=ece_bins) for head, z in logits.items()
    }


def flat_metrics(prefix: str, metrics: dict[str, HeadMetrics]) -> dict[str, Any]:
    """``{"val_linear_overall": 0.61, ...}``; absent groups are left out, never 0."""
    flat: dict[str, Any] = {}
    for head, m in metrics.items():
        for key, value in m.summary().items():
            if value is not None:
                flat[f"{prefix}_{head}_{key}"] = float(value)
    return flat


def head_params(net: Any) -> dict[str, np.ndarray]:
    """What the post-hoc stage may read of a network besides its outputs: the linear head
    (``linear_weight`` [C, d], ``linear_bias`` [C]), the KT head (``kt_weight``, ``kt_bias``)
    and the EMA memory once built (``memory_ema`` [C, d], ``memory_ema_valid`` [C])."""

    def host(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    params = {"linear_weight": host(net.linear.weight), "linear_bias": host(net.linear.bias)}
    kt_head = getattr(net, "kt_head", None)
    if kt_head is not None:
        params["kt_weight"] = host(kt_head.weight)
        params["kt_bias"] = host(kt_head.bias)
    memory = getattr(net, "memory", None)
    if memory is not None and bool(memory.initialized):
        params["memory_ema"] = host(memory.means)
        params["memory_ema_valid"] = host(memory.valid)
    return params


@dataclass
class EpochArrays:
    """What an epoch hook of the loop sees at an evaluated epoch (rank 0): the val arrays of
    this epoch's weights (or, at the last epoch, of the best checkpoint's, as the cache holds
    them), the heads' val metrics, the fit context (train class counts, groups, head
    parameters), and the train arrays on demand (:meth:`train`: one pass over train, made only
    when asked). Never the test split."""

    epoch: int  # 1-based
    last: bool
    run_dir: Path
    val: SplitArrays
    heads: dict[str, HeadMetrics]
    context: FitContext
    train_pass: Callable[[], SplitArrays]
    _train: SplitArrays | None = field(default=None, repr=False)

    def train(self) -> SplitArrays:
        if self._train is None:
            self._train = self.train_pass()
        return self._train


# An epoch hook returns metrics to add to the epoch's report (before it is written and sent).
EpochHook = Callable[[EpochArrays], dict[str, Any]]
