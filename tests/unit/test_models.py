"""Backbones, heads and the stage-1 network: shapes, NaN, parameter counts, wiring."""

from __future__ import annotations

import pytest
import torch

from ltray.config import load_config
from ltray.errors import ConfigError
from ltray.mixup import MixPlan
from ltray.models import (
    BACKBONES,
    Backbone,
    ClassMemory,
    LTNet,
    NetOutput,
    build_backbone,
    build_network,
    class_sums,
    normalize,
)
from ltray.train.standard import TrainForward

NUM_CLASSES = 7

# (in_channels, size, small_input, batch): digits-like, CIFAR-like inputs for every backbone.
SMALL_INPUTS = [(1, 8, True, 4), (3, 32, True, 4), (1, 8, False, 2)]


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _check_backbone(name: str, c: int, size: int, small: bool, batch: int) -> None:
    torch.manual_seed(0)
    bb = build_backbone(name, in_channels=c, small_input=small)
    net = LTNet(bb, num_classes=NUM_CLASSES, kt_head=True)
    net.eval()
    x = torch.randn(batch, c, size, size)
    with torch.no_grad():
        fmap = bb.forward_map(x)
        out = net(x)
    d = bb.feat_dim
    assert fmap.dim() == 4 and fmap.shape[:2] == (batch, d)
    assert out.features.shape == (batch, d)
    assert out.logits.shape == (batch, NUM_CLASSES)
    assert out.kt_logits is not None and out.kt_logits.shape == (batch, NUM_CLASSES)
    for t in (fmap, out.features, out.logits, out.kt_logits):
        assert torch.isfinite(t).all()
    # features are taken after the last ReLU and the global average pool
    assert (out.features >= 0).all()
    torch.testing.assert_close(out.features, fmap.mean(dim=(2, 3)))


@pytest.mark.parametrize("name", BACKBONES.names())
@pytest.mark.parametrize(("c", "size", "small", "batch"), SMALL_INPUTS)
def test_backbone_shapes_small_inputs(name: str, c: int, size: int, small: bool, batch: int):
    _check_backbone(name, c, size, small, batch)


def test_resnet10_imagenet_input():
    _check_backbone("resnet10", 3, 224, False, 2)


def test_resnet10_224_map_is_7x7():
    bb = build_backbone("resnet10", in_channels=3, small_input=False).eval()
    with torch.no_grad():
        assert bb.forward_map(torch.randn(1, 3, 224, 224)).shape == (1, 512, 7, 7)


def test_feature_dims():
    assert build_backbone("resnet10", in_channels=3, small_input=False).feat_dim == 512
    assert build_backbone("resnet18", in_channels=3, small_input=False).feat_dim == 512
    assert build_backbone("resnet32", in_channels=3, small_input=True).feat_dim == 64


def test_resnet10_param_count():
    # Hand count (3x3 convs without bias, BN = 2 params per channel):
    # stem 7*7*3*64 + 128                                   =     9,536
    # stage1 2*(9*64*64) + 2*128                            =    73,984
    # stage2 9*64*128 + 9*128*128 + 2*256 + 64*128 + 256    =   230,144
    # stage3 9*128*256 + 9*256*256 + 2*512 + 128*256 + 512  =   919,040
    # stage4 9*256*512 + 9*512*512 + 2*1024 + 256*512 + 1024 = 3,673,088
    bb = build_backbone("resnet10", in_channels=3, small_input=False)
    assert _n_params(bb) == 4_905_792  # docs/methods.md#backbones: ≈4.9M
    # The 1-channel CIFAR stem only changes the first conv: 3*3*1*64 instead of 7*7*3*64.
    bb1 = build_backbone("resnet10", in_channels=1, small_input=True)
    assert _n_params(bb1) == 4_905_792 - 7 * 7 * 3 * 64 + 3 * 3 * 1 * 64
    net = LTNet(bb, num_classes=1000)
    assert _n_params(net) == 4_905_792 + 512 * 1000 + 1000


def test_resnet32_param_count():
    # stem 9*3*16 + 32 = 464; stage1 5*(2*9*16*16 + 64) = 23,360;
    # stage2 (9*16*32 + 9*32*32 + 128) + 4*(2*9*32*32 + 128) = 88,192;
    # stage3 (9*32*64 + 9*64*64 + 256) + 4*(2*9*64*64 + 256) = 351,488; option-A adds nothing.
    bb = build_backbone("resnet32", in_channels=3, small_input=True)
    assert _n_params(bb) == 463_504  # docs/methods.md#backbones: ≈0.46M
    net = LTNet(bb, num_classes=10)
    assert _n_params(net) == 463_504 + 64 * 10 + 10


