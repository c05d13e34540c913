"""One training step of the standard methods (docs/methods.md#kt): teacher, mask, weights,
tallies."""

from __future__ import annotations

import math

import pytest
import torch

from ltray.config import load_config
from ltray.models import Backbone, ClassMemory, LTNet, build_network
from ltray.train.methods import StandardMethod, StepContext
from ltray.train.standard import class_balance as _class_balance

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


# ------------------------------------------------------------------ one KT step, by hand
#
# A two-dimensional "backbone" that passes its input through, so the features h are the numbers
# written here, and hand-set heads. The memory starts from class means M0 and takes one EMA step
# (momentum 0.75, α = 0.25) on a class-2 image before the batch, so the teacher must come from
# the moving average: M_2 = 0.75·(0.6, 0.8) + 0.25·(0.8, 0.6) = (0.65, 0.75).


class PassThrough(Backbone):
    """Features = the input [B, 2, 1, 1] flattened: h is exactly what the test feeds in."""

    feat_dim = 2

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return x


H = [(3.0, 4.0), (1.0, 0.0), (0.0, 2.0), (4.0, 3.0)]  # h of the four images, all >= 0
Y = [2, 1, 1, 0]
W_LIN, B_LIN = [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [0.0, 0.0, 1.0]
W_KT = [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]
M_EMA = [(1.0, 0.0), (0.0, 1.0), (0.65, 0.75)]  # the memory the teacher must read
PHI, TEMP = 0.7, 2.0


def _kt_net(*, with_memory: bool = True) -> LTNet:
    net = LTNet(PassThrough(), num_classes=3, kt_head=True, memory=ClassMemory(3, 2, momentum=0.75))
    with torch.no_grad():
        net.linear.weight.copy_(torch.tensor(W_LIN))
        net.linear.bias.copy_(torch.tensor(B_LIN))
        net.kt_head.weight.copy_(torch.tensor(W_KT))
        net.kt_head.bias.zero_()
    if with_memory:
        net.memory.set_from_sums(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), torch.ones(3))
        net.memory.step(torch.tensor([[4.0, 3.0]]), torch.tensor([2]), all_reduce=False)
    return net


def _run_step(net: LTNet, overrides: list[str]):
    base = [f"kt.phi={PHI}", f"kt.temperature={TEMP}", "kt.class_balance=false"]  # unweighted
    cfg = load_config(None, [*base, *overrides])
    method = StandardMethod(kt=True)
    x = torch.tensor(H).view(len(H), 2, 1, 1)
    sc = StepContext(cfg, COUNTS, GROUPS, 1, torch.Generator().manual_seed(0))
    return method.loss(net, method.wrap(net, cfg), x, torch.tensor(Y), sc)


def _dot(a, b) -> float:
    return sum(u * v for u, v in zip(a, b, strict=True))


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def _ce(z: list[float], y: int) -> float:
    return -math.log(_softmax(z)[y])


def _by_hand() -> dict[str, list]:
    """Per image: linear logits, d-scaled EMA-cosine teacher, mask, KT-head logits, ℓ_i."""
    out: dict[str, list] = {k: [] for k in ("z_l", "teacher", "mask", "ce_l", "l2")}
    for h, y in zip(H, Y, strict=True):
        z_l = [_dot(w, h) + b for w, b in zip(W_LIN, B_LIN, strict=True)]
        h_hat = [v / math.hypot(*h) for v in h]
        z_d = [_dot(h_hat, m) / math.hypot(*m) for m in M_EMA]  # cosine to M_c / ||M_c||
        # d-scaling: map z_d onto [min z_l, max z_l] of the same image
        scale = (max(z_l) - min(z_l)) / (max(z_d) - min(z_d))
        teacher = [min(z_l) + (v - min(z_d)) * scale for v in z_d]
        z_s = [_dot(w, h) for w in W_KT]
        ce_s = _ce(z_s, y)
        masked = teacher.index(max(teacher)) == y  # the teacher is right on this image
        if masked:
            p_t, p_s = _softmax([v / TEMP for v in teacher]), _softmax([v / TEMP for v in z_s])
            kl = sum(t * math.log(t / s) for t, s in zip(p_t, p_s, strict=True))
            l2 = (1 - PHI) * ce_s + PHI * TEMP**2 * kl
        else:
            l2 = ce_s
        for k, v in (("z_l", z_l), ("teacher", teacher), ("mask", masked)):
            out[k].append(v)
        out["ce_l"].append(_ce(z_l, y))
        out["l2"].append(l2)
    return out


