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


def _tiny_gray_folder(root: Path) -> Path:
    """3 classes of 8x8 gray PNGs, 12/6/3 train and 4 test images each."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, counts in (("train", (12, 6, 3)), ("test", (4, 4, 4))):
        for c, n in enumerate(counts):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (8, 8), dtype=np.uint8)
                img[:4, :4] = 80 * c
                Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "options",
    [
        [],  # the yardstick's defaults: RGB 32x32, pad 4, own mean/std, one-cycle, last epoch
        [
            "--size",
            "native",
            "--channels",
            "1",
            "--pad",
            "1",
            "--norm",
            "mnist",
            "--schedule",
            "warmcos",
            "--select",
            "best",
            "--init",
            "torch",
            "--test-every-epoch",
        ],
    ],  # fmt: skip
)
def test_plain_imagefolder_trains_a_folder_with_ltray_unimportable(
    tmp_path: Path, options: list[str]
) -> None:
    root = _tiny_gray_folder(tmp_path / "data")
    script = SCRIPTS / "plain_imagefolder.py"
    argv = [str(script), str(root), "--epochs", "2", "--batch", "8", "--val-per-class", "1",
            "--threads", "1", "--out", str(tmp_path / "res.json"), *options]  # fmt: skip
    code = (
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(SCRIPTS)!r})\n"
        "sys.modules['ltray'] = None\n"
        f"sys.argv = {argv!r}\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["train_counts"] == [12, 6, 3] and res["sizes"] == {"train": 21, "val": 3, "test": 9}
    for head in ("linear", "ncm_cosine"):
        assert set(res[head]) == {"many", "medium", "few", "overall"}
        assert 0 <= res[head]["overall"] <= 100
    if options:
        assert res["mean"] == pytest.approx([0.1307]) and res["std"] == pytest.approx([0.3081])
        assert res["linear_best_val"]["epoch"] == res["epoch_used"]
        assert res["linear_best_val"]["overall"] == res["linear"]["overall"]
    else:
        assert len(res["mean"]) == 3 and res["epoch_used"] == 2  # own stats of the RGB copy


def test_make_gray_lt_writes_a_long_tailed_folder(tmp_path: Path) -> None:
    import os

    mnist = Path(os.environ.get("LTRAY_DATA_DIR", "")) / "MNIST" / "raw"
    if not mnist.is_dir():
        pytest.skip(f"MNIST not found at {mnist} (set LTRAY_DATA_DIR=../shared/data)")
    out = tmp_path / "lt"
    args = [sys.executable, str(SCRIPTS / "make_gray_lt.py"), "--mnist", str(mnist.parents[1]),
            "--out", str(out), "--n-max", "20", "--rho", "10", "--test-per-class", "3",
            "--val-per-class", "2", "--invert"]  # fmt: skip
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    counts = {d.name: len(list(d.iterdir())) for d in sorted((out / "train").iterdir())}
    assert counts == {"0": 20, "1": 15, "2": 11, "3": 9, "4": 7, "5": 5, "6": 4, "7": 3, "8": 2,
                      "9": 2}  # fmt: skip
    assert all(len(list(d.iterdir())) == 3 for d in (out / "test").iterdir())
    assert all(len(list(d.iterdir())) == 2 for d in (out / "val").iterdir())
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "already exists" in again.stderr  # never overwritten
