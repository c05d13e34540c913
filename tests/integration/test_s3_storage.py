"""A sweep whose storage is an S3 URI (issue item 4), end to end: an S3-compatible server (moto)
on 127.0.0.1, a 2-node Ray cluster on loopback whose nodes have their own temp dirs (so no trial
directory is shared), `ltray tune --storage s3://bucket/sweeps`, then every file of the sweep is
in the bucket and `ltray report s3://...` prints every trial with its test metrics."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.local_ray import free_port, kill_tree, own_ports

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
BUCKET = "ltray-sweeps"

SPACE = """
kind: train
base:
  train: {method: kt, epochs: 2, threads: 1}
space:
  kt.phi: {type: float, low: 0.0, high: 1.0}
  train.lr: {type: float, low: 0.005, high: 0.05, log: true}
search:
  metric: val_kt_overall
  mode: max
  num_samples: 2
  max_concurrent: 2
  scheduler: none
  seed: 0
scaling: {num_workers: 1, use_gpu: false, cpus_per_worker: 1}
"""


def _wait_port(port: int, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.3)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture()
def s3_env() -> Iterator[dict[str, str]]:
    """`moto_server` on 127.0.0.1 with one bucket; yields the AWS variables pointing at it (what
    every node and the driver of a real cluster would have)."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (the dev extra)")
    import pyarrow.fs as pafs

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_port(port, 60)
        pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
            allow_bucket_creation=True,
        ).create_dir(BUCKET)
        yield {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
        }
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture()
def two_nodes(s3_env: dict[str, str]) -> Iterator[tuple[str, list[Path], dict[str, str]]]:
    """A head and a worker node, one CPU each, each with its own temp dir (no shared trial
    directory); yields (address, [head temp, worker temp], the environment to run ltray in)."""
    temps = [Path(tempfile.mkdtemp(prefix=p, dir="/tmp")) for p in ("s3h", "s3w")]  # short paths
    env = {**os.environ, **s3_env, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    head = [
        RAY, "start", "--head", f"--port={port}", *own_ports(),
        "--ray-client-server-port", str(free_port()),
        "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
        "--num-cpus=1", "--num-gpus=0", f"--temp-dir={temps[0]}", "--disable-usage-stats",
    ]  # fmt: skip
    worker = [
        RAY, "start", f"--address=127.0.0.1:{port}", *own_ports(),
        "--num-cpus=1", "--num-gpus=0", f"--temp-dir={temps[1]}",
    ]  # fmt: skip
    try:
        for cmd in (head, worker):
            res = subprocess.run(
                cmd, capture_output=True, text=True, env=env, timeout=180, start_new_session=True
            )
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        yield f"127.0.0.1:{port}", temps, env
    finally:
        for temp in temps:
            kill_tree(str(temp))
        time.sleep(1)
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)


