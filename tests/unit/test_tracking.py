"""MLflow tracking: absolute store URIs, the spool that keeps what an outage could not log, one
module for every MLflow call, one metric naming scheme with fractions, and what the UI shows of a
run (dataset input, source tags, model, a model-training experiment)."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import mlflow
import pytest

import ltray
from ltray.metrics import HeadMetrics
from ltray.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    SpoolingClient,
    dataset_input,
    fraction_problems,
    git_commit,
    log_fusion,
    metric_name,
    parse_metric,
    resolve_tracking_uri,
    result_metrics,
)


def test_tracking_uris_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///rel/m.db") == f"sqlite:///{tmp_path}/rel/m.db"
    assert resolve_tracking_uri("store.db") == f"sqlite:///{tmp_path}/store.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert resolve_tracking_uri(None).endswith("/mlflow.db")


class _Outage:
    """Make every MLflow call of a client fail until ``end()``."""

    def __init__(self, client: SpoolingClient, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = True
        inner = client.client
        for name in (
            "create_run",
            "log_batch",
            "set_tag",
            "set_terminated",
            "get_experiment_by_name",
        ):
            real = getattr(inner, name)

            def wrapped(*a, _real=real, **k):
                if self.down:
                    raise ConnectionError("server down")
                return _real(*a, **k)

            monkeypatch.setattr(inner, name, wrapped)

    def end(self) -> None:
        self.down = False


def test_outage_is_spooled_and_replayed_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = SpoolingClient(uri, tmp_path / "spool.jsonl")
    parent = client.create_run("exp", "parent", {})
    outage = _Outage(client, monkeypatch)
    with pytest.warns(UserWarning, match="unreachable"):
        child = client.create_run("exp", "child", {"mlflow.parentRunId": parent})
    assert child.startswith("pending-")
    client.log_params(child, {"kt.phi": 0.5})
    for epoch in (1, 2):
        client.log_metrics(child, {"val_kt_overall": 0.1 * epoch}, step=epoch)
    client.set_terminated(child)
    assert len((tmp_path / "spool.jsonl").read_text().splitlines()) == 5

    outage.end()
    assert client.flush()
    assert not (tmp_path / "spool.jsonl").exists()
    real = client.resolve(child)
    assert not real.startswith("pending-")
    reader = mlflow.MlflowClient(uri)
    run = reader.get_run(real)
    assert run.data.params["kt.phi"] == "0.5"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.info.status == "FINISHED"
    steps = [m.step for m in reader.get_metric_history(real, "val_kt_overall")]
    assert sorted(steps) == [1, 2]


def test_a_parent_created_during_the_outage_is_linked_after_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13: the server was down when the sweep started, so the parent itself got a
    pending id; the children's mlflow.parentRunId must name the real parent after replay."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = SpoolingClient(uri, tmp_path / "spool.jsonl")
    outage = _Outage(client, monkeypatch)
    with pytest.warns(UserWarning, match="unreachable"):
        parent = client.create_run("exp", "sweep", {})
    child = client.create_run("exp", "trial", {"mlflow.parentRunId": parent})
    client.set_tag(child, "ltray.parent", parent)
    assert parent.startswith("pending-") and child.startswith("pending-")
    outage.end()
    assert client.flush()
    run = mlflow.MlflowClient(uri).get_run(client.resolve(child))
    assert run.data.tags["mlflow.parentRunId"] == client.resolve(parent)
    assert run.data.tags["ltray.parent"] == client.resolve(parent)
    assert not client.resolve(parent).startswith("pending-")


def test_artifacts_of_a_local_store_never_land_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    uri = f"sqlite:///{tmp_path}/home/mlflow.db"
    (tmp_path / "home").mkdir()
    client = SpoolingClient(uri, tmp_path / "spool.jsonl")
    run = client.create_run("my exp", "r", {})
    (work / "table.txt").write_text("x")
    client.log_artifact(run, str(work / "table.txt"))
    assert not (work / "mlruns").exists()
    stored = list((tmp_path / "home" / "mlartifacts" / "my_exp").rglob("table.txt"))
    assert len(stored) == 1


# -- one way to MLflow ---------------------------------------------------------------------------

LTRAY = Path(__file__).resolve().parents[2] / "ltray"


def _imports_mlflow(path: Path) -> list[int]:
    """Lines of ``path`` importing mlflow (or a submodule), at any depth of the module."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
            lines.append(node.lineno)
    return lines


