"""`ltray tune` end to end: ASHA sweeps that never hang, MLflow (SQLite and a real server),
an interrupted sweep resumed without duplicate runs, the server dying mid-sweep, post-hoc
spaces over a cached run, and a two-node Ray cluster on loopback."""

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

import mlflow
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SPACE = """
kind: train
base:
  train: {{epochs: {epochs}, threads: 1}}
space:
  kt.phi: {{type: float, low: 0.0, high: 1.0}}
  train.lr: {{type: float, low: 0.005, high: 0.05, log: true}}
search:
  metric: val_kt_overall
  mode: max
  num_samples: {n}
  max_concurrent: {conc}
  scheduler: {sched}
  grace_period: 1
  reduction_factor: 2
  seed: 0
"""


def space_file(
    tmp: Path, *, n: int = 4, epochs: int = 3, conc: int = 2, sched: str = "asha"
) -> Path:
    path = tmp / "space.yaml"
    path.write_text(SPACE.format(n=n, epochs=epochs, conc=conc, sched=sched))
    return path


def tune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ltray.cli", "tune", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 that a test can stop and start again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root}/mlflow.db",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    srv.start()
    yield srv
    srv.stop()


def runs_of(uri: str, experiment: str) -> tuple[list, list]:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def trial_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in (sweep / "ltray" / "trials").glob("*") if p.is_dir())


