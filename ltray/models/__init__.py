"""Backbones, heads, the class-mean memory (NCM) and the stage-1 network."""

from ltray.models.backbones import BACKBONES, Backbone, build_backbone
from ltray.models.heads import linear_head
from ltray.models.memory import (
    ClassMemory,
    class_sums,
    d_scale,
    ncm_logits,
    normalize,
    reduce_class_sums,
)
from ltray.models.network import LTNet, NetOutput, build_memory, build_network

__all__ = [
    "BACKBONES",
    "Backbone",
    "build_backbone",
    "linear_head",
    "ClassMemory",
    "class_sums",
    "d_scale",
    "ncm_logits",
    "normalize",
    "reduce_class_sums",
    "LTNet",
    "NetOutput",
    "build_network",
    "build_memory",
]
