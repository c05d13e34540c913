"""The two-level search (ltray.tune.scoring): post-hoc methods fitted inside a trial, scored on
val by cross-fitting, equal to `ltray fuse` on the same cache, never reading test."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ltray.cli import main
from ltray.config import load_config
from ltray.fusion.cache import read_cache
from ltray.fusion.methods import context_of, run_method
from ltray.fusion.synthetic import make_synthetic_cache
from ltray.metrics import evaluate_logits
from ltray.train.context import LocalContext
from ltray.train.evaluate import EpochArrays
from ltray.train.loop import run_training
from ltray.train.rundir import RunDir
from ltray.tune.scoring import (
    PosthocScorer,
    cross_fit,
    is_posthoc_metric,
    method_settings,
    posthoc_problems,
    split_methods,
    val_halves,
)

METHODS = ["logit_adj", "weighted", "ncm", "llw", "crt"]


@pytest.fixture(scope="module")
def cache_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    make_synthetic_cache(run / "cache", num_classes=12, feat_dim=16, noise=1.5, seed=0)
    return run


def _arrays(run: Path, *, last: bool, epoch: int = 3) -> EpochArrays:
    cache = read_cache(run)
    heads = {"linear": evaluate_logits(cache.val.logits, cache.val.labels, cache.groups)}
    return EpochArrays(epoch, last, run, cache.val, heads, context_of(cache), lambda: cache.train)


def test_val_halves_are_stratified_disjoint_and_seeded() -> None:
    labels = np.repeat(np.arange(5), [7, 4, 1, 2, 3])
    a, b = val_halves(labels, seed=3)
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(len(labels)))
    for c in range(5):
        na, nb = (labels[a] == c).sum(), (labels[b] == c).sum()
        assert abs(na - nb) <= 1
    assert abs(len(a) - len(b)) <= 1
    a2, _ = val_halves(labels, seed=3)
    assert np.array_equal(a, a2)
    a3, _ = val_halves(labels, seed=4)
    assert not np.array_equal(a, a3)


def test_cross_fitting_scores_every_image_with_a_fit_that_never_saw_it(
    cache_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 'method' that memorises the labels of the val images it is fitted on: perfect
    in-sample, and at chance level (here: always wrong) out of fold."""
    import ltray.fusion.methods as fm
    from ltray.fusion.base import Scores

    class Memo:
        chosen: dict = {}
        extras: dict = {}

        def __init__(self, val) -> None:
            self.seen = {f.tobytes(): y for f, y in zip(val.features, val.labels, strict=True)}

        def scores(self, split):
            out = np.zeros((len(split), 12), dtype=np.float32)
            for i, f in enumerate(split.features):
                out[i, self.seen.get(f.tobytes(), (split.labels[i] + 1) % 12)] = 1.0
            return Scores(out)

    monkeypatch.setattr(fm, "fit_method", lambda name, train, val, ctx, s: Memo(val))
    cache = read_cache(cache_run)
    oof, insample = cross_fit("linear", {}, cache.train, cache.val, context_of(cache), seed=0)
    assert insample.top1 == 1.0
    assert oof.top1 == 0.0


def test_split_methods_by_whether_the_fit_reads_train() -> None:
    every, cuts = split_methods(METHODS)
    assert every == ["logit_adj", "weighted", "ncm"]  # the NCM ones on the EMA memory
    assert cuts == ["llw", "crt"]
    every, cuts = split_methods({"ncm": {"memory": "full"}, "tau_norm": None})
    assert (every, cuts) == (["tau_norm"], ["ncm"])


def test_two_level_metrics_equal_ltray_fuse_on_the_same_cache(cache_run: Path) -> None:
    settings = method_settings(METHODS, seed=0)
    scorer = PosthocScorer(methods=settings, cuts=(2,), seed=0)
    arrays = _arrays(cache_run, last=True)
    metrics = scorer(arrays)
    (fuse_dir,) = sorted((cache_run / "fusion").glob("fuse-*"))
    saved = {r["method"]: r for r in json.loads((fuse_dir / "results.json").read_text())}
    cache = read_cache(cache_run)
    for method in METHODS:
        # What `ltray fuse RUN --method <m> <m>.memory=ema ...` computes on this cache.
        fused = run_method(cache, method, settings[method])
        assert metrics[f"val_posthoc_{method}_insample_overall"] == pytest.approx(fused.val.overall)
        assert metrics[f"test_posthoc_{method}_overall"] == pytest.approx(fused.test.overall)
        assert saved[method]["test"]["overall"] == pytest.approx(fused.test.overall)
        assert f"val_posthoc_{method}_overall" in metrics  # the cross-fitted one
    best = max(
        [("head:linear", arrays.heads["linear"].overall)]
        + [(f"posthoc:{m}", metrics[f"val_posthoc_{m}_overall"]) for m in METHODS],
        key=lambda x: x[1],
    )
    assert metrics["best_source"] == best[0]
    assert metrics["val_best_overall"] == pytest.approx(best[1])


