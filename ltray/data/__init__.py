"""ltray's data layer: long-tailed datasets, samplers, transforms and loaders.

from ltray.data import prepare_data, make_loader
data = prepare_data(cfg.data)
loader = make_loader(data, "train", batch_size=128, augment=True, sampler="class_balanced")
for epoch in range(epochs):
    loader.sampler.set_epoch(epoch)
    for x, y in loader: ...
"""

from typing import Any

from ltray.data.listfiles import check_images_exist, read_list_file, write_list_file
from ltray.data.longtail import profile_counts, select_long_tail
from ltray.data.prepare import SPLITS, LTData, prepare_data
from ltray.data.samplers import SAMPLERS, build_sampler
from ltray.data.sources import SOURCES

__all__ = [
    "LTData",
    "prepare_data",
    "make_loader",
    "shard_loader",
    "SOURCES",
    "SAMPLERS",
    "SPLITS",
    "build_sampler",
    "profile_counts",
    "select_long_tail",
    "read_list_file",
    "write_list_file",
    "check_images_exist",
]


def __getattr__(name: str) -> Any:
    # The loaders need torch; validating a data config (the CLI, before Ray starts) does not.
    if name in ("make_loader", "shard_loader"):
        from ltray.data import loaders

        return getattr(loaders, name)
    raise AttributeError(f"module 'ltray.data' has no attribute {name!r}")