def test_only_the_tracking_package_imports_mlflow() -> None:
    offenders = {
        str(p.relative_to(LTRAY.parent)): lines
        for p in sorted(LTRAY.rglob("*.py"))
        if "tracking" not in p.relative_to(LTRAY).parts[:1] and (lines := _imports_mlflow(p))
    }
    assert offenders == {}, f"mlflow imported outside ltray/tracking/: {offenders}"
    assert _imports_mlflow(LTRAY / "tracking" / "client.py")  # the check does see imports


def test_one_metric_naming_scheme() -> None:
    assert metric_name("val", "kt", "few") == "val_kt_few"
    assert metric_name("test", "mixup_input_0.3_instance", "overall", "std") == (
        "test_mixup_input_0.3_instance_overall_std"
    )
    assert parse_metric("test_ncm_full_many") == ("test", "ncm_full", "many", None)
    assert parse_metric("test_fused_llw_few") == ("test", "fused_llw", "few", None)
    assert parse_metric("test_ce_overall_mean") == ("test", "ce", "overall", "mean")
    others = ("lr", "train_loss", "train_loss_kd_few", "images_per_s", "chosen_llw_epoch")
    for other in (*others, "best_score"):
        assert parse_metric(other) is None
    with pytest.raises(ValueError, match="group"):
        metric_name("test", "kt", "rare")
    assert fraction_problems({"test_kt_few": 56.9, "test_kt_many": 0.5, "lr": 2.0}) == [
        "test_kt_few=56.9"
    ]
    results = {"heads": {"kt": {"test": {"few": 0.25, "overall": 0.5, "per_class": [0.1]}}}}
    assert result_metrics(results) == {"test_kt_few": 0.25, "test_kt_overall": 0.5}


def _split(root: Path, seed: int) -> dict:
    """A split.json as `prepare_data` writes it, with its list files."""
    files = {}
    for split in ("train", "val", "test"):
        path = root / f"splits-{seed}" / f"{split}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"digits/{seed:05d} 0\ndigits/{split} 1\n")
        files[split] = str(path)
    return {
        "source": "digits-lt",
        "origin": "sklearn.datasets.load_digits",
        "root": None,
        "seed": seed,
        "num_classes": 10,
        "rho_requested": 10.0,
        "rho": 10.3,
        "sizes": {"train": 544, "val": 200, "test": 200},
        "list_files": files,
    }


def _list_digest(info: dict) -> str:
    h = hashlib.sha256()
    for split in ("train", "val", "test"):
        h.update(split.encode() + b"\0" + Path(info["list_files"][split]).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _scheme_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if parse_metric(k)}


