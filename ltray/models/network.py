"""The stage-1 network: backbone + linear head (+ KT head) (+ class-mean memory).

    net = build_network(cfg, num_classes=10, in_channels=3, small_input=True)
    out = net(x)                    # NetOutput(features [B, d], logits [B, C], kt_logits | None)
    out = net.heads(mixed_feats)    # manifold mixup: mix features, then apply the heads

The memory is not used in ``forward``: it holds no parameters, is updated by the training loop
(:meth:`ClassMemory.step`) and read for NCM/teacher logits (:meth:`ClassMemory.logits`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from ltray.config import Config
from ltray.models.backbones import Backbone, build_backbone
from ltray.models.heads import linear_head
from ltray.models.memory import ClassMemory

__all__ = ["NetOutput", "LTNet", "build_network", "build_memory"]


@dataclass
class NetOutput:
    """What the network returns, the same fields every time.

    Attributes:
        features: [B, d] penultimate features h (non-negative).
        logits: [B, C] linear logits z_l.
        kt_logits: [B, C] KT-head logits z_s, or None when the network has no KT head.
    """

    features: Tensor
    logits: Tensor
    kt_logits: Tensor | None = None


class LTNet(nn.Module):
    """Backbone, linear head, optional KT head and optional class memory.

    Args:
        backbone: a :class:`Backbone` producing [B, d] features.
        num_classes: C.
        kt_head: add a second dot-product head g: d → C (docs/methods.md#kt).
        detach_kt: default for :meth:`heads`: the KT head sees ``features.detach()``, so the
            backbone is trained by the linear head's loss only.
        memory: the class-mean memory, or None.
        linear: the classifier [B, d] → [B, C], given by a method whose classifier is not a
            plain dot-product head (OLTR's cosine classifier, an LFME expert's subset head);
            it must expose ``weight`` [C, d] and ``bias`` [C] of the equivalent dot-product
            head (the feature cache stores them). Default: a dot-product head.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        num_classes: int,
        kt_head: bool = False,
        detach_kt: bool = True,
        memory: ClassMemory | None = None,
        linear: nn.Module | None = None,
    ) -> None:
        super().__init__()
        d = backbone.feat_dim
        if memory is not None and (memory.num_classes, memory.dim) != (num_classes, d):
            raise ValueError(
                f"memory shape ({memory.num_classes}, {memory.dim}) must equal "
                f"(num_classes, feat_dim) = ({num_classes}, {d})"
            )
        self.backbone = backbone
        self.num_classes = num_classes
        if linear is None:
            linear = linear_head(d, num_classes)
            backbone.init_head(linear)
        self.linear = linear
        self.kt_head: nn.Linear | None = None
        if kt_head:
            self.kt_head = linear_head(d, num_classes)
            backbone.init_head(self.kt_head)
        self.detach_kt = detach_kt
        self.memory = memory

    @property
    def feat_dim(self) -> int:
        return self.backbone.feat_dim

    def heads(self, features: Tensor, *, detach_kt: bool | None = None) -> NetOutput:
        """Apply the heads to features [B, d].

        Args:
            features: [B, d] (possibly mixed, for manifold mixup).
            detach_kt: the KT head sees ``features.detach()``; None uses the network's setting.
        """
        detach = self.detach_kt if detach_kt is None else detach_kt
        kt_logits = None
        if self.kt_head is not None:
            kt_logits = self.kt_head(features.detach() if detach else features)
        return NetOutput(features=features, logits=self.linear(features), kt_logits=kt_logits)

    def forward(self, x: Tensor) -> NetOutput:
        """Images [B, C_in, H, W] -> :class:`NetOutput`."""
        return self.heads(self.backbone(x))


def build_memory(cfg: Config, num_classes: int, dim: int) -> ClassMemory:
    """The class-mean memory ``cfg.memory`` describes, for ``num_classes`` × ``dim`` features."""
    m = cfg.memory
    return ClassMemory(
        num_classes, dim, momentum=m.momentum, metric=m.metric, renormalize=m.renormalize
    )


def build_network(
    cfg: Config,
    *,
    num_classes: int,
    in_channels: int,
    small_input: bool,
    kt_head: bool | None = None,
    memory: bool | None = None,
    linear: Callable[[int], nn.Module] | None = None,
    backbone: Backbone | None = None,
) -> LTNet:
    """Build the network a config describes, with the heads a training method asks for.

    Defaults (``None``): the KT head iff ``kt.enabled``; the memory iff ``memory.enabled`` or
    ``kt.enabled`` (the KT teacher is read from it). ``linear``: a factory ``feat_dim →
    classifier`` for a method with its own classifier; ``backbone``: one built by the method
    (OLTR's embedding). ``small_input`` is passed explicitly because the data family decides it
    when ``model.small_input`` is None; callers resolve that first.
    """
    if backbone is None:
        backbone = build_backbone(
            cfg.model.backbone, in_channels=in_channels, small_input=small_input
        )
    kt = cfg.kt.enabled if kt_head is None else kt_head
    keep_memory = (cfg.memory.enabled or kt) if memory is None else memory
    return LTNet(
        backbone,
        num_classes=num_classes,
        kt_head=kt,
        detach_kt=cfg.kt.detach_feature,
        memory=build_memory(cfg, num_classes, backbone.feat_dim) if keep_memory else None,
        linear=None if linear is None else linear(backbone.feat_dim),
    )
