"""The one validation pass before Ray and data (issue 13): each bad input of the issue is
reproduced here and must fail fast, every problem at once, in ltray's words."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ltray.config import load_config
from ltray.errors import ConfigError, SpaceError
from ltray.tune.plan import SweepOptions, check_sweep
from ltray.tune.plan import select_head_from_metric as _select_head_from_metric
from ltray.tune.space import load_space
from ltray.validate import (
    BACKBONE_NAMES,
    METHOD_NAMES,
    check_config,
    config_problems,
    metric_problems,
    val_heads,
)

REPO = Path(__file__).resolve().parents[2]
SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))


def problems(*overrides: str) -> list[str]:
    return config_problems(load_config(None, list(overrides)))


def fake_run(path: Path, method: str = "ce") -> Path:
    """A directory shaped like an `ltray train` run (config + best checkpoint)."""
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.yaml").write_text(f"train: {{method: {method}}}\n")
    (path / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    return path


def test_the_name_lists_are_the_registries() -> None:
    from ltray.models.backbones import BACKBONES
    from ltray.train.catalog import TRAIN_METHODS

    assert tuple(BACKBONES.names()) == BACKBONE_NAMES
    assert tuple(TRAIN_METHODS.names()) == METHOD_NAMES


def test_the_default_config_has_no_problem() -> None:
    assert problems() == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.backbone=resnet999"], "known: resnet10, resnet18, resnet32"),
        (["train.method=nope"], "known: ce, kt, lfme, lfme_expert, oltr"),
        (["data.name=imagenet-lt"], "unknown dataset source; known: cifar10-lt"),
        (["data.name=cifar10-lt"], "data.root is not set; data.name=cifar10-lt needs it"),
        (["data.name=imagefolder", "data.root=/nonexistent/x"], "folder not found"),
        (["data.name=listfile", "data.root=/tmp"], "data.train_list and data.test_list are not"),
        (["train.method=oltr"], "oltr.stage1 is not set"),
        (["train.method=oltr", "oltr.stage1=/nonexistent/run"], "no config.yaml"),
        (["train.method=lfme"], "lfme.experts is empty"),
        (["train.method=lfme_expert"], "lfme.subset is not set"),
        (["train.method=ce", "eval.select_head=kt"], "train.method=ce has no KT head"),
        (["eval.select_head=kt_head"], "choose one of linear, kt, ncm_ema"),
        (["train.epochs=3", "memory.init_epoch=3"], "KT head never sees its teacher"),
        (["train.method=ce", "train.epochs=3", "memory.init_epoch=5"], "never built"),
    ],
)
def test_each_bad_input_is_named_with_its_fix(overrides: list[str], expected: str) -> None:
    found = problems(*overrides)
    assert len(found) == 1 and expected in found[0], found


def test_every_problem_is_listed_at_once() -> None:
    cfg = load_config(
        None, ["model.backbone=resnet999", "train.method=nope", "data.name=cifar10-lt"]
    )
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    msg = str(err.value)
    assert msg.startswith("3 config problems")
    assert "model.backbone" in msg and "train.method" in msg and "data.root" in msg


def test_schema_errors_are_in_ltray_words() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.profile=x", "train.epochs=0", "kt.enabled=maybe"])
    msg = str(err.value)
    assert "Input should" not in msg
    assert "data.profile: must be one of 'exp', 'step'" in msg
    assert "train.epochs: must be >= 1" in msg and "kt.enabled: must be true or false" in msg


def test_relative_paths_are_made_absolute_when_loaded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        None, ["data.root=../data/cifar10", "data.train_list=lists/train.txt", "oltr.stage1=r1"]
    )
    assert cfg.data.root == str(tmp_path.parent / "data" / "cifar10")
    assert cfg.data.train_list == str(tmp_path / "lists" / "train.txt")
    assert cfg.oltr.stage1 == str(tmp_path / "r1")
    # Loading again elsewhere (a Ray worker) keeps the path; variables are left to their reader.
    monkeypatch.chdir("/")
    assert load_config(None, [f"data.root={cfg.data.root}"]).data.root == cfg.data.root
    assert load_config(None, ["data.root=${X}/c"]).data.root == "${X}/c"


# ------------------------------------------------------------------------- sweep metrics


def test_heads_follow_the_method_and_the_memory() -> None:
    assert list(val_heads(load_config(None, []))) == ["linear", "kt", "ncm_ema", "ncm_full"]
    ce = load_config(None, ["train.method=ce", "memory.enabled=false"])
    assert list(val_heads(ce)) == ["linear"]


@pytest.mark.parametrize(
    ("overrides", "metric", "expected"),
    [
        ([], "val_kt_overal", "did you mean val_kt_overall?"),
        ([], "test_kt_overall", "must not select on the test split; use val_kt_overall"),
        (["train.method=ce"], "val_kt_overall", "train.method=ce has no KT head"),
        (["eval.every=2"], "val_kt_overall", "set eval.every=1"),
        (["memory.init_epoch=2"], "val_ncm_ema_overall", "set memory.init_epoch<=1"),
        ([], "val_ncm_full_overall", "set eval.ncm_full=every"),
    ],
)
def test_sweep_metrics_are_checked(overrides: list[str], metric: str, expected: str) -> None:
    found = metric_problems(load_config(None, overrides), [metric])
    assert len(found) == 1 and expected in found[0], found


def test_posthoc_metrics_are_the_fused_ones() -> None:
    cfg = load_config(None, [])
    assert metric_problems(cfg, ["val_fused_overall"], kind="posthoc") == []
    assert "test split" in metric_problems(cfg, ["test_fused_overall"], kind="posthoc")[0]


def write_space(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_a_searched_value_that_breaks_the_metric_is_named(tmp_path: Path) -> None:
    path = write_space(
        tmp_path,
        """
        base: {train: {epochs: 2}}
        space:
          train.method: {type: categorical, choices: [kt, ce]}
        search: {metric: val_kt_overall}
        """,
    )
    with pytest.raises(SpaceError) as err:
        load_space(path)
    msg = str(err.value)
    assert "space.train.method: value 'ce'" in msg and "has no KT head" in msg


def test_space_schema_errors_are_all_listed(tmp_path: Path) -> None:
    path = write_space(
        tmp_path,
        """
        base: {train: {epochs: 2}}
        space:
          kt.phi: {type: float, low: 0.0, high: 1.0}
          kt.temperature: {type: floot, low: 1.0, high: 2.0}
        search: {num_samples: 0, max_concurrent: -1, scheduler: hyperband}
        scaling: {num_workerz: 2}
        """,
    )
    with pytest.raises(SpaceError) as err:
        load_space(path)
    msg = str(err.value)
    assert msg.startswith("5 problems"), msg
    assert "search.num_samples: must be >= 1 (got 0)" in msg
    assert "search.max_concurrent: must be >= 1 (got -1)" in msg
    assert "search.scheduler: must be one of 'asha', 'none'" in msg
    assert "scaling.num_workerz: unknown key" in msg
    assert "space.kt.temperature.type: must be one of" in msg
    assert "Input should" not in msg


@pytest.mark.parametrize(
    ("num_samples", "max_concurrent", "expected"),
    [
        (0, None, "--num-samples 0: must be >= 1"),
        (-3, None, "--num-samples -3: must be >= 1"),
        (None, 0, "--max-concurrent 0: must be >= 1"),
    ],
)
def test_zero_or_negative_counts_are_refused_not_replaced(
    num_samples: int | None, max_concurrent: int | None, expected: str
) -> None:
    space = load_space(REPO / "search_spaces" / "kt.yaml")
    opts = SweepOptions(search={"num_samples": num_samples, "max_concurrent": max_concurrent})
    with pytest.raises(ConfigError, match=expected):
        check_sweep(space, opts)


def test_the_metric_picks_the_checkpoint_head_and_group() -> None:
    space = load_space(REPO / "search_spaces" / "kt.yaml")
    space.spec.search.metric = "val_kt_few"
    space = _select_head_from_metric(space)
    assert (space.base.eval.select_head, space.base.eval.select_group) == ("kt", "few")
    space = load_space(REPO / "search_spaces" / "kt.yaml")
    space.spec.search.metric = "val_linear_ece"  # not an accuracy: the group stays overall
    space = _select_head_from_metric(space)
    assert (space.base.eval.select_head, space.base.eval.select_group) == ("linear", "overall")


# ------------------------------------------------------------------------- shipped spaces


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_spaces_fit_a_two_core_machine_without_a_gpu(path: Path, tmp_path: Path) -> None:
    overrides = {
        "oltr.yaml": [f"oltr.stage1={fake_run(tmp_path / 'stage1')}"],
        "lfme.yaml": [f"lfme.experts=[{fake_run(tmp_path / 'e', 'lfme_expert')}]"],
    }.get(path.name, [])
    space = load_space(path, overrides)
    check_sweep(space, SweepOptions(from_run=None))  # raises when a trial would never fit
    from ltray.resources import check_fits, resolve_scaling

    cfg = resolve_scaling(space.base, {"CPU": 2.0, "GPU": 0.0})
    check_fits(cfg.scaling, {"CPU": 2.0, "GPU": 0.0})


@pytest.mark.parametrize(
    ("name", "key"), [("oltr.yaml", "oltr.stage1"), ("lfme.yaml", "lfme.experts")]
)
def test_spaces_that_need_an_earlier_run_say_so_in_seconds(name: str, key: str) -> None:
    t0 = time.time()
    res = subprocess.run(
        [sys.executable, "-m", "ltray.cli", "tune", "--space", f"search_spaces/{name}",
         "--num-samples", "1"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and key in lines[0] and "ltray train" in lines[0], res.stderr
    assert time.time() - t0 < 30


# ------------------------------------------------------------------------- ltray train


def test_train_with_a_bad_backbone_fails_before_ray_and_leaves_no_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "ltray.cli", "train", "model.backbone=resnet999", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "resnet10, resnet18, resnet32" in lines[0], res.stderr
    assert "Ray" not in res.stdout and not out.exists()


def test_a_start_that_fails_after_the_checks_leaves_no_run_folder(tmp_path: Path) -> None:
    """oltr.stage1 looks like a run but its checkpoint is garbage: the failure comes from the
    method's build, after the run folder was made; nothing is left to `--resume`."""
    from ltray.train.driver import train

    stage1 = fake_run(tmp_path / "stage1")
    cfg = load_config(
        None, ["train.method=oltr", f"oltr.stage1={stage1}", "kt.enabled=false",
               "scaling.num_workers=0", "train.epochs=1"],
    )  # fmt: skip
    out = tmp_path / "run"
    with pytest.raises(Exception):  # noqa: B017 - whatever the build raises
        train(cfg, out=out)
    assert not out.exists()