def test_sweep_on_s3_storage_across_two_nodes_without_a_shared_disk(
    two_nodes: tuple[str, list[Path], dict[str, str]], tmp_path: Path
) -> None:
    import pyarrow.fs as pafs

    address, temps, env = two_nodes
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    home = tmp_path / "home"  # the driver's LTRAY_HOME: no sweep file may land there
    env = {**env, "LTRAY_HOME": str(home)}
    tune = [
        sys.executable, "-m", "ltray.cli", "tune", "--space", str(space), "--address", address,
        "--storage", f"s3://{BUCKET}/sweeps", "--name", "s3sweep", "--no-mlflow",
    ]  # fmt: skip
    res = subprocess.run(tune, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    assert f"ltray report s3://{BUCKET}/sweeps/s3sweep/ltray" in res.stdout, out[-3000:]

    endpoint = env["AWS_ENDPOINT_URL_S3"].split("://", 1)[1]
    fs = pafs.S3FileSystem(
        endpoint_override=endpoint, scheme="http", access_key="testing", secret_key="testing"
    )
    sel = pafs.FileSelector(f"{BUCKET}/sweeps/s3sweep", recursive=True)
    keys = {i.path.split("/s3sweep/", 1)[1] for i in fs.get_file_info(sel) if i.is_file}

    def read(key: str) -> str:
        with fs.open_input_stream(f"{BUCKET}/sweeps/s3sweep/{key}") as f:
            return f.read().decode()

    # ltray's sweep folder and Tune's experiment state are in the bucket
    assert {"ltray/sweep.json", "ltray/summary.json"} <= keys, sorted(keys)
    assert any(k.startswith("experiment_state") for k in keys), sorted(keys)
    trial_ids = sorted({k.split("/")[2] for k in keys if k.startswith("ltray/trials/")})
    assert len(trial_ids) == 2, sorted(keys)
    infos = []
    for tid in trial_ids:
        for name in (
            "trial.json", "config.yaml", "metrics.jsonl", "results.json", "table.txt",
            "checkpoints/best.pt", "checkpoints/last.pt", "cache/meta.json", "cache/test.parquet",
        ):  # fmt: skip
            assert f"ltray/trials/{tid}/{name}" in keys, (tid, name, sorted(keys))
        heads = json.loads(read(f"ltray/trials/{tid}/results.json"))["heads"]
        assert 0.0 < heads["kt"]["test"]["overall"] <= 1.0
        infos.append(json.loads(read(f"ltray/trials/{tid}/trial.json")))
    # one trial per node, each trained in a scratch folder under its own node's temp dir
    assert len({i["node_id"] for i in infos}) == 2, infos
    homes = sorted(next(str(t) for t in temps if i["run_dir"].startswith(str(t))) for i in infos)
    assert homes == sorted(map(str, temps)), infos
    for info in infos:  # uploaded, then the scratch copy is gone
        assert not Path(info["run_dir"]).exists(), info["run_dir"]
    # Tune keeps the best and the last checkpoint by the sweep metric (CheckpointConfig)
    for tune_trial in {k.split("/")[0] for k in keys if "/checkpoint_" in k}:
        kept = {k.split("/")[1] for k in keys if k.startswith(f"{tune_trial}/checkpoint_")}
        assert 1 <= len(kept) <= 2, (tune_trial, kept)
    assert not (home / "sweeps").exists()  # nothing of the sweep on the driver's disk

    report = subprocess.run(
        [sys.executable, "-m", "ltray.cli", "report", f"s3://{BUCKET}/sweeps/s3sweep"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    print(report.stdout)  # shown with -s: the report of the s3:// sweep
    assert "sweep s3sweep: 2 trials" in report.stdout, report.stdout
    test_rows = [ln for ln in report.stdout.splitlines() if " kt " in f" {ln} "]
    for tid in trial_ids:
        assert tid in report.stdout
        assert any(tid in ln for ln in test_rows), report.stdout


# ------------------------------------------------------------- one machine, still through S3
def _ltray(*args: str, env: dict[str, str], cwd: Path, timeout: int = 900):
    """`python -m ltray.cli ARGS` with ``env`` (the AWS variables of the moto server)."""
    return subprocess.run(
        [sys.executable, "-m", "ltray.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=cwd,
    )


def _bucket(env: dict[str, str]) -> tuple[object, str]:
    import pyarrow.fs as pafs

    endpoint = env["AWS_ENDPOINT_URL_S3"].split("://", 1)[1]
    fs = pafs.S3FileSystem(
        endpoint_override=endpoint, scheme="http", access_key="testing", secret_key="testing"
    )
    return fs, f"{BUCKET}/sweeps"


def _objects(fs: object, prefix: str) -> dict[str, object]:
    """Every object under ``prefix``: path relative to it → its FileInfo."""
    import pyarrow.fs as pafs

    sel = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
    return {i.path[len(prefix) + 1 :]: i for i in fs.get_file_info(sel) if i.is_file}


def _finished(fs: object, prefix: str) -> dict[str, object]:
    return {
        k.split("/")[2]: info
        for k, info in _objects(fs, prefix).items()
        if k.startswith("ltray/trials/") and k.endswith("/results.json") and k.count("/") == 3
    }


def test_s3_sweep_interrupted_and_resumed_keeps_one_mlflow_run_per_trial(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    import mlflow

    fs, sweeps = _bucket(s3_env)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("num_samples: 2", "num_samples: 3").replace(
        "max_concurrent: 2", "max_concurrent: 1"
    ))  # fmt: skip
    home, uri = tmp_path / "home", f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, **s3_env, "PYTHONPATH": str(REPO), "LTRAY_HOME": str(home)}
    args = [
        sys.executable, "-m", "ltray.cli", "tune", "--space", str(space), "--name", "res",
        "--storage", f"s3://{BUCKET}/sweeps", "--mlflow-uri", uri, "--experiment", "s3-resume",
    ]  # fmt: skip
    prefix = f"{sweeps}/res"
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path
    )
    deadline = time.time() + 400
    while time.time() < deadline and not _finished(fs, prefix) and proc.poll() is None:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # Ctrl-C on the driver once a trial has finished
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-4000:]
    before = {tid: info.mtime for tid, info in _finished(fs, prefix).items()}
    assert 1 <= len(before) < 3, out[-3000:]
    # the driver's MLflow run map went to the bucket; a resume from another machine (no local
    # mirror) takes it from there and logs no trial twice
    assert "ltray/mlflow_runs.json" in _objects(fs, prefix)
    shutil.rmtree(home / "remote")

    res = subprocess.run(
        [*args, "--resume"], capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    after = _finished(fs, prefix)
    assert len(after) == 3
    assert {tid: after[tid].mtime for tid in before} == before  # finished trials not rerun
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("s3-resume").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    assert len({c.info.run_name for c in children}) == 3
    for child in children:  # test metrics and artifacts read from the bucket by the driver
        assert "test_kt_overall" in child.data.metrics
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"results.json", "table.txt", "config.yaml"} <= names, names
    assert parents[0].data.tags.get("ltray.best_model", "").startswith("runs:/")


def test_posthoc_sweep_on_s3_fits_on_the_cache_the_driver_uploaded(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    from ltray.config import load_config
    from ltray.train.context import LocalContext
    from ltray.train.loop import run_training

    run = tmp_path / "run"
    run.mkdir()
    run_training(load_config(None, ["train.epochs=2", "train.threads=1"]), run, LocalContext())
    fs, sweeps = _bucket(s3_env)
    env = {**os.environ, **s3_env, "PYTHONPATH": str(REPO), "LTRAY_HOME": str(tmp_path / "h")}
    res = _ltray(
        "tune", "--space", str(REPO / "search_spaces" / "llw.yaml"), "--from", str(run),
        "--num-samples", "2", "--name", "llw", "--storage", f"s3://{BUCKET}/sweeps", "--no-mlflow",
        env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    keys = _objects(fs, f"{sweeps}/llw")
    assert "ltray/from_run/cache/meta.json" in keys, sorted(keys)
    metrics = [k for k in keys if k.startswith("ltray/trials/") and k.endswith("metrics.jsonl")]
    assert len(metrics) == 2, sorted(keys)
    for key in metrics:
        with fs.open_input_stream(f"{sweeps}/llw/{key}") as f:
            record = json.loads(f.read().decode().splitlines()[-1])
        assert "val_fused_overall" in record and "test_fused_few" in record


def test_two_worker_trial_on_s3_checkpoints_and_uploads_through_the_storage(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    fs, sweeps = _bucket(s3_env)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("num_samples: 2", "num_samples: 1"))
    env = {**os.environ, **s3_env, "PYTHONPATH": str(REPO), "LTRAY_HOME": str(tmp_path / "h")}
    res = _ltray(
        "tune", "--space", str(space), "--name", "nested", "--storage", f"s3://{BUCKET}/sweeps",
        "--no-mlflow", "scaling.num_workers=2",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "nested TorchTrainer, 2 workers" in res.stdout
    keys = _objects(fs, f"{sweeps}/nested")
    (tid,) = {k.split("/")[2] for k in keys if k.startswith("ltray/trials/")}
    trial = f"ltray/trials/{tid}"
    for name in ("trial.json", "metrics.jsonl", "results.json", "checkpoints/best.pt"):
        assert f"{trial}/{name}" in keys, (name, sorted(keys))
    # the nested Train run's own checkpoints went to the storage too, not to a local folder
    assert any(k.startswith(f"{trial}/ray/train_{tid}/") for k in keys), sorted(keys)
