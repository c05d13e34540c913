"""Where ASM's switch learns: the cached train split, or cross-fitted on val."""

from __future__ import annotations

import pytest
import torch

import ltray.fusion.asm as asm
from ltray.fusion import run_method
from ltray.fusion.cache import FeatureCache, read_cache
from ltray.fusion.synthetic import make_synthetic_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> FeatureCache:
    d = make_synthetic_cache(
        tmp_path_factory.mktemp("asm") / "cache",
        num_classes=10,
        feat_dim=16,
        n_max=200,
        val_per_class=30,
        noise=1.4,
    )
    return read_cache(d)


def test_folds_deal_every_class_evenly() -> None:
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 3)
    folds = asm._stratified_folds(labels, 5, torch.Generator().manual_seed(0))
    for c, n in ((0, 10), (1, 7), (2, 3)):
        per_fold = torch.bincount(folds[labels == c], minlength=5)
        assert per_fold.sum() == n and per_fold.max() - per_fold.min() <= 1


def test_crossfit_scores_each_fold_with_a_switch_that_never_saw_it(
    cache: FeatureCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    real = asm._fit_switch

    def spy(top, h, target, settings, score):  # type: ignore[no-untyped-def]
        sizes.append(len(target))
        return real(top, h, target, settings, score)

    monkeypatch.setattr(asm, "_fit_switch", spy)
    res = run_method(cache, "asm", {"fit_on": "val_crossfit", "folds": 3, "epochs": 3})
    n_val = len(cache.val.labels)
    # three fold fits on the other two thirds of val, then the final fit on all of it
    assert sizes[:3] == [n_val - n_val // 3] * 3 and sizes[3] == n_val and len(sizes) == 4
    chosen = res.chosen
    assert chosen["fit_on"] == "val_crossfit" and 1 <= chosen["epoch"] <= 3
    assert chosen["fit_positive_rate"] == chosen["val_positive_rate"]
    assert len(chosen["val_f1_history"]) == 3


def test_train_fit_sees_the_rare_train_target_and_crossfit_the_val_one(
    cache: FeatureCache,
) -> None:
    on_train = run_method(cache, "asm", {"epochs": 3}).chosen
    on_val = run_method(cache, "asm", {"epochs": 3, "fit_on": "val_crossfit"}).chosen
    assert on_train["fit_on"] == "train"
    # the head fits its own train images: "linear wrong, NCM right" is rarer there than on val
    assert on_train["fit_positive_rate"] < on_train["val_positive_rate"]
    assert on_val["fit_positive_rate"] == pytest.approx(on_train["val_positive_rate"])