def test_the_fit_never_reads_test(cache_run: Path, tmp_path: Path) -> None:
    """The scores of an epoch are computed from train and val alone: a cache whose test split
    is garbage gives the same val metrics."""
    import shutil

    import pyarrow.parquet as pq

    other = tmp_path / "run"
    shutil.copytree(cache_run / "cache", other / "cache")
    table = pq.read_table(other / "cache" / "test.parquet")
    labels = np.random.default_rng(0).permutation(table.column("label").to_numpy())
    table = table.set_column(table.schema.get_field_index("label"), "label", [labels])
    pq.write_table(table, other / "cache" / "test.parquet")
    settings = method_settings(METHODS, seed=0)
    a = PosthocScorer(methods=settings, seed=0, deploy=False)(_arrays(cache_run, last=False))
    b = PosthocScorer(methods=settings, seed=0, deploy=False)(_arrays(other, last=False))
    val_a = {k: v for k, v in a.items() if k.startswith("val_")}
    val_b = {k: v for k, v in b.items() if k.startswith("val_")}
    assert val_a == pytest.approx(val_b)
    assert not any(k.startswith("test_") for k in a)


def test_methods_that_need_train_run_at_cuts_and_carry_between(cache_run: Path) -> None:
    calls: list[int] = []
    arrays = {e: _arrays(cache_run, last=False, epoch=e) for e in (1, 2, 3, 4)}
    for e, a in arrays.items():
        arrays[e] = replace(a, train_pass=lambda e=e, a=a: calls.append(e) or a.train_pass())
    scorer = PosthocScorer(methods=method_settings(["logit_adj", "llw"], 0), cuts=(3,), seed=0)
    out = {e: scorer(arrays[e]) for e in (1, 2, 3, 4)}
    assert calls == [1, 3]  # the first report and the cut
    assert out[2]["posthoc_epoch"] == 1.0 and out[4]["posthoc_epoch"] == 3.0
    assert out[2]["val_posthoc_llw_overall"] == out[1]["val_posthoc_llw_overall"]
    assert all("val_posthoc_logit_adj_overall" in m for m in out.values())


def test_space_checks_of_the_post_hoc_stage() -> None:
    assert is_posthoc_metric("val_posthoc_llw_overall") and is_posthoc_metric("val_best_few")
    assert not is_posthoc_metric("val_kt_overall")
    found = posthoc_problems(["llw", "nope"], ["val_posthoc_crt_overall"], memory=True)
    assert any("unknown method 'nope'" in p for p in found)
    assert any("crt is not in search.posthoc" in p for p in found)
    assert posthoc_problems(["ncm"], ["val_best_overall"], memory=False)
    assert not posthoc_problems({"ncm": {"memory": "full"}}, ["val_best_overall"], memory=False)
    assert posthoc_problems(["llw"], ["test_posthoc_llw_overall"], memory=True)


def test_a_two_level_space_file_is_checked_before_ray(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text(
        "kind: train\nspace:\n  kt.phi: {type: float, low: 0.1, high: 0.9}\n"
        "search: {metric: val_posthoc_crt_overall, posthoc: [llw, bogus]}\n"
    )
    assert main(["tune", "--space", str(bad), "--dry-run"]) == 2


@pytest.mark.slow
def test_a_trial_loop_reports_post_hoc_metrics_every_epoch(tmp_path: Path) -> None:
    cfg = load_config(
        None, ["train.epochs=3", "data.batch_size=64", "train.threads=1", "memory.init_epoch=1"]
    )
    scorer = PosthocScorer(methods=method_settings(["logit_adj", "crt"], 0), cuts=(2,), seed=0)
    run_training(cfg, tmp_path, LocalContext(), epoch_hook=scorer)
    records = _read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        assert 0 <= r["val_best_overall"] <= 1 and "val_posthoc_logit_adj_overall" in r
        assert r["hook_time_s"] >= 0
    assert "test_posthoc_crt_overall" in records[-1]
    assert list((tmp_path / "fusion").glob("fuse-*/results.json"))


def _read_metrics(run_dir) -> list[dict]:
    return RunDir(run_dir).read_metrics()
