"""The cluster launch path end to end (issue 14): `ray start --head`, then `ray job submit
--runtime-env cluster/runtime-env.yaml -- python -m ltray.cli tune --space
search_spaces/kt.yaml --address auto ...` from a clean copy of the repository. The job runs
the ltray the runtime env shipped (not the one installed here) and the sweep finishes with
its trial's test metrics."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.local_ray import free_port, kill_tree, own_ports

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def _clean_copy(dest: Path) -> Path:
    """The repository's tracked files (what a user submits from a fresh clone)."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for rel in filter(None, (f.decode() for f in files)):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


@pytest.fixture()
def ray_head() -> Iterator[str]:
    """A head started with `ray start --head` on loopback; yields the Jobs API address."""
    temp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # short: Ray's socket paths
    port, dash = free_port(), free_port()
    own = own_ports("ray-client-server-port")
    cmd = [
        RAY, "start", "--head", f"--port={port}", *own,
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
        "--num-cpus=2", "--num-gpus=0", '--resources={"train_driver": 100}',
        f"--temp-dir={temp}", "--disable-usage-stats",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, start_new_session=True)
    try:
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        yield f"http://127.0.0.1:{dash}"
    finally:
        kill_tree(str(temp))
        time.sleep(1)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_a_sweep_with_ltray_shipped_by_the_runtime_env(
    ray_head: str, tmp_path: Path
) -> None:
    code = _clean_copy(tmp_path / "code")
    env = yaml.safe_load((code / "cluster" / "runtime-env.yaml").read_text())
    env.pop("pip")  # this machine has the pinned packages; the rest of the file is used as is
    storage = tmp_path / "sweeps"
    tune = [
        "python", "-m", "ltray.cli", "tune", "--space", "search_spaces/kt.yaml",
        "--address", "auto", "--num-samples", "1", "--name", "job", "--no-mlflow",
        "--storage", str(storage), "train.epochs=4", "train.threads=1",
    ]  # fmt: skip
    where = "python -c 'import ltray; print(\"LTRAY_AT\", ltray.__file__)'"
    submit = [
        RAY, "job", "submit", "--address", ray_head,
        "--runtime-env-json", json.dumps(env), "--",
        "bash", "-c", f"{where} && {shlex.join(tune)}",
    ]  # fmt: skip
    deadline = time.time() + 240
    while True:  # the head's job agent comes up some seconds after `ray start` returns
        res = subprocess.run(submit, cwd=code, capture_output=True, text=True, timeout=900)
        out = res.stdout + res.stderr
        if "No available agent" not in out or time.time() > deadline:
            break
        time.sleep(3)
    assert res.returncode == 0, out[-4000:]
    assert "succeeded" in out, out[-4000:]
    # The job imported the shipped copy (Ray's runtime resources), not this checkout's ltray.
    (at,) = [line.split()[1] for line in out.splitlines() if line.startswith("LTRAY_AT")]
    assert "runtime_resources" in at and str(REPO) not in at, at
    results = list((storage / "job" / "ltray" / "trials").glob("*/results.json"))
    assert len(results) == 1, out[-4000:]
    heads = json.loads(results[0].read_text())["heads"]
    assert {"linear", "kt"} <= set(heads)
    assert 0.3 < heads["kt"]["test"]["overall"] <= 1.0  # digits after 4 epochs: far above 0.1
