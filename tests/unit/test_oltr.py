"""OLTR stage 2: the math pinned by hand-computed cases, the modules' shapes, build-time errors,
and one end-to-end run on digits-LT on top of a stage-1 CE run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ltray.config import Config, load_config, save_config
from ltray.errors import ConfigError, RunDirError
from ltray.fusion.cache import read_cache
from ltray.models import build_backbone
from ltray.previous.methods import OLTRMethod
from ltray.previous.oltr import (
    CosNormClassifier,
    MetaEmbedding,
    ModulatedAttention,
    OLTREmbedding,
    OLTRForward,
    OLTRNet,
    centroid_loss,
    meta_embedding,
    reachability,
    squash,
)
from ltray.train.context import LocalContext
from ltray.train.loop import load_state, run_training

TINY = ["train.epochs=2", "data.batch_size=64", "train.threads=1"]


# --------------------------------------------------------------------------- pure math


def test_centroid_loss_by_hand() -> None:
    feat = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    labels = torch.tensor([0, 1])
    centroids = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    # squared distances: sample 0 → (0, 4), sample 1 → (4, 8)
    # attract = ½·mean(0, 8) = 2; wrong-class mean = (4 + 4)/2 = 4; repel = max(0, 10 − 4) = 6
    loss, attract, repel = centroid_loss(feat, labels, centroids, margin=10.0, repel_weight=0.5)
    assert attract.item() == pytest.approx(2.0)
    assert repel.item() == pytest.approx(6.0)
    assert loss.item() == pytest.approx(2.0 + 0.5 * 6.0)
    # A margin below the wrong-class distance: no repel.
    loss, _, repel = centroid_loss(feat, labels, centroids, margin=3.0, repel_weight=0.5)
    assert repel.item() == 0.0 and loss.item() == pytest.approx(2.0)


def test_centroid_loss_pulls_own_centroid_and_pushes_the_others() -> None:
    feat = torch.tensor([[1.0, 0.0]])
    centroids = torch.tensor([[0.0, 0.0], [2.0, 0.0]], requires_grad=True)
    loss, _, _ = centroid_loss(feat, torch.tensor([0]), centroids, margin=10.0, repel_weight=1.0)
    loss.backward()
    g = centroids.grad
    assert g is not None
    # Gradient descent moves c_0 towards x (+x direction) and c_1 away from x (+x direction).
    assert g[0, 0] < 0 and g[1, 0] < 0
    # d/dc_0 of ½‖x − c_0‖² = −(x − c_0) = (−1, 0); d/dc_1 of (10 − ‖x − c_1‖²) = 2(x − c_1)
    torch.testing.assert_close(g, torch.tensor([[-1.0, 0.0], [-2.0, 0.0]]))


def test_centroid_loss_with_one_class_has_no_repel() -> None:
    loss, attract, repel = centroid_loss(
        torch.tensor([[1.0, 1.0]]), torch.tensor([0]), torch.zeros(1, 2), margin=5, repel_weight=1
    )
    assert repel.item() == 0.0 and loss.item() == pytest.approx(attract.item()) == 1.0


def test_reachability_is_scale_over_the_nearest_centroid_distance() -> None:
    feat = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    centroids = torch.tensor([[0.0, 0.0], [6.0, 8.0], [3.0, 0.0]])
    # sample 0: distances 5, 5, 4 → γ = 10/4; sample 1 sits on centroid 0 → clamped to scale/eps
    gamma = reachability(feat, centroids, scale=10.0, eps=1e-3)
    torch.testing.assert_close(gamma, torch.tensor([2.5, 1e4]))


def test_meta_embedding_and_squash_by_hand() -> None:
    v = meta_embedding(
        torch.tensor([[1.0, 2.0]]),
        torch.tensor([[3.0, 4.0]]),
        torch.tensor([[0.5, -1.0]]),
        torch.tensor([2.0]),
    )
    torch.testing.assert_close(v, torch.tensor([[5.0, -4.0]]))  # 2·(1 + 1.5, 2 − 4)
    u = squash(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    torch.testing.assert_close(u, torch.tensor([[0.5, 4 / 6], [0.0, 0.0]]))  # v/(1 + ‖v‖)


# ------------------------------------------------------------------------------ modules


def test_meta_embedding_module_shapes_and_uniform_memory() -> None:
    torch.manual_seed(0)
    meta = MetaEmbedding(4, 3, reachability_scale=10.0, selector="sigmoid")
    with torch.no_grad():
        meta.centroids.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]))
        meta.hallucinator.weight.zero_()
        meta.hallucinator.bias.zero_()
        meta.selector.weight.zero_()
        meta.selector.bias.zero_()
    direct = torch.tensor([[1.0, 0, 0, 1.0], [0, 0, 0, 0]])
    v, parts = meta(direct)
    assert v.shape == (2, 4) and parts["memory"].shape == (2, 4) and parts["gamma"].shape == (2,)
    # Uniform hallucination → memory = mean of the centroids; sigmoid(0) = 0.5.
    torch.testing.assert_close(parts["memory"], torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0]] * 2))
    torch.testing.assert_close(parts["selector"], torch.full((2, 4), 0.5))
    # Sample 0: nearest centroid at distance 1 → γ = 10; sample 1: distance 1 → γ = 10.
    torch.testing.assert_close(parts["gamma"], torch.tensor([10.0, 10.0]))
    torch.testing.assert_close(v, 10.0 * (direct + 0.5 * parts["memory"]))


@pytest.mark.parametrize("size", [2, 8])
def test_modulated_attention_keeps_shape_and_starts_as_identity(size: int) -> None:
    att = ModulatedAttention(16)
    f = torch.rand(3, 16, size, size)
    torch.testing.assert_close(att(f), f)
    with torch.no_grad():
        att.out.weight.normal_()
    assert att(f).shape == f.shape and not torch.allclose(att(f), f)


def test_cosnorm_classifier_is_an_exact_dot_product_head() -> None:
    head = CosNormClassifier(5, 3, scale=16.0)
    u = torch.randn(4, 5)
    torch.testing.assert_close(head(u), u @ head.weight.t() + head.bias)
    torch.testing.assert_close(head.weight.norm(dim=1), torch.full((3,), 16.0))
    assert head.bias.shape == (3,) and bool((head.bias == 0).all())


def _oltr_net(num_classes: int = 4) -> OLTRNet:
    trunk = build_backbone("resnet32", in_channels=1, small_input=True)
    meta = MetaEmbedding(trunk.feat_dim, num_classes, reachability_scale=10.0, selector="tanh")
    with torch.no_grad():
        meta.centroids.normal_()
    emb = OLTREmbedding(trunk, attention=True, meta=meta)
    return OLTRNet(emb, num_classes=num_classes, cosine_scale=16.0, memory=None)


def test_forward_uses_every_trained_parameter() -> None:
    """DDP (find_unused_parameters=False) needs a gradient for every trained parameter."""
    torch.manual_seed(0)
    net = _oltr_net()
    fwd = OLTRForward(net, margin=10.0, repel_weight=0.01)
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    out, loss_c, _, _ = fwd(x, y)
    assert out.logits.shape == (6, 4) and out.features.shape == (6, 64)
    # The network's own forward gives the same features/logits (eval paths = train path).
    net.eval()
    fwd.eval()
    out_eval, _, _, _ = fwd(x, y)
    torch.testing.assert_close(net(x).logits, out_eval.logits)
    torch.testing.assert_close(net.backbone(x), out_eval.features)
    net.train()
    (torch.nn.functional.cross_entropy(out.logits, y) + loss_c).backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert net.backbone.meta.centroids.grad is not None
    assert float(net.backbone.meta.centroids.grad.abs().sum()) > 0


def test_param_groups_cover_each_trained_parameter_once() -> None:
    net = _oltr_net()
    cfg = load_config(None, ["oltr.backbone_lr_scale=0.1", "oltr.centroid_lr_scale=0.5"])
    groups = OLTRMethod().param_groups(net, cfg)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in net.parameters() if p.requires_grad)
    scales = {g["name"]: g["lr_scale"] for g in groups}
    assert scales == {"backbone": 0.1, "centroids": 0.5, "heads": 1.0}


# ----------------------------------------------------------------------- build + e2e


def _build(cfg: Config) -> OLTRNet:
    from ltray.data import prepare_data

    data = prepare_data(cfg.data)
    return OLTRMethod().build(cfg, num_classes=10, in_channels=1, small_input=True, data=data)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("stage1")
    cfg = load_config(None, TINY + ["train.method=ce"])
    save_config(cfg, run_dir / "config.yaml")
    run_training(cfg, run_dir, LocalContext())
    return run_dir


@pytest.mark.slow
def test_build_errors_are_raised_before_training(stage1: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="oltr.stage1.*train.method=ce"):
        _build(load_config(None, ["train.method=oltr"]))
    with pytest.raises(RunDirError, match="no such run directory"):
        _build(load_config(None, ["train.method=oltr", f"oltr.stage1={tmp_path / 'nope'}"]))
    empty = tmp_path / "empty"
    empty.mkdir()
    save_config(load_config(None, ["train.method=ce"]), empty / "config.yaml")
    with pytest.raises(RunDirError, match="no checkpoints/best.pt"):
        _build(load_config(None, ["train.method=oltr", f"oltr.stage1={empty}"]))
    with pytest.raises(ConfigError, match="model.backbone"):
        _build(load_config(None, ["oltr.stage1=" + str(stage1), "model.backbone=resnet10"]))
    with pytest.raises(ConfigError, match="another split"):
        _build(load_config(None, ["oltr.stage1=" + str(stage1), "data.imbalance_ratio=5"]))
    # Mixup is a rule of the method, checked with the config before anything is built.
    from ltray.validate import config_problems

    mixed = load_config(None, ["train.method=oltr", f"oltr.stage1={stage1}", "mixup.variant=input"])
    assert any("not defined with mixup" in p for p in config_problems(mixed))


@pytest.mark.slow
def test_build_loads_stage1_backbone_and_centroids_from_a_full_pass(stage1: Path) -> None:
    cfg = load_config(None, TINY + ["train.method=oltr", f"oltr.stage1={stage1}"])
    net = _build(cfg)
    s1 = load_state(stage1 / "checkpoints" / "best.pt")["model"]
    trunk = net.backbone.trunk.state_dict()
    for k, v in trunk.items():
        torch.testing.assert_close(v, s1[f"backbone.{k}"], msg=k)
    # Centroids = class means of the stage-1 features (eval transforms) = the direct features,
    # since the attention starts as the identity.
    from ltray.data import make_loader, prepare_data

    data = prepare_data(cfg.data)
    loader = make_loader(data, "train", batch_size=512, augment=False, shuffle=False)
    net.eval()
    with torch.no_grad():
        feats = torch.cat([net.backbone.direct(x) for x, _ in loader])
    labels = torch.from_numpy(data.labels("train"))
    expect = torch.stack([feats[labels == c].mean(0) for c in range(10)])
    torch.testing.assert_close(net.backbone.meta.centroids.detach(), expect, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_oltr_runs_end_to_end_on_digits(stage1: Path, tmp_path: Path) -> None:
    cfg = load_config(None, TINY + ["train.method=oltr", f"oltr.stage1={stage1}"])
    ctx = LocalContext()
    results = run_training(cfg, tmp_path, ctx)
    assert results is not None
    assert {"linear", "ncm_ema", "ncm_full"} <= set(results["heads"])
    last = ctx.reports[-1]
    assert {"train_loss_cls", "train_loss_centroid", "val_linear_overall"} <= set(last)
    # The cache's linear head reproduces the cosine classifier's logits exactly.
    cache = read_cache(tmp_path)
    z = cache.test.features @ cache.params["linear_weight"].T + cache.params["linear_bias"]
    np.testing.assert_allclose(z, cache.test.logits, rtol=1e-4, atol=1e-4)
    # The reported test numbers are those of the cached logits, recomputed here from the
    # definition (mean per-class accuracy, overall and per shot group) ...
    test = results["heads"]["linear"]["test"]
    pred, y = cache.test.logits.argmax(1), cache.test.labels
    per_class = np.array([(pred[y == c] == c).mean() for c in range(10)])
    assert test["overall"] == pytest.approx(per_class.mean())
    for gid, group in enumerate(("many", "medium", "few")):
        assert test[group] == pytest.approx(per_class[cache.groups == gid].mean())
    # ... and two epochs of stage 2 learn: twice chance (0.1) at least; the seeded run gets 0.31
    # from a 2-epoch stage 1 whose own linear head is at 0.11 on val.
    assert test["overall"] > 0.2, test
    # The centroids are a learned parameter and travel in the checkpoint.
    state = load_state(tmp_path / "checkpoints" / "last.pt")["model"]
    assert "backbone.meta.centroids" in state and "linear.raw_weight" in state
