"""One training step of the standard methods (docs/methods.md#kt): teacher, mask, weights,
tallies."""

from __future__ import annotations

import pytest
import torch

from ltray.config import load_config
from ltray.losses import kt_branch_loss
from ltray.models import build_network, d_scale
from ltray.train.methods import StandardMethod, StepContext, _class_balance

COUNTS = torch.tensor([300.0, 60.0, 10.0])  # many / medium / few
GROUPS = torch.tensor([0, 1, 2])


def _step(overrides: list[str], y: torch.Tensor):
    torch.manual_seed(0)
    cfg = load_config(None, ["train.method=kt", *overrides])
    net = build_network(cfg, num_classes=3, in_channels=1, small_input=True)
    net.memory.set_from_sums(torch.rand(3, net.feat_dim) + 0.1, torch.ones(3))  # EMA teacher live
    method = StandardMethod(kt=True)
    fwd = method.wrap(net, cfg)
    x = torch.randn(len(y), 1, 8, 8)
    sc = StepContext(cfg, COUNTS, GROUPS, 1, torch.Generator().manual_seed(0))
    return cfg, net, method.loss(net, fwd, x, y, sc)


def test_one_kt_step_is_ce_plus_the_branch_loss_against_the_d_scaled_ema_teacher():
    y = torch.tensor([0, 0, 1, 2, 2, 1])
    cfg, net, res = _step([], y)
    out = res.out
    teacher = d_scale(out.logits.detach(), net.memory.logits(out.features.detach()))
    ce = torch.nn.functional.cross_entropy(out.logits, y)
    kt = kt_branch_loss(out.kt_logits, teacher, y, phi=cfg.kt.phi, temperature=cfg.kt.temperature)
    torch.testing.assert_close(res.loss, ce + kt)
    # The mask tallies: where the teacher is right, per shot group of the label.
    right = teacher.argmax(1) == y
    for gid, name in enumerate(("many", "medium", "few")):
        hits, total = res.tallies[f"kt_mask_{name}"]
        assert float(total) == float((y == gid).sum())
        assert float(hits) == float(right[y == gid].sum())
    hits, total = res.tallies["kt_mask_overall"]
    assert (float(hits), float(total)) == (float(right.sum()), len(y))


def _backbone_grads(loss: torch.Tensor, net) -> list[torch.Tensor]:
    params = list(net.backbone.parameters())
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


def test_kt_branch_does_not_train_the_backbone_unless_attached():
    y = torch.tensor([0, 1, 2, 0])
    for attached in (False, True):
        _, net, res = _step(["kt.phi=1.0", f"kt.detach_feature={str(not attached).lower()}"], y)
        ce = torch.nn.functional.cross_entropy(res.out.logits, y)
        same = [
            torch.allclose(a, b)
            for a, b in zip(_backbone_grads(res.loss, net), _backbone_grads(ce, net), strict=True)
        ]
        # Detached: the backbone's gradient is CE's alone; attached: the KT branch adds to it.
        assert all(same) != attached


def test_class_balanced_kt_weights_each_sample_by_n_over_c_n_y():
    w = _class_balance(COUNTS)
    torch.testing.assert_close(w, COUNTS.sum() / (3 * COUNTS))
    # Under instance sampling the expected weight is 1 and every class's share is equal.
    p = COUNTS / COUNTS.sum()
    assert float((p * w).sum()) == pytest.approx(1.0)
    torch.testing.assert_close(p * w, torch.full((3,), 1 / 3))
    y = torch.tensor([0, 0, 1, 2])
    cfg, net, res = _step(["kt.class_balance=true"], y)
    out = res.out
    teacher = d_scale(out.logits.detach(), net.memory.logits(out.features.detach()))
    per = kt_branch_loss(
        out.kt_logits, teacher, y, phi=cfg.kt.phi, temperature=1.0, reduction="none"
    )
    ce = torch.nn.functional.cross_entropy(out.logits, y)
    torch.testing.assert_close(res.loss, ce + (per * w[y]).mean())
