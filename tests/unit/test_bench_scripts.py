"""The benchmark helpers that ``scripts/bench_train.py`` runs as subprocesses still run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_the_plain_resnet32_is_he_et_al_s() -> None:
    # 0.46M parameters (He et al. 2016, Table 6), option-A shortcuts: no 1x1 convolutions.
    sys.path.insert(0, str(SCRIPTS))
    try:
        import torch
        from plain_resnet import resnet32, resnet32_features
    finally:
        sys.path.remove(str(SCRIPTS))
    net = resnet32(10)
    assert sum(p.numel() for p in net.parameters()) == 464_154
    assert not any(
        isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in net.modules()
    )
    assert resnet32_features()(torch.zeros(2, 3, 32, 32)).shape == (2, 64)


@pytest.mark.slow
def test_plain_ddp_reports_one_rate_per_worker_with_ltray_unimportable() -> None:
    # The yardstick must not be built from the code it measures: it runs with ltray blocked.
    script = SCRIPTS / "plain_ddp.py"
    code = (
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(SCRIPTS)!r})\n"
        "sys.modules['ltray'] = None\n"
        f"sys.argv = [{str(script)!r}, '--workers', '2', '--steps', '2', '--warmup', '1',"
        " '--batch', '4']\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["workers"] == 2 and len(res["per_worker"]) == 2
    assert all(r > 0 for r in res["per_worker"])
    assert abs(res["images_per_s"] - sum(res["per_worker"])) < 1e-6


@pytest.mark.ray
@pytest.mark.slow
def test_ray_helper_cpu_names_the_helpers_of_a_private_ray() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "ray_helper_cpu.py"), "--seconds", "2", "--settle", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    names = [p["process"] for p in result["processes"]]
    assert any("TrainController" in n for n in names), names
    assert any(n == "raylet" for n in names) and any(n == "gcs_server" for n in names), names
    assert not any("RayTrainWorker" in n for n in names)  # the measuring worker itself is left out
    assert result["total_pct_of_one_core"] >= 0 and result["seconds"] >= 2