def test_resnet18_param_count():
    bb = build_backbone("resnet18", in_channels=3, small_input=False)
    assert _n_params(bb) == 11_176_512  # torchvision resnet18 without its fc


def test_unknown_backbone_lists_known():
    with pytest.raises(ConfigError, match="model.backbone: unknown backbone 'vgg'.*resnet10"):
        build_backbone("vgg", in_channels=3, small_input=True)


def test_small_input_stem_keeps_resolution():
    bb = build_backbone("resnet10", in_channels=3, small_input=True).eval()
    with torch.no_grad():
        # 32 -> 32 (stem, no max-pool) -> 32/16/8/4 over the four stages
        assert bb.forward_map(torch.randn(1, 3, 32, 32)).shape == (1, 512, 4, 4)


def test_build_network_wiring():
    cfg = load_config(None, ["model.backbone=resnet32"])
    net = build_network(cfg, num_classes=5, in_channels=3, small_input=True)
    assert net.kt_head is not None and isinstance(net.memory, ClassMemory)
    assert net.memory.means.shape == (5, 64)
    assert net.memory.momentum == cfg.memory.momentum

    cfg = load_config(None, ["kt.enabled=false", "memory.enabled=false"])
    net = build_network(cfg, num_classes=5, in_channels=1, small_input=True)
    assert net.kt_head is None and net.memory is None
    out = net(torch.randn(2, 1, 8, 8))
    assert isinstance(out, NetOutput) and out.kt_logits is None

    # memory without KT
    cfg = load_config(None, ["kt.enabled=false", "memory.metric=euclidean"])
    net = build_network(cfg, num_classes=5, in_channels=1, small_input=True)
    assert net.kt_head is None and net.memory is not None and net.memory.metric == "euclidean"


def test_kt_head_sees_detached_features():
    torch.manual_seed(0)
    net = LTNet(
        build_backbone("resnet32", in_channels=1, small_input=True),
        num_classes=3,
        kt_head=True,
    )
    x = torch.randn(4, 1, 8, 8)
    out = net(x)
    assert out.kt_logits is not None
    out.kt_logits.sum().backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert net.kt_head is not None and net.kt_head.weight.grad is not None

    net.zero_grad(set_to_none=True)
    out = net.heads(net.backbone(x), detach_kt=False)
    assert out.kt_logits is not None
    out.kt_logits.sum().backward()
    assert any(p.grad is not None for p in net.backbone.parameters())


