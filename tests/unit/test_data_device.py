"""Batches made on the device: augmentation, normalisation, order, shards, file-backed feeding.

The CPU runs the same code a GPU runs (the device is a parameter), so these pin the GPU path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltray.config import DataConfig
from ltray.data import LTData, make_loader, prepare_data, shard_loader
from ltray.data.device import DeviceBatches, augment_nhwc, normalize_nhwc, to_nhwc
from ltray.data.loaders import HostBatches
from ltray.data.samplers import InstanceSampler
from ltray.data.transforms import family_spec

CIFAR = family_spec("cifar", native_size=32, in_channels=3)


@pytest.fixture(scope="module")
def digits() -> LTData:
    return prepare_data(DataConfig())


def _images(n: int = 6, h: int = 5, w: int = 7, c: int = 3) -> torch.Tensor:
    return (
        torch.arange(n * h * w * c, dtype=torch.int64)
        .reshape(n, h, w, c)
        .remainder(251)
        .to(torch.uint8)
    )


def test_augment_is_a_shifted_crop_or_its_mirror_of_the_zero_padded_image() -> None:
    x = _images()
    n, h, w, _ = x.shape
    p = CIFAR.pad
    padded = torch.nn.functional.pad(x, (0, 0, p, p, p, p))
    out = augment_nhwc(x, CIFAR, generator=torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == torch.uint8
    flips = 0
    for i in range(n):
        # Exactly one (offset, flip) explains each output image.
        hits = [
            (oy, ox, f)
            for oy in range(2 * p + 1)
            for ox in range(2 * p + 1)
            for f in (False, True)
            if torch.equal(
                out[i],
                (lambda c: c.flip(1) if f else c)(padded[i, oy : oy + h, ox : ox + w]),
            )
        ]
        assert hits, f"image {i} is no crop of its padded input"
        flips += hits[0][2]
    assert 0 < flips < n  # both branches are taken on this seed


def test_no_flip_family_never_mirrors(digits: LTData) -> None:
    spec = digits.spec
    x = _images(n=40, h=8, w=8, c=1)
    out = augment_nhwc(x, spec, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1))
    for i in range(len(x)):
        assert any(
            torch.equal(out[i], padded[i, oy : oy + 8, ox : ox + 8])
            for oy in range(3)
            for ox in range(3)
        )


def test_normalize_values_layout_and_resize() -> None:
    x = torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8)  # [1, 1, 1, 3] NHWC
    y = normalize_nhwc(x, CIFAR)
    expect = (torch.tensor([0, 128, 255]) / 255.0 - torch.tensor(CIFAR.mean)) / torch.tensor(
        CIFAR.std
    )
    torch.testing.assert_close(y[0, :, 0, 0], expect.float(), rtol=1e-6, atol=1e-6)
    big = normalize_nhwc(_images(2, 4, 4, 3), CIFAR, out_size=8)
    assert big.shape == (2, 3, 8, 8)
    assert normalize_nhwc(_images(2, 4, 4, 3), CIFAR).is_contiguous(
        memory_format=torch.channels_last
    )


def test_batches_follow_the_sampler_and_are_reproducible_per_epoch(digits: LTData) -> None:
    images, labels = digits.on_device("train", torch.device("cpu"))
    sampler = InstanceSampler(num_items=len(labels), seed=5)
    batches = DeviceBatches(
        images, labels, spec=digits.spec, batch_size=50, augment=True, sampler=sampler
    )
    sampler.set_epoch(2)
    first = list(batches)
    assert len(first) == len(batches) == -(-len(labels) // 50)
    ys = torch.cat([y for _, y in first])
    assert torch.equal(ys, labels[torch.from_numpy(sampler.shard_indices())])
    again = list(batches)  # same epoch: same order and the same crops
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    sampler.set_epoch(3)
    other = list(batches)
    assert not torch.equal(first[0][0], other[0][0])
    x = first[0][0]
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)


def test_eval_loader_is_the_plain_normalised_split(digits: LTData) -> None:
    loader = make_loader(digits, "test", batch_size=64, augment=False)
    x = torch.cat([x for x, _ in loader])
    item = torch.stack([digits.dataset("test", augment=False)[i][0] for i in range(len(x))])
    torch.testing.assert_close(x, item)
    ys = torch.cat([y for _, y in loader]).numpy()
    assert np.array_equal(ys, digits.labels("test"))


def test_shard_loader_covers_each_image_once_without_padding(digits: LTData) -> None:
    n = len(digits.labels("train"))
    seen = []
    for r in range(3):
        parts = shard_loader(digits, "train", batch_size=64, world_size=3, rank=r)
        seen.append(torch.cat([y for _, y in parts]))
    assert sum(len(s) for s in seen) == n  # 544 is not a multiple of 3: nothing padded
    assert torch.equal(
        torch.sort(torch.cat(seen)).values,
        torch.sort(torch.from_numpy(digits.labels("train"))).values,
    )


def test_device_copy_is_made_once_and_renewed_with_the_pool() -> None:
    digits = prepare_data(DataConfig())
    a, _ = digits.on_device("val", torch.device("cpu"))
    b, _ = digits.on_device("val", torch.device("cpu"))
    assert a is b
    keep = np.arange(5)
    digits.pools = {**digits.pools, "val": digits.pools["val"].subset(keep)}
    c, labels = digits.on_device("val", torch.device("cpu"))
    assert len(c) == len(labels) == 5
    np_img = torch.from_numpy(digits.pools["val"].images).permute(0, 2, 3, 1)
    assert torch.equal(c, np_img)
    assert torch.equal(to_nhwc(digits.pools["val"].images, "cpu"), c)


def test_file_backed_loader_normalises_on_the_device(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        for cls in ("a", "b"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i:04d}.png")
    data = prepare_data(
        DataConfig(name="imagefolder", root=str(tmp_path), imbalance_ratio=1, val_per_class=1)
    )
    assert data.family == "imagenet" and not data.in_memory
    loader = make_loader(data, "test", batch_size=3, augment=False)
    assert isinstance(loader, HostBatches) and len(loader) == 2
    x, y = next(iter(loader))
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    # The same numbers the normalising per-item transform gives (the uint8 path differs only
    # by float rounding).
    item = torch.stack([data.dataset("test", augment=False)[i][0] for i in range(3)])
    torch.testing.assert_close(x, item, rtol=0, atol=1e-5)
    shards = shard_loader(data, "train", batch_size=4, world_size=2, rank=1)
    assert sum(len(y) for _, y in shards) == len(data.labels("train")) // 2
