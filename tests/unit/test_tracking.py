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
