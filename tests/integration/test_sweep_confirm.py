"""A two-level sweep confirmed over seeds, end to end on Ray: trials report the post-hoc stage,
the top configurations are trained again over new seeds, the winner is picked by mean, the
Optuna study opens with Optuna's API, and `ltray report` shows the confirmation first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SPACE = """
kind: train
base:
  train: {epochs: 2, threads: 1}
space:
  kt.phi: {type: float, low: 0.0, high: 1.0}
  train.lr: {type: float, low: 0.005, high: 0.05, log: true}
search:
  metric: val_best_overall
  mode: max
  num_samples: 3
  max_concurrent: 2
  scheduler: asha
  grace_period: 1
  reduction_factor: 2
  posthoc: [logit_adj, weighted, llw]
  seed: 0
"""


def test_two_level_sweep_confirmed_over_seeds(tmp_path: Path) -> None:
    import optuna

    space = tmp_path / "two.yaml"
    space.write_text(SPACE)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [
        sys.executable,
        "-m",
        "ltray.cli",
        "tune",
        "--space",
        str(space),
        "--name",
        "two",
        "--storage",
        str(tmp_path / "st"),
        "--mlflow-uri",
        uri,
        "--experiment",
        "two-level",
        "--confirm",
        "2",
        "--seeds",
        "2",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    root = tmp_path / "st" / "two" / "ltray"

    # Every report of every trial carries the post-hoc stage.
    for trial in (root / "trials").iterdir():
        for line in (trial / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            assert {"val_best_overall", "val_posthoc_logit_adj_overall", "best_source"} <= set(rec)
            assert "val_posthoc_llw_overall" in rec  # fitted at the cut, carried after

    # K x S confirmation runs with distinct new seeds; the winner is the best val mean.
    table = json.loads((root / "confirm" / "confirm.json").read_text())
    assert table["seeds"] == [1, 2] and table["complete"]
    assert len(table["rows"]) == 2 and all(r["n"] == 2 for r in table["rows"])
    seeds = {
        json.loads((d / "trial.json").read_text())["params"]["train.seed"]
        for d in (root / "confirm" / "trials").iterdir()
    }
    assert seeds == {1, 2} and len(list((root / "confirm" / "trials").iterdir())) == 4
    best = max(table["rows"], key=lambda r: r["val_mean"])
    assert table["winner"] == best["trial_id"]
    for run in (root / "confirm" / "trials").iterdir():  # each confirmed model is deployable
        assert list(run.glob("fusion/fuse-*/results.json"))

    # The Optuna study is saved in the sweep folder and opens with Optuna's API.
    study = optuna.load_study(study_name="two", storage=f"sqlite:///{root / 'optuna.db'}")
    assert len(study.trials) == 3

    # MLflow: the confirmation is a group run under the sweep's parent, with 4 child runs.
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("two-level")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.info.run_name == "sweep-two")
    group = next(r for r in runs if r.info.run_name == "confirm")
    assert group.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert group.data.tags["ltray.confirm_winner"] == table["winner"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == group.info.run_id]
    assert len(children) == 4
    assert any(k.startswith("val_confirm1_overall_mean") for k in group.data.metrics)

    rep = subprocess.run(
        [sys.executable, "-m", "ltray.cli", "report", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    out = rep.stdout
    assert out.index("confirmed over seeds") < out.index("sweep two:")
    assert "rank correlation" in out
