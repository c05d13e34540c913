"""`ltray reproduce` end to end through the CLI on digits-LT: a tiny plan (2 seeds, 1 epoch,
CE + OLTR on it + KT + LLW, a 1-cell Mixup grid) trained on a local Ray, tables printed and
saved, MLflow parent/child runs; then `--resume` on the finished directory trains nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ltray.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ARGS = [
    "reproduce",
    "--config",
    "quick",
    "--seeds",
    "2",
    "--epochs",
    "1",
    "--methods",
    "ce,oltr,kt,llw",
    "--mixup-alphas",
    "0.3",
    "--mixup-variants",
    "input",
    "--mixup-samplers",
    "instance",
    "--num-cpus",
    "2",
]


def test_reproduce_then_resume_does_no_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "rep"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main([*ARGS, "--out", str(out), "--mlflow-uri", uri]) == 0
    printed = capsys.readouterr().out
    assert "long-tailed recognition" in printed and "Mixup study" in printed
    assert "failed 0" in printed

    plan = json.loads((out / "plan.json").read_text())
    ids = [r["id"] for r in plan["runs"]]
    assert ids == [
        f"seed-{s}/{r}" for s in (0, 1) for r in ("ce", "kt", "oltr", "mixup/input-a0.3-instance")
    ]
    for rid in ids:
        assert (out / rid / "results.json").is_file()
        cfg = (out / rid / "config.yaml").read_text()
        assert f"seed: {rid[5]}" in cfg  # train.seed = k
    assert (out / "seed-0/posthoc/llw.json").is_file()

    rows = {r["key"]: r for r in csv.DictReader((out / "table.csv").open())}
    assert list(rows) == ["ce", "oltr", "llw", "kt"]
    for row in rows.values():
        assert row["seeds"] == "2" and row["overall_mean"] and row["overall_std"]
    mix = list(csv.DictReader((out / "mixup.csv").open()))
    assert [r["key"] for r in mix] == ["none/—/instance", "input/0.3/instance"]
    for name in ("table.png", "mixup.png", "table.txt", "records.json"):
        assert (out / name).is_file()

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = json.loads((out / "plan.json").read_text())["mlflow_parent"]
    assert parent and client.get_run(parent).info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"table.csv", "table.png", "mixup.csv", "plan.json"} <= artifacts
    cells = client.get_run(parent).data.metrics
    assert "test_ce_overall_mean" in cells and all(0 <= v <= 1 for v in cells.values())
    children = json.loads((out / "mlflow_runs.json").read_text())
    assert set(children) == set(ids)
    tags = client.get_run(children["seed-1/oltr"]).data.tags
    assert tags["mlflow.parentRunId"] == parent

    before = {rid: (out / rid / "results.json").stat().st_mtime_ns for rid in ids}
    import ray

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("--resume of a finished reproduction must not start Ray")

    monkeypatch.setattr(ray, "init", no_ray)
    assert main(["reproduce", "--resume", str(out)]) == 0
    again = capsys.readouterr().out
    assert "trained/fitted 0" in again and f"already finished {len(ids)}" in again
    assert before == {rid: (out / rid / "results.json").stat().st_mtime_ns for rid in ids}
    # The resumed reproduction logged to the same parent (URI kept in plan.json), no duplicates.
    assert len(json.loads((out / "mlflow_runs.json").read_text())) == len(ids)
    assert json.loads((out / "plan.json").read_text())["mlflow_parent"] == parent
    experiment = client.get_run(parent).info.experiment_id
    assert len(client.search_runs([experiment])) == 1 + len(ids)
