"""A finished run as a model: `load_run`, the MLflow model, `ltray evaluate`, `ltray predict`.

One short tracked digits run (in-process, no Ray) serves every test of this module.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

import ltray
from ltray.cli import main
from ltray.config import load_config
from ltray.data import make_loader, prepare_data
from ltray.fusion.cache import read_cache

pytestmark = [pytest.mark.slow]

# The run's evaluation passes fold each BatchNorm into its convolution
# (ltray.train.evaluate.inference_backbone); the exported model runs them unfolded: the same
# logits up to float rounding (3e-5 seen), far below any wrong weight or head.
ATOL = 1e-4


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 1-epoch digits run logged to a private SQLite MLflow store (artifacts beside it)."""
    from ltray.train.driver import train

    root = tmp_path_factory.mktemp("inference")
    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.MlflowClient(uri).create_experiment("ltray", artifact_location=str(root / "artifacts"))
    cfg = load_config(
        None,
        [
            "train.epochs=1",
            "memory.init_epoch=0",  # memory from a pass before training: every head in 1 epoch
            "data.batch_size=64",
            "train.threads=1",
            "scaling.num_workers=0",
            "tracking.mlflow=true",
            f"tracking.mlflow_uri={uri}",
        ],
    )
    env = os.environ.get("MLFLOW_TRACKING_URI")
    run_dir, results = train(cfg, out=root / "run")
    # Logging the model used MLflow's fluent API: the process's own settings are untouched.
    assert os.environ.get("MLFLOW_TRACKING_URI") == env
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    return {"run_dir": run_dir, "uri": uri, "run_id": run_id, "results": results, "cfg": cfg}


@contextmanager
def mlflow_uri(uri: str) -> Iterator[None]:
    from ltray.tracking.models import using_tracking_uri as _using_tracking_uri

    with _using_tracking_uri(uri):
        yield


def _test_pixels(cfg) -> np.ndarray:
    """The run's test split as raw uint8 [N, 1, 8, 8] images, in its order."""
    return np.ascontiguousarray(prepare_data(cfg.data).pools["test"].images)


def _test_batch(cfg) -> torch.Tensor:
    data = prepare_data(cfg.data)
    loader = make_loader(data, "test", batch_size=512, augment=False, shuffle=False)
    return torch.cat([x for x, _ in loader])


def test_load_run_and_the_mlflow_model_give_the_cached_test_logits(
    tracked_run: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, uri, run_id = tracked_run["run_dir"], tracked_run["uri"], tracked_run["run_id"]
    cache = read_cache(run_dir)
    x = _test_batch(tracked_run["cfg"])

    run = ltray.load_run(run_dir)
    assert isinstance(run, ltray.LoadedRun)
    assert not run.net.training
    assert run.heads == ["linear", "ncm_ema", "ncm_full", "kt"]
    assert run.class_names == [str(i) for i in range(10)]
    assert run.config.train.epochs == 1
    logits = run.logits(x)
    np.testing.assert_allclose(logits["linear"].numpy(), cache.test.logits, atol=ATOL, rtol=0)
    np.testing.assert_allclose(logits["kt"].numpy(), cache.test.kt_logits, atol=ATOL, rtol=0)
    # The NCM heads (memory, cached train features) score what the run reported.
    from ltray.metrics import evaluate_logits

    for head in ("ncm_ema", "ncm_full"):
        m = evaluate_logits(logits[head].numpy(), cache.test.labels, run.groups)
        assert m.overall == pytest.approx(tracked_run["results"]["heads"][head]["test"]["overall"])

    # The MLflow model: PyTorch flavour under `model`, a plain tensor of logits out, raw
    # uint8 pixels in (before: normalised input, said only by metadata; [0, 1] images scored
    # at chance).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    pixels = torch.from_numpy(_test_pixels(tracked_run["cfg"]))  # uint8 [N, 1, 8, 8]
    with torch.no_grad():
        out = model(pixels)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), cache.test.logits, atol=ATOL, rtol=0)  # linear
    with pytest.raises(Exception, match="(?i)dtype"):  # the exported graph takes uint8 only
        model(pixels.float() / 255)
    # In Python the same module also takes [0, 1] floats.
    eager = run.model("linear")
    with torch.no_grad():
        np.testing.assert_allclose(
            eager(pixels.float() / 255).numpy(), cache.test.logits, atol=ATOL, rtol=0
        )
    info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    spec = info.signature.inputs.to_dict()[0]["tensor-spec"]
    assert tuple(spec["shape"]) == (-1, 1, 8, 8) and spec["dtype"] == "uint8"
    assert info.metadata["class_names"] == run.class_names
    assert info.metadata["input_format"].startswith("uint8 [B, 1, 8, 8], values 0..255")
    assert info.metadata["input"]["mean"] == list(run.input.mean)
    example = mlflow.models.Model.load(f"runs:/{run_id}/model").load_input_example()
    example = np.asarray(example)
    assert example.dtype == np.uint8 and example.shape == (2, 1, 8, 8) and example.any()

    # An MLflow run URI loads the same run.
    again = ltray.load_run(f"runs:/{run_id}")
    assert again.run_dir == run_dir and again.mlflow_run_id == run_id


