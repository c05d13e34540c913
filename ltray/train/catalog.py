"""Every training method ltray knows, resolved by ``train.method``.

:mod:`ltray.train.methods` defines the contract (:class:`~ltray.train.methods.TrainMethod`), the
registry and the built-in ``kt`` and ``ce``; :mod:`ltray.previous` adds ``oltr``,
``lfme_expert`` and ``lfme`` to the same registry when it is imported. This module sits above
both and imports both, so the lower layers import downward only and the registry is complete
whenever a method is looked up here. Code that resolves a config's method (the training loop,
a command listing the methods) goes through this module.

    method = get_method(cfg)
    TRAIN_METHODS.names()   # ['ce', 'kt', 'lfme', 'lfme_expert', 'oltr']
"""

from __future__ import annotations

import ltray.previous  # noqa: F401 - registers the previous works (OLTR, LFME)
from ltray.config import Config
from ltray.train.methods import TRAIN_METHODS, TrainMethod

__all__ = ["TRAIN_METHODS", "get_method"]


def get_method(cfg: Config) -> TrainMethod:
    """A fresh instance of the method named by ``cfg.train.method``; an unknown name raises
    :class:`~ltray.errors.ConfigError` listing the registered ones."""
    return TRAIN_METHODS.get(cfg.train.method, key="train.method")()
