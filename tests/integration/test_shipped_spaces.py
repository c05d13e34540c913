"""Every shipped search space runs end to end on the embedded default, as shipped, on a CPU
machine (issue 13): one short trial each, offline. OLTR and LFME get the earlier runs their
files say to train first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))
# Short runs; kt.yaml searches memory.init_epoch up to 3, so its trials need 4 epochs.
EPOCHS = {"kt.yaml": 4, "kt-posthoc.yaml": 4}  # memory.init_epoch reaches 3


def ltray(*args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, "-m", "ltray.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def earlier_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """The stage-1 CE run OLTR starts from and LFME's shot-group experts (2 epochs each)."""
    root = tmp_path_factory.mktemp("earlier")
    short = ["train.epochs=2", "scaling.num_workers=0", "kt.enabled=false"]
    ltray("train", "train.method=ce", *short, "--out", str(root / "stage1"))
    experts = []
    for group in ("many", "medium", "few"):
        out = root / f"expert-{group}"
        ltray(
            "train", "train.method=lfme_expert", f"lfme.subset={group}", *short, "--out", str(out)
        )
        experts.append(str(out))
    return {"oltr.yaml": [f"oltr.stage1={root / 'stage1'}"],
            "lfme.yaml": [f"lfme.experts=[{','.join(experts)}]"]}  # fmt: skip


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_space_runs_one_trial(
    path: Path, tmp_path: Path, earlier_runs: dict[str, list[str]]
) -> None:
    epochs = EPOCHS.get(path.name, 2)
    ltray(
        "tune", "--space", str(path), "--num-samples", "1", "--no-mlflow",
        "--storage", str(tmp_path / "sweeps"), f"train.epochs={epochs}",
        *earlier_runs.get(path.name, []),
    )  # fmt: skip
    summary = next((tmp_path / "sweeps").glob("*/ltray/summary.json"))
    best = json.loads(summary.read_text())["best"]
    assert best is not None and not json.loads(summary.read_text())["errors"]
