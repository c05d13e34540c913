"""ltray.storage: one set of folder operations over a local path or a pyarrow URI, the upload of
what changed, the driver's mirror of a remote sweep, and `ltray report` reading a sweep from an
S3-compatible server (moto, started here on 127.0.0.1; skipped when moto is not installed)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ltray.errors import ConfigError
from ltray.paths import ltray_home
from ltray.storage import FolderSync, Storage, driver_folder, local_copy, pull_files, push_files
from ltray.tune.folder import collect_trials, find_sweep


def _tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "sub" / "b.bin").write_bytes(b"\0\1\2")
    (root / "skip").mkdir()
    (root / "skip" / "c.txt").write_text("c")


@pytest.fixture(params=["path", "file-uri"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The same folder as a plain path and as a ``file://`` URI (the remote code path)."""
    where = tmp_path / "store"
    return Storage.at(where if request.param == "path" else where.as_uri())


def test_read_write_list_and_missing_files(store: Storage) -> None:
    assert not store.exists() and store.children() == [] and store.files() == {}
    (store / "x" / "one.json").write_json({"a": 1})
    (store / "x" / "two.txt").write_text("two")
    assert (store / "x" / "one.json").read_json() == {"a": 1}
    assert (store / "x").is_dir() and (store / "x" / "two.txt").is_file()
    assert [c.name for c in (store / "x").children()] == ["one.json", "two.txt"]
    assert (store / "x" / "nope.txt").read_text(missing_ok=True) is None
    with pytest.raises(OSError):
        (store / "x" / "nope.txt").read_text()
    (store / "x" / "two.txt").delete()
    assert not (store / "x" / "two.txt").exists()
    assert store.remote == store.uri.startswith("file://")


def test_upload_download_and_only_changed_files_are_sent_again(
    store: Storage, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    _tree(src)
    sync = FolderSync(src, store / "run")
    assert sync.push(skip=("skip",)) == 2
    assert sync.push() == 1  # skip/c.txt only: the others did not change
    time.sleep(0.01)
    (src / "a.txt").write_text("a2")
    assert sync.push() == 1
    assert (store / "run").files() == {"a.txt": 2, "sub/b.bin": 3, "skip/c.txt": 1}
    out = (store / "run").download(tmp_path / "out", skip=("skip",))
    assert (out / "a.txt").read_text() == "a2" and (out / "sub" / "b.bin").read_bytes() == b"\0\1\2"
    assert not (out / "skip").exists()
    top = (store / "run").download(tmp_path / "top", recursive=False)
    assert sorted(p.name for p in top.iterdir()) == ["a.txt"]


def test_a_local_sweep_folder_is_its_own_driver_folder(tmp_path: Path) -> None:
    root = Storage.at(tmp_path / "sw" / "ltray")
    assert driver_folder(root) == tmp_path / "sw" / "ltray"
    assert local_copy(tmp_path / "sw" / "ltray", "trials/t1") == tmp_path / "sw/ltray/trials/t1"


def test_a_remote_sweep_is_mirrored_for_the_driver(tmp_path: Path) -> None:
    root = Storage.at((tmp_path / "bucket" / "sw" / "ltray").as_uri())
    (root / "trials" / "t1" / "results.json").write_text("{}")
    (root / "trials" / "t1" / "checkpoints" / "best.pt").write_bytes(b"w")
    (root / "mlflow_runs.json").write_text('{"t1": "r1"}')
    mirror = driver_folder(root)
    assert mirror.is_relative_to(ltray_home() / "remote") and (mirror / "storage.json").is_file()
    # the MLflow callback's one call: the trial's own files, not its checkpoints
    trial = local_copy(mirror, "trials/t1")
    assert (trial / "results.json").is_file() and not (trial / "checkpoints").exists()
    assert (local_copy(mirror, "trials/t1", recursive=True) / "checkpoints" / "best.pt").is_file()
    sqlite = b"SQLite format 3\x00\xfb\xff"  # optuna.db is binary: not UTF-8 text
    (root / "optuna.db").write_bytes(sqlite)
    pull_files(root, mirror, ["mlflow_runs.json", "mlflow_spool.jsonl", "optuna.db"])
    assert json.loads((mirror / "mlflow_runs.json").read_text()) == {"t1": "r1"}
    assert (mirror / "optuna.db").read_bytes() == sqlite
    assert not (mirror / "mlflow_spool.jsonl").exists()
    (mirror / "mlflow_runs.json").unlink()
    push_files(root, mirror, ["mlflow_runs.json"])
    assert not (root / "mlflow_runs.json").exists()


def test_s3_uri_takes_region_and_endpoint_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")  # no lookup of the bucket's region
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    store = Storage.at("s3://bucket/sweeps/")
    assert (store.uri, store.path, store.fs.region) == (
        "s3://bucket/sweeps",
        "bucket/sweeps",
        "eu-west-1",
    )
    assert (store / "kt" / "ltray").uri == "s3://bucket/sweeps/kt/ltray"
    with pytest.raises(ConfigError, match="nope://x"):
        Storage.at("nope://x/y")


# ---------------------------------------------------------------------------------- S3 (moto)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with a bucket ``ltray``; the AWS variables point at it."""
    server = pytest.importorskip(
        "moto.server", reason="moto[server] is not installed (pip install -e '.[dev]')"
    )
    srv = server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
    }.items():
        monkeypatch.setenv(key, value)
    import pyarrow.fs as pafs

    pafs.S3FileSystem(
        endpoint_override=f"{host}:{port}",
        scheme="http",
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        allow_bucket_creation=True,
    ).create_dir("ltray")
    try:
        yield "s3://ltray"
    finally:
        srv.stop()