def test_the_hand_example_has_both_sides_of_the_mask() -> None:
    """The example exercises what it should: the teacher is right on images 0 and 2 only, and
    its logits are not the linear ones (d-scaling moved them)."""
    ref = _by_hand()
    assert ref["mask"] == [True, False, True, False]
    assert ref["teacher"][0] != ref["z_l"][0]


def test_one_kt_step_by_hand() -> None:
    """L = mean CE(z_l, y) + mean ℓ_i, with ℓ_i = (1 − φ)·CE(z_s, y) + φ·T²·KL(p_T ‖ p_S) where
    the d-scaled cosine teacher of the EMA memory is right, CE(z_s, y) elsewhere
    (docs/methods.md#kt). Also the logged parts and the per-group mask rate."""
    ref = _by_hand()
    res = _run_step(_kt_net(), [])
    torch.testing.assert_close(res.out.features, torch.tensor(H))
    ce_l, l2 = sum(ref["ce_l"]) / 4, sum(ref["l2"]) / 4
    assert float(res.parts["loss_cls"]) == pytest.approx(ce_l, rel=1e-5)
    assert float(res.parts["loss_kt"]) == pytest.approx(l2, rel=1e-5)
    assert res.loss.item() == pytest.approx(ce_l + l2, rel=1e-5)
    assert res.memory_labels.tolist() == Y
    # Mask rate per shot group of the label: class 0 many (image 3: wrong), class 1 medium
    # (images 1, 2: one right), class 2 few (image 0: right).
    rates = {k: (float(h), float(t)) for k, (h, t) in res.tallies.items()}
    assert rates == {
        "kt_mask_many": (0.0, 1.0),
        "kt_mask_medium": (1.0, 2.0),
        "kt_mask_few": (1.0, 1.0),
        "kt_mask_overall": (2.0, 4.0),
    }


def test_class_balance_auto_weights_the_kt_loss_only_under_instance_sampling() -> None:
    """The default kt.class_balance=auto: each sample's KT loss weighted N/(C·n_y) under
    instance sampling; off under a sampler that already re-weights the classes."""
    assert load_config().kt.class_balance == "auto" and load_config().kt_class_balance
    for sampler in ("class_balanced", "sqrt"):
        assert not load_config(None, [f"data.sampler={sampler}"]).kt_class_balance
    assert load_config(None, ["kt.class_balance=false"]).kt_class_balance is False
    plain = _run_step(_kt_net(), [])
    weighted = _run_step(_kt_net(), ["kt.class_balance=auto"])
    w = [COUNTS.sum().item() / (len(COUNTS) * COUNTS[y].item()) for y in Y]
    l2 = _by_hand()["l2"]
    assert float(weighted.parts["loss_kt"]) == pytest.approx(
        sum(wi * li for wi, li in zip(w, l2, strict=True)) / 4, rel=1e-5
    )
    assert float(plain.parts["loss_kt"]) == pytest.approx(sum(l2) / 4, rel=1e-5)


def test_before_the_memory_exists_the_kt_head_learns_by_plain_ce() -> None:
    """No teacher before the memory's first full pass: L = CE(z_l, y) + CE(z_s, y)."""
    res = _run_step(_kt_net(with_memory=False), [])
    z_s = [[_dot(w, h) for w in W_KT] for h in H]
    expect = sum(_ce(z_l, y) for z_l, y in zip(_by_hand()["z_l"], Y, strict=True)) / 4
    expect += sum(_ce(z, y) for z, y in zip(z_s, Y, strict=True)) / 4
    assert res.loss.item() == pytest.approx(expect, rel=1e-5)
    assert res.tallies == {}


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
    """kt.class_balance: ℓ_i is weighted by N / (C·n_{y_i}) = 370 / (3·n_y); the linear head's
    CE is not."""
    w = _class_balance(COUNTS)
    torch.testing.assert_close(w, torch.tensor([370 / 900, 370 / 180, 370 / 30]))
    # Under instance sampling the expected weight is 1 and every class's share is equal.
    p = COUNTS / COUNTS.sum()
    assert float((p * w).sum()) == pytest.approx(1.0)
    torch.testing.assert_close(p * w, torch.full((3,), 1 / 3))
    ref = _by_hand()
    res = _run_step(_kt_net(), ["kt.class_balance=true"])
    weighted = sum(li * 370 / (3 * float(COUNTS[y])) for li, y in zip(ref["l2"], Y, strict=True))
    assert res.loss.item() == pytest.approx(sum(ref["ce_l"]) / 4 + weighted / 4, rel=1e-5)
