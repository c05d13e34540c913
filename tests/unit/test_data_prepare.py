"""prepare_data / make_loader on offline data: digits-lt and small synthetic trees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ltray.config import DataConfig, load_config
from ltray.data import LTData, make_loader, prepare_data
from ltray.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def digits() -> LTData:
    return prepare_data(DataConfig())


def test_digits_default_split(digits: LTData) -> None:
    # 20 test + 20 val held out per class; n_max = min remaining (174 - 40 = 134); rho = 10
    assert digits.class_counts.tolist() == [134, 103, 80, 62, 48, 37, 28, 22, 17, 13]
    assert digits.class_counts.dtype == np.int64
    assert digits.groups.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 2, 2]  # every group present
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 8)
    assert digits.small_input and digits.family == "gray_small"
    assert np.bincount(digits.labels("val")).tolist() == [20] * 10
    assert np.bincount(digits.labels("test")).tolist() == [20] * 10
    ids = [set(digits.ids(s)) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    json.dumps(digits.split_info)
    assert digits.split_info["val_is_test"] is False


def test_digits_split_files_written(digits: LTData) -> None:
    files = digits.split_info["list_files"]
    lines = Path(files["train"]).read_text().splitlines()
    assert len(lines) == 544 and lines[0].split()[0].startswith("digits/")


def test_dataset_items(digits: LTData) -> None:
    ds = digits.dataset("train", augment=True)
    x, y = ds[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    ev = digits.dataset("test", augment=False)
    a, b = ev[3][0], ev[3][0]
    assert torch.equal(a, b)


def test_eval_loader_is_in_order_and_complete(digits: LTData) -> None:
    loader = make_loader(digits, "test", batch_size=64, augment=False)
    ys = torch.cat([y for _, y in loader]).numpy()
    assert np.array_equal(ys, digits.labels("test"))
    x, _ = next(iter(loader))
    assert x.shape == (64, 1, 8, 8)


def test_train_loader_epochs_and_ranks(digits: LTData) -> None:
    loader = make_loader(digits, "train", batch_size=32, augment=True, sampler="class_balanced")
    loader.sampler.set_epoch(1)
    a = list(loader.sampler)
    loader.sampler.set_epoch(1)
    assert list(loader.sampler) == a
    n = sum(len(y) for _, y in loader)
    assert n == len(digits.labels("train"))
    shards = [
        list(
            make_loader(digits, "train", batch_size=8, augment=False, world_size=2, rank=r).sampler
        )
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 272 and not set(shards[0]) & set(shards[1])


def test_augmentation_shifts_but_never_flips_digits(digits: LTData) -> None:
    ds = digits.dataset("train", augment=True)
    torch.manual_seed(0)
    x1, _ = ds.get_batch(list(range(64)))
    torch.manual_seed(0)
    x2, _ = ds.get_batch(list(range(64)))
    assert torch.equal(x1, x2)  # reproducible under torch.manual_seed
    plain, _ = digits.dataset("train", augment=False).get_batch(list(range(64)))
    assert not torch.equal(x1, plain)
    assert not digits.spec.flip and digits.spec.pad == 1


def test_val_protocol_test_is_loud() -> None:
    data = prepare_data(DataConfig(val_protocol="test"))
    assert np.array_equal(data.labels("val"), data.labels("test"))
    assert data.split_info["val_is_test"] is True
    assert "val split IS the test split" in data.split_info["val_note"]
    assert data.class_counts.tolist() == [134, 103, 80, 62, 48, 37, 28, 22, 17, 13]


def test_step_profile_digits() -> None:
    data = prepare_data(DataConfig(profile="step", imbalance_ratio=10))
    assert data.class_counts.tolist() == [134] * 5 + [13] * 5


def test_seed_changes_selection_not_counts() -> None:
    a = prepare_data(DataConfig(seed=1), write_splits=False)
    b = prepare_data(DataConfig(seed=2), write_splits=False)
    assert a.class_counts.tolist() == b.class_counts.tolist()
    assert a.ids("train") != b.ids("train")


# ------------------------------------------------------------------------------- bad input


def test_unknown_dataset_lists_known() -> None:
    with pytest.raises(
        ConfigError,
        match=r"data.name: unknown dataset source 'cifar11'; known: "
        r"cifar10-lt, cifar100-lt, digits-lt, imagefolder, listfile, mnist-lt",
    ):
        prepare_data(DataConfig(name="cifar11"))


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.root=.*nowhere: folder not found"):
        prepare_data(DataConfig(name="cifar10-lt", root=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match=r"data.root is not set; mnist-lt needs it"):
        prepare_data(DataConfig(name="mnist-lt"))


def test_class_left_without_images() -> None:
    with pytest.raises(
        DataError,
        match=r"class 9 \(9\) is left with no training images.*"
        r"lower data.imbalance_ratio \(at most 134\) or use another data.profile",
    ):
        prepare_data(DataConfig(imbalance_ratio=200))


def test_rho_below_one_and_unknown_key_rejected_by_config() -> None:
    with pytest.raises(ConfigError, match="imbalance_ratio: must be >= 1"):
        load_config(None, ["data.imbalance_ratio=0.5"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["data.imbalanse_ratio=5"])


# ------------------------------------------------------------------- synthetic folder trees


def _tree(root: Path, spec: dict[str, dict[str, int]], size: int = 12, mode: str = "RGB") -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in spec.items():
        for cls, n in classes.items():
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size, size, 3) if mode == "RGB" else (size, size)
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(
                    d / f"{i:04d}.png"
                )


def test_imagefolder_small_in_memory_and_cached(tmp_path: Path, monkeypatch) -> None:
    _tree(tmp_path, {"train": {"a": 12, "b": 12, "c": 12}, "test": {"a": 5, "b": 5, "c": 5}})
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), imbalance_ratio=4, val_per_class=2)
    data = prepare_data(cfg)
    assert data.class_counts.tolist() == [12, 6, 3] and data.class_names == ["a", "b", "c"]
    assert data.family == "cifar" and data.image_size == 12
    assert np.bincount(data.labels("val")).tolist() == [2, 2, 2]
    assert np.bincount(data.labels("test")).tolist() == [3, 3, 3]
    x, _ = data.dataset("train", augment=True)[0]
    assert x.shape == (3, 12, 12)

    import ltray.data.pools as pools

    def boom(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(pools, "_decode_one", boom)
    again = prepare_data(cfg)  # served from the .npy cache
    assert again.ids("train") == data.ids("train")


def test_imagefolder_unreadable_image(tmp_path: Path) -> None:
    _tree(tmp_path, {"train": {"a": 3, "b": 3}, "test": {"a": 2, "b": 2}})
    bad = tmp_path / "train" / "b" / "0001.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"image .*train/b/0001.png cannot be read"):
        prepare_data(DataConfig(name="imagefolder", root=str(tmp_path), imbalance_ratio=1))


def test_imagefolder_empty_class(tmp_path: Path) -> None:
    _tree(tmp_path, {"train": {"a": 3, "b": 3}, "test": {"a": 2, "b": 2}})
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(DataError, match=r"class 2 \(c\) is left with no training images"):
        prepare_data(DataConfig(name="imagefolder", root=str(tmp_path), imbalance_ratio=1))


def test_listfile_lazy_images(tmp_path: Path) -> None:
    _tree(tmp_path, {"train": {"x": 4, "y": 2}, "test": {"x": 2, "y": 2}}, size=80)
    lines = {
        "train": [f"train/x/{i:04d}.png 0" for i in range(4)] + ["train/y/0000.png 1"],
        "test": [f"test/{c}/{i:04d}.png {k}" for k, c in enumerate("xy") for i in range(2)],
    }
    for k, v in lines.items():
        (tmp_path / f"{k}.txt").write_text("\n".join(v) + "\n")
    cfg = DataConfig(
        name="listfile",
        root=str(tmp_path),
        train_list=str(tmp_path / "train.txt"),
        test_list=str(tmp_path / "test.txt"),
        val_per_class=1,
    )
    data = prepare_data(cfg)
    assert data.class_counts.tolist() == [4, 1] and data.class_names == ["x", "y"]
    assert data.family == "imagenet" and not data.small_input and data.image_size == 224
    assert len(data.labels("val")) == 2 and len(data.labels("test")) == 2
    x, y = data.dataset("train", augment=True)[4]
    assert x.shape == (3, 224, 224) and y == 1
    assert data.dataset("test", augment=False)[0][0].shape == (3, 224, 224)

    (tmp_path / "train" / "y" / "0001.png").write_bytes(b"broken")
    (tmp_path / "train.txt").write_text("train/x/0000.png 0\n\ntrain/y/0001.png 1\n")
    # Existence is checked up front, decoding per item (the published mean/std: the dataset's
    # own would decode the train images up front, tests/unit/test_data_stats.py).
    lazy = prepare_data(cfg.model_copy(update={"normalize": "family"}))
    with pytest.raises(DataError, match=r"train/y/0001.png \(.*train.txt:3\) cannot be read"):
        lazy.dataset("train", augment=False)[1]
    (tmp_path / "test.txt").write_text("test/x/0000.png 0\ntest/x/0009.png 0\n")
    with pytest.raises(DataError, match=r"test.txt:2: image .*test/x/0009.png not found"):
        prepare_data(cfg)
    (tmp_path / "test.txt").write_text("test/x/0000.png 0\ntest/y/0000.png 5\n")
    with pytest.raises(
        DataError, match=r"test.txt:2: label 5 is out of range; valid labels are 0..1"
    ):
        prepare_data(cfg)


# ------------------------------------------------- bring your own long-tailed folder (issue 13)

MY_LT = {
    "train": {"a": 60, "b": 25, "c": 9, "d": 4},
    "test": {"a": 6, "b": 6, "c": 6, "d": 6},
}


def test_an_imbalanced_folder_is_used_as_it_is_and_says_so(tmp_path: Path) -> None:
    """Before: n_max = the smallest class (4) and the exp profile again: 4+1+0+0 images,
    'class 2 is left with no training images'."""
    _tree(tmp_path, MY_LT)
    cfg = DataConfig(
        name="imagefolder", root=str(tmp_path), val_per_class=2, many_threshold=30, few_threshold=8
    )
    data = prepare_data(cfg)
    assert data.class_counts.tolist() == [60, 25, 9, 4]  # every train image kept
    assert data.groups.tolist() == [0, 1, 1, 2]  # shot groups from the folder's own counts
    assert data.split_info["profile"] == "as_is" and data.split_info["rho"] == 15
    notes = [n for n in data.split_info["notes"] if n.startswith("data.profile")]
    assert len(notes) == 1 and "already long-tailed (60 down to 4" in notes[0]


def test_as_is_on_request_and_exp_on_request(tmp_path: Path) -> None:
    _tree(tmp_path, MY_LT)
    base = {"name": "imagefolder", "root": str(tmp_path), "val_per_class": 2}
    asked = prepare_data(DataConfig(**base, profile="as_is"))
    assert asked.class_counts.tolist() == [60, 25, 9, 4]
    assert not [n for n in asked.split_info["notes"] if n.startswith("data.profile")]
    exp = prepare_data(DataConfig(**base, profile="exp", imbalance_ratio=4))
    assert exp.class_counts.tolist() == [4, 2, 1, 1]  # the old behaviour, when asked for


def test_a_balanced_folder_still_gets_the_default_exp_profile(tmp_path: Path) -> None:
    _tree(tmp_path, {"train": {"a": 12, "b": 12, "c": 12}, "test": {"a": 5, "b": 5, "c": 5}})
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), imbalance_ratio=4, val_per_class=2)
    data = prepare_data(cfg)
    assert data.split_info["profile"] == "exp" and data.class_counts.tolist() == [12, 6, 3]


def test_an_unset_profile_and_its_resolution_are_the_same_split(tmp_path: Path) -> None:
    from ltray.data.counts import effective_profile

    _tree(tmp_path, MY_LT)
    assert effective_profile(DataConfig(name="imagefolder", root=str(tmp_path))) == "as_is"
    assert effective_profile(DataConfig()) == "exp" == effective_profile(DataConfig(profile="exp"))


# ------------------------------------- train counts from the config alone (issue 13, groups)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"imbalance_ratio": 100},
        {"profile": "step", "imbalance_ratio": 5},
        {"val_per_class": 3, "imbalance_ratio": 50},
    ],
    ids=["default", "rho100", "step", "small-holdout"],
)
def test_train_counts_from_the_config_are_what_prepare_data_builds(kw: dict) -> None:
    """The validation pass predicts the split's counts without decoding an image; a drift
    from prepare_data (hold-out, n_max, profile) would make it refuse good metrics."""
    from ltray.data.counts import train_counts

    cfg = DataConfig(**kw)
    assert train_counts(cfg).tolist() == prepare_data(cfg).class_counts.tolist()


def test_train_counts_of_folders_and_list_files(tmp_path: Path) -> None:
    from ltray.data.counts import train_counts

    _tree(tmp_path / "lt", MY_LT)
    flat = {"train": {"a": 12, "b": 12, "c": 12}, "test": {"a": 5, "b": 5, "c": 5}}
    _tree(tmp_path / "flat", flat)
    for cfg in (
        DataConfig(name="imagefolder", root=str(tmp_path / "lt"), val_per_class=2),
        DataConfig(
            name="imagefolder", root=str(tmp_path / "flat"), imbalance_ratio=4, val_per_class=2
        ),
    ):
        assert train_counts(cfg).tolist() == prepare_data(cfg).class_counts.tolist()
    listed = tmp_path / "train.txt"
    listed.write_text("a.png 0\nb.png 0\nc.png 2\n")
    cfg = DataConfig(name="listfile", root=str(tmp_path), train_list=str(listed))
    assert train_counts(cfg).tolist() == [2, 0, 1]
    assert train_counts(DataConfig(name="imagefolder", root=str(tmp_path / "none"))) is None


# ------------------------------------ every class keeps a val and a test image (issue 24, 4)


def test_a_carve_that_empties_the_test_split_is_refused_with_the_numbers(tmp_path: Path) -> None:
    """Before: 5 test images per class and data.val_per_class=20 gave `test 0` with no word,
    and training crashed at its end (torch.cat of no test batch)."""
    _tree(tmp_path, {"train": {"a": 12, "b": 12, "c": 12}, "test": {"a": 5, "b": 6, "c": 9}})
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), imbalance_ratio=4)
    with pytest.raises(DataError) as err:
        prepare_data(cfg)
    msg = str(err.value)
    assert "data.val_per_class=20 carves every test image of class 0 (a), 1 (b), 2 (c)" in msg
    assert "lower data.val_per_class to 4 (the smallest class has 5 test images)" in msg
    data = prepare_data(cfg.model_copy(update={"val_per_class": 4}))
    assert data.split_info["test_counts"] == [1, 2, 5]
    assert data.split_info["val_counts"] == [4, 4, 4]


def test_a_class_without_test_images_is_refused_not_scored_nan(tmp_path: Path) -> None:
    """Before: the class got a NaN accuracy and silently dropped out of its group and of
    overall."""
    _tree(tmp_path, {"train": {"a": 12, "b": 12, "c": 12}, "test": {"a": 5, "b": 5}})
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), imbalance_ratio=4, val_per_class=2)
    with pytest.raises(DataError, match=r"class 2 \(c\) has no test images in .*/test"):
        prepare_data(cfg)


def test_a_class_without_val_images_in_an_own_val_split_is_refused(tmp_path: Path) -> None:
    spec = {
        "train": {"a": 12, "b": 12},
        "val": {"a": 2},
        "test": {"a": 3, "b": 3},
    }
    _tree(tmp_path, spec)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), imbalance_ratio=1)
    with pytest.raises(DataError, match=r"class 1 \(b\) has no val images in .*/val; .*remove"):
        prepare_data(cfg)


# --------------------------------------- the decode cache keys on file contents (issue 24, 6)


def test_an_image_overwritten_in_place_is_read_again(tmp_path: Path) -> None:
    """Before: the cache key was (source, root, mode, file list): the overwritten file kept its
    old pixels in training and evaluation while `ltray predict` read the new ones."""
    import os

    from PIL import Image

    _tree(tmp_path, {"train": {"a": 4, "b": 4}, "test": {"a": 3, "b": 3}}, mode="L")
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), imbalance_ratio=1, val_per_class=1)
    first = prepare_data(cfg)
    i = first.ids("train").index("train/b/0002.png")
    old = np.array(first.pools["train"].images[i])
    path = tmp_path / "train" / "b" / "0002.png"
    Image.fromarray(255 - old[0]).save(path)  # same name, same size, new pixels
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # coarse clocks
    again = prepare_data(cfg)
    assert np.array_equal(again.pools["train"].images[i], 255 - old)
    assert again.ids("train") == first.ids("train")


def test_the_as_is_note_says_an_asked_ratio_is_not_applied(tmp_path: Path) -> None:
    _tree(tmp_path, MY_LT)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), val_per_class=2, imbalance_ratio=100)
    notes = prepare_data(cfg).split_info["notes"]
    assert any("data.imbalance_ratio=100 is NOT applied" in n for n in notes)
