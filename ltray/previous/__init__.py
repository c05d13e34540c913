"""Previous works of the poster's table, as ltray training methods (``train.method``).

Importing this package registers them in :data:`ltray.train.methods.TRAIN_METHODS`
(:mod:`ltray.train.catalog` does, so every lookup by name sees them):

- ``oltr``: OLTR stage 2 (:mod:`ltray.previous.oltr`), on top of a stage-1 run (``oltr.stage1``);
- ``lfme_expert`` / ``lfme``: LFME's experts and student (:mod:`ltray.previous.lfme`);
  :func:`train_lfme` runs all of them.
"""

from ltray.previous import lfme, oltr
from ltray.previous.lfme import train_lfme

__all__ = ["lfme", "oltr", "train_lfme"]
