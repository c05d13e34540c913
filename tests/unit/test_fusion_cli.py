"""`ltray fuse` end to end on a realistic synthetic cache."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ltray.cli import main
from ltray.fusion.synthetic import make_synthetic_cache


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    make_synthetic_cache(run / "cache", num_classes=30, feat_dim=32, noise=2.0, seed=0)
    return run


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "results.csv").open() as fh:
        return {r["method"]: r for r in csv.DictReader(fh)}


@pytest.mark.slow
def test_fuse_all_end_to_end(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import mlflow

    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=(run_dir / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    (run_dir / "mlflow_run.json").write_text(json.dumps({"tracking_uri": uri, "run_id": run_id}))

    assert main(["fuse", str(run_dir), "--method", "all"]) == 0
    text = capsys.readouterr().out
    assert "llw" in text and "Overall" in text
    (out,) = sorted((run_dir / "fusion").iterdir())
    rows = _rows(out)
    assert set(rows) >= {
        "linear",
        "kt",
        "ncm",
        "ncm_ema",
        "sum",
        "softmax_sum",
        "max_concat",
        "max_concat_prob",
        "weighted",
        "llw",
        "asm",
        "crt",
        "lws",
        "tau_norm",
        "logit_adj",
    }
    assert rows["weighted"]["chosen"].startswith("w=")
    assert "epoch=" in rows["llw"]["chosen"] and "tau=" in rows["asm"]["chosen"]
    # LLW helps the few-shot classes of a CE-trained head (the point of the method)
    assert float(rows["llw"]["test_few"]) >= float(rows["linear"]["test_few"])
    for png in ("groups.png", "llw_weights.png"):
        assert (out / png).stat().st_size > 1000
    logged = client.get_run(run_id).data.metrics
    assert "test_fused_llw_few" in logged and "chosen_weighted_w" in logged
    assert all(0 <= v <= 1 for k, v in logged.items() if not k.startswith("chosen_"))
    assert client.list_artifacts(run_id, f"fusion/{out.name}")

    # a second run never overwrites the first; a broken MLflow link only warns
    (run_dir / "mlflow_run.json").write_text(json.dumps({"tracking_uri": uri, "run_id": "nope"}))
    with pytest.warns(UserWarning, match="could not log to MLflow"):
        assert main(["fuse", str(run_dir), "--method", "sum", "metric=euclidean"]) == 0
    outs = sorted((run_dir / "fusion").iterdir())
    assert len(outs) == 2 and (outs[0] / "results.csv").exists()
    assert set(_rows(outs[1])) == {"sum"}
    (run_dir / "mlflow_run.json").unlink()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fuse", "{run}/missing", "--method", "all"], "no such run directory"),
        (["fuse", "{run}", "--method", "bogus"], "unknown method(s) bogus; known: all, asm"),
        (["fuse", "{run}", "--method", "llw", "lrr=1"], "llw.lrr: unknown setting"),
        (["fuse", "{run}", "lr", "--method", "llw"], "expected key=value"),
        (["fuse", "{run}", "--method", "llw,asm", "lr=1"], "method.key=value with several"),
        (["fuse", "{run}/cache/..", "--method", "llw", "epochs=-1"], "llw.epochs=-1"),
    ],
)
def test_bad_input_fails_before_any_work(
    argv: list[str], message: str, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = set((run_dir / "fusion").iterdir()) if (run_dir / "fusion").exists() else set()
    assert main([a.format(run=run_dir) for a in argv]) == 2
    assert message in capsys.readouterr().err
    after = set((run_dir / "fusion").iterdir()) if (run_dir / "fusion").exists() else set()
    assert before == after


def test_missing_cache_and_missing_kt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fuse", str(tmp_path), "--method", "all"]) == 2
    assert "no feature cache" in capsys.readouterr().err
    make_synthetic_cache(
        tmp_path / "cache", num_classes=5, n_max=40, rho=2, with_kt=False, head_epochs=5
    )
    assert main(["fuse", str(tmp_path), "--method", "kt"]) == 2
    assert "kt_logits" in capsys.readouterr().err


def test_empty_group_is_absent_not_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # counts 40..20: no many (>100) and no few (<20) class
    make_synthetic_cache(tmp_path / "cache", num_classes=5, n_max=40, rho=2, head_epochs=5)
    assert main(["fuse", str(tmp_path), "--method", "linear"]) == 0
    assert "—" in capsys.readouterr().out
    (out,) = (tmp_path / "fusion").iterdir()
    row = _rows(out)["linear"]
    assert row["test_many"] == "" and row["test_few"] == "" and row["test_medium"] != ""
