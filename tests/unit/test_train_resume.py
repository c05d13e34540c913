"""`ltray train --resume`: a run's config is the run's (issue 24, item 1).

A resumed run may train longer and run elsewhere (scaling, tracking, threads); any other change
is refused before Ray with every changed key named, and what the run continued with is recorded.
The loop refuses a checkpoint another run or config wrote. Runs are in-process digits runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ltray.cli import main
from ltray.config import load_config
from ltray.errors import RunDirError
from ltray.train.context import LocalContext
from ltray.train.loop import load_state, run_training
from ltray.train.rundir import RunDir

pytestmark = pytest.mark.slow  # trains and resumes runs

QUICK = ["train.epochs=2", "data.batch_size=64", "train.threads=1", "scaling.num_workers=0"]


@pytest.fixture(scope="module")
def run2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch digits run (never modified: tests copy it)."""
    out = tmp_path_factory.mktemp("resume") / "run"
    assert main(["train", "--out", str(out), *QUICK]) == 0
    return out


def _copy(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def _snapshot(run: Path) -> dict[str, bytes]:
    return {
        p.relative_to(run).as_posix(): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and "eval" not in p.parts
    }


def test_a_changed_config_is_refused_before_anything_runs(
    run2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: `--resume RUN train.epochs=3 kt.phi=0.1 data.imbalance_ratio=20` trained on with
    a new train split under the model while config.yaml and split.json kept the old one."""
    run = _copy(run2, tmp_path / "run")
    before = _snapshot(run)
    capsys.readouterr()
    rc = main(
        ["train", "--resume", str(run), "train.epochs=3", "kt.phi=0.1", "data.imbalance_ratio=20"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0, err
    assert f"kt.phi {load_config().kt.phi:g} → 0.1" in err
    assert "data.imbalance_ratio 10.0 → 20.0" in err
    assert "train.epochs" not in err.split("would change")[0]  # more epochs are allowed
    assert f"ltray train --config {run / 'config.yaml'}" in err  # the fix: a new run
    assert _snapshot(run) == before  # nothing written, nothing trained


def test_fewer_epochs_are_refused(run2: Path, tmp_path: Path, capsys) -> None:
    run = _copy(run2, tmp_path / "run")
    assert main(["train", "--resume", str(run), "train.epochs=1"]) == 2
    assert "train.epochs 2 → 1" in capsys.readouterr().err


def test_more_epochs_continue_and_are_recorded(run2: Path, tmp_path: Path) -> None:
    run = _copy(run2, tmp_path / "run")
    old_config = (run / "config.yaml").read_text()
    assert main(["train", "--resume", str(run), "train.epochs=3", "train.threads=1"]) == 0
    assert [m["epoch"] for m in _read_metrics(run)] == [1, 2, 3]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 3
    assert (run / "config.before-resume-1.yaml").read_text() == old_config
    (record,) = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert record["epochs_done"] == 2 and record["previous_config"] == "config.before-resume-1.yaml"
    assert record["changes"] == {"train.epochs": {"old": 2, "new": 3}}
    from ltray.train.resume import run_hash

    state = load_state(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and state["run_hash"] == run_hash(load_config(run / "config.yaml"))
    # Resumed again unchanged (as `ltray reproduce --resume` does): recorded, config kept.
    assert main(["train", "--resume", str(run)]) == 0
    records = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[1]["changes"] == {}
    assert not (run / "config.before-resume-2.yaml").exists()


def test_the_allow_list() -> None:
    from ltray.train.resume import allowed_on_resume, run_hash

    for key in ("train.epochs", "scaling.num_workers", "tracking.mlflow", "train.threads"):
        assert allowed_on_resume(key), key
    for key in ("train.lr", "kt.phi", "data.seed", "data.imbalance_ratio", "train.seed"):
        assert not allowed_on_resume(key), key
    a = load_config(None, ["train.epochs=5", "scaling.num_workers=0"])
    assert run_hash(a) == run_hash(load_config(None, ["train.epochs=9", "tracking.mlflow=true"]))
    assert run_hash(a) != run_hash(load_config(None, ["kt.phi=0.1"]))


def test_the_loop_refuses_another_runs_checkpoint(run2: Path, tmp_path: Path) -> None:
    """Before: the loop checked the config hash only when it was not resuming, so a resumed
    worker continued any checkpoint it was handed."""
    other = load_config(None, [*QUICK, "train.epochs=3", "train.lr=0.05"])
    with pytest.raises(RunDirError, match="written by another run or config"):
        run_training(
            other, tmp_path / "x", LocalContext(), resume_from=run2 / "checkpoints" / "last.pt"
        )


def test_a_reproduction_run_resumes_with_its_own_config(tmp_path: Path) -> None:
    """`ltray reproduce --resume` continues an interrupted run through `train(cfg,
    resume=run_dir)` with the config its plan holds: that is the run's own, so nothing is
    refused (scaling resolved by the first start, threads set for the in-process loop)."""
    from ltray.reproduce.runner import run_one

    cfg = load_config(None, ["train.epochs=2", "data.batch_size=64"])  # as a plan holds it
    run = tmp_path / "seed-0" / "kt"
    run_one(cfg, run)
    (run / "results.json").unlink()  # interrupted after its last checkpoint
    run_one(cfg, run)
    assert (run / "results.json").is_file()
    records = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert records == [{**records[0], "changes": {}}] and records[0]["epochs_done"] == 2


def _read_metrics(run_dir) -> list[dict]:
    return RunDir(run_dir).read_metrics()