class PassThrough(Backbone):
    """A parameter-free backbone whose feature map is its input, so h is known by hand."""

    feat_dim = 2

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_heads_are_affine_maps_of_the_pooled_features_mixed_or_not():
    """z_l = W h + b and z_s = W_s h + b_s on h = GAP(feature map); with manifold mixup the
    heads see λ·h_i + (1 − λ)·h_perm(i) on mixed rows and h elsewhere. Worked out by hand."""
    net = LTNet(PassThrough(), num_classes=2, kt_head=True)
    assert net.kt_head is not None
    with torch.no_grad():
        net.linear.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
        net.linear.bias.copy_(torch.tensor([0.5, -0.5]))
        net.kt_head.weight.copy_(torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
        net.kt_head.bias.copy_(torch.tensor([1.0, 0.0]))
    # Two 2×1 maps per image; their means are h_0 = (1, 2), h_1 = (3, 0).
    x = torch.tensor([[[[0.0], [2.0]], [[4.0], [0.0]]], [[[3.0], [3.0]], [[0.0], [0.0]]]])
    out = net(x)
    torch.testing.assert_close(out.features, torch.tensor([[1.0, 2.0], [3.0, 0.0]]))
    # h_0: (1 + 4 + 0.5, 3 − 2 − 0.5), h_1: (3 + 0.5, 9 − 0.5)
    torch.testing.assert_close(out.logits, torch.tensor([[5.5, 0.5], [3.5, 8.5]]))
    # h_0: (2 + 1, 2), h_1: (0 + 1, 6)
    torch.testing.assert_close(out.kt_logits, torch.tensor([[3.0, 2.0], [1.0, 6.0]]))

    # Manifold mixup, λ = 0.25, image 0 mixed with image 1, image 1 left alone:
    # h_0 → 0.25·(1, 2) + 0.75·(3, 0) = (2.5, 0.5).
    plan = MixPlan(lam=0.25, perm=torch.tensor([1, 0]), mix=torch.tensor([True, False]))
    mixed = TrainForward(net, detach_kt=True)(x, plan)
    torch.testing.assert_close(mixed.features, torch.tensor([[2.5, 0.5], [3.0, 0.0]]))
    torch.testing.assert_close(mixed.logits, torch.tensor([[4.0, 6.5], [3.5, 8.5]]))
    torch.testing.assert_close(mixed.kt_logits, torch.tensor([[1.5, 5.0], [1.0, 6.0]]))


def test_memory_buffers_in_state_dict():
    cfg = load_config(None, ["model.backbone=resnet32"])
    net = build_network(cfg, num_classes=4, in_channels=1, small_input=True)
    assert net.memory is not None
    net.memory.set_from_sums(torch.eye(4, 64), torch.ones(4))
    sd = net.state_dict()
    assert {"memory.means", "memory.valid", "memory.initialized"} <= set(sd)
    other = build_network(cfg, num_classes=4, in_channels=1, small_input=True)
    other.load_state_dict(sd)
    assert other.memory is not None and other.memory.is_initialized
    torch.testing.assert_close(other.memory.means, torch.eye(4, 64))


def test_memory_shape_mismatch_is_an_error():
    bb = build_backbone("resnet32", in_channels=1, small_input=True)
    with pytest.raises(ValueError, match="memory shape"):
        LTNet(bb, num_classes=3, memory=ClassMemory(3, 512))


@pytest.mark.parametrize("name", ["resnet32", "resnet10"])
def test_evaluation_folds_batchnorm_into_convolutions_with_the_same_outputs(name: str) -> None:
    """The evaluation passes run a copy of the backbone with every BatchNorm folded into its
    convolution: no BatchNorm left, the same features and heads as the eval-mode network (up to
    float rounding), and the training network untouched (still in train mode, same weights)."""
    from ltray.train.evaluate import (
        FOLD_MIN_BATCHES,
        extract,
        full_pass_sums,
        inference_backbone,
    )

    cfg = load_config(None, [f"model.backbone={name}"])
    torch.manual_seed(0)
    net = build_network(cfg, num_classes=5, in_channels=3, small_input=name == "resnet32")
    for m in net.modules():  # running statistics away from the init's 0/1
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    size = 32 if name == "resnet32" else 64
    x = torch.rand(6, 3, size, size)
    y = torch.tensor([0, 1, 2, 3, 4, 0])

    folded = inference_backbone(net.backbone)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    net.eval()
    with torch.no_grad():
        want = net(x)
    net.train()
    batches = [(x, y)] * FOLD_MIN_BATCHES  # a pass long enough to be run folded
    got = extract(net, batches, torch.device("cpu"), channels_last=True)
    reps = FOLD_MIN_BATCHES
    want_f, want_z = want.features.repeat(reps, 1), want.logits.repeat(reps, 1)
    torch.testing.assert_close(torch.from_numpy(got.features), want_f, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(got.logits), want_z, rtol=1e-4, atol=1e-5)
    sums, counts = full_pass_sums(net, batches, torch.device("cpu"), 5)
    want_sums, _ = class_sums(normalize(want_f), y.repeat(reps), 5)
    torch.testing.assert_close(sums, want_sums, rtol=1e-4, atol=1e-5)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_only_passes_of_several_batches_fold_the_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folding costs a copy and a trace per pass: a one-batch split (digits-LT's val) runs the
    network as it is, a longer pass folds once."""
    import ltray.train.evaluate as ev

    calls: list[int] = []
    real = ev.inference_backbone
    monkeypatch.setattr(ev, "inference_backbone", lambda b: calls.append(1) or real(b))
    net = build_network(load_config(None, []), num_classes=3, in_channels=1, small_input=True)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    ev.extract(net, [(x, y)], torch.device("cpu"))
    ev.full_pass_sums(net, [(x, y)], torch.device("cpu"), 3)
    assert calls == []
    ev.extract(net, [(x, y)] * ev.FOLD_MIN_BATCHES, torch.device("cpu"))
    ev.full_pass_sums(net, [(x, y)] * ev.FOLD_MIN_BATCHES, torch.device("cpu"), 3)
    assert calls == [1, 1]