def test_resume_refuses_overrides_that_change_the_saved_sweep() -> None:
    """Before: `ltray tune --resume train.epochs=4` rebuilt the trials from the new command
    line, so the resumed sweep trained another config than the one MLflow recorded."""
    from ltray.tune.plan import check_resume

    kt = REPO / "search_spaces" / "kt.yaml"
    started = _select_head_from_metric(load_space(kt))
    state = {"base": started.base.model_dump(mode="json")}
    check_resume(state, _select_head_from_metric(load_space(kt)))  # the same command: fine
    changed = _select_head_from_metric(load_space(kt, ["train.epochs=4", "kt.mask=all"]))
    with pytest.raises(ConfigError) as err:
        check_resume(state, changed)
    msg = str(err.value)
    assert "train.epochs=4 (the sweep has 6)" in msg and "kt.mask='all'" in msg


# ------------------------------------------- shot groups the split will not have (issue 13)


def cifar_like(tmp_path: Path, *overrides: str):
    """CIFAR-10-LT from a torchvision-layout root (the pool is 5,000 per class: rho=100 keeps
    50 images in its smallest class, so no few-shot class)."""
    return load_config(
        None,
        ["data.name=cifar10-lt", f"data.root={tmp_path}", "data.imbalance_ratio=100", *overrides],
    )


