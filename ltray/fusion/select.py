"""Choosing on VAL: the selection score, grid searches, and SGD with best-epoch selection.

The selection score is the val ``overall`` accuracy (mean per-class accuracy, as reported). Ties
go to the first candidate in grid order (earliest epoch), so every choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "balanced_accuracy",
    "grid",
    "GridChoice",
    "select_on_grid",
    "weighted_scores",
    "class_balanced_indices",
    "EpochChoice",
    "train_and_select",
]


def balanced_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean per-class accuracy over the classes present in ``labels`` (pred, labels: [N])."""
    correct = torch.bincount(
        labels, weights=(pred == labels).to(torch.float32), minlength=num_classes
    )
    total = torch.bincount(labels, minlength=num_classes).to(torch.float32)
    present = total > 0
    return float((correct[present] / total[present]).mean())


def grid(lo: float, hi: float, step: float) -> list[float]:
    """Inclusive grid lo, lo+step, ..., hi, rounded to 10 decimals (no float drift)."""
    n = int(round((hi - lo) / step))
    return [round(lo + i * step, 10) for i in range(n + 1)]


@dataclass
class GridChoice:
    """The chosen value, its val score, and the val score of every candidate."""

    value: float
    score: float
    scores: list[float]


def select_on_grid(values: Sequence[float], score: Callable[[float], float]) -> GridChoice:
    """Evaluate ``score`` at every value; the best (first on ties) wins."""
    scores = [score(v) for v in values]
    best = int(np.argmax(scores))
    return GridChoice(value=float(values[best]), score=scores[best], scores=scores)


def weighted_scores(
    z_l: torch.Tensor,
    z_d: torch.Tensor,
    labels: torch.Tensor,
    weights: Sequence[float],
    num_classes: int,
    *,
    k: int = 64,
) -> list[float]:
    """Val score of argmax(w·z_l + (1 − w)·z̃_d) for every w (z_l, z_d: [N, C], labels: [N]).

    Exact, but fast: for w ∈ [0, 1] a class outside both the top-k of z_l and the top-k of z̃_d
    scores at most w·l_k + (1 − w)·d_k (l_k, d_k: the k-th largest values), so each w is first
    decided among those ≤ 2k candidates; rows where the best candidate does not beat that bound
    strictly are recomputed over all classes. A class masked in z̃_d (−inf) stays −inf for w < 1
    and takes z_l at w = 1 (full computation).
    """
    n, c = z_l.shape
    masked = ~torch.isfinite(z_d)
    if bool(masked.any()) or 2 * k >= c or any(not 0.0 <= w <= 1.0 for w in weights):
        return [
            balanced_accuracy(_weighted(z_l, z_d, masked, w).argmax(1), labels, num_classes)
            for w in weights
        ]
    top_l, idx_l = torch.topk(z_l, k, dim=1)
    top_d, idx_d = torch.topk(z_d, k, dim=1)
    cand = torch.cat([idx_l, idx_d], 1)  # [N, 2k] class ids (duplicates are harmless)
    cl, cd = z_l.gather(1, cand), z_d.gather(1, cand)
    cdiff = cl - cd
    l_k, d_k = top_l[:, -1], top_d[:, -1]
    out = []
    for w in weights:
        v, j = (cd + w * cdiff).max(1)
        pred = cand.gather(1, j[:, None]).squeeze(1)
        unsure = v <= d_k + w * (l_k - d_k)
        if bool(unsure.any()):
            rows = unsure.nonzero().squeeze(1)
            pred[rows] = _weighted(z_l[rows], z_d[rows], masked[rows], w).argmax(1)
        out.append(balanced_accuracy(pred, labels, num_classes))
    return out


def _weighted(z_l: torch.Tensor, z_d: torch.Tensor, masked: torch.Tensor, w: float) -> torch.Tensor:
    """w·z_l + (1 − w)·z̃_d, with −inf entries of z̃_d kept for w < 1 and dropped at w = 1."""
    if w == 1.0:
        return z_l
    fused = z_d.masked_fill(masked, 0.0) + w * (z_l - z_d.masked_fill(masked, 0.0))
    return fused.masked_fill(masked, float("-inf"))


def class_balanced_indices(
    labels: torch.Tensor, num_samples: int, gen: torch.Generator
) -> torch.Tensor:
    """``num_samples`` indices [num_samples]: a class uniformly among those present, then an image
    uniformly within it."""
    order = torch.argsort(labels, stable=True)
    classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
    offsets = torch.cumsum(counts, 0) - counts
    pick = torch.randint(len(classes), (num_samples,), generator=gen)
    within = (torch.rand(num_samples, generator=gen) * counts[pick]).long()
    within = torch.minimum(within, counts[pick] - 1)
    return order[offsets[pick] + within]


@dataclass
class EpochChoice:
    """Best epoch by val, its score, the val score of epochs 0..E (``history[0]`` = initial
    parameters) and the parameters at the chosen epoch."""

    epoch: int
    score: float
    history: list[float]
    state: list[torch.Tensor] = field(default_factory=list)


def train_and_select(
    params: Sequence[torch.Tensor],
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    sample: Callable[[torch.Generator], torch.Tensor],
    val_score: Callable[[], float],
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    include_init: bool = True,
    cosine: bool = False,
) -> EpochChoice:
    """SGD over cached inputs with best-epoch selection on val.

    ``sample(gen)`` gives one epoch's train indices; ``batch_loss(idx)`` the loss of a batch;
    ``val_score()`` scores the current parameters on val. Epoch 0 (the initial parameters) is a
    candidate when ``include_init`` or ``epochs == 0``. The parameters are left at the chosen
    epoch's values (also returned in ``state``).
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1)) if cosine else None
    history: list[float] = []
    best = EpochChoice(epoch=-1, score=float("-inf"), history=history)

    def consider(epoch: int, selectable: bool = True) -> None:
        with torch.no_grad():
            score = val_score()
        history.append(score)
        if selectable and score > best.score:
            best.epoch, best.score = epoch, score
            best.state = [p.detach().clone() for p in params]

    consider(0, selectable=include_init or epochs == 0)
    for epoch in range(1, epochs + 1):
        idx = sample(gen)
        for s in range(0, len(idx), batch_size):
            opt.zero_grad(set_to_none=True)
            batch_loss(idx[s : s + batch_size]).backward()
            opt.step()
        if sched is not None:
            sched.step()
        consider(epoch)
    with torch.no_grad():
        for p, v in zip(params, best.state, strict=True):
            p.copy_(v)
    return best
