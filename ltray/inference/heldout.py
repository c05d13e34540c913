"""What `ltray evaluate` may score: the run's classes by name, and only images the run never saw.

    data, notes = match_classes(run, data)            # labels remapped to the run's class order
    data, dropped, notes = drop_seen(run, data, "test")   # the run's train and val images out

Two silent wrong answers this module prevents:

- **Classes by count.** Another ImageFolder orders its classes by folder name; one renamed
  folder shifts every label after it. Classes are matched by name: the data's labels are
  remapped to the run's class order; a class the run does not know is refused, naming it.
- **Training images scored as test.** ``data.seed=1`` (or another ``data.val_per_class``, ratio,
  protocol ...) re-splits the run's own source: the new test split takes in images the run
  trained on, or the val images that chose its best epoch and fitted its post-hoc methods. Every
  such image is dropped from the evaluated split, and the count is said and saved. A researcher
  asking for "another hold-out" wants a score on images the model never saw: dropping them
  gives exactly that (a smaller split, every class still scored where images remain), where a
  refusal would leave the documented ``ltray evaluate RUN data.seed=1`` unusable on digits.
  Which images the run saw is read from its ``split.json`` list files (the ids of its train and
  val splits), else from its own split prepared again from its config (same seed, same ids).
  The run's own split (the same ids) is scored as it is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ltray.data import SPLITS, prepare_data
from ltray.data.listfiles import read_list_file
from ltray.errors import DataError
from ltray.train.rundir import RunDir

if TYPE_CHECKING:
    from ltray.data import LTData
    from ltray.inference.load import LoadedRun

__all__ = ["match_classes", "drop_seen", "seen_ids", "absent_classes"]


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def match_classes(run: LoadedRun, data: LTData) -> tuple[LTData, list[str]]:
    """``data`` with its labels mapped to the run's classes by name.

    Raises:
        DataError: the data has classes the run does not know (each named, with the run's
            classes it lacks).
    """
    ours, theirs = list(run.class_names), list(data.class_names)
    unknown = [n for n in theirs if n not in ours]
    if unknown:
        missing = [n for n in ours if n not in theirs]
        one = len(unknown) == 1
        what = f"class {unknown[0]} is not a class" if one else f"classes {_names(unknown)} are"
        lacks = ""
        if missing:
            lacks = (
                f"; the run's class {missing[0]} is missing from it"
                if len(missing) == 1
                else f"; the run's classes {_names(missing)} are missing from it"
            )
        raise DataError(
            f"{data.split_info.get('root') or data.split_info.get('source')}: {what}"
            f"{'' if one else ' not classes'} of the run (its classes: {_names(ours, 12)})"
            f"{lacks}; classes are matched by name, not by position: evaluate on data whose "
            "class folders carry the run's class names"
        )
    notes = []
    index = np.asarray([ours.index(n) for n in theirs], dtype=np.int64)
    if theirs != ours:
        absent = [n for n in ours if n not in theirs]
        notes.append(
            "classes matched by name to the run's"
            + (f"; the run's {_names(absent)} have no images in this data" if absent else "")
        )
        pools = {
            s: dataclasses.replace(p, labels=index[p.labels] if len(p.labels) else p.labels)
            for s, p in data.pools.items()
        }
        data = dataclasses.replace(
            data, pools=pools, class_names=ours, num_classes=len(ours), _on_device={}
        )
    return data, notes


def seen_ids(run: LoadedRun) -> dict[str, set[str]]:
    """The ids (list-file entries) of the run's train, val and test splits: from the list files
    its ``split.json`` names, else from its own split prepared again from its config."""
    files = RunDir(run.run_dir).read_split().get("list_files") or {}
    if all(files.get(s) and Path(files[s]).is_file() for s in SPLITS):
        return {s: set(read_list_file(files[s])[0]) for s in SPLITS}

    own = prepare_data(run.config.data, check_images=False, write_splits=False)
    return {s: set(own.ids(s)) for s in SPLITS}


def _same_source(run: LoadedRun, data: LTData) -> bool:
    info = RunDir(run.run_dir).read_split()
    source, root = info.get("source", run.config.data.name), info.get("root")
    if source != data.split_info.get("source"):
        return False
    other = data.split_info.get("root")
    if root is None or other is None:
        return root == other
    return Path(root).resolve() == Path(other).resolve()


def drop_seen(run: LoadedRun, data: LTData, split: str) -> tuple[LTData, dict[str, Any], list[str]]:
    """``data`` with the images of ``split`` that the run trained on or selected with removed
    (only when ``data`` re-splits the run's own source and ``split`` is not the run's own
    split); returns (data, {"dropped_train", "dropped_val", "kept"}, notes).

    Raises:
        DataError: every image of ``split`` was seen by the run.
    """
    if split == "train" or not _same_source(run, data):
        return data, {}, []
    ids = data.ids(split)
    seen = seen_ids(run)
    if set(ids) == seen[split]:
        return data, {}, []  # the run's own split, scored as it is
    in_train = np.asarray([i in seen["train"] for i in ids], dtype=bool)
    in_val = np.asarray([i in seen["val"] for i in ids], dtype=bool) & ~in_train
    drop = in_train | in_val
    if not drop.any():
        return data, {}, []
    keep = np.flatnonzero(~drop)
    n = len(ids)
    if not len(keep):
        raise DataError(
            f"every one of the {n} {split} images of this split was a train or val image of the "
            "run (it trained on or selected with them); evaluate on another split or data"
        )
    pools = {**data.pools, split: data.pools[split].subset(keep)}
    data = dataclasses.replace(data, pools=pools, _on_device={})
    dropped = {
        "dropped_train": int(in_train.sum()),
        "dropped_val": int(in_val.sum()),
        "kept": int(len(keep)),
        "of": n,
    }
    note = (
        f"dropped {int(drop.sum())} of the {n} {split} images of this split: the run trained on "
        f"{int(in_train.sum())} of them and selected with {int(in_val.sum())} (its val split); "
        f"scored on the other {len(keep)}"
    )
    return data, dropped, [note]


def absent_classes(run: LoadedRun, labels: np.ndarray) -> list[str]:
    """Classes of the run with no image in the evaluated ``labels``: left out of their shot
    group and of overall (per-class accuracy undefined), said in a note."""
    counts = np.bincount(labels, minlength=run.num_classes)
    missing = [run.class_names[c] for c in np.flatnonzero(counts == 0)]
    if not missing:
        return []
    return [
        f"{'class' if len(missing) == 1 else 'classes'} {_names(missing)} of the run "
        f"{'has' if len(missing) == 1 else 'have'} no image in this split: left out of "
        f"{'its' if len(missing) == 1 else 'their'} shot group and of overall"
    ]