def test_a_group_the_split_has_no_class_in_is_refused_before_ray(tmp_path: Path) -> None:
    """Before: `eval.select_group=few` on CIFAR-10-LT scored every epoch -inf, and a
    `val_kt_few` sweep metric was absent from every report (Ray stopped each trial)."""
    cfg = cifar_like(tmp_path, "eval.select_group=few")
    (found,) = config_problems(cfg)
    assert found.startswith("eval.select_group=few: cifar10-lt at rho=100 has no few-shot class")
    assert "smallest class: 50 train images" in found and "data.imbalance_ratio" in found
    (metric,) = metric_problems(cifar_like(tmp_path), ["val_kt_few", "val_kt_many"])
    assert metric.startswith("search.metric=val_kt_few: cifar10-lt at rho=100 has no few-shot")


def test_groups_that_exist_pass(tmp_path: Path) -> None:
    assert config_problems(cifar_like(tmp_path, "eval.select_group=medium")) == []
    # rho=500: the smallest class keeps 10 images, under the few threshold
    assert metric_problems(cifar_like(tmp_path, "data.imbalance_ratio=500"), ["val_kt_few"]) == []
    assert metric_problems(load_config(None, []), ["val_kt_few", "val_linear_many"]) == []


# --------------------------- settings a run would ignore or apply twice (issue 24, item 7)


