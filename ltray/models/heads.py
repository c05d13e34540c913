"""Classifier heads that take penultimate features [B, d] and return logits [B, C].

- :func:`linear_head`: the dot-product head z = W h + b used for both the main classifier and
  the knowledge-transfer head (docs/methods.md#backbones, docs/methods.md#kt).
- :class:`CosineClassifier`: s · ĥ · Ŵ_cᵀ, the cosine head of OLTR's stage 2 (docs/methods.md#oltr).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ltray.models.memory import normalize

__all__ = ["linear_head", "CosineClassifier"]


def linear_head(dim: int, num_classes: int) -> nn.Linear:
    """A dot-product classifier ``nn.Linear(dim, num_classes, bias=True)``."""
    return nn.Linear(dim, num_classes, bias=True)


class CosineClassifier(nn.Module):
    """Cosine-similarity logits scaled by a fixed ``scale``: z_c = s · ĥ · W_c/‖W_c‖.

    Args:
        dim: feature dimension d.
        num_classes: C.
        scale: s (OLTR: 16); cosines lie in [-1, 1], too flat for softmax without it.
    """

    def __init__(self, dim: int, num_classes: int, *, scale: float = 16.0) -> None:
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.uniform_(self.weight, -1.0 / math.sqrt(dim), 1.0 / math.sqrt(dim))

    def forward(self, feat: Tensor) -> Tensor:
        """[B, d] -> [B, C]."""
        return self.scale * normalize(feat) @ normalize(self.weight).t()
