"""Formulas of the post-hoc stage pinned by hand-computed cases and identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltray.errors import ConfigError
from ltray.fusion import FUSION_METHODS, FitContext, fit_method, parse_settings
from ltray.fusion.asm import asm_target, binary_f1
from ltray.fusion.baselines import log_prior, logit_adjusted, tau_norm_logits
from ltray.fusion.cache import SplitArrays
from ltray.fusion.llw import init_llw, llw_logits
from ltray.fusion.ncm import class_means, d_scale, ncm_logits
from ltray.fusion.rules import (
    max_concat_prob_rule,
    max_concat_rule,
    softmax_sum_rule,
    sum_rule,
    weighted_rule,
)
from ltray.fusion.select import class_balanced_indices, grid, weighted_scores

T = torch.tensor


def test_class_means_hand_computed_and_empty_class_masked() -> None:
    feats = np.array([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]], dtype=np.float32)
    mem = class_means(feats, np.array([0, 0, 1]), num_classes=3)
    # ĥ: (0.6, 0.8), (0, 1) → mean (0.3, 0.9); class 1: (1, 0); class 2 empty → masked, no NaN.
    torch.testing.assert_close(mem.means[0], T([0.3, 0.9]))
    torch.testing.assert_close(mem.means[1], T([1.0, 0.0]))
    assert mem.valid.tolist() == [True, True, False]
    assert not torch.isnan(mem.means).any()
    z = ncm_logits(T([[2.0, 0.0]]), mem)
    assert z[0, 2] == -math.inf
    torch.testing.assert_close(z[0, :2], T([0.3 / math.sqrt(0.9), 1.0]))
    ze = ncm_logits(T([[2.0, 0.0]]), mem, metric="euclidean")
    torch.testing.assert_close(ze[0, :2], T([-(0.7**2 + 0.9**2), 0.0]))


def test_d_scale_maps_onto_linear_range_and_keeps_minus_inf() -> None:
    z_l = T([[1.0, 5.0, 3.0, 2.0]])
    z_d = T([[0.2, 0.6, -math.inf, 0.4]])
    out = d_scale(z_l, z_d)
    # range of z_l = [1, 5]; z_d finite range [0.2, 0.6] → 1 + (z−0.2)·10
    torch.testing.assert_close(out[0, [0, 1, 3]], T([1.0, 5.0, 3.0]))
    assert out[0, 2] == -math.inf
    flat = d_scale(z_l, T([[0.5, 0.5, 0.5, 0.5]]))  # zero range guarded: every entry → min z_l
    torch.testing.assert_close(flat, T([[1.0, 1.0, 1.0, 1.0]]))


def test_sum_and_softmax_sum_hand_computed() -> None:
    z_l, z_d = T([[0.0, 1.0]]), T([[2.0, 0.0]])
    torch.testing.assert_close(sum_rule(z_l, z_d), T([[2.0, 1.0]]))
    s = 1 / (1 + math.e)
    expected = 0.5 * T([[s + 1 / (1 + math.exp(-2)), 1 - s + 1 - 1 / (1 + math.exp(-2))]])
    torch.testing.assert_close(softmax_sum_rule(z_l, z_d), expected)


def test_max_concat_tie_break_goes_to_the_linear_class() -> None:
    # d-scaling makes max z̃_d = max z_l: class 1 (linear top) ties with class 0 (NCM top).
    z_l = T([[1.0, 3.0, 2.0]])
    z_d = T([[3.0, 1.0, 2.0]])
    assert max_concat_rule(z_l, z_d).argmax(1).item() == 1  # plain argmax would say 0
    assert max_concat_rule(z_l, z_d, tie_break="ncm").argmax(1).item() == 0
    # float noise (the original code's arbiter) no longer decides the tie
    assert max_concat_rule(z_l, z_d + T([[3e-7, 0, 0]])).argmax(1).item() == 1
    # a real (non-tie) win of the NCM branch still wins
    assert max_concat_rule(z_l, T([[4.0, 1.0, 2.0]])).argmax(1).item() == 0
    # the non-tied values are max(z_l, z̃_d)
    torch.testing.assert_close(max_concat_rule(z_l, z_d)[0, [0, 2]], T([3.0, 2.0]))


def test_max_concat_prob_hand_computed() -> None:
    z_l, z_d = T([[0.0, 0.0]]), T([[math.log(3.0), 0.0]])
    torch.testing.assert_close(max_concat_prob_rule(z_l, z_d), T([[0.75, 0.5]]))


def test_weighted_rule_endpoints_and_fast_grid() -> None:
    g = torch.Generator().manual_seed(0)
    z_l, z_d = torch.randn(50, 7, generator=g), torch.randn(50, 7, generator=g)
    z_d[:, 3] = -math.inf
    torch.testing.assert_close(weighted_rule(z_l, z_d, 1.0), z_l)  # w = 1 is the linear head
    torch.testing.assert_close(weighted_rule(z_l, z_d, 0.25), 0.25 * z_l + 0.75 * z_d)
    labels = torch.randint(7, (50,), generator=g)
    ws = grid(0, 1, 0.25)
    from ltray.fusion.select import balanced_accuracy

    def slow(zl: torch.Tensor, zd: torch.Tensor, y: torch.Tensor, c: int) -> list[float]:
        return [balanced_accuracy(weighted_rule(zl, zd, w).argmax(1), y, c) for w in ws]

    assert weighted_scores(z_l, z_d, labels, ws, 7) == pytest.approx(slow(z_l, z_d, labels, 7))
    # the pruned path (top-k candidates + exactness bound) on a wide, unmasked problem
    zl, zd = torch.randn(400, 200, generator=g), torch.randn(400, 200, generator=g)
    zl[:, :50] += torch.randn(400, 1, generator=g)  # correlated blocks: some rows need fallback
    y = torch.randint(200, (400,), generator=g)
    ws = grid(0, 1, 0.05)
    assert weighted_scores(zl, zd, y, ws, 200, k=2) == pytest.approx(slow(zl, zd, y, 200))
    assert weighted_scores(zl, zd, y, ws, 200) == pytest.approx(slow(zl, zd, y, 200))


def test_tau_norm_and_logit_adjustment() -> None:
    h = T([[1.0, 2.0]])
    w = T([[3.0, 4.0], [0.0, 1.0]])
    b = T([0.5, -0.5])
    torch.testing.assert_close(tau_norm_logits(h, w, b, 0.0), h @ w.T + b)  # τ = 0: linear head
    torch.testing.assert_close(tau_norm_logits(h, w, b, 1.0), T([[11 / 5 + 0.5, 2.0 - 0.5]]))
    log_pi = log_prior(np.array([3, 1, 0]))  # zero count counts as 1
    torch.testing.assert_close(log_pi, torch.log(T([0.6, 0.2, 0.2])))
    z = T([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(logit_adjusted(z, log_pi, 0.0), z)  # τ = 0: linear head
    torch.testing.assert_close(logit_adjusted(z, log_pi, 1.0), z - log_pi)


def test_llw_at_init_is_the_sum_rule_and_masked_class_has_no_nan_grad() -> None:
    g = torch.Generator().manual_seed(1)
    z_l, z_d = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    z_d[:, 4] = -math.inf
    p = init_llw(5)
    out = llw_logits(z_l, z_d, p)
    torch.testing.assert_close(out, sum_rule(z_l, z_d))
    torch.nn.functional.cross_entropy(out, torch.arange(8) % 4).backward()
    assert all(torch.isfinite(t.grad).all() for t in p.tensors())


def test_asm_target_matches_definition() -> None:
    labels = T([0, 1, 2, 0])
    z_l = T([[0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0], [0, 5.0, 0]])  # wrong, wrong, right, wrong
    z_d = T([[5.0, 0, 0], [0, 0, 5.0], [0, 0, 5.0], [5.0, 0, 0]])  # right, wrong, right, right
    # 1 ⇔ linear wrong AND NCM right: only rows 0 and 3
    assert asm_target(z_l, z_d, labels).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert binary_f1(T([True, True, False, False]), T([1.0, 0, 0, 1.0])) == pytest.approx(0.5)


def test_class_balanced_indices_cover_classes_uniformly() -> None:
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    idx = class_balanced_indices(labels, 30000, torch.Generator().manual_seed(0))
    freq = torch.bincount(labels[idx], minlength=3).float() / 30000
    torch.testing.assert_close(freq, torch.full((3,), 1 / 3), atol=0.02, rtol=0)


def _tiny() -> tuple[SplitArrays, SplitArrays, FitContext]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4)).astype(np.float32)

    def split(n: int) -> SplitArrays:
        x = np.abs(rng.standard_normal((n, 4))).astype(np.float32)
        return SplitArrays(x, x @ w.T, np.arange(n) % 3)

    ctx = FitContext(
        3,
        np.array([5, 3, 1]),
        np.array([1, 1, 2]),
        {"linear_weight": w, "linear_bias": np.zeros(3, np.float32)},
    )
    return split(9), split(6), ctx


def test_fitted_identities_through_the_fit_api() -> None:
    train, val, ctx = _tiny()
    lin = val.logits
    for name, settings in [
        ("tau_norm", {"tau_min": 0, "tau_max": 0}),
        ("logit_adj", {"tau_min": 0, "tau_max": 0}),
        ("weighted", {"w_min": 1, "w_max": 1}),
    ]:
        np.testing.assert_allclose(
            fit_method(name, train, val, ctx, settings).scores(val).scores,
            lin,
            rtol=1e-5,
            atol=1e-5,
        )
    llw0 = fit_method("llw", train, val, ctx, {"epochs": 0}).scores(val).scores
    summ = fit_method("sum", train, val, ctx).scores(val).scores
    np.testing.assert_allclose(llw0, summ, rtol=1e-6)


def test_unknown_settings_and_methods_are_config_errors_listing_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"llw\.lrr: unknown setting.*valid keys of llw: .*lr"):
        parse_settings("llw", {"lrr": 0.1})
    with pytest.raises(ConfigError, match=r"llw\.epochs"):
        parse_settings("llw", {"epochs": -1})
    with pytest.raises(ConfigError, match=r"unknown post-hoc method 'nope'; known: .*llw"):
        parse_settings("nope", {})
    assert {
        "sum",
        "softmax_sum",
        "max_concat",
        "max_concat_prob",
        "weighted",
        "llw",
        "asm",
        "ncm",
        "ncm_ema",
        "crt",
        "lws",
        "tau_norm",
        "logit_adj",
        "linear",
        "kt",
    } <= set(FUSION_METHODS.names())


@pytest.mark.parametrize("shift, bias, expected", [(0.0, 3.0, "drop"), (2.0, -2.0, "keep")])
def test_tau_norm_keeps_or_drops_the_trained_bias_by_val(
    shift: float, bias: float, expected: str
) -> None:
    """W = I (unit norms: τ changes nothing), h = e_y + shift·e_0. A bias of +3 on class 0
    sends every image to class 0 (dropping it is right); with h shifted towards class 0 the
    trained bias −2 is what undoes the shift (keeping it is right). Val decides, τ = 0 with
    the bias kept is exactly the linear head."""
    y = np.arange(12) % 3
    h = np.eye(3, dtype=np.float32)[y] + shift * np.eye(3, dtype=np.float32)[0]
    split = SplitArrays(h, h, y)
    b = np.array([bias, 0.0, 0.0], np.float32)
    ctx = FitContext(3, np.array([9, 4, 1]), np.array([1, 1, 2]),
                     {"linear_weight": np.eye(3, dtype=np.float32), "linear_bias": b})  # fmt: skip
    fitted = fit_method("tau_norm", split, split, ctx)
    assert fitted.chosen["bias"] == expected and fitted.chosen["val_score"] == 1.0
    assert (fitted.scores(split).scores.argmax(1) == y).all()
    forced = fit_method("tau_norm", split, split, ctx, {"bias": "drop" if shift else "keep"})
    assert forced.chosen["val_score"] == pytest.approx(1 / 3)  # every image to class 0