def lt_folder(root: Path) -> Path:
    """An ImageFolder whose train/ is already long-tailed (40 down to 5 images per class)."""
    import numpy as np
    from PIL import Image

    for split, counts in (("train", [40, 20, 10, 5]), ("test", [3, 3, 3, 3])):
        for c, n in enumerate(counts):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8), 6 * i, dtype=np.uint8)).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # Before: the memory and all four heads were still built and scored.
        (["memory.enabled=false"], "memory.enabled=false with train.method=kt: the memory is"),
        # Before: tail classes weighted twice, no word.
        (
            ["kt.class_balance=true", "data.sampler=class_balanced"],
            "so they count twice; set kt.class_balance=auto (off under this sampler) or "
            "data.sampler=instance",
        ),
        (
            ["train.method=oltr", "oltr.stage1=/x", "data.sampler=sqrt"],
            "data.sampler=sqrt would be ignored: train.method=oltr samples class_balanced",
        ),
    ],
)
def test_a_setting_the_run_would_ignore_or_double_is_refused(
    overrides: list[str], expected: str
) -> None:
    assert any(expected in p for p in problems(*overrides)), problems(*overrides)


def test_memory_off_with_the_kt_head_off_really_turns_it_off() -> None:
    from ltray.models import build_network

    cfg = load_config(None, ["memory.enabled=false", "kt.enabled=false"])
    assert problems("memory.enabled=false", "kt.enabled=false") == []
    assert list(val_heads(cfg)) == ["linear"]
    net = build_network(cfg, num_classes=10, in_channels=1, small_input=True)
    assert net.memory is None and getattr(net, "kt_head", None) is None


def test_a_ratio_on_a_folder_used_as_it_is_is_refused(tmp_path: Path) -> None:
    """Before: data.imbalance_ratio=100 on an already long-tailed folder was dropped (profile
    as_is) and the note did not say so."""
    root = lt_folder(tmp_path / "lt")
    base = ["data.name=imagefolder", f"data.root={root}"]
    (found,) = problems(*base, "data.imbalance_ratio=100")
    assert found.startswith("data.imbalance_ratio=100 would be ignored: ")
    assert "already long-tailed" in found and "set data.profile=exp" in found
    assert problems(*base) == []  # used as it is, as asked
    assert problems(*base, "data.imbalance_ratio=100", "data.profile=exp") == []
    listed = ["data.name=listfile", f"data.root={tmp_path}", "data.imbalance_ratio=50"]
    assert any("data.name=listfile takes the split" in p for p in problems(*listed))


