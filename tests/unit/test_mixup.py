"""Mixup plans, mixing and mixed losses (docs/methods.md#mixup)."""

from __future__ import annotations

import pytest
import torch

from ltray.losses import LOSSES, kt_branch_loss
from ltray.mixup import MixPlan, apply_mix, dominant_labels, mixed_loss, sample_mixup

GROUPS = torch.tensor([0, 1, 2, 2])  # classes 2 and 3 are few-shot
LABELS = torch.tensor([0, 1, 2, 3, 0, 2, 1, 3])
FEW_ROWS = [False, False, True, True, False, True, False, True]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _lams(alpha: float, n: int) -> torch.Tensor:
    g = _gen()
    return torch.tensor(
        [
            sample_mixup(LABELS, variant="input", alpha=alpha, groups=None, generator=g).lam
            for _ in range(n)
        ]
    )


def test_lambda_distribution():
    lam = _lams(1.0, 2000)  # Beta(1, 1) = U(0, 1): mean 1/2, variance 1/12
    assert ((lam >= 0) & (lam <= 1)).all()
    assert lam.mean().item() == pytest.approx(0.5, abs=0.03)
    assert lam.var().item() == pytest.approx(1 / 12, abs=0.01)
    lam = _lams(0.1, 2000)  # Beta(0.1, 0.1): U-shaped, mass near 0 and 1, symmetric
    assert lam.mean().item() == pytest.approx(0.5, abs=0.05)
    assert ((lam < 0.05) | (lam > 0.95)).float().mean() > 0.6


def test_plan_is_deterministic_given_generator():
    a = sample_mixup(LABELS, variant="input", alpha=0.3, groups=None, generator=_gen(3))
    b = sample_mixup(LABELS, variant="input", alpha=0.3, groups=None, generator=_gen(3))
    assert a.lam == b.lam and torch.equal(a.perm, b.perm) and a.mix.all()
    assert sorted(a.perm.tolist()) == list(range(len(LABELS)))


def test_tail_only_mixes_only_few_shot():
    plan = sample_mixup(LABELS, variant="tail", alpha=1.0, groups=GROUPS, generator=_gen())
    assert plan.mix.tolist() == FEW_ROWS
    x = torch.arange(8.0).unsqueeze(1).repeat(1, 3)
    out = apply_mix(x, plan)
    for i, few in enumerate(FEW_ROWS):
        if few:
            expected = plan.lam * x[i] + (1 - plan.lam) * x[plan.perm[i]]
            torch.testing.assert_close(out[i], expected)
        else:
            assert torch.equal(out[i], x[i])


def test_head_only_is_the_complement():
    plan = sample_mixup(LABELS, variant="head", alpha=1.0, groups=GROUPS, generator=_gen())
    assert plan.mix.tolist() == [not f for f in FEW_ROWS]


def test_within_group_partners():
    plan = sample_mixup(
        LABELS, variant="tail", alpha=1.0, groups=GROUPS, generator=_gen(1), within_group=True
    )
    few = torch.tensor(FEW_ROWS)
    assert few[plan.perm[few]].all()  # few-shot rows are mixed with few-shot rows only
    assert torch.equal(plan.perm[~few], torch.arange(8)[~few])


def test_tail_needs_groups():
    with pytest.raises(ValueError, match="groups"):
        sample_mixup(LABELS, variant="tail", alpha=1.0, groups=None, generator=_gen())


def test_apply_mix_images():
    x = torch.randn(4, 1, 2, 2)
    plan = MixPlan(lam=0.25, perm=torch.tensor([1, 0, 3, 2]), mix=torch.ones(4, dtype=torch.bool))
    torch.testing.assert_close(apply_mix(x, plan)[0], 0.25 * x[0] + 0.75 * x[1])


def test_mixed_loss_lambda_one_equals_plain():
    torch.manual_seed(0)
    z = torch.randn(8, 4)
    counts = torch.tensor([50, 20, 5, 2])
    plan = MixPlan(lam=1.0, perm=torch.randperm(8), mix=torch.ones(8, dtype=torch.bool))
    for name in LOSSES:
        fn = LOSSES.get(name)
        got = mixed_loss(
            lambda t, fn=fn: fn(z, t, class_counts=counts, reduction="none"), LABELS, plan
        )
        assert got.item() == fn(z, LABELS, class_counts=counts).item()
    z_t = torch.randn(8, 4)
    got = mixed_loss(
        lambda t: kt_branch_loss(z, z_t, t, phi=0.8, temperature=1.0, reduction="none"),
        LABELS,
        plan,
    )
    assert got.item() == kt_branch_loss(z, z_t, LABELS, phi=0.8, temperature=1.0).item()


def test_mixed_loss_by_hand():
    torch.manual_seed(0)
    z = torch.randn(8, 4)
    ce = LOSSES.get("ce")
    perm = torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])
    mix = torch.tensor(FEW_ROWS)
    plan = MixPlan(lam=0.3, perm=perm, mix=mix)
    per = mixed_loss(
        lambda t: ce(z, t, class_counts=torch.ones(4), reduction="none"),
        LABELS,
        plan,
        reduction="none",
    )
    la = torch.nn.functional.cross_entropy(z, LABELS, reduction="none")
    lb = torch.nn.functional.cross_entropy(z, LABELS[perm], reduction="none")
    for i in range(8):
        expected = 0.3 * la[i] + 0.7 * lb[i] if FEW_ROWS[i] else la[i]
        assert per[i].item() == pytest.approx(expected.item(), rel=1e-6)


def test_dominant_labels():
    perm = torch.tensor([1, 0, 3, 2])
    y = torch.tensor([0, 1, 2, 3])
    mix = torch.tensor([True, True, False, True])
    assert dominant_labels(y, MixPlan(lam=0.7, perm=perm, mix=mix)).tolist() == [0, 1, 2, 3]
    assert dominant_labels(y, MixPlan(lam=0.5, perm=perm, mix=mix)).tolist() == [0, 1, 2, 3]
    # λ < 0.5: mixed rows take the partner's label, unmixed row 2 keeps its own
    assert dominant_labels(y, MixPlan(lam=0.2, perm=perm, mix=mix)).tolist() == [1, 0, 2, 2]
