"""Learning-rate schedules (docs/methods.md#schedules), as a factor of the base lr per
(fractional) epoch."""

from __future__ import annotations

import math

from ltray.config import TrainConfig

__all__ = ["lr_factor", "base_lr"]


def base_lr(cfg: TrainConfig, global_batch: int) -> float:
    """The configured lr, scaled linearly with the global batch when ``train.scale_lr``."""
    if cfg.scale_lr:
        return cfg.lr * global_batch / cfg.base_batch_size
    return cfg.lr


def lr_factor(cfg: TrainConfig, epoch: float) -> float:
    """Multiplier of the base lr at fractional ``epoch`` in [0, cfg.epochs).

    A linear warm-up over ``warmup_epochs`` (epoch e at (e + 1)/warm-up, as LDAM-DRW) comes
    first; then ``cosine`` decays to 0 at the last epoch, ``step`` multiplies by ``gammas[i]`` from
    ``milestones[i]`` on (cumulative factors, e.g. CIFAR: milestones [160, 180], gammas
    [0.01, 0.0001]), ``constant`` keeps 1.
    """
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        # LDAM-DRW's warm-up: epoch e of the warm-up runs at (e + 1) / warmup_epochs.
        return (math.floor(epoch) + 1) / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
        t = min(max(epoch - cfg.warmup_epochs, 0.0) / span, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.schedule == "step":
        factor = 1.0
        for milestone, gamma in zip(cfg.milestones, cfg.gammas, strict=True):
            if epoch >= milestone:
                factor = gamma
        return factor
    return 1.0