def test_keys_a_shared_base_config_sets_for_other_methods_are_noted() -> None:
    from ltray.validate import ignored_settings

    cfg = load_config(None, ["train.method=ce", "kt.phi=0.5", "kt.class_balance=true"])
    assert config_problems(cfg) == []  # a preset's KT settings reach its CE runs: not refused
    assert ignored_settings(cfg) == [
        "kt.phi=0.5, kt.class_balance=true not used: train.method=ce has no KT head"
    ]
    assert ignored_settings(load_config(None, [])) == []
    off = load_config(None, ["memory.enabled=false", "kt.enabled=false", "memory.momentum=0.5"])
    assert ignored_settings(off) == ["memory.momentum=0.5 not used: the run keeps no memory"]


# ------------------------ empty shot groups before Ray in every path (issue 24, item 8)


def test_a_posthoc_sweep_from_a_run_checks_the_runs_own_groups(tmp_path: Path) -> None:
    """Before: `ltray tune --space llw.yaml --from RUN` with search.metric=val_fused_few on a
    run without few-shot classes passed --dry-run and failed inside Tune (Ray's strict metric
    check, a traceback)."""
    import json

    run = tmp_path / "run"
    (run / "cache").mkdir(parents=True)
    meta = {"class_counts": [134, 90, 70, 67], "many_threshold": 100, "few_threshold": 20}
    (run / "cache" / "meta.json").write_text(json.dumps(meta))
    space = tmp_path / "few.yaml"
    text = (REPO / "search_spaces" / "llw.yaml").read_text()
    space.write_text(text.replace("metric: val_fused_overall", "metric: val_fused_few"))
    with pytest.raises(ConfigError, match=r"search.metric=val_fused_few: --from .* no few-shot"):
        check_sweep(load_space(space), SweepOptions(from_run=str(run)))
    space.write_text(text)
    check_sweep(load_space(space), SweepOptions(from_run=str(run)))


def test_an_lfme_expert_of_an_empty_group_is_refused() -> None:
    (found,) = problems("train.method=lfme_expert", "lfme.subset=few", "data.imbalance_ratio=2")
    assert found.startswith("lfme.subset=few: digits-lt at rho=2 has no few-shot class")


def test_configs_saved_by_an_earlier_version_load_without_their_retired_keys(
    tmp_path: Path,
) -> None:
    """A run folder or a sweep saved before train.checkpoint_every was removed still opens
    (`ltray confirm` on an older sweep, `ltray evaluate` on an older run); a config a user writes
    today is refused for the key."""
    import yaml

    from ltray.config import saved_config
    from ltray.train.rundir import RunDir

    raw = load_config().model_dump(mode="json")
    raw["train"]["checkpoint_every"] = 1
    assert saved_config(raw).train.epochs == raw["train"]["epochs"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    assert RunDir(tmp_path).read_config().train.lr == raw["train"]["lr"]
    with pytest.raises(ConfigError, match="checkpoint_every"):
        load_config(tmp_path / "config.yaml")


def test_the_default_kt_class_balance_follows_the_sampler_without_a_refusal() -> None:
    """kt.class_balance=auto (the default) under a class-balanced sampler is simply off; only an
    explicit true is refused there."""
    for sampler in ("class_balanced", "sqrt"):
        cfg = load_config(None, [f"data.sampler={sampler}"])
        assert not [p for p in config_problems(cfg) if "class_balance" in p]
    explicit = load_config(None, ["data.sampler=class_balanced", "kt.class_balance=true"])
    assert [p for p in config_problems(explicit) if "count twice" in p]
