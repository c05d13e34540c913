"""Real data from ../shared/data (LTRAY_DATA_DIR): CIFAR-10-LT, Places-LT lists, MNIST.

The decoded CIFAR-10 arrays are cached under pytest's cache folder (kept between runs), so only
the first run on a machine decodes the 60,000 JPEGs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from ltray.config import DataConfig
from ltray.data import LTData, prepare_data, read_list_file
from ltray.data.listfiles import class_counts
from ltray.data.longtail import group_sizes
from ltray.metrics import shot_groups

pytestmark = [pytest.mark.data, pytest.mark.slow]  # decodes the shared CIFAR-10 / MNIST copies

CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.fixture(scope="session")
def decoded_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LTRAY_HOME kept between test runs (holds the decoded-image cache); a fresh one when
    pytest's cache is disabled (-p no:cacheprovider)."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return tmp_path_factory.mktemp("ltray-data-home")
    return Path(cache.mkdir("ltray-data-home"))


@contextmanager
def _home(home: Path) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LTRAY_HOME", str(home))
        yield


def _cifar(shared: Path, seed: int, home: Path, **kw: object) -> LTData:
    cfg = DataConfig(
        name="cifar10-lt", root=str(shared / "cifar10"), imbalance_ratio=100, seed=seed, **kw
    )
    with _home(home):
        return prepare_data(cfg)


@pytest.fixture(scope="session")
def cifar_lt(shared_data: Path, decoded_cache: Path) -> LTData:
    return _cifar(shared_data, 0, decoded_cache)


def test_cifar10_lt_rho100_counts(cifar_lt: LTData) -> None:
    assert cifar_lt.class_counts.tolist() == CIFAR10_LT_100
    assert cifar_lt.class_counts.sum() == 12_406
    assert cifar_lt.class_names[:2] == ["airplane", "automobile"]
    assert group_sizes(cifar_lt.groups) == {"many": 8, "medium": 2, "few": None}
    assert (cifar_lt.family, cifar_lt.in_channels, cifar_lt.image_size) == ("cifar", 3, 32)
    assert len(cifar_lt.labels("val")) == 200 and len(cifar_lt.labels("test")) == 9_800
    x, y = cifar_lt.dataset("train", augment=True)[0]
    assert x.shape == (3, 32, 32) and y == 0


def test_cifar10_lt_same_seed_same_files(
    cifar_lt: LTData, shared_data: Path, decoded_cache: Path
) -> None:
    again = _cifar(shared_data, 0, decoded_cache)
    assert again.ids("train") == cifar_lt.ids("train")
    assert again.ids("val") == cifar_lt.ids("val")
    listed = Path(cifar_lt.split_info["list_files"]["train"]).read_text().split("\n")[:3]
    assert listed[0].startswith("train/airplane/") and listed[0].endswith(" 0")
    other = _cifar(shared_data, 1, decoded_cache)
    assert other.class_counts.tolist() == CIFAR10_LT_100
    assert other.ids("train") != cifar_lt.ids("train")
    # the head class keeps every image whatever the seed
    assert [i for i in other.ids("train") if "/airplane/" in i] == [
        i for i in cifar_lt.ids("train") if "/airplane/" in i
    ]


def test_cifar10_val_protocol_test(shared_data: Path, decoded_cache: Path) -> None:
    data = _cifar(shared_data, 0, decoded_cache, val_protocol="test")
    assert len(data.labels("val")) == len(data.labels("test")) == 10_000
    assert data.split_info["val_is_test"]


def test_places_lt_train_list_counts(shared_data: Path) -> None:
    paths, labels = read_list_file(shared_data / "splits/Places_LT/Places_LT_train.txt")
    assert len(paths) == 62_500
    counts = class_counts(labels, int(labels.max()) + 1)
    assert len(counts) == 365 and counts.max() == 4_980 and counts.min() == 5
    assert group_sizes(shot_groups(counts, 100, 20)) == {"many": 131, "medium": 163, "few": 71}


def test_places_lt_prepare_without_images(shared_data: Path, tmp_path: Path) -> None:
    s = shared_data / "splits/Places_LT"
    cfg = DataConfig(
        name="listfile",
        root=str(tmp_path),
        train_list=str(s / "Places_LT_train.txt"),
        val_list=str(s / "Places_LT_val.txt"),
        test_list=str(s / "Places_LT_test.txt"),
    )
    data = prepare_data(cfg, check_images=False, write_splits=False)
    assert data.num_classes == 365 and data.class_counts.sum() == 62_500
    assert group_sizes(data.groups) == {"many": 131, "medium": 163, "few": 71}
    assert data.class_names[0] == "airfield"
    from ltray.errors import DataError

    with pytest.raises(DataError, match=r"Places_LT_train.txt:1: image .* not found"):
        prepare_data(cfg)


def test_mnist_lt(shared_data: Path) -> None:
    data = prepare_data(
        DataConfig(name="mnist-lt", root=str(shared_data), imbalance_ratio=100),
        write_splits=False,
    )
    assert data.class_counts[0] == 5421 and data.class_counts[-1] == 54  # n_max = min class (5)
    assert (data.in_channels, data.image_size, data.family) == (1, 28, "gray_small")
    assert np.bincount(data.labels("val")).tolist() == [20] * 10
