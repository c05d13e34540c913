"""MLflow tracking: absolute store URIs and the spool that keeps what an outage could not log."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from ltray.tracking import SpoolingClient, resolve_tracking_uri


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