def _fake_sweep(root: Storage) -> None:
    (root / "sweep.json").write_json(
        {"name": "sw", "metric": ["val_kt_overall"], "mode": ["max"], "mlflow_uri": "x"}
    )
    heads = {"kt": {"test": {"many": 0.9, "medium": 0.8, "few": 0.7, "overall": 0.8}}}
    for i, acc in enumerate((0.5, 0.6)):
        trial = root / "trials" / f"t{i}"
        (trial / "trial.json").write_json({"trial_id": f"t{i}", "params": {"train.lr": 0.01}})
        (trial / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_kt_overall": acc}))
        (trial / "results.json").write_json({"best_epoch": 1, "heads": heads})


def test_s3_uri_from_the_aws_environment_and_report(s3: str, capsys: pytest.CaptureFixture) -> None:
    root = Storage.at(f"{s3}/sweeps/sw/ltray")
    assert root.uri == "s3://ltray/sweeps/sw/ltray" and root.remote
    _fake_sweep(root)
    assert find_sweep(f"{s3}/sweeps/sw").uri == root.uri  # the sweep or its ltray/ folder
    trials = collect_trials(root, ["val_kt_overall"], ["max"])
    assert [t["trial_id"] for t in trials] == ["t0", "t1"] and all(t["results"] for t in trials)
    from ltray.cli import main

    assert main(["report", f"{s3}/sweeps/sw"]) == 0
    out = capsys.readouterr().out
    assert "2 trials" in out and "t0" in out and "t1" in out and "80.0" in out
    # the filesystem travels pickled (to Ray workers) with the endpoint it was resolved with
    import pickle

    os.environ.pop("AWS_ENDPOINT_URL_S3")
    again = pickle.loads(pickle.dumps(root))
    assert (again / "trials" / "t1" / "trial.json").read_json()["trial_id"] == "t1"


def test_what_was_pulled_is_not_sent_back(store: Storage, tmp_path: Path) -> None:
    _tree(tmp_path / "src")
    store.upload(tmp_path / "src")
    sync = FolderSync(tmp_path / "scratch", store)
    assert (sync.pull(skip=("skip",)) / "a.txt").read_text() == "a"
    assert not (tmp_path / "scratch" / "skip").exists()
    assert sync.push() == 0
    (tmp_path / "scratch" / "new.txt").write_text("n")
    assert sync.push() == 1
