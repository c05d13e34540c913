"""No post-hoc method may look at the test split while it fits.

Three independent guards: (1) a tripwire test split that raises on any attribute access while any
registered method's ``fit`` is running (catches fit functions that reach the cache or the test
split through any path); (2) scrambling the test split's labels and features must leave every
chosen value and every val metric unchanged (catches a lazy read that happens later); (3) a
fitted method scores each image on its own, never reading the scored split's labels or its
other images (catches tuning on test at scoring time).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import numpy as np
import pytest

from ltray.fusion import FUSION_METHODS, FitContext, context_of, fit_method, run_method
from ltray.fusion.cache import FeatureCache, SplitArrays, read_cache
from ltray.fusion.synthetic import make_synthetic_cache

FAST = {"llw": {"epochs": 2}, "asm": {"epochs": 2}, "crt": {"epochs": 2}, "lws": {"epochs": 2}}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> FeatureCache:
    d = make_synthetic_cache(
        tmp_path_factory.mktemp("leak") / "cache", num_classes=12, feat_dim=16, n_max=120, noise=2.0
    )
    return read_cache(d)


class Tripwire:
    """Stands in for the test split; any attribute read while ``armed`` fails the test."""

    def __init__(self, real: SplitArrays) -> None:
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "armed", False)

    def __getattr__(self, name: str) -> Any:
        if object.__getattribute__(self, "armed"):
            raise AssertionError(f"test split read during fit (attribute {name!r})")
        return getattr(object.__getattribute__(self, "_real"), name)

    def __len__(self) -> int:
        return len(self.__getattr__("labels"))


@pytest.mark.parametrize("name", FUSION_METHODS.names())
def test_fit_never_touches_test(
    name: str, cache: FeatureCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = Tripwire(cache.test)
    spec = FUSION_METHODS.get(name)

    def armed_fit(*args: Any) -> Any:
        object.__setattr__(wire, "armed", True)
        try:
            return spec.fit(*args)
        finally:
            object.__setattr__(wire, "armed", False)

    monkeypatch.setitem(FUSION_METHODS._entries, name, dataclasses.replace(spec, fit=armed_fit))
    poisoned = dataclasses.replace(cache, test=wire)  # type: ignore[arg-type]
    result = run_method(poisoned, name, FAST.get(name))
    assert result.test.overall == result.test.overall  # evaluated on test after fitting


@pytest.mark.parametrize("name", FUSION_METHODS.names())
def test_choices_do_not_depend_on_test_content(name: str, cache: FeatureCache) -> None:
    rng = np.random.default_rng(1)
    t = cache.test
    scrambled = SplitArrays(
        features=rng.permutation(t.features)[:, ::-1].copy(),
        logits=-t.logits,
        labels=rng.permutation(t.labels),
        kt_logits=None if t.kt_logits is None else rng.permutation(t.kt_logits),
    )
    a = run_method(cache, name, FAST.get(name))
    b = run_method(dataclasses.replace(cache, test=scrambled), name, FAST.get(name))
    assert a.chosen == b.chosen
    assert a.val.summary() == b.val.summary()


def test_fit_signature_cannot_receive_test() -> None:
    fields = {f.name: f.type for f in dataclasses.fields(FitContext)}
    assert "SplitArrays" not in " ".join(map(str, fields.values()))
    for name in FUSION_METHODS.names():
        params = list(inspect.signature(FUSION_METHODS.get(name).fit).parameters)
        assert params == ["train", "val", "ctx", "settings"], name


def _rows(split: SplitArrays, idx: np.ndarray | slice) -> SplitArrays:
    kt = split.kt_logits
    return SplitArrays(
        features=split.features[idx],
        logits=split.logits[idx],
        labels=split.labels[idx],
        kt_logits=None if kt is None else kt[idx],
    )


@pytest.mark.parametrize("name", FUSION_METHODS.names())
def test_a_fitted_method_scores_each_test_image_on_its_own(name: str, cache: FeatureCache) -> None:
    """After fitting, nothing is tuned on the split being scored: shuffling its labels leaves
    every score unchanged, and an image's scores do not depend on which other images are scored
    with it (no statistics of the scored split, e.g. a standardiser or a τ fitted on test)."""
    # ASM with its val-chosen τ switches every image of this cache to NCM, which no scoring
    # could get wrong; a fixed τ = 0.5 makes the switch decide image by image.
    settings = {**FAST["asm"], "tau_min": 0.5, "tau_max": 0.5} if name == "asm" else FAST.get(name)
    fitted = fit_method(name, cache.train, cache.val, context_of(cache), settings)
    test = cache.test
    full = fitted.scores(test)
    if name == "asm":
        switched = (full.scores != test.logits).any(axis=1).mean()
        assert 0.1 < switched < 0.9, switched
    shuffled = dataclasses.replace(test, labels=np.random.default_rng(2).permutation(test.labels))
    np.testing.assert_array_equal(fitted.scores(shuffled).scores, full.scores)
    some = np.arange(0, len(test), 37)  # 17 of the 600 test images
    alone = fitted.scores(_rows(test, some))
    np.testing.assert_allclose(alone.scores, full.scores[some], rtol=1e-5, atol=1e-5)
    if full.probs is not None:
        assert alone.probs is not None
        np.testing.assert_allclose(alone.probs, full.probs[some], rtol=1e-5, atol=1e-6)


def test_tripwire_catches_a_leaky_method(
    cache: FeatureCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Self-check: a method that peeks at test labels while fitting is caught."""
    from ltray.fusion.base import MethodSettings, MethodSpec
    from ltray.fusion.rules import FnFitted

    wire = Tripwire(cache.test)
    poisoned = dataclasses.replace(cache, test=wire)  # type: ignore[arg-type]

    def leaky_fit(train: SplitArrays, val: SplitArrays, ctx: FitContext, settings: Any) -> Any:
        object.__setattr__(wire, "armed", True)
        _ = poisoned.test.labels  # the regression: reaching the test split from fit
        return FnFitted(lambda s: None)  # pragma: no cover

    monkeypatch.setitem(
        FUSION_METHODS._entries, "leaky", MethodSpec("leaky", leaky_fit, MethodSettings)
    )
    with pytest.raises(AssertionError, match="test split read during fit"):
        run_method(poisoned, "leaky")
