"""``data.augment``: validated keys, family defaults that scale with the image size, no flip for
gray images, every key applied (in-memory batches and the PIL transform), and the resolved
choices printed by `ltray data stats` and saved with the split (issue 27)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ltray.cli import main
from ltray.config import DataConfig, load_config
from ltray.data import prepare_data
from ltray.data.device import color_jitter_nhwc, resized_crop, train_batch
from ltray.data.transforms import default_augment, family_spec, imagenet_transform
from ltray.errors import ConfigError


def _folder(root: Path, *, size: int, mode: str = "L", counts=(12, 6, 3), test: int = 3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per in (("train", counts), ("test", [test] * len(counts))):
        for c, n in enumerate(per):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            shape = (size, size) if mode == "L" else (size, size, 3)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("override", "key", "rule"),
    [
        ("data.augment.pad=-1", "data.augment.pad", "must be >= 0"),
        ("data.augment.flip=sometimes", "data.augment.flip", "must be true or false"),
        ("data.augment.crop_scale=[0.9,0.5]", "data.augment.crop_scale", "0 < min <= max <= 1"),
        ("data.augment.crop_scale=0.5", "data.augment.crop_scale", "must be a list"),
        ("data.augment.crop_scale=[0.1,0.5,1]", "data.augment.crop_scale", "must hold 2 items"),
        ("data.augment.color_jitter=1.5", "data.augment.color_jitter", "must be <= 1"),
        ("data.augment.rotate=10", "data.augment.rotate", "valid keys here: color_jitter, crop"),
        ("data.normalize=imagenet", "data.normalize", "'auto', 'dataset', 'family'"),
    ],
)
def test_a_bad_augment_value_is_one_error_naming_the_key(override, key, rule) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert f"override {key}: " in str(exc.value) and rule in str(exc.value)


def test_augment_keys_are_tunable_config_keys() -> None:
    from ltray.config import known_keys

    assert {"data.augment.pad", "data.augment.crop_scale", "data.normalize"} <= set(known_keys())
    assert "data.augment" not in known_keys()  # a section, not a value


def test_family_defaults_scale_with_the_image_size() -> None:
    pads = {n: default_augment("gray_small", n)["pad"] for n in (8, 16, 28, 32, 48, 64)}
    assert pads == {8: 1, 16: 2, 28: 4, 32: 4, 48: 6, 64: 8}
    assert default_augment("cifar", 32)["pad"] == 4  # CIFAR's RandomCrop(32, padding=4)
    assert default_augment("imagenet", 224) == {
        "pad": 0,
        "flip": True,
        "crop_scale": (0.08, 1.0),
        "color_jitter": 0.4,
    }


def test_flips_are_off_by_default_for_gray_and_on_for_colour(tmp_path: Path) -> None:
    gray = prepare_data(
        DataConfig(name="imagefolder", root=str(_folder(tmp_path / "g", size=16)), val_per_class=2)
    )
    rgb = prepare_data(
        DataConfig(
            name="imagefolder",
            root=str(_folder(tmp_path / "c", size=16, mode="RGB")),
            val_per_class=2,
        )
    )
    assert (gray.family, gray.spec.flip, gray.spec.pad) == ("gray_small", False, 2)
    assert (rgb.family, rgb.spec.flip, rgb.spec.pad) == ("cifar", True, 2)
    assert prepare_data(DataConfig()).spec.pad == 1  # digits 8x8: as before


def test_the_config_overrides_the_defaults_and_the_choice_is_saved(tmp_path: Path) -> None:
    root = _folder(tmp_path, size=28)
    cfg = load_config(
        None,
        [
            "data.name=imagefolder",
            f"data.root={root}",
            "data.val_per_class=1",
            "data.augment.pad=2",
            "data.augment.crop_scale=[0.5,1.0]",
        ],
    )
    data = prepare_data(cfg.data)
    spec = data.spec
    assert (spec.pad, spec.flip, spec.crop_scale, spec.color_jitter) == (2, False, (0.5, 1.0), 0)
    saved = data.split_info["augment"]
    assert saved["pad"] == 2 and saved["crop_scale"] == [0.5, 1.0] and saved["flip"] is False
    assert saved["from_config"] == ["crop_scale", "pad"]
    assert "shift pad 2 px (data.augment.pad)" in saved["text"]
    assert "flip off (default: gray)" in saved["text"]
    off = family_spec(
        "gray_small",
        native_size=28,
        in_channels=1,
        augment=cfg.data.augment.model_copy(update={"crop_scale": (1.0, 1.0)}),
    )
    assert off.crop_scale is None  # [1, 1] keeps the whole image: no crop at all


def test_data_stats_prints_the_resolved_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(tmp_path, size=28)
    args = ["data", "stats", "data.name=imagefolder", f"data.root={root}", "data.val_per_class=1"]
    assert main([*args, "data.augment.color_jitter=0.2"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "augment (train): shift pad 4 px (default: 28 px / 8)" in out
    assert "flip off (default: gray)" in out
    assert "crop scale off (default: gray_small family)" in out
    assert "colour jitter 0.2 (data.augment.color_jitter)" in out
    assert "normalization: mean [" in out and "the dataset's own: train split, all 21" in out
    assert main([*args, "data.augment.pad=x"]) == 2  # one line, exit 2, nothing computed


def test_shift_and_flip_off_leave_the_batch_alone() -> None:
    spec = family_spec("gray_small", native_size=8, in_channels=1)
    spec = type(spec)(**{**vars(spec), "pad": 0, "flip": False})
    x = torch.randint(0, 256, (4, 8, 8, 1), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    y = train_batch(x, spec, generator=gen)
    want = (x.float() / 255 - spec.mean[0]) / spec.std[0]
    torch.testing.assert_close(y, want.permute(0, 3, 1, 2))


def test_a_full_area_crop_is_the_identity_and_a_small_one_zooms() -> None:
    y = torch.rand(6, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    same = resized_crop(y, (1.0, 1.0), out_size=16, generator=gen)
    # area 1 with any aspect ratio clips to the whole image (torchvision's fallback)
    torch.testing.assert_close(same, y, atol=1e-5, rtol=0)
    zoom = resized_crop(y, (0.25, 0.25), out_size=16, generator=gen)
    assert zoom.shape == (6, 3, 16, 16) and not torch.allclose(zoom, y)
    resized = resized_crop(y, (1.0, 1.0), out_size=32, generator=gen)
    assert resized.shape == (6, 3, 32, 32)


def test_color_jitter_is_per_image_in_range_and_zero_is_off() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 5, 5, 3)
    out = color_jitter_nhwc(x, 0.4, generator=gen)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    ratios = (out.mean(dim=(1, 2, 3)) / x.mean(dim=(1, 2, 3))).tolist()
    assert len({round(r, 3) for r in ratios}) == 8  # each image its own factors
    torch.testing.assert_close(color_jitter_nhwc(x, 0.0, generator=gen), x)
    gray = color_jitter_nhwc(torch.rand(4, 5, 5, 1), 0.4, generator=gen)
    assert gray.shape == (4, 5, 5, 1)


def test_crop_and_jitter_run_in_memory_batches(tmp_path: Path) -> None:
    root = _folder(tmp_path, size=12, mode="RGB")
    cfg = load_config(
        None,
        [
            "data.name=imagefolder",
            f"data.root={root}",
            "data.val_per_class=1",
            "data.image_size=16",
            "data.augment.crop_scale=[0.3,1]",
            "data.augment.color_jitter=0.4",
        ],
    )
    data = prepare_data(cfg.data)
    torch.manual_seed(0)
    x, _ = data.dataset("train", augment=True).get_batch(list(range(8)))
    assert x.shape == (8, 3, 16, 16) and torch.isfinite(x).all()
    ev, _ = data.dataset("train", augment=False).get_batch(list(range(8)))
    assert not torch.allclose(x, ev)


def test_the_pil_transform_follows_the_spec() -> None:
    from torchvision import transforms as T

    from ltray.config import AugmentConfig

    spec = family_spec(
        "imagenet",
        native_size=224,
        in_channels=3,
        augment=AugmentConfig(flip=False, crop_scale=(0.5, 1.0), color_jitter=0.0, pad=8),
    )
    ops = imagenet_transform(train=True, size=64, spec=spec).transforms
    kinds = [type(op) for op in ops]
    assert kinds == [T.RandomResizedCrop, T.RandomCrop, T.ToTensor, T.Normalize]
    assert ops[0].scale == (0.5, 1.0) and ops[1].padding == 8
    default = imagenet_transform(train=True, size=64).transforms
    assert [type(op) for op in default][:3] == [
        T.RandomResizedCrop,
        T.RandomHorizontalFlip,
        T.ColorJitter,
    ]
