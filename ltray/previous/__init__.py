"""Previous works of the poster's table, as ltray training methods (``train.method``).

Importing this package registers them in :data:`ltray.train.methods.TRAIN_METHODS` (their rules:
:mod:`ltray.previous.methods`; :mod:`ltray.train.catalog` imports it, so every lookup by name
sees them). It imports no torch: the networks and losses (:mod:`ltray.previous.oltr`,
:mod:`ltray.previous.lfme`) load when a method first trains.

- ``oltr``: OLTR stage 2, on top of a stage-1 run (``oltr.stage1``);
- ``lfme_expert`` / ``lfme``: LFME's experts and student; `ltray reproduce --methods lfme`
  trains all of them.
"""

from ltray.previous import methods

__all__ = ["methods"]
