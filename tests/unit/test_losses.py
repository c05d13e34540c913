"""Stage-1 losses (docs/methods.md#kt), pinned by explicit hand formulas."""

from __future__ import annotations

import math

import pytest
import torch

from ltray.errors import ConfigError
from ltray.losses import LOSSES, kt_branch_loss

INF = float("inf")
PHI, T = 0.8, 2.0


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _ce2(z0: float, z1: float, y: int) -> float:
    """Cross-entropy of 2-class logits (z0, z1) at label y, written out."""
    lse = math.log(math.exp(z0) + math.exp(z1))
    return lse - (z0 if y == 0 else z1)


# Three samples, two classes:
#   s1: teacher argmax 0 == y=0 -> distilled;  s2: teacher argmax 1 != y=0 -> plain CE;
#   s3: teacher (−inf, 3) -> p_T = (0, 1), argmax 1 == y=1 -> distilled with a masked class.
Z_S = [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
Z_T = [[2.0, 0.0], [0.0, 1.0], [-INF, 3.0]]
Y = [0, 0, 1]


def _by_hand() -> tuple[float, float, float]:
    ce1 = _ce2(1.0, 0.0, 0)  # = log(1 + e^−1)
    # p_T = softmax((2, 0)/2) = (σ(1), σ(−1)); p_S = softmax((1, 0)/2) = (σ(.5), σ(−.5))
    kl1 = _sig(1) * math.log(_sig(1) / _sig(0.5)) + _sig(-1) * math.log(_sig(-1) / _sig(-0.5))
    l1 = (1 - PHI) * ce1 + PHI * T**2 * kl1
    l2 = _ce2(0.0, 1.0, 0)  # = log(1 + e)
    # p_T = (0, 1), p_S = (1/2, 1/2): KL = 1·log(1 / (1/2)) = log 2; the 0·log 0 term is 0
    l3 = (1 - PHI) * math.log(2.0) + PHI * T**2 * math.log(2.0)
    return l1, l2, l3


def _kt(rows: list[int], **kw: object) -> torch.Tensor:
    return kt_branch_loss(
        torch.tensor([Z_S[i] for i in rows]),
        torch.tensor([Z_T[i] for i in rows]),
        torch.tensor([Y[i] for i in rows]),
        phi=PHI,
        temperature=T,
        **kw,  # type: ignore[arg-type]
    )


def test_kt_loss_by_hand():
    l1, l2, l3 = _by_hand()
    # batch-mean: every term summed over its own samples, divided by B = 3
    assert _kt([0, 1, 2]).item() == pytest.approx((l1 + l2 + l3) / 3, rel=1e-6)
    per = _kt([0, 1, 2], reduction="none")
    torch.testing.assert_close(per, torch.tensor([l1, l2, l3]))
    assert _kt([0, 1, 2], reduction="sum").item() == pytest.approx(l1 + l2 + l3, rel=1e-6)


def test_kt_loss_all_masked_and_none_masked():
    l1, l2, l3 = _by_hand()
    all_masked = _kt([0, 2])  # both teacher-correct: the plain-CE side is empty
    assert torch.isfinite(all_masked)
    assert all_masked.item() == pytest.approx((l1 + l3) / 2, rel=1e-6)
    none_masked = _kt([1, 1])  # no teacher-correct sample: the distilled side is empty
    assert torch.isfinite(none_masked)
    assert none_masked.item() == pytest.approx(l2, rel=1e-6)


def test_kt_loss_gradient_finite_with_minus_inf_teacher():
    z_s = torch.tensor(Z_S, requires_grad=True)
    z_t = torch.tensor(Z_T + [[-INF, -INF]])  # a row with no teacher at all
    z_s4 = torch.cat([z_s, torch.zeros(1, 2)])
    loss = kt_branch_loss(z_s4, z_t, torch.tensor(Y + [0]), phi=PHI, temperature=T)
    loss.backward()
    assert torch.isfinite(loss) and z_s.grad is not None and torch.isfinite(z_s.grad).all()
    # the teacher-less row is plain CE: log 2 for zero logits
    per = kt_branch_loss(z_s4, z_t, torch.tensor(Y + [0]), phi=PHI, temperature=T, reduction="none")
    assert per[3].item() == pytest.approx(math.log(2.0))


def test_kt_loss_teacher_is_detached():
    z_t = torch.tensor(Z_T[:2], requires_grad=True)
    loss = kt_branch_loss(
        torch.tensor(Z_S[:2], requires_grad=True), z_t, torch.tensor(Y[:2]), phi=PHI, temperature=T
    )
    loss.backward()
    assert z_t.grad is None


def test_kt_loss_without_memory_and_phi_zero_is_ce():
    z_s, z_t, y = torch.tensor(Z_S), torch.tensor(Z_T), torch.tensor(Y)
    ce = sum(_ce2(*Z_S[i], Y[i]) for i in range(3)) / 3  # type: ignore[call-arg]
    assert kt_branch_loss(z_s, None, y, phi=PHI, temperature=T).item() == pytest.approx(ce)
    assert kt_branch_loss(z_s, z_t, y, phi=0.0, temperature=T).item() == pytest.approx(ce)


def test_ce_by_hand():
    ce = LOSSES.get("ce")
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = ce(z, torch.tensor([0, 0]), class_counts=torch.tensor([5, 1]))
    assert out.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2)


def test_balanced_softmax_by_hand():
    bs = LOSSES.get("balanced_softmax")
    z = torch.zeros(2, 2)
    counts = torch.tensor([3, 1])
    # π = (3/4, 1/4); with zero logits the adjusted softmax is π itself: CE = −log π_y
    per = bs(z, torch.tensor([0, 1]), class_counts=counts, reduction="none")
    torch.testing.assert_close(per, torch.tensor([-math.log(0.75), -math.log(0.25)]))
    assert bs(z, torch.tensor([0, 1]), class_counts=counts).item() == pytest.approx(
        (-math.log(0.75) - math.log(0.25)) / 2
    )


def test_balanced_softmax_zero_count_is_finite():
    bs = LOSSES.get("balanced_softmax")
    out = bs(torch.zeros(1, 3), torch.tensor([2]), class_counts=torch.tensor([4, 4, 0]))
    assert torch.isfinite(out)


def test_registry():
    assert LOSSES.names() == ["balanced_softmax", "ce"]
    with pytest.raises(ConfigError, match="unknown loss 'focal'"):
        LOSSES.get("focal", key="loss.name")
    with pytest.raises(ValueError, match="reduction"):
        LOSSES.get("ce")(
            torch.zeros(1, 2), torch.tensor([0]), class_counts=torch.ones(2), reduction="avg"
        )  # type: ignore[arg-type]


def test_kt_loss_mask_all_distils_the_wrong_teacher_too():
    l1, _, l3 = _by_hand()
    # s2: teacher argmax 1, y = 0; with mask=all it is distilled too:
    # p_T = softmax((0, 1)/2) = (σ(−.5), σ(.5)), p_S = softmax((0, 1)/2) = the same: KL = 0.
    l2_all = (1 - PHI) * _ce2(0.0, 1.0, 0) + PHI * T**2 * 0.0
    per = _kt([0, 1, 2], mask="all", reduction="none")
    torch.testing.assert_close(per, torch.tensor([l1, l2_all, l3]))
    with pytest.raises(ValueError, match="mask must be 'correct' or 'all'"):
        _kt([0], mask="some")