def test_reproduction_logs_fractions_named_like_every_other_metric(tmp_path: Path) -> None:
    """The reproduction's table cells were percents under their own names; now they are
    ``test_<row>_<group>_{mean,std}`` fractions, and each child has its dataset and tags."""
    from ltray.reproduce import CliOptions, build_plan, load_reproduction
    from ltray.reproduce.report import build_tables, collect_records
    from ltray.reproduce.tracking import log_reproduction

    rep = load_reproduction("quick", None, CliOptions(seeds=2, methods=["ce"], no_mixup=True))
    plan = build_plan(
        rep.cfg, rep.raw, rep.options, groups_present=["many", "medium", "few"], source="quick"
    )
    out = tmp_path / "rep"
    splits = {}
    for seed, overall in ((0, 0.5), (1, 0.7)):
        run_dir = out / f"seed-{seed}" / "ce"
        run_dir.mkdir(parents=True)
        test = {"many": 0.9, "medium": 0.5, "few": 0.2, "overall": overall, "top1": overall}
        heads = {"linear": {"val": test, "test": test}}
        (run_dir / "results.json").write_text(json.dumps({"best_epoch": 3, "heads": heads}))
        splits[seed] = _split(tmp_path, seed)
        (run_dir / "split.json").write_text(json.dumps(splits[seed]))
    tables = build_tables(plan, collect_records(plan, out))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = log_reproduction(
        plan, out, uri=uri, experiment="rep", main=tables.main, mixup=tables.mixup,
        artifacts=[], complete=True,
    )  # fmt: skip

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("rep")
    assert exp.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    metrics = client.get_run(parent).data.metrics
    assert metrics["test_ce_overall_mean"] == pytest.approx(0.6)
    assert metrics["test_ce_overall_std"] == pytest.approx(0.1414, abs=1e-3)
    assert metrics["test_ce_few_mean"] == pytest.approx(0.2)
    assert not [k for k in metrics if not parse_metric(k)], metrics
    assert all(0 <= v <= 1 for v in metrics.values()), metrics
    parent_inputs = client.get_run(parent).inputs.dataset_inputs
    assert sorted(d.dataset.name for d in parent_inputs) == [
        "digits-lt ρ=10 seed 0",
        "digits-lt ρ=10 seed 1",
    ]
    children = json.loads((out / "mlflow_runs.json").read_text())
    child = client.get_run(children["seed-1/ce"])
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.tags["mlflow.source.name"] == "ltray reproduce"
    (ds,) = child.inputs.dataset_inputs
    assert ds.dataset.digest == _list_digest(splits[1])
    assert _scheme_metrics(child.data.metrics) == child.data.metrics
    assert child.data.metrics["test_linear_overall"] == pytest.approx(0.7)
    link = json.loads((out / "seed-1" / "ce" / "mlflow_run.json").read_text())
    assert link == {"tracking_uri": uri, "run_id": children["seed-1/ce"]}


class _Result:
    """The shape of ``ltray.fusion.methods.MethodResult`` that tracking reads."""

    def __init__(self, name: str, val: float, test: float, chosen: dict) -> None:
        self.name, self.chosen = name, chosen
        self.val = HeadMetrics(val, None, 0.9, val, None, val, 0.05, [])
        self.test = HeadMetrics(test, 0.99, 0.9, None, 0.1, test, 0.04, [])