def test_evaluate_reproduces_the_test_split_and_scores_another(
    tracked_run: dict, tmp_path: Path
) -> None:
    run_dir, results = tracked_run["run_dir"], tracked_run["results"]
    out = tmp_path / "same"
    assert main(["evaluate", str(run_dir), "--out", str(out), "--posthoc", "none"]) == 0
    with open(out / "metrics.csv") as f:
        rows = {r["head"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"linear", "ncm_ema", "ncm_full", "kt"}
    for head, row in rows.items():
        assert float(row["overall"]) == pytest.approx(results["heads"][head]["test"]["overall"])
    assert (out / "per_class.png").is_file() and "Many" in (out / "table.txt").read_text()

    other = tmp_path / "seed1"
    assert main(["evaluate", str(run_dir), "seed=1", "--split", "val", "--out", str(other)]) == 0
    record = json.loads((other / "evaluation.json").read_text())
    assert record["data"]["overrides"] == ["seed=1"] and record["split"] == "val"
    assert record["class_counts"] == results["class_counts"]  # the run's own shot groups
    # Only data keys: the model is fixed.
    assert main(["evaluate", str(run_dir), "train.lr=0.1"]) == 2


def test_evaluate_scores_the_fitted_post_hoc_methods_too(tracked_run: dict, tmp_path: Path) -> None:
    """`ltray fuse` then `ltray evaluate`: each post-hoc method is fitted again on the run's
    cache and applied to the evaluated split; on the run's own test split it gives exactly the
    fuse folder's test metrics (a refit that chose otherwise, or features that are not the
    cache's, would not)."""
    run_dir = tracked_run["run_dir"]
    assert main(["fuse", str(run_dir), "--method", "llw,weighted,crt,logit_adj"]) == 0
    (fuse,) = sorted((run_dir / "fusion").glob("fuse-*"))[-1:]
    fused = {r["method"]: r for r in json.loads((fuse / "results.json").read_text())}
    out = tmp_path / "posthoc"
    assert main(["evaluate", str(run_dir), "--out", str(out)]) == 0
    record = json.loads((out / "evaluation.json").read_text())
    assert record["posthoc_from"] == str(fuse) and record["notes"] == []
    for name, r in fused.items():
        got = record["heads"][f"posthoc:{name}"]["test"]
        for key in ("overall", "many", "medium", "few", "top5"):
            assert got[key] == pytest.approx(r["test"][key], abs=1e-9), (name, key)
    assert "llw (post-hoc)" in (out / "table.txt").read_text()
    # Another split: the same methods, scored on data they were not fitted on.
    other = tmp_path / "seed1"
    assert main(["evaluate", str(run_dir), "seed=1", "--out", str(other)]) == 0
    heads = json.loads((other / "evaluation.json").read_text())["heads"]
    assert {f"posthoc:{n}" for n in fused} <= set(heads)
    assert main(["evaluate", str(run_dir), "--posthoc", str(tmp_path / "nope")]) == 2


def test_predict_labels_files_and_folders_and_lists_unreadable_images(
    tracked_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    run_dir = tracked_run["run_dir"]
    data = prepare_data(tracked_run["cfg"].data)
    images = data.pools["test"].images  # uint8 [N, 1, 8, 8], the run's input size
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    picks = [0, 7, 42, 150]
    paths = []
    for n, i in enumerate(picks):
        p = folder / ("sub" if n % 2 else "") / f"test{i}.png"
        Image.fromarray(images[i, 0], mode="L").save(p)
        paths.append(p)
    (folder / "broken.png").write_bytes(b"not an image")
    single = tmp_path / "single.png"
    Image.fromarray(images[3, 0], mode="L").save(single)

    out = tmp_path / "preds.csv"
    rc = main(["predict", str(run_dir), str(folder), str(single), "--topk", "3", "--out", str(out)])
    assert rc == 0
    err = capsys.readouterr().err
    assert "1 of 6 images could not be read" in err and "broken.png" in err
    with open(out) as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert set(rows) == {
        "test0.png",
        "test7.png",
        "test42.png",
        "test150.png",
        "single.png",
        "broken.png",
    }
    assert rows["broken.png"]["error"] and not rows["broken.png"]["label_1"]
    # PNG keeps uint8 exactly: the top-1 is the cached test logits' argmax (linear head).
    cache = read_cache(run_dir)
    for i in [*picks, 3]:
        name = "single.png" if i == 3 else f"test{i}.png"
        row = rows[name]
        assert int(row["class_id_1"]) == int(cache.test.logits[i].argmax())
        probs = [float(row[f"prob_{r}"]) for r in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6

    assert main(["predict", str(run_dir), str(single), "--head", "nope"]) == 2
    assert main(["predict", str(run_dir), str(tmp_path / "missing.png")]) == 2


def test_best_trial_model_is_logged_and_registered(tracked_run: dict, tmp_path: Path) -> None:
    """The end of a sweep: the best trial's model goes to its child run and, with --register,
    to the model registry (the tracked run stands in for the best trial)."""
    from ltray.tracking import SpoolingClient
    from ltray.tune.mlflow_callback import log_best_model as _log_best_model

    uri, run_dir = tracked_run["uri"], tracked_run["run_dir"]
    client = SpoolingClient(uri, tmp_path / "spool.jsonl")
    parent = client.create_run("ltray", "sweep", {})
    child = client.create_run("ltray", "trial-t1", {"mlflow.parentRunId": parent})
    (tmp_path / "mlflow_runs.json").write_text(json.dumps({"t1": child}))
    best = {"trial_id": "t1", "dir": str(run_dir)}
    _log_best_model(client, tmp_path, parent, best, register="ltray-digits")

    tags = mlflow.MlflowClient(uri).get_run(parent).data.tags
    assert tags["ltray.best_model"] == f"runs:/{child}/model"
    assert tags["ltray.registered_model"] == "models:/ltray-digits/1"
    with mlflow_uri(uri):
        model = mlflow.pytorch.load_model("models:/ltray-digits/1")
    x = torch.from_numpy(_test_pixels(tracked_run["cfg"])[:8])
    with torch.no_grad():
        out = model(x)
    np.testing.assert_allclose(out.numpy(), read_cache(run_dir).test.logits[:8], atol=ATOL, rtol=0)


def test_predict_and_the_mlflow_model_agree_on_raw_pngs(
    tracked_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round trip of the issue (24, item 5): the same 20 test PNGs through `ltray predict`
    and through `mlflow.pytorch.load_model` fed the PNGs' raw pixels agree on every top-1."""
    from PIL import Image

    run_dir, uri, run_id = tracked_run["run_dir"], tracked_run["uri"], tracked_run["run_id"]
    images = _test_pixels(tracked_run["cfg"])
    folder = tmp_path / "pngs"
    folder.mkdir()
    picks = np.linspace(0, len(images) - 1, 20).astype(int)  # every class
    for i in picks:
        Image.fromarray(images[i, 0], mode="L").save(folder / f"{i:03d}.png")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run_dir), str(folder), "--head", "linear", "--out", str(out)]) == 0
    with open(out) as f:
        predicted = {Path(r["path"]).name: int(r["class_id_1"]) for r in csv.DictReader(f)}

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/model")  # the linear head (select_head)
    names = sorted(predicted)
    raw = np.stack([np.asarray(Image.open(folder / n))[None] for n in names])  # uint8 [20,1,8,8]
    with torch.no_grad():
        top1 = model(torch.from_numpy(raw)).argmax(1).tolist()
    assert len(names) == 20 and top1 == [predicted[n] for n in names]
    cache = read_cache(run_dir)
    assert top1 == [int(cache.test.logits[int(n[:3])].argmax()) for n in names]


def _folder_from_test(root: Path, images: np.ndarray, labels: np.ndarray, names: dict) -> Path:
    """An ImageFolder whose train/, val/ and test/ each hold the given test images of the
    classes in ``names`` (label → folder name)."""
    from PIL import Image

    for split in ("train", "val", "test"):
        for c, name in names.items():
            d = root / split / name
            d.mkdir(parents=True)
            for i in np.flatnonzero(labels == c):
                Image.fromarray(images[i, 0], mode="L").save(d / f"{i:03d}.png")
    return root


def test_evaluate_matches_classes_by_name(tracked_run: dict, tmp_path: Path, capsys) -> None:
    """Before: the number of classes was checked, not their names: one renamed class folder
    (sorted order shifted) scored NCM 100% -> 0.0% without a word."""
    run_dir = tracked_run["run_dir"]
    data = prepare_data(tracked_run["cfg"].data)
    images, labels = data.pools["test"].images, data.labels("test")
    renamed = {c: ("zero" if c == 0 else str(c)) for c in range(10)}
    root = _folder_from_test(tmp_path / "renamed", images, labels, renamed)
    args = ["evaluate", str(run_dir), "data.name=imagefolder", f"data.root={root}"]
    capsys.readouterr()
    assert main([*args, "data.profile=as_is", "--posthoc", "none"]) == 2
    err = capsys.readouterr().err
    assert "class zero is not a class of the run" in err and "class 0 is missing" in err

    # Two classes, their folders in another order than the run's: remapped by name.
    sub = _folder_from_test(tmp_path / "sub", images, labels, {3: "3", 7: "7"})
    out = tmp_path / "sub-eval"
    args = ["evaluate", str(run_dir), "data.name=imagefolder", f"data.root={sub}"]
    assert main([*args, "data.profile=as_is", "--posthoc", "none", "--out", str(out)]) == 0
    record = json.loads((out / "evaluation.json").read_text())
    results = tracked_run["results"]
    for head in ("linear", "kt"):
        got = record["heads"][head]["test"]["per_class"]
        own = results["heads"][head]["test"]["per_class"]
        assert got[3] == pytest.approx(own[3]) and got[7] == pytest.approx(own[7]), head
    assert any("have no image in this split" in n for n in record["notes"])


def test_evaluate_on_a_reshuffled_split_drops_what_the_run_saw(
    tracked_run: dict, tmp_path: Path
) -> None:
    """Before: `ltray evaluate RUN data.seed=1` scored 58 of its 200 test images that were the
    run's training images (and more that were its val images)."""
    run_dir, cfg = tracked_run["run_dir"], tracked_run["cfg"]
    own = prepare_data(cfg.data)
    seen = set(own.ids("train")) | set(own.ids("val"))
    other = prepare_data(
        cfg.model_copy(update={"data": cfg.data.model_copy(update={"seed": 1})}).data
    )
    overlap = [i for i in other.ids("test") if i in seen]
    assert overlap  # the documented example does re-split one pool

    out = tmp_path / "seed1"
    assert (
        main(["evaluate", str(run_dir), "data.seed=1", "--posthoc", "none", "--out", str(out)]) == 0
    )
    record = json.loads((out / "evaluation.json").read_text())
    dropped = record["data"]["dropped"]
    assert dropped["dropped_train"] + dropped["dropped_val"] == len(overlap)
    assert record["data"]["size"] == 200 - len(overlap) == dropped["kept"]
    assert any(
        n.startswith(f"dropped {len(overlap)} of the 200 test images") for n in record["notes"]
    )
    # The run's own split is scored exactly as before: nothing dropped, the run's numbers.
    same = tmp_path / "same"
    assert main(["evaluate", str(run_dir), "--posthoc", "none", "--out", str(same)]) == 0
    record = json.loads((same / "evaluation.json").read_text())
    assert "dropped" not in record["data"] and record["data"]["size"] == 200
