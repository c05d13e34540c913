"""A user's ImageFolder or list files get their own normalisation statistics (issue 27): the
per-channel mean/std of the train split, computed once and cached, saved in the run, and used by
`ltray predict`; built-in datasets keep their published values."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ltray.config import DataConfig, load_config
from ltray.data import prepare_data
from ltray.data.stats import channel_stats
from ltray.errors import DataError


def _folder(
    root: Path, *, size: int = 8, mode: str = "L", counts=(12, 6, 3), test: int = 4, bright=0
) -> Path:
    """A small long-tailed folder whose pixels are far from MNIST's statistics (light pages)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per in (("train", counts), ("test", [test] * len(counts))):
        for c, n in enumerate(per):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            shape = (size, size) if mode == "L" else (size, size, 3)
            for i in range(n):
                img = rng.integers(bright, 256, shape, dtype=np.uint8)
                img[: size // 2, : size // 2] = 40 * c  # a class-dependent corner
                Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def _numpy_stats(root: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std of every pixel of ``root/split``, read with PIL, in [0, 1]."""
    from PIL import Image

    arrays = [
        np.asarray(Image.open(p), dtype=np.float64) / 255
        for p in sorted(root.glob(f"{split}/*/*.png"))
    ]
    x = np.stack(arrays)
    x = x[..., None] if x.ndim == 3 else x
    return x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))


def test_channel_stats_are_numpy_s_mean_and_population_std() -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (9000, 3, 5, 4), dtype=np.uint8)  # more than one chunk
    mean, std = channel_stats(images)
    want = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, want.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(std, want.std(axis=(0, 2, 3)), rtol=1e-8)
    with pytest.raises(DataError, match="constant in some channel"):
        channel_stats(np.zeros((2, 1, 3, 3), np.uint8))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_an_imagefolder_is_normalised_by_its_own_train_split(tmp_path: Path, mode: str) -> None:
    """Before: every gray folder got MNIST's 0.1307/0.3081, every colour one CIFAR-10's."""
    root = _folder(tmp_path, mode=mode, bright=120)
    data = prepare_data(DataConfig(name="imagefolder", root=str(root), val_per_class=2))
    mean, std = _numpy_stats(root)
    np.testing.assert_allclose(data.spec.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(data.spec.std, std, rtol=1e-6)
    assert data.spec.stats == "the dataset's own: train split, all 21 images"
    assert data.split_info["normalization"]["mean"] == list(data.spec.mean)
    # the train batches are then centred: mean ≈ 0, std ≈ 1 per channel
    x = data.dataset("train", augment=False).get_batch(list(range(21)))[0]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2


def test_the_statistics_are_those_of_the_train_split_actually_used(tmp_path: Path) -> None:
    root = _folder(tmp_path, counts=(12, 12, 12), bright=60)
    data = prepare_data(
        DataConfig(name="imagefolder", root=str(root), imbalance_ratio=4, val_per_class=2)
    )
    assert data.class_counts.tolist() == [12, 6, 3]  # the exp cut, not the whole folder
    kept = np.stack(
        [data.pools["train"].images[i] for i in range(len(data.labels("train")))]
    ).astype(np.float64)
    np.testing.assert_allclose(data.spec.mean, [kept.mean() / 255], rtol=1e-6)


def test_statistics_are_cached_per_split(tmp_path: Path, monkeypatch) -> None:
    import ltray.data.stats as stats

    root = _folder(tmp_path)
    cfg = DataConfig(name="imagefolder", root=str(root), val_per_class=2)
    first = stats.train_split_stats(
        prepare_data(cfg).pools["train"], source="imagefolder", mode="L", size=8
    )
    assert first.cached and first.path.is_file()  # prepare_data computed and wrote it

    def boom(*a, **k):
        raise AssertionError("computed again despite the cache")

    monkeypatch.setattr(stats, "channel_stats", boom)
    again = prepare_data(cfg)  # a hit: nothing computed
    assert again.spec.mean == first.mean
    with pytest.raises(AssertionError, match="computed again"):  # another split: a miss
        prepare_data(cfg.model_copy(update={"profile": "exp", "imbalance_ratio": 2.0}))
    monkeypatch.undo()
    first.path.write_text("{torn")  # a torn file is recomputed, not trusted
    assert prepare_data(cfg).spec.mean == first.mean


def test_built_in_datasets_keep_their_published_statistics(tmp_path: Path) -> None:
    digits = prepare_data(DataConfig())
    assert digits.spec.mean == (0.3053,) and digits.spec.stats == "published (digits-lt)"
    own = prepare_data(DataConfig(normalize="dataset"))
    assert own.spec.mean != (0.3053,) and own.spec.stats.startswith("the dataset's own")
    folder = prepare_data(
        DataConfig(
            name="imagefolder", root=str(_folder(tmp_path)), normalize="family", val_per_class=2
        )
    )
    assert folder.spec.mean == (0.1307,) and folder.spec.stats == "published (MNIST)"


def test_list_files_are_normalised_by_their_train_images(tmp_path: Path) -> None:
    root = _folder(tmp_path, size=80, mode="RGB", counts=(3, 2), test=2, bright=100)
    train = [f"train/c0/{i:03d}.png 0" for i in range(3)] + [
        f"train/c1/{i:03d}.png 1" for i in range(2)
    ]
    (tmp_path / "train.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "test.txt").write_text(
        "".join(f"test/c{c}/{i:03d}.png {c}\n" for c in (0, 1) for i in (0, 1))
    )
    cfg = DataConfig(
        name="listfile",
        root=str(root),
        train_list=str(tmp_path / "train.txt"),
        test_list=str(tmp_path / "test.txt"),
        val_per_class=1,
    )
    data = prepare_data(cfg)
    assert data.family == "imagenet" and data.spec.stats.endswith("all 5 images")
    assert 0.5 < data.spec.mean[0] < 0.8  # light images, far from ImageNet's 0.485
    (root / "train" / "c1" / "002.png").write_bytes(b"broken")
    (tmp_path / "train.txt").write_text("\n".join([*train, "train/c1/002.png 1"]) + "\n")
    with pytest.raises(DataError, match=r"c1/002.png \(.*train.txt:6\) cannot be read .*mean/std"):
        prepare_data(cfg)  # another train list: a miss, decoded before any training starts
    counted = prepare_data(cfg, check_images=False)  # counting lists without their images
    assert counted.spec.stats.startswith("not computed")


@pytest.mark.slow
def test_the_run_saves_its_statistics_and_predict_uses_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the run saved MNIST's mean/std and `ltray predict` normalised by them."""
    from PIL import Image

    from ltray.cli import main
    from ltray.fusion.cache import read_cache
    from ltray.train.driver import train

    root = _folder(tmp_path / "data", bright=150, counts=(30, 12, 6), test=4)
    cfg = load_config(
        None,
        [
            "data.name=imagefolder",
            f"data.root={root}",
            "data.val_per_class=1",
            "data.batch_size=16",
            "train.method=ce",
            "train.epochs=1",
            "train.threads=1",
            "scaling.num_workers=0",
        ],
    )
    run_dir, _ = train(cfg, out=tmp_path / "run")
    mean, std = _numpy_stats(root)
    split = json.loads((run_dir / "split.json").read_text())
    meta = json.loads((run_dir / "cache" / "meta.json").read_text())
    for saved in (split["normalization"], meta["input"]):
        np.testing.assert_allclose(saved["mean"], mean, rtol=1e-6)
        np.testing.assert_allclose(saved["std"], std, rtol=1e-6)
    assert split["augment"]["pad"] == 1 and split["augment"]["flip"] is False

    # `ltray evaluate` on a split whose own statistics differ (another train cut) still
    # normalises by the run's: the same test split scores exactly as the run scored it.
    from ltray.inference.evaluate import evaluate_run
    from ltray.inference.load import load_run

    results = json.loads((run_dir / "results.json").read_text())
    ev = evaluate_run(load_run(run_dir), ["data.profile=exp", "data.imbalance_ratio=3"])
    want = results["heads"]["linear"]["test"]
    assert abs(ev.heads["linear"].ece - want["ece"]) < 1e-6
    assert abs(ev.heads["linear"].overall - want["overall"]) < 1e-9

    data = prepare_data(cfg.data)
    images = data.pools["test"].images  # uint8 [N, 1, 8, 8]
    folder = tmp_path / "new"
    folder.mkdir()
    for i in range(len(images)):
        Image.fromarray(images[i, 0]).save(folder / f"{i:02d}.png")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run_dir), str(folder), "--topk", "1", "--out", str(out)]) == 0
    with open(out) as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    # The run's own test logits (normalised as in training) give predict's probabilities.
    logits = torch.from_numpy(np.array(read_cache(run_dir).test.logits, dtype=np.float32))
    probs = torch.softmax(logits, 1).numpy()
    for i in range(len(images)):
        row = rows[f"{i:02d}.png"]
        assert int(row["class_id_1"]) == int(probs[i].argmax())
        assert abs(float(row["prob_1"]) - float(probs[i].max())) < 1e-4