def test_fuse_logs_fractions_named_like_every_other_metric(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_dir, out_dir = tmp_path / "run", tmp_path / "run" / "fusion" / "fuse-1"
    out_dir.mkdir(parents=True)
    (out_dir / "results.csv").write_text("method\nllw\n")
    client = SpoolingClient(uri, tmp_path / "spool.jsonl")
    run_id = client.create_run("fuse", "r", {})
    (run_dir / "mlflow_run.json").write_text(json.dumps({"tracking_uri": uri, "run_id": run_id}))
    results = [
        _Result("llw", 0.61, 0.58, {"epoch": 7, "lr": 0.1, "tie_break": "linear"}),
        _Result("sum", 0.55, 0.52, {}),
    ]
    assert log_fusion(run_dir, out_dir, results) is None

    reader = mlflow.MlflowClient(uri)
    metrics = reader.get_run(run_id).data.metrics
    assert metrics["test_fused_llw_overall"] == pytest.approx(0.58)
    assert metrics["val_fused_sum_overall"] == pytest.approx(0.55)
    assert metrics["test_fused_llw_many"] == pytest.approx(0.9)
    assert "test_fused_llw_medium" not in metrics  # an absent group is absent, never 0
    assert metrics["chosen_llw_epoch"] == 7 and "chosen_llw_tie_break" not in metrics
    scheme = _scheme_metrics(metrics)
    assert set(metrics) - set(scheme) == {"chosen_llw_epoch", "chosen_llw_lr"}
    assert all(0 <= v <= 1 for v in scheme.values())
    assert reader.list_artifacts(run_id, "fusion/fuse-1")

    # A run the server does not know: refused, warned, never spooled (it would block the spool).
    (run_dir / "mlflow_run.json").write_text(json.dumps({"tracking_uri": uri, "run_id": "nope"}))
    with pytest.warns(UserWarning, match="could not log to MLflow"):
        assert "could not log" in log_fusion(run_dir, out_dir, results)
    assert not (run_dir / "mlflow_spool.jsonl").exists()


def test_a_dataset_logged_during_an_outage_is_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = SpoolingClient(uri, tmp_path / "spool.jsonl")
    run = client.create_run("exp", "r", {})
    outage = _Outage(client, monkeypatch)
    monkeypatch.setattr(client.client, "log_inputs", _failing(outage, client.client.log_inputs))
    info = _split(tmp_path, 3)
    with pytest.warns(UserWarning, match="unreachable"):
        client.log_dataset(run, dataset_input(info))
    assert (tmp_path / "spool.jsonl").is_file()
    outage.end()
    assert client.flush()
    (ds,) = mlflow.MlflowClient(uri).get_run(run).inputs.dataset_inputs
    assert (ds.dataset.name, ds.dataset.digest) == ("digits-lt ρ=10 seed 3", _list_digest(info))
    assert json.loads(ds.dataset.source) == {"tags": {"origin": "sklearn.datasets.load_digits"}}


def _failing(outage: _Outage, real):
    def wrapped(*a, **k):
        if outage.down:
            raise ConnectionError("server down")
        return real(*a, **k)

    return wrapped


@pytest.mark.slow
def test_a_tracked_run_fills_the_dataset_source_and_model_columns(tmp_path: Path) -> None:
    """What the MLflow UI shows of a tracked `ltray train` run: a model-training experiment, the
    dataset input (name, digest of the split's list files, source), the source tags, the model,
    and fractions."""
    from ltray.config import load_config
    from ltray.train.driver import train

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(
        None,
        [
            "train.epochs=1",
            "memory.init_epoch=0",
            "data.batch_size=64",
            "train.threads=1",
            "scaling.num_workers=0",
            "tracking.mlflow=true",
            f"tracking.mlflow_uri={uri}",
            "tracking.experiment=tiny",
        ],
    )
    run_dir, _ = train(cfg, out=tmp_path / "run")
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "tiny" and exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND

    split = json.loads((run_dir / "split.json").read_text())
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.name == "digits-lt ρ=10 seed 0"
    assert ds.dataset.digest == _list_digest(split)
    assert "sklearn.datasets.load_digits" in ds.dataset.source
    assert json.loads(ds.dataset.profile)["train_images"] == split["sizes"]["train"]

    tags = run.data.tags
    assert tags["mlflow.source.name"] == "ltray train"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["ltray.version"] == ltray.__version__
    assert tags["ltray.run_dir"] == str(run_dir)
    commit = git_commit()
    if commit is not None:  # a git checkout (CI and development): the commit is the column
        assert tags["mlflow.source.git.commit"] == commit[0] and len(commit[0]) == 40

    (out,) = run.outputs.model_outputs
    model = client.get_logged_model(out.model_id)
    assert model.source_run_id == run_id and model.name == "model"
    scheme = _scheme_metrics(run.data.metrics)
    assert {"test_kt_overall", "val_kt_few", "test_linear_many"} <= set(scheme)
    assert all(0 <= v <= 1 for v in scheme.values()), scheme
    assert all(v <= 1 for k, v in run.data.metrics.items() if k.startswith("train_kt_mask"))
