"""LLW, ASM, cRT and LWS must learn: on a cache built with the defect each one exists to fix, the
fitted method beats every fixed alternative by a wide margin, on val (where it was chosen) and
on test (so it is not a val artefact). A fit that returned its initial weights, or learned the
wrong thing, lands near the baseline and fails (docs/methods.md#llw, #asm, #crt, #lws).

The hand-built caches have eight classes, classes 0-3 the head (200..100 train images) and 4-7
the tail (30..8); val and test are balanced, 40 images per class. Features are non-negative
clusters around 3·e_y; the cached linear logits are written directly, as 3·onehot(y) + 1 + noise
distorted per class in the way a long-tailed linear head is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ltray.fusion import FitContext, context_of, fit_method
from ltray.fusion.cache import SplitArrays, read_cache
from ltray.fusion.methods import evaluate_fitted
from ltray.fusion.synthetic import make_synthetic_cache
from ltray.metrics import shot_groups

C = 8
HEAD = np.arange(C) < 4
COUNTS = np.array([200, 150, 120, 100, 30, 20, 12, 8])

Cache = tuple[SplitArrays, SplitArrays, SplitArrays, FitContext]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These are tiny problems: thread start-up would dominate on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cache(
    *,
    head_bias: float = 0.0,
    head_scale: float = 1.0,
    ncm_confuses_head: bool = False,
    feat_noise: float = 1.0,
) -> Cache:
    """Train / val / test arrays and the fit context of one hand-built cache.

    Args:
        head_bias: added to the head classes' linear logits (a prior-shifted head).
        head_scale: multiplies the head classes' linear logits (head classes' weight norms).
        ncm_confuses_head: the head classes' feature clusters nearly coincide, so NCM cannot tell
            head classes apart while it still separates the tail.
        feat_noise: std of the feature noise (how good NCM is).
    """
    rng = np.random.default_rng(0)
    centres = 3.0 * np.eye(C)
    if ncm_confuses_head:
        centres[HEAD] = 0.3 * np.eye(C)[HEAD]
        centres[HEAD, 0] += 3.0

    def split(per_class: np.ndarray) -> SplitArrays:
        y = np.repeat(np.arange(C), per_class)
        h = np.maximum(centres[y] + feat_noise * rng.standard_normal((len(y), C)), 0.0)
        clean = 3.0 * np.eye(C)[y] + 1.0 + rng.standard_normal((len(y), C))
        z = np.where(HEAD, head_scale, 1.0) * clean + np.where(HEAD, head_bias, 0.0)
        return SplitArrays(h.astype(np.float32), z.astype(np.float32), y)

    ctx = FitContext(C, COUNTS, shot_groups(COUNTS))
    return split(COUNTS), split(np.full(C, 40)), split(np.full(C, 40)), ctx


def _overall(cache: Cache, name: str, settings: dict | None = None) -> tuple[float, float, dict]:
    """(val overall, test overall, chosen values) of method ``name`` fitted on train + val."""
    train, val, test, ctx = cache
    fitted = fit_method(name, train, val, ctx, settings)
    return (
        evaluate_fitted(fitted, val, ctx.groups).overall,
        evaluate_fitted(fitted, test, ctx.groups).overall,
        fitted.chosen,
    )


def test_llw_undoes_a_per_class_bias_no_fixed_rule_can() -> None:
    """Head classes' linear logits carry +4 (a head-biased linear classifier) and NCM is weak:
    linear, NCM and the sum rule (LLW's starting point) all stay near 0.5; LLW's per-class
    b₁ removes the bias and reaches ≈ 0.88."""
    cache = _cache(head_bias=4.0, feat_noise=3.0)
    fixed = [_overall(cache, name) for name in ("linear", "ncm", "sum")]
    val, test, chosen = _overall(cache, "llw")
    assert chosen["epoch"] > 0  # a trained epoch won over the initial sum rule
    assert val > max(v for v, _, _ in fixed) + 0.2
    assert test > max(t for _, t, _ in fixed) + 0.2


def test_asm_switches_to_ncm_exactly_where_the_linear_head_fails() -> None:
    """Two complementary branches: the linear head is right on the head classes and biased
    against the tail (+2.5 on head logits); NCM cannot tell the head classes apart but is right
    on the tail. Each alone scores ≈ 0.6; a switch that learned when to trust NCM, ≈ 0.9."""
    cache = _cache(head_bias=2.5, ncm_confuses_head=True)
    (lin_val, lin_test, _), (ncm_val, ncm_test, _) = (_overall(cache, n) for n in ("linear", "ncm"))
    val, test, chosen = _overall(cache, "asm")
    assert val > max(lin_val, ncm_val) + 0.15
    assert test > max(lin_test, ncm_test) + 0.15
    assert chosen["val_f1"] > 0.5  # the switch predicts its target, not just the τ choice


def test_lws_rescales_head_classes_with_inflated_logits() -> None:
    """Head classes' logits are doubled (the weight-norm growth of an instance-trained head):
    the linear head scores ≈ 0.7; LWS's per-class scales f bring it to ≈ 0.9."""
    cache = _cache(head_scale=2.0)
    lin_val, lin_test, _ = _overall(cache, "linear")
    val, test, chosen = _overall(cache, "lws")
    assert chosen["epoch"] > 0  # a trained epoch won over f = 1 (the linear head)
    assert val > lin_val + 0.12
    assert test > lin_test + 0.12


@pytest.fixture(scope="module")
def stage1_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """synthetic.py's cache: a linear head trained by instance-balanced CE on ρ = 100 data."""
    return make_synthetic_cache(
        tmp_path_factory.mktemp("crt") / "cache",
        num_classes=10,
        feat_dim=16,
        n_max=300,
        rho=100,
        noise=1.6,
        val_per_class=30,
    )


def test_crt_retrains_the_head_classifier_towards_the_tail(stage1_cache: Path) -> None:
    """The cached head was trained on ρ = 100 data with instance sampling and rarely predicts a
    few-shot class (few ≈ 0.1); cRT's classifier re-trained under class-balanced sampling on
    the same features gains on overall and far more on few."""
    cache = read_cache(stage1_cache)
    ctx = context_of(cache)
    linear = fit_method("linear", cache.train, cache.val, ctx)
    crt = fit_method("crt", cache.train, cache.val, ctx)
    lin = {s: evaluate_fitted(linear, getattr(cache, s), ctx.groups) for s in ("val", "test")}
    new = {s: evaluate_fitted(crt, getattr(cache, s), ctx.groups) for s in ("val", "test")}
    assert new["val"].overall > lin["val"].overall + 0.08
    assert new["test"].overall > lin["test"].overall + 0.05
    assert new["test"].few > lin["test"].few + 0.2
