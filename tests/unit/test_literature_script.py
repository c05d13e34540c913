"""scripts/literature_table.py: ltray's rows under its carved-val protocol and under the papers'
val = test protocol, from the same caches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ltray.fusion.cache import read_cache
from ltray.fusion.synthetic import make_synthetic_cache
from ltray.metrics import evaluate_logits

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "literature_table.py"


@pytest.mark.slow
def test_both_protocols_from_the_runs_caches(tmp_path: Path) -> None:
    for seed in (0, 1):
        make_synthetic_cache(
            tmp_path / f"seed-{seed}" / "kt" / "cache", num_classes=8, feat_dim=8, seed=seed
        )
    out = tmp_path / "lit.json"
    res = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(tmp_path),
            "--methods",
            "logit_adj,ncm",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "| logit_adj |" in res.stdout and "val = test (papers)" in res.stdout
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"ce", "kt", "logit_adj", "ncm"}
    # CE under val = test is the linear head on val and test together, with no choice made.
    expected = []
    for seed in (0, 1):
        cache = read_cache(tmp_path / f"seed-{seed}" / "kt")
        logits = np.concatenate([cache.val.logits, cache.test.logits])
        labels = np.concatenate([cache.val.labels, cache.test.labels])
        expected.append(evaluate_logits(logits, labels, cache.groups).overall)
    assert rows["ce"]["val=test"] == pytest.approx(expected)
    assert all(0 <= v <= 1 for v in rows["logit_adj"]["carved"] + rows["logit_adj"]["val=test"])
