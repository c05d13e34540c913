"""Presets, the ``reproduce:`` section and their errors (one line, exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ltray.cli import main
from ltray.errors import ConfigError
from ltray.presets import load_train_config, preset_names, resolve_config
from ltray.reproduce import CliOptions, load_reproduction
from ltray.reproduce.setup import epoch_overrides


def test_shipped_presets_resolve_and_validate() -> None:
    assert {"quick", "cifar10-lt", "imagenet-lt"} <= set(preset_names())
    rep = load_reproduction("quick")
    assert rep.cfg.data.name == "digits-lt" and rep.options.seeds == 2
    assert rep.options.mixup.cells() == [
        ("input", 0.3, "instance"),
        ("input", 0.3, "class_balanced"),
        ("tail", 0.3, "instance"),
        ("tail", 0.3, "class_balanced"),
    ]


def test_cifar_preset_takes_root_from_ltray_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LTRAY_DATA_DIR", "/somewhere")
    rep = load_reproduction("cifar10-lt")
    assert rep.cfg.data.root == "/somewhere/cifar10"
    assert rep.cfg.data.val_per_class == 100 and rep.cfg.train.milestones == [160, 180]


def test_cifar_preset_without_data_dir_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LTRAY_DATA_DIR", raising=False)
    with pytest.raises(ConfigError, match="LTRAY_DATA_DIR.*data.root=PATH"):
        load_reproduction("cifar10-lt")
    rep = load_reproduction("cifar10-lt", ["data.root=/data/cifar10"])
    assert rep.cfg.data.root == "/data/cifar10"


def test_imagenet_preset_requires_the_list_files() -> None:
    with pytest.raises(ConfigError) as exc:
        load_reproduction("imagenet-lt")
    msg = str(exc.value)
    for key in ("data.root", "data.train_list", "data.val_list", "data.test_list"):
        assert key in msg
    rep = load_reproduction(
        "imagenet-lt",
        ["data.root=/r", "data.train_list=/t", "data.val_list=/v", "data.test_list=/e"],
    )
    assert rep.cfg.model.backbone == "resnet10" and rep.cfg.train.epochs == 90


KNOWN = (
    "cifar10-lt, cifar10-lt-30, cifar10-lt-30-kt, cifar10-lt-kt, imagenet-lt, mnist-lt-few, quick"
)


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=f"unknown preset.*{KNOWN}"):
        resolve_config("cifar100-lt")
    with pytest.raises(ConfigError, match="file not found"):
        resolve_config("missing/file.yaml")


def test_unknown_preset_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--config", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"known presets: {KNOWN}" in err[0]


def test_bad_reproduce_section_reports_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "train:\n  epochs: 2\nreproduce:\n  seeds: 0\n  methods: [ce, bogus]\n"
        "  colour: red\n  mixup:\n    alphas: [-1]\n    variants: [sideways]\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_reproduction(str(path))
    msg = str(exc.value)
    assert msg.startswith("5 reproduce problems")
    for part in ("reproduce.seeds", "bogus", "colour: unknown key", "alphas", "sideways"):
        assert part in msg
    assert f"{path}:4" in msg  # the line of `seeds:`


def test_cli_options_override_the_section_and_are_validated() -> None:
    rep = load_reproduction(
        "quick",
        cli=CliOptions(seeds=1, methods=["llw", "ce"], mixup_alphas=[1.0], no_mixup=False),
    )
    assert rep.options.seeds == 1 and rep.options.methods == ["ce", "llw"]
    assert rep.options.mixup.alphas == [1.0]
    assert load_reproduction("quick", cli=CliOptions(no_mixup=True)).options.mixup.cells() == []
    with pytest.raises(ConfigError, match="unknown row"):
        load_reproduction("quick", cli=CliOptions(methods=["lfm"]))


def test_mixup_in_the_base_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="mixup.variant=input"):
        load_reproduction("quick", ["mixup.variant=input"])


def test_epochs_rescales_warmup_and_milestones() -> None:
    rep = load_reproduction("cifar10-lt", ["data.root=/x"], CliOptions(epochs=20))
    assert rep.cfg.train.epochs == 20
    assert rep.cfg.train.warmup_epochs == 0 + round(5 * 20 / 200)
    assert rep.cfg.train.milestones == [16, 18]
    assert rep.notes and "rescaled" in rep.notes[0]
    overrides, note = epoch_overrides(load_reproduction("quick").cfg, 3)
    assert overrides == ["train.epochs=3"] and note is None  # cosine: nothing to rescale


def test_epochs_keeps_the_memory_built_before_the_last_epoch_ends() -> None:
    # quick: memory.init_epoch=1; with --epochs 1 the KT teacher would never exist
    overrides, note = epoch_overrides(load_reproduction("quick").cfg, 1)
    assert "memory.init_epoch=0" in overrides and note and "memory.init_epoch 1 → 0" in note
    rep = load_reproduction("quick", cli=CliOptions(epochs=1))
    assert rep.cfg.memory.init_epoch == 0


def test_resume_refuses_plan_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["reproduce", "--resume", str(tmp_path), "--seeds", "3"]) == 2
    assert "drop --seeds" in capsys.readouterr().err
    assert main(["reproduce", "--resume", str(tmp_path)]) == 2
    assert "no plan.json" in capsys.readouterr().err


def test_table_only_needs_resume(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--table-only"]) == 2
    assert "add --resume DIR" in capsys.readouterr().err


def test_a_run_the_plan_cannot_train_stops_the_start_before_ray_and_folders(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # the KT runs would never see their teacher: caught for the planned run, nothing created
    out = tmp_path / "rep"
    args = ["reproduce", "--config", "quick", "--no-mixup", "memory.init_epoch=9"]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "memory.init_epoch=9" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main([*args, "--dry-run"]) == 2


def test_ltray_train_takes_a_preset_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LTRAY_DATA_DIR", "/somewhere")
    cfg = load_train_config("cifar10-lt-30", ["train.seed=3"])
    assert cfg.data.root == "/somewhere/cifar10" and cfg.train.epochs == 30
    assert cfg.model.backbone == "resnet32" and cfg.train.seed == 3
    # A file with a reproduce: section is one run's config too; a plain file is unchanged.
    own = tmp_path / "mine.yaml"
    own.write_text("train: {epochs: 4}\nreproduce: {seeds: 5}\n")
    assert load_train_config(str(own)).train.epochs == 4
    assert load_train_config(None, ["train.epochs=2"]).train.epochs == 2
    # The unset variable is named before anything starts (exit 2, one line).
    monkeypatch.delenv("LTRAY_DATA_DIR")
    assert main(["train", "--config", "cifar10-lt-30", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "LTRAY_DATA_DIR" in err and "data.root" in err
    assert not (tmp_path / "r").exists()
    assert main(["train", "--config", "no-such-preset", "--out", str(tmp_path / "r")]) == 2
    assert "known presets" in capsys.readouterr().err


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_validates(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LTRAY_DATA_DIR", "/somewhere")
    overrides = []
    if name == "imagenet-lt":  # its list files are the user's to name
        overrides = [f"data.{k}=/x/{k}.txt" for k in ("train_list", "val_list", "test_list")]
        overrides.append("data.root=/x")
    rep = load_reproduction(name, overrides)
    assert rep.options.seeds >= 1
    assert load_train_config(name, overrides).train.epochs == rep.cfg.train.epochs
