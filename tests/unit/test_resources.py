"""What runs and trials ask Ray for: use_gpu=auto, fractional GPUs, checks before Ray starts."""

from __future__ import annotations

import pytest

from ltray.config import load_config
from ltray.errors import ConfigError
from ltray.launch import TRAIN_DRIVER
from ltray.resources import check_fits, local_resources, resolve_scaling, run_request
from ltray.tune.sweep import trial_resources


def test_auto_gpu_follows_what_is_there() -> None:
    cfg = load_config(None, [])
    assert cfg.scaling.use_gpu == "auto"
    assert resolve_scaling(cfg, {"CPU": 2, "GPU": 0}).scaling.use_gpu is False
    assert resolve_scaling(cfg, {"CPU": 2, "GPU": 1}).scaling.use_gpu is True
    forced = load_config(None, ["scaling.use_gpu=false"])
    assert resolve_scaling(forced, {"CPU": 2, "GPU": 4}).scaling.use_gpu is False
    with pytest.raises(ValueError, match="not resolved"):
        cfg.scaling.worker_resources()
    have = local_resources()
    assert have["CPU"] >= 1 and have["GPU"] >= 0


def test_four_packed_trials_share_one_gpu() -> None:
    cfg = load_config(None, ["scaling.gpus_per_worker=0.25", "scaling.use_gpu=true"])
    assert cfg.scaling.worker_resources() == {"CPU": 1.0, "GPU": 0.25}
    assert trial_resources(cfg, "train") == {"CPU": 1.0, "GPU": 0.25}
    check_fits(cfg.scaling, {"CPU": 4, "GPU": 1})  # four such trials fit a 4-core, 1-GPU node
    nested = load_config(None, ["scaling.num_workers=2", "scaling.use_gpu=false"])
    assert trial_resources(nested, "train") == {TRAIN_DRIVER: 1.0}
    assert run_request(nested.scaling) == {"CPU": 2.0}
    assert trial_resources(nested, "posthoc") == {"CPU": 1.0}


def test_a_packed_sweep_asks_ray_for_a_quarter_gpu(tmp_path) -> None:
    from ltray.tune.folder import sweep_paths
    from ltray.tune.space import load_space
    from ltray.tune.sweep import _trainable

    space_file = tmp_path / "s.yaml"
    space_file.write_text(
        "kind: train\nsearch: {metric: val_linear_overall, mode: max, num_samples: 4}\n"
        "space:\n  kt.phi: {type: float, low: 0.1, high: 0.9}\n"
        "scaling: {gpus_per_worker: 0.25, use_gpu: true}\n"
    )
    space = load_space(space_file, [])
    where = sweep_paths("packed", str(tmp_path))
    trainable = _trainable(space, where, None, None)
    # What tune.with_resources attached, i.e. what Tune's scheduler reserves per trial.
    assert trainable._resources.bundles == [{"CPU": 1.0, "GPU": 0.25}]


def test_fractional_gpus_need_single_worker_runs() -> None:
    with pytest.raises(ConfigError, match="scaling.gpus_per_worker=0.5 shares a GPU"):
        load_config(None, ["scaling.gpus_per_worker=0.5", "scaling.num_workers=2"])
    with pytest.raises(ConfigError, match="scaling.gpus_per_worker"):
        load_config(None, ["scaling.gpus_per_worker=2"])


def test_requests_that_never_fit_name_the_keys_and_the_fix() -> None:
    cfg = load_config(None, ["scaling.cpus_per_worker=8", "scaling.use_gpu=false"])
    with pytest.raises(ConfigError) as err:
        check_fits(cfg.scaling, {"CPU": 2, "GPU": 0})
    msg = str(err.value)
    assert "scaling.cpus_per_worker=8 asks for 8 CPUs but the machine has 2" in msg
    assert "set scaling.cpus_per_worker=2" in msg
    gpu = load_config(None, ["scaling.use_gpu=true"])
    with pytest.raises(ConfigError, match=r"use_gpu=true .* has 0; set scaling.use_gpu=auto"):
        check_fits(gpu.scaling, {"CPU": 2, "GPU": 0})
    two = load_config(None, ["scaling.num_workers=4", "scaling.use_gpu=true"])
    with pytest.raises(ConfigError, match="set scaling.num_workers=2"):
        check_fits(two.scaling, {"CPU": 16, "GPU": 2})
