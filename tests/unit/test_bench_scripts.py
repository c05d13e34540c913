"""The benchmark helpers that ``scripts/bench_train.py`` runs as subprocesses still run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_plain_ddp_reports_one_rate_per_worker_process() -> None:
    cmd = [sys.executable, str(SCRIPTS / "plain_ddp.py"), "--workers", "2", "--steps", "2"]
    out = subprocess.run(
        [*cmd, "--warmup", "1", "--batch", "4"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["workers"] == 2 and len(res["per_worker"]) == 2
    assert all(r > 0 for r in res["per_worker"])
    assert abs(res["images_per_s"] - sum(res["per_worker"])) < 1e-6


def test_plain_ddp_runs_with_ltray_unimportable() -> None:
    # The yardstick must not be built from the code it measures: it runs with ltray blocked.
    script = SCRIPTS / "plain_ddp.py"
    code = (
        "import runpy, sys\n"
        "sys.modules['ltray'] = None\n"
        f"sys.argv = [{str(script)!r}, '--workers', '1', '--steps', '1', '--warmup', '1',"
        " '--batch', '2']\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["workers"] == 1
