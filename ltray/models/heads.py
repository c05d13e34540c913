"""Classifier heads that take penultimate features [B, d] and return logits [B, C].

- :func:`linear_head`: the dot-product head z = W h + b used for both the main classifier and
  the knowledge-transfer head (docs/methods.md#backbones, docs/methods.md#kt).
"""

from __future__ import annotations

from torch import nn

__all__ = ["linear_head"]


def linear_head(dim: int, num_classes: int) -> nn.Linear:
    """A dot-product classifier ``nn.Linear(dim, num_classes, bias=True)``."""
    return nn.Linear(dim, num_classes, bias=True)
