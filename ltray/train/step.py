"""What one training step hands around: the context a loss may use and the result the loop
records (:class:`StepContext`, :class:`StepResult`), shared by the methods' rules
(:mod:`ltray.train.methods`) and their implementations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ltray.config import Config

if TYPE_CHECKING:
    import torch

    from ltray.models import NetOutput

__all__ = ["StepContext", "StepResult"]


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
