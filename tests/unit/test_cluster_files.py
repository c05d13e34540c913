"""The cluster files (`cluster/`): they parse, carry the fields their tools require, keep Ray's
token authentication on and MLflow on loopback, and run an `ltray tune` command line that this
ltray accepts."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from ltray.cli import build_parser

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
REPO = CLUSTER.parent


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / name).read_text())


def _check_tune_command(line: str) -> None:
    """The command parses with ltray's own CLI and names a search space of this repository."""
    argv = shlex.split(line)
    assert argv[:2] == ["ltray", "tune"], line
    args = build_parser().parse_args(argv[1:])
    assert args.address == "auto"
    assert args.mlflow_uri == "http://127.0.0.1:5000"
    space = Path(args.space).name
    assert (REPO / "search_spaces" / space).is_file(), space
    assert "scaling.use_gpu=true" in args.overrides


def test_cluster_launcher_config() -> None:
    cfg = _load("ray-cluster.yaml")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        assert key in cfg, key
    assert cfg["provider"]["type"] and cfg["provider"]["region"]
    nodes = cfg["available_node_types"]
    assert cfg["head_node_type"] in nodes
    for name, node in nodes.items():
        assert "node_config" in node and "resources" in node, name
    workers = [n for n in nodes if n != cfg["head_node_type"]]
    assert workers and all(nodes[n]["max_workers"] <= cfg["max_workers"] for n in workers)
    assert nodes[cfg["head_node_type"]]["resources"]["train_driver"] > 0

    head = " ".join(cfg["head_start_ray_commands"])
    worker = " ".join(cfg["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head
    assert "RAY_AUTH_MODE=token ray start --address" in worker
    assert "--dashboard-host=127.0.0.1" in head
    assert "mlflow server --host 127.0.0.1" in head
    assert "train_driver" in head
    # The token reaches every node; drivers started over SSH get the mode from ~/.bashrc.
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    assert any("RAY_AUTH_MODE=token" in c for c in cfg["setup_commands"])
    assert any("pip install" in c and "ltray" in c for c in cfg["setup_commands"])
    text = (CLUSTER / "ray-cluster.yaml").read_text()
    assert "RAY_AUTH_MODE=disabled" not in text
    # The example command in the header is a valid `ltray tune` line.
    cmd = text.split("ray exec cluster/ray-cluster.yaml", 1)[1].split("'", 2)[1]
    _check_tune_command(cmd.replace("\\\n#", " ").replace("~/ltray/", ""))


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_template["spec"]["containers"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_kuberay_rayjob_manifest() -> None:
    job = _load("rayjob-gpu-sweep.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    _check_tune_command(spec["entrypoint"])
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["RAY_AUTH_MODE"] == "token"

    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "train_driver" in head["rayStartParams"]["resources"]
    workers = cluster["workerGroupSpecs"]
    assert workers
    gpu_limits = [
        c["resources"]["limits"].get("nvidia.com/gpu", 0)
        for w in workers
        for c in _containers(w["template"])
    ]
    assert all(g >= 1 for g in gpu_limits)

    # Token auth in every Ray container and in the submitter; the token from a Secret.
    ray_containers = [c for c in _containers(head["template"]) if c["name"] == "ray-head"] + [
        c for w in workers for c in _containers(w["template"])
    ]
    ray_containers += _containers(spec["submitterPodTemplate"])
    assert len(ray_containers) >= 3
    for c in ray_containers:
        env = _env(c)
        assert env["RAY_AUTH_MODE"] == "token", c["name"]
        assert "secretKeyRef" in env["RAY_AUTH_TOKEN"], c["name"]

    # MLflow: a sidecar of the head pod, on loopback only.
    (mlflow,) = [c for c in _containers(head["template"]) if c["name"] == "mlflow"]
    assert "--host=127.0.0.1" in mlflow["args"]
    assert "RAY_AUTH_MODE=disabled" not in (CLUSTER / "rayjob-gpu-sweep.yaml").read_text()


@pytest.mark.parametrize("name", ["ray-cluster.yaml", "rayjob-gpu-sweep.yaml"])
def test_cluster_files_are_described_in_the_user_docs(name: str) -> None:
    """The README links docs/usage.md, whose cluster section describes each launch file."""
    assert "docs/usage.md" in (REPO / "README.md").read_text()
    assert f"cluster/{name}" in (REPO / "docs" / "usage.md").read_text()


def test_runtime_env_file_is_valid_and_its_pins_satisfy_pyproject() -> None:
    """`ray job submit --runtime-env cluster/runtime-env.yaml` ships the repository and pins
    versions ltray declares it works with (a pin outside pyproject's range fails here)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from ray.runtime_env import RuntimeEnv

    env = _load("runtime-env.yaml")
    RuntimeEnv(**{k: v for k, v in env.items() if k != "working_dir"})  # Ray's own validation
    assert env["working_dir"] == "."
    assert ".git/" in env["excludes"]
    # pyproject.toml's dependencies, as installed (extras such as dev carry a marker)
    reqs = [Requirement(r) for r in requires("ltray") or []]
    declared = {r.name: r for r in reqs if r.marker is None}
    pins = {}
    for line in env["pip"]["packages"]:
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", line  # pinned
        pins[req.name] = spec.version
    assert set(pins) == set(declared)  # every dependency pinned, nothing else
    for name, version in pins.items():
        assert declared[name].specifier.contains(version, prereleases=True), (name, version)


def test_the_driver_ships_ltray_to_a_cluster_unless_the_job_brings_it(monkeypatch) -> None:
    import json

    import ltray
    from ltray.train.driver import _RAY_ENV, driver_runtime_env

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.delenv("LTRAY_SHIP_CODE", raising=False)
    package = str(Path(ltray.__file__).resolve().parent)
    assert driver_runtime_env(None) == {"env_vars": _RAY_ENV}  # a local Ray has the code
    remote = driver_runtime_env("ray://head:10001")
    assert remote["py_modules"] == [package] and remote["env_vars"] == _RAY_ENV
    monkeypatch.setenv("LTRAY_SHIP_CODE", "0")  # preinstalled on every node
    assert "py_modules" not in driver_runtime_env("head:6379")
    monkeypatch.delenv("LTRAY_SHIP_CODE")
    # Inside `ray job submit --working-dir . --runtime-env-json '{"env_vars": {...}}'`: Ray
    # refuses a field or an env var that ray.init sets too, so neither is set again.
    key = next(iter(_RAY_ENV))
    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip", "env_vars": {key: "9"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    inside = driver_runtime_env("auto")
    assert "py_modules" not in inside and key not in inside["env_vars"]
    assert set(inside["env_vars"]) == set(_RAY_ENV) - {key}
