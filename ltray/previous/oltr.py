"""OLTR (Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", 2019), stage 2.

Stage 1 is an ordinary ``train.method=ce`` run; stage 2 (``train.method=oltr``,
``oltr.stage1=RUN_DIR``) loads its backbone and trains, with class-aware sampling:

    f = trunk.forward_map(x)                          # [B, d, h, w], stage-1 backbone
    f = f + softmax_hw(mask(SA(f))) ⊙ SA(f)           # modulated attention (SA: non-local block)
    v_direct = GAP(f)                                 # [B, d]
    v_memory = softmax(T_hal(v_direct)) @ C           # [B, d], C: class centroids [C, d]
    e = tanh(T_sel(v_direct))                         # concept selector [B, d]
    v_meta = γ · (v_direct + e ⊙ v_memory),  γ = s_r / min_c ‖v_direct − C_c‖   # reachability
    z = s · (‖v_meta‖ / (1 + ‖v_meta‖)) · v̂_meta · Ŵᵀ  # cosine classifier (squashed norm)
    L = CE(z, y) + λ · [½‖v_direct − C_y‖² + λ_r · max(0, m − mean_{c≠y} ‖v_direct − C_c‖²)]

The centroids are a parameter initialised by a full pass of the stage-1 backbone over the train
split (class means of v_direct; the attention starts as the identity, so these are exactly the
stage-1 features) and learned by the centroid loss only: the meta-embedding reads them detached,
as the reference code does. The trained parameters are all used in :class:`OLTRForward`, which
DDP wraps, so several Ray Train workers see the same centroids after every step.

Deviations, each chosen for a stated reason:

- The spatial mask of the modulated attention is a 1x1 convolution (d → 1) followed by a softmax
  over positions, not a fully connected layer over a fixed 7x7 map, so any input size works (CIFAR
  ResNet-32 ends at 8x8, digits at 2x2).
- The repel term is averaged over the B·(C−1) wrong-class pairs (the reference code divides by
  B·C while zeroing the true-class entries).
- The network's ``features`` are the classifier's input u = v_meta / (1 + ‖v_meta‖) and
  ``linear.weight`` is s·Ŵ (bias 0), so ``logits = features @ weightᵀ + bias`` holds exactly as for
  a stage-1 net: the feature cache, NCM heads and post-hoc fusion read them unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltray.config import Config
from ltray.errors import ConfigError
from ltray.losses import LOSSES
from ltray.models import (
    Backbone,
    ClassMemory,
    LTNet,
    NetOutput,
    build_backbone,
    build_memory,
    normalize,
)
from ltray.previous.runs import (
    build_device,
    check_same_split,
    class_means,
    load_run,
    load_submodule,
)
from ltray.train.step import StepContext, StepResult

__all__ = [
    "squared_distances",
    "centroid_loss",
    "reachability",
    "meta_embedding",
    "squash",
    "ModulatedAttention",
    "MetaEmbedding",
    "CosNormClassifier",
    "OLTREmbedding",
    "OLTRNet",
    "OLTRForward",
    "oltr_skeleton",
    "build_oltr",
    "oltr_param_groups",
    "oltr_wrap",
    "oltr_loss",
]

_EPS = 1e-6


# ----------------------------------------------------------------------------- pure math


def squared_distances(x: Tensor, centroids: Tensor) -> Tensor:
    """‖x_i − c_j‖² for x [B, d] and centroids [C, d] → [B, C] (≥ 0), without a [B, C, d] copy."""
    sq = (x * x).sum(1, keepdim=True) + (centroids * centroids).sum(1).unsqueeze(0)
    return (sq - 2.0 * x @ centroids.t()).clamp_min(0.0)


def centroid_loss(
    feat: Tensor, labels: Tensor, centroids: Tensor, *, margin: float, repel_weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    """OLTR's discriminative centroid loss: attract to the own centroid, push the others away.

    attract = mean_i ½‖x_i − c_{y_i}‖²
    repel   = max(0, margin − mean_{i, c ≠ y_i} ‖x_i − c_c‖²)
    loss    = attract + repel_weight · repel

    Args:
        feat: [B, d] direct features.
        labels: [B] class ids.
        centroids: [C, d] (C ≥ 2 for the repel term; with C = 1 it is 0).
        margin: m, on the mean squared distance.
        repel_weight: λ_r.

    Returns:
        (loss, attract, repel), scalars (float32).
    """
    feat, centroids = feat.float(), centroids.float()
    d2 = squared_distances(feat, centroids)
    own = F.one_hot(labels.long(), centroids.shape[0]).bool()
    attract = 0.5 * d2[own].mean()
    n_neg = d2.shape[0] * (d2.shape[1] - 1)
    if n_neg == 0:
        repel = d2.new_zeros(())
    else:
        repel = (margin - d2.masked_fill(own, 0.0).sum() / n_neg).clamp_min(0.0)
    return attract + repel_weight * repel, attract, repel


def reachability(feat: Tensor, centroids: Tensor, *, scale: float, eps: float = _EPS) -> Tensor:
    """γ_i = scale / min_c ‖x_i − c_c‖ for feat [B, d], centroids [C, d] → [B].

    A sample far from every centroid (likely a tail or open-set sample) gets a small γ. A
    distance below ``eps`` is clamped to it, so a sample on a centroid gets scale/eps, not inf.
    """
    dmin = squared_distances(feat.float(), centroids.float()).amin(dim=1).sqrt()
    return scale / dmin.clamp_min(eps)


def meta_embedding(direct: Tensor, memory: Tensor, selector: Tensor, gamma: Tensor) -> Tensor:
    """v_meta = γ · (v_direct + e ⊙ v_memory).

    Args: direct, memory, selector [B, d]; gamma [B]. Returns [B, d].
    """
    return gamma.unsqueeze(1) * (direct + selector * memory)


def squash(v: Tensor) -> Tensor:
    """u = (‖v‖ / (1 + ‖v‖)) · v/‖v‖ = v / (1 + ‖v‖): [B, d] → [B, d], ‖u‖ < 1, u(0) = 0.

    The input scaling of OLTR's cosine classifier: the norm (hence the reachability γ) still
    sets the confidence of z = s·u·Ŵᵀ, saturating for large norms.
    """
    return v / (1.0 + v.norm(dim=1, keepdim=True))


# ------------------------------------------------------------------------------- modules


class ModulatedAttention(nn.Module):
    """f + softmax_hw(mask(SA(f))) ⊙ SA(f) over a feature map [B, d, h, w] (same shape out).

    SA is a non-local (self-attention) block with a d/2 bottleneck; its output convolution starts
    at zero, so the module starts as the identity and stage 2 starts from the stage-1 features.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(channels // 2, 1)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)
        self.mask = nn.Conv2d(channels, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, f: Tensor) -> Tensor:
        b, _, h, w = f.shape
        q = self.theta(f).flatten(2).transpose(1, 2)  # [B, hw, d']
        k = self.phi(f).flatten(2)  # [B, d', hw]
        v = self.g(f).flatten(2).transpose(1, 2)  # [B, hw, d']
        attn = torch.softmax(q @ k, dim=-1)  # [B, hw, hw]
        sa = self.out((attn @ v).transpose(1, 2).reshape(b, -1, h, w))  # [B, d, h, w]
        mask = torch.softmax(self.mask(sa).flatten(1), dim=1).view(b, 1, h, w)
        return f + mask * sa


class MetaEmbedding(nn.Module):
    """Dynamic meta-embedding over the class centroids (a parameter [C, d]).

    Args:
        dim: d.
        num_classes: C.
        reachability_scale: s_r of γ = s_r / min distance.
        selector: ``tanh`` (paper, reference code) or ``sigmoid`` gate.
    """

    def __init__(
        self, dim: int, num_classes: int, *, reachability_scale: float, selector: str
    ) -> None:
        super().__init__()
        if selector not in ("tanh", "sigmoid"):
            raise ValueError(f"selector must be 'tanh' or 'sigmoid', got {selector!r}")
        self.centroids = nn.Parameter(torch.zeros(num_classes, dim))
        self.hallucinator = nn.Linear(dim, num_classes)
        self.selector = nn.Linear(dim, dim)
        self.reachability_scale = reachability_scale
        self.gate = torch.tanh if selector == "tanh" else torch.sigmoid

    def forward(self, direct: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """direct [B, d] → (v_meta [B, d], {"memory", "selector", "gamma"})."""
        centroids = self.centroids.detach()  # learned by the centroid loss only
        memory = torch.softmax(self.hallucinator(direct), dim=1) @ centroids.to(direct.dtype)
        sel = self.gate(self.selector(direct))
        gamma = reachability(direct, centroids, scale=self.reachability_scale).to(direct.dtype)
        v_meta = meta_embedding(direct, memory, sel, gamma)
        return v_meta, {"memory": memory, "selector": sel, "gamma": gamma}


class CosNormClassifier(nn.Module):
    """z = u · (s·Ŵ)ᵀ on squashed features u: [B, d] → [B, C].

    ``weight`` (s·Ŵ, [C, d]) and ``bias`` (zeros, [C]) are the equivalent dot-product head that
    the loop's cache writer reads as ``net.linear.weight/bias``.
    """

    def __init__(self, dim: int, num_classes: int, *, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.raw_weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.normal_(self.raw_weight, 0.0, 1.0 / dim**0.5)

    @property
    def weight(self) -> Tensor:
        return self.scale * normalize(self.raw_weight)

    @property
    def bias(self) -> Tensor:
        return self.raw_weight.new_zeros(self.raw_weight.shape[0])

    def forward(self, u: Tensor) -> Tensor:
        return u @ self.weight.to(u.dtype).t()


class OLTREmbedding(Backbone):
    """Stage-1 trunk + modulated attention + meta-embedding; ``forward`` gives the classifier's
    input u [B, d], so the loop's full passes (``net.backbone(x)``) see the same features as
    ``net(x).features``."""

    def __init__(self, trunk: Backbone, *, attention: bool, meta: MetaEmbedding) -> None:
        super().__init__()
        self.trunk = trunk
        self.feat_dim = trunk.feat_dim
        self.attention = ModulatedAttention(trunk.feat_dim) if attention else None
        self.meta = meta

    def forward_map(self, x: Tensor) -> Tensor:
        f = self.trunk.forward_map(x)
        return self.attention(f) if self.attention is not None else f

    def direct(self, x: Tensor) -> Tensor:
        """v_direct [B, d]: pooled, attended last feature map."""
        return self.pool(self.forward_map(x))

    def embed(self, direct: Tensor) -> Tensor:
        """u = squash(v_meta(direct)): [B, d] → [B, d]."""
        return squash(self.meta(direct)[0])

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(self.direct(x))


class OLTRNet(LTNet):
    """An :class:`LTNet` whose backbone is an :class:`OLTREmbedding` and whose ``linear`` is a
    :class:`CosNormClassifier` (no KT head)."""

    backbone: OLTREmbedding

    def __init__(
        self,
        embedding: OLTREmbedding,
        *,
        num_classes: int,
        cosine_scale: float,
        memory: ClassMemory | None,
    ) -> None:
        head = CosNormClassifier(embedding.feat_dim, num_classes, scale=cosine_scale)
        super().__init__(
            embedding, num_classes=num_classes, kt_head=False, memory=memory, linear=head
        )


class OLTRForward(nn.Module):
    """What DDP wraps: ``forward(x, y)`` → (NetOutput, centroid loss, attract, repel), touching
    every trained parameter (trunk, attention, meta-embedding, centroids, classifier)."""

    def __init__(self, net: OLTRNet, *, margin: float, repel_weight: float) -> None:
        super().__init__()
        self.net = net
        self.margin = margin
        self.repel_weight = repel_weight

    def forward(self, x: Tensor, y: Tensor) -> tuple[NetOutput, Tensor, Tensor, Tensor]:
        emb = self.net.backbone
        direct = emb.direct(x)
        u = emb.embed(direct)
        out = NetOutput(features=u, logits=self.net.linear(u))
        loss_c, attract, repel = centroid_loss(
            direct,
            y,
            emb.meta.centroids,
            margin=self.margin,
            repel_weight=self.repel_weight,
        )
        return out, loss_c, attract, repel


# ---------------------------------------------------------------- the method's implementation
# (its rules and registration: ltray.previous.methods.OLTRMethod)


def oltr_skeleton(cfg: Config, *, num_classes: int, in_channels: int, small_input: bool) -> OLTRNet:
    """An untrained OLTR stage-2 network of ``cfg``'s architecture (zero centroids): what a
    finished run's checkpoint is loaded into, and what :func:`build_oltr` fills."""
    trunk = build_backbone(cfg.model.backbone, in_channels=in_channels, small_input=small_input)
    o = cfg.oltr
    meta = MetaEmbedding(
        trunk.feat_dim, num_classes, reachability_scale=o.reachability_scale, selector=o.selector
    )
    memory = build_memory(cfg, num_classes, trunk.feat_dim) if cfg.memory.enabled else None
    emb = OLTREmbedding(trunk, attention=o.attention, meta=meta)
    return OLTRNet(emb, num_classes=num_classes, cosine_scale=o.cosine_scale, memory=memory)


def build_oltr(
    cfg: Config, *, num_classes: int, in_channels: int, small_input: bool, data: Any
) -> OLTRNet:
    """Stage 2's network: the stage-1 run's backbone (``oltr.stage1``, same split and
    backbone, checked), centroids from a full pass of it over the train split."""
    if cfg.oltr.stage1 is None:
        raise ConfigError(
            "oltr.stage1 is not set; train.method=oltr is OLTR's stage 2 on top of a stage-1 "
            "run: train one with `ltray train train.method=ce` and pass oltr.stage1=RUN_DIR"
        )
    prev = load_run(Path(cfg.oltr.stage1), key="oltr.stage1", methods=("ce", "kt"))
    check_same_split(cfg, prev.cfg, key="oltr.stage1")
    if prev.cfg.model.backbone != cfg.model.backbone:
        raise ConfigError(
            f"oltr.stage1: the stage-1 run used model.backbone={prev.cfg.model.backbone}, "
            f"this run {cfg.model.backbone}; set model.backbone={prev.cfg.model.backbone}"
        )
    net = oltr_skeleton(
        cfg, num_classes=num_classes, in_channels=in_channels, small_input=small_input
    )
    trunk = net.backbone.trunk
    load_submodule(trunk, prev.state, prefix="backbone", key="oltr.stage1")
    device = build_device(cfg)
    trunk.to(device).eval()
    means, _ = class_means(
        trunk, data, device=device, batch_size=cfg.data.eval_batch_size, num_classes=num_classes
    )
    trunk.cpu().train()
    with torch.no_grad():
        net.backbone.meta.centroids.copy_(means)
    return net


def oltr_param_groups(net: LTNet, cfg: Config) -> list[dict[str, Any]]:
    """SGD parameter groups with an ``lr_scale`` each: the stage-1 trunk at
    ``oltr.backbone_lr_scale``, the centroids at ``oltr.centroid_lr_scale`` (no weight
    decay: it would pull them to 0), everything else (attention, meta-embedding,
    classifier) at 1. The loop sets ``lr = base lr · schedule · lr_scale`` per group."""
    assert isinstance(net, OLTRNet)
    emb = net.backbone
    trunk = [p for p in emb.trunk.parameters() if p.requires_grad]
    special = {id(p) for p in trunk} | {id(emb.meta.centroids)}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in special]
    return [
        {"params": trunk, "lr_scale": cfg.oltr.backbone_lr_scale, "name": "backbone"},
        {
            "params": [emb.meta.centroids],
            "lr_scale": cfg.oltr.centroid_lr_scale,
            "weight_decay": 0.0,
            "name": "centroids",
        },
        {"params": rest, "lr_scale": 1.0, "name": "heads"},
    ]


def oltr_wrap(net: LTNet, cfg: Config) -> nn.Module:
    assert isinstance(net, OLTRNet)
    return OLTRForward(net, margin=cfg.oltr.centroid_margin, repel_weight=cfg.oltr.repel_weight)


def oltr_loss(net: LTNet, fwd: nn.Module, x: Tensor, y: Tensor, sc: StepContext) -> StepResult:
    """CE (or balanced softmax) on the cosine classifier + λ · the centroid loss."""
    cfg = sc.cfg
    out, loss_c, attract, repel = fwd(x, y)
    cls_fn = LOSSES.get(cfg.loss.name, key="loss.name")
    loss_cls = cls_fn(out.logits, y, class_counts=sc.class_counts)
    loss = loss_cls + cfg.oltr.centroid_weight * loss_c
    parts = {
        "loss_cls": float(loss_cls.detach()),
        "loss_centroid": float(loss_c.detach()),
        "attract": float(attract.detach()),
        "repel": float(repel.detach()),
    }
    return StepResult(loss, out, y, parts)
