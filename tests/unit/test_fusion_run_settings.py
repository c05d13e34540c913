"""Post-hoc methods read what the run decided from its cache, never a silent default
(issue 13): the NCM metric (``memory_metric``) and the EMA memory's valid mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ltray.fusion import run_method
from ltray.fusion.cache import read_cache
from ltray.fusion.synthetic import make_synthetic_cache


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "cache"
    make_synthetic_cache(out, num_classes=12, feat_dim=16, noise=1.5, head_epochs=20, seed=3)
    return out


def _with_meta(cache_dir: Path, **extra: object) -> None:
    meta = json.loads((cache_dir / "meta.json").read_text())
    (cache_dir / "meta.json").write_text(json.dumps({**meta, **extra}))


@pytest.mark.parametrize("method", ["ncm", "ncm_ema", "sum", "weighted", "llw"])
def test_a_euclidean_run_is_fused_with_euclidean_ncm(cache_dir: Path, method: str) -> None:
    _with_meta(cache_dir, memory_metric="euclidean")
    cache = read_cache(cache_dir)
    default = run_method(cache, method)
    assert default.settings["metric"] == "euclidean"
    explicit = run_method(cache, method, {"metric": "euclidean"})
    assert default.val.overall == explicit.val.overall
    assert default.test.per_class == explicit.test.per_class
    # An explicit setting still wins over the run's.
    assert run_method(cache, method, {"metric": "cosine"}).settings["metric"] == "cosine"


def test_a_cache_without_the_key_keeps_cosine(tmp_path: Path) -> None:
    out = make_synthetic_cache(tmp_path / "cache", num_classes=6, feat_dim=8, head_epochs=5)
    assert "memory_metric" not in json.loads((out / "meta.json").read_text())
    assert run_method(read_cache(out), "ncm").settings["metric"] == "cosine"


def test_the_ema_memory_uses_the_runs_valid_mask(cache_dir: Path) -> None:
    _with_meta(cache_dir, memory_metric="cosine")
    with np.load(cache_dir / "params.npz") as npz:
        params = {k: npz[k] for k in npz.files}
    # Class 0 (the head class, non-zero mean) was never seen by the run's memory.
    params["memory_ema_valid"] = np.ones(len(params["memory_ema"]), dtype=np.float32)
    params["memory_ema_valid"][0] = 0.0
    np.savez(cache_dir / "params.npz", **params)
    res = run_method(read_cache(cache_dir), "ncm_ema")
    assert res.test.per_class[0] == 0.0  # never predicted: masked, not read off its mean
    assert res.test.overall > 0.3
