"""`ltray train` end to end through Ray Train: the CLI, resume, a killed worker, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ltray.fusion.cache import read_cache
from ltray.train.rundir import RunDir

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def ltray(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ltray.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )


def test_train_cli_then_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = ltray("train", "train.epochs=2", "--out", str(run))
    assert res.returncode == 0, res.stderr[-3000:]
    for head in ("linear", "NCM (EMA)", "NCM (full pass)", "KT head"):
        assert head in res.stdout
    assert "Many" in res.stdout and "Overall" in res.stdout
    assert [m["epoch"] for m in _read_metrics(run)] == [1, 2]
    assert read_cache(run).test.logits.shape[1] == 10

    # The same --out again is refused: a run is never overwritten.
    again = ltray("train", "train.epochs=2", "--out", str(run))
    assert again.returncode == 2 and "not empty" in again.stderr

    # Continue the stopped run for one more epoch.
    res = ltray("train", "--resume", str(run), "train.epochs=3")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from" in res.stdout + res.stderr
    assert [m["epoch"] for m in _read_metrics(run)] == [1, 2, 3]
    assert json.loads((run / "results.json").read_text())["heads"]["kt"]["test"]["overall"] > 0


def test_killed_worker_recovers_from_its_checkpoint(tmp_path: Path) -> None:
    """Kill a Ray Train worker mid-run: the worker group restarts from the last checkpoint,
    training finishes and the epochs recorded before the kill are kept."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ltray.cli",
            "train",
            # 20 short epochs: the kill after epoch 2 must land while the workers still train
            # (with 8, a fast machine had finished training before the kill arrived)
            "train.epochs=20",
            "scaling.num_workers=2",
            "train.max_failures=1",
            "--out",
            str(run),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )
    pid_file = run / "workers" / "rank0.pid"
    deadline = time.time() + 300
    killed_pid = None
    while time.time() < deadline and proc.poll() is None:
        # Kill as soon as epoch 2 is recorded, whether or not Ray has registered its checkpoint
        # yet: the restarted group continues from the newest of Ray's checkpoint and last.pt.
        if pid_file.is_file() and len(_read_metrics(run)) >= 2:
            killed_pid = int(pid_file.read_text())
            os.kill(killed_pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    assert killed_pid is not None, "training never reached epoch 2"
    epochs_before = [m["epoch"] for m in _read_metrics(run)]
    assert len(epochs_before) < 20, "the kill arrived after training had finished"
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    resumed = re.search(r"resuming from \S+ at epoch (\d+)", out)
    assert resumed, out[-4000:]
    # last.pt is written before the epoch's metrics line: never restarted behind the kill
    assert int(resumed.group(1)) >= max(epochs_before) + 1
    lines = (run / "metrics.jsonl").read_text().splitlines()
    recorded = [json.loads(x)["epoch"] for x in lines]
    assert recorded[: len(epochs_before)] == epochs_before  # nothing written earlier is lost
    assert [m["epoch"] for m in _read_metrics(run)] == list(range(1, 21))
    assert int(pid_file.read_text()) != killed_pid  # a new worker finished the run
    assert (run / "results.json").is_file()


def test_ctrl_c_keeps_every_epoch_written_and_the_run_resumes(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) on `ltray train` after its first epoch: exit 130 with one line saying
    so, every epoch recorded so far kept with its checkpoint, and `--resume` finishes the run
    from there (issue 24, item 8)."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ltray.cli", "train", "train.epochs=30", "--out", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not _read_metrics(run):
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before the first epoch was recorded"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted; results written so far are kept" in out, out[-3000:]
    done = [m["epoch"] for m in _read_metrics(run)]
    assert done and done == list(range(1, len(done) + 1)) and len(done) < 30
    from ltray.train.loop import load_state

    state = load_state(run / "checkpoints" / "last.pt")  # a whole checkpoint, not a torn one
    assert int(state["epoch"]) + 1 >= max(done)
    assert not (run / "results.json").exists()

    res = ltray("train", "--resume", str(run))
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[: len(done)] == done  # nothing written before the interrupt is lost
    assert [m["epoch"] for m in _read_metrics(run)] == list(range(1, 31))
    assert (run / "results.json").is_file()


def test_bad_input_fails_before_ray_starts(tmp_path: Path) -> None:
    t0 = time.time()
    res = ltray("train", "data.name=imagenet-lt-typo", "kt.phi=1.5", "--out", str(tmp_path / "r"))
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "kt.phi" in lines[0]
    assert time.time() - t0 < 60
    assert not (tmp_path / "r").exists()
    res = ltray("train", "data.name=imagenet-lt-typo", "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and "digits-lt" in res.stderr  # the known sources are listed
    assert not (tmp_path / "r").exists()


def test_oltr_and_lfme_train_with_two_ray_train_workers(tmp_path: Path) -> None:
    """OLTR stage 2 and the LFME student run as 2-worker DDP jobs through Ray Train (digits-LT):
    stage 1 and the experts train in-process, the two methods on two gloo workers each."""
    quick = ["train.epochs=2", "memory.init_epoch=1"]
    ce = tmp_path / "ce"
    res = ltray("train", *quick, "train.method=ce", "scaling.num_workers=0", "--out", str(ce))
    assert res.returncode == 0, res.stderr[-3000:]
    experts = []
    for name in ("many", "medium", "few"):
        out = tmp_path / f"expert-{name}"
        res = ltray(
            "train",
            "train.epochs=1",
            "train.method=lfme_expert",
            f"lfme.subset={name}",
            "scaling.num_workers=0",
            "--out",
            str(out),
        )
        assert res.returncode == 0, res.stderr[-3000:]
        experts.append(str(out))
    jobs = {
        "oltr": ["train.method=oltr", f"oltr.stage1={ce}"],
        "lfme": ["train.method=lfme", f"lfme.experts=[{', '.join(experts)}]"],
    }
    for name, args in jobs.items():
        run = tmp_path / name
        # 3 epochs: two workers halve the steps of an epoch (global batch 64: 9 steps).
        two = ["scaling.num_workers=2", "train.epochs=3"]
        res = ltray("train", *quick, *args, *two, "--out", str(run))
        assert res.returncode == 0, f"{name}: {res.stderr[-3000:]}"
        assert (run / "workers" / "rank1.pid").is_file(), f"{name}: no second worker"
        assert [m["epoch"] for m in _read_metrics(run)] == [1, 2, 3]
        results = json.loads((run / "results.json").read_text())
        test = results["heads"]["linear"]["test"]
        assert 0.2 < test["overall"] <= 1.0, f"{name}: {test}"  # digits: far above chance
        assert read_cache(run).test.logits.shape[1] == 10


def _read_metrics(run_dir) -> list[dict]:
    return RunDir(run_dir).read_metrics()