def test_asha_sweep_against_a_real_mlflow_server(tmp_path: Path, server: MlflowServer) -> None:
    space = space_file(tmp_path, n=4, epochs=3)
    res = subprocess.run(
        tune_cmd(
            "--space",
            str(space),
            "--name",
            "asha",
            "--storage",
            str(tmp_path / "st"),
            "--mlflow-uri",
            server.uri,
            "--experiment",
            "asha-test",
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )  # a hang fails here
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "ranked by val_kt_overall" in res.stdout
    assert "each trial per epoch:" in res.stdout  # the sweep's end draws curves.png
    trials = trial_dirs(tmp_path / "st" / "asha")
    assert len(trials) == 4
    epochs = [len((t / "metrics.jsonl").read_text().splitlines()) for t in trials]
    assert min(epochs) < 3, f"ASHA stopped no trial early: {epochs}"

    parents, children = runs_of(server.uri, "asha-test")
    assert len(parents) == 1 and len(children) == 4
    client = mlflow.MlflowClient(server.uri)
    for child, n_epochs in zip(
        sorted(children, key=lambda r: r.info.run_name), epochs, strict=True
    ):
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert {"kt.phi", "train.lr", "train.epochs"} <= set(child.data.params)
        history = client.get_metric_history(child.info.run_id, "val_kt_overall")
        assert sorted(m.step for m in history) == list(range(1, n_epochs + 1))
        assert "val_ncm_full_many" in child.data.metrics
    finished = [c for c in children if "test_kt_overall" in c.data.metrics]
    assert finished, "no trial logged its best checkpoint's test metrics"

    report = subprocess.run(
        [sys.executable, "-m", "ltray.cli", "report", str(tmp_path / "st" / "asha")],
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0 and "Overall" in report.stdout
    # the cuts ASHA made (grace 1, factor 2, 3 epochs) are saved with the sweep and plotted
    state = json.loads((tmp_path / "st" / "asha" / "ltray" / "sweep.json").read_text())
    assert state["asha"] == {"grace_period": 1, "reduction_factor": 2, "rungs": [1, 2]}
    assert (tmp_path / "st" / "asha" / "ltray" / "curves.png").stat().st_size > 0


def test_mlflow_server_down_mid_sweep_loses_nothing(tmp_path: Path, server: MlflowServer) -> None:
    space = space_file(tmp_path, n=3, epochs=2, conc=1, sched="none")
    sweep = tmp_path / "st" / "down"
    proc = subprocess.Popen(
        tune_cmd(
            "--space",
            str(space),
            "--name",
            "down",
            "--storage",
            str(tmp_path / "st"),
            "--mlflow-uri",
            server.uri,
            "--experiment",
            "down-test",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 400
    while time.time() < deadline and not any(
        (t / "results.json").is_file() for t in trial_dirs(sweep)
    ):
        time.sleep(0.5)
    server.stop()  # the tracking server dies after the first trial
    while time.time() < deadline and len(trial_dirs(sweep)) < 3 and proc.poll() is None:
        time.sleep(0.5)
    time.sleep(3)
    server.start()  # ... and comes back while the last trial runs
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    if (sweep / "ltray" / "mlflow_spool.jsonl").is_file():  # the end came before the server
        subprocess.run(
            [sys.executable, "-m", "ltray.cli", "report", str(sweep)],
            check=True,
            capture_output=True,
        )
    assert not (sweep / "ltray" / "mlflow_spool.jsonl").exists()
    parents, children = runs_of(server.uri, "down-test")
    assert len(parents) == 1 and len(children) == 3
    client = mlflow.MlflowClient(server.uri)
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val_kt_overall")
        assert sorted(m.step for m in history) == [1, 2]
        assert "test_kt_overall" in child.data.metrics


def test_interrupted_sweep_resumes_without_duplicate_runs(tmp_path: Path) -> None:
    space = space_file(tmp_path, n=4, epochs=3, conc=1, sched="none")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = (
        "--space",
        str(space),
        "--name",
        "resume",
        "--storage",
        str(tmp_path / "st"),
        "--mlflow-uri",
        uri,
        "--experiment",
        "resume-test",
    )
    sweep = tmp_path / "st" / "resume"
    proc = subprocess.Popen(
        tune_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 400
    while (
        time.time() < deadline
        and sum((t / "results.json").is_file() for t in trial_dirs(sweep)) < 2
    ):
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)  # Ctrl-C on the driver mid-sweep
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-3000:]  # interrupted, not failed (issue 13)
    assert "sweep interrupted; its state is saved" in out and "--resume" in out, out[-3000:]
    done_before = {t.name for t in trial_dirs(sweep) if (t / "results.json").is_file()}
    assert 2 <= len(done_before) < 4
    mtimes = {
        name: (sweep / "ltray" / "trials" / name / "results.json").stat().st_mtime
        for name in done_before
    }

    res = subprocess.run(tune_cmd(*args, "--resume"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    finished = [t for t in trial_dirs(sweep) if (t / "results.json").is_file()]
    assert len(finished) == 4
    for name, mtime in mtimes.items():  # finished trials were not rerun
        assert (sweep / "ltray" / "trials" / name / "results.json").stat().st_mtime == mtime
    parents, children = runs_of(uri, "resume-test")
    assert len(parents) == 1
    names = sorted(c.info.run_name for c in children)
    assert len(names) == 4 and len(set(names)) == 4


def test_posthoc_llw_sweep_over_a_cached_run(tmp_path: Path) -> None:
    from ltray.config import load_config
    from ltray.train.context import LocalContext
    from ltray.train.loop import run_training

    run = tmp_path / "run"
    run.mkdir()
    run_training(load_config(None, ["train.epochs=3", "train.threads=1"]), run, LocalContext())
    space = Path(__file__).resolve().parents[2] / "search_spaces" / "llw.yaml"
    res = subprocess.run(
        tune_cmd(
            "--space",
            str(space),
            "--from",
            str(run),
            "--num-samples",
            "3",
            "--name",
            "llw",
            "--storage",
            str(tmp_path / "st"),
            "--mlflow-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    records = [
        json.loads((t / "metrics.jsonl").read_text()) for t in trial_dirs(tmp_path / "st" / "llw")
    ]
    assert len(records) == 3
    assert all("val_fused_overall" in r and "test_fused_few" in r for r in records)
    assert "llw" in res.stdout


def _stop_cluster(ray_tmp: Path) -> None:
    """Kill this test's Ray nodes only (`ray stop` would end every Ray on the machine): the
    processes whose command line names the cluster's temp dir."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if str(ray_tmp).encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.skipif(shutil.which("ray") is None, reason="the `ray` CLI is not installed")
def test_sweep_on_a_two_node_cluster(tmp_path: Path, server: MlflowServer) -> None:
    port = free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # AF_UNIX paths: <= 107 bytes
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    try:
        subprocess.run(
            [
                "ray",
                "start",
                "--head",
                "--port",
                str(port),
                "--num-cpus",
                "1",
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(free_port()),
                "--temp-dir",
                str(ray_tmp),
                "--disable-usage-stats",
            ],
            check=True,
            capture_output=True,
            env=env,
            timeout=180,
        )
        subprocess.run(
            ["ray", "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1"],
            check=True,
            capture_output=True,
            env=env,
            timeout=180,
        )
        space = space_file(tmp_path, n=2, epochs=2, conc=2, sched="none")
        res = subprocess.run(
            tune_cmd(
                "--space",
                str(space),
                "--address",
                f"127.0.0.1:{port}",
                "--name",
                "clu",
                "--storage",
                str(tmp_path / "shared"),
                "--mlflow-uri",
                server.uri,
                "--experiment",
                "cluster-test",
            ),
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    finally:
        _stop_cluster(ray_tmp)
    infos = [
        json.loads((t / "trial.json").read_text()) for t in trial_dirs(tmp_path / "shared" / "clu")
    ]
    assert len(infos) == 2
    assert len({i["node_id"] for i in infos}) == 2, "trials did not land on both nodes"
    parents, children = runs_of(server.uri, "cluster-test")
    assert len(parents) == 1 and len(children) == 2


def test_two_worker_trials_run_a_nested_train_run(tmp_path: Path) -> None:
    # 2 epochs: the KT head needs its teacher (the memory is built at the end of epoch 1)
    space = space_file(tmp_path, n=1, epochs=2, conc=1, sched="none")
    res = subprocess.run(
        tune_cmd(
            "--space",
            str(space),
            "--name",
            "nested",
            "--storage",
            str(tmp_path / "st"),
            "--no-mlflow",
            "scaling.num_workers=2",
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (trial,) = trial_dirs(tmp_path / "st" / "nested")
    assert (trial / "results.json").is_file()
    assert any((trial / "ray").glob("train_*")), "no nested Train run"
    assert "nested TorchTrainer, 2 workers" in res.stdout
