"""The feature/logit cache a training run writes and the post-hoc stage reads.

Layout under ``RUN_DIR/cache/``:

- ``{train,val,test}.parquet`` — one row per image: ``label`` (int32), ``feature`` (float32 × d),
  ``logits`` (float32 × C, linear head), ``kt_logits`` (float32 × C, KT head; absent without KT).
  Each file carries ``ltray.schema_version``, ``ltray.config_hash`` and ``ltray.split`` in its
  Arrow schema metadata.
- ``meta.json`` — schema version, config hash, number of classes, feature dim, train class counts,
  the shot-group thresholds and the val protocol.
- ``params.npz`` — the linear head (``linear_weight`` [C, d], ``linear_bias`` [C]) and, when the
  run had one, the EMA memory (``memory_ema`` [C, d]); loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ltray.errors import CacheError
from ltray.metrics import shot_groups

__all__ = [
    "SCHEMA_VERSION",
    "SPLITS",
    "SplitArrays",
    "FeatureCache",
    "write_split",
    "write_meta",
    "read_cache",
]

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass
class SplitArrays:
    """Cached arrays of one split: features [N, d], logits [N, C], labels [N]."""

    features: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    kt_logits: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FeatureCache:
    """Everything the post-hoc stage needs from one training run."""

    path: Path
    meta: dict[str, Any]
    train: SplitArrays
    val: SplitArrays
    test: SplitArrays
    params: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def class_counts(self) -> np.ndarray:
        return np.asarray(self.meta["class_counts"], dtype=np.int64)

    @property
    def groups(self) -> np.ndarray:
        return shot_groups(
            self.class_counts, self.meta["many_threshold"], self.meta["few_threshold"]
        )


def _fixed(arr: np.ndarray) -> pa.FixedSizeListArray:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])


def write_split(
    cache_dir: str | Path,
    split: str,
    arrays: SplitArrays,
    *,
    config_hash: str,
) -> Path:
    """Write one split's arrays as Parquet with the schema version and config hash."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cols: dict[str, pa.Array] = {
        "label": pa.array(np.asarray(arrays.labels, dtype=np.int32)),
        "feature": _fixed(arrays.features),
        "logits": _fixed(arrays.logits),
    }
    if arrays.kt_logits is not None:
        cols["kt_logits"] = _fixed(arrays.kt_logits)
    table = pa.table(cols)
    table = table.replace_schema_metadata(
        {
            "ltray.schema_version": str(SCHEMA_VERSION),
            "ltray.config_hash": config_hash,
            "ltray.split": split,
        }
    )
    out = Path(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{split}.parquet"
    pq.write_table(table, path)
    return path


def write_meta(
    cache_dir: str | Path,
    *,
    config_hash: str,
    class_counts: np.ndarray,
    many_threshold: int,
    few_threshold: int,
    val_protocol: str,
    params: dict[str, np.ndarray],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``meta.json`` and ``params.npz`` (linear head, optional EMA memory)."""
    out = Path(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    w = params["linear_weight"]
    meta = {
        "schema_version": SCHEMA_VERSION,
        "config_hash": config_hash,
        "num_classes": int(w.shape[0]),
        "feat_dim": int(w.shape[1]),
        "class_counts": [int(c) for c in class_counts],
        "many_threshold": int(many_threshold),
        "few_threshold": int(few_threshold),
        "val_protocol": val_protocol,
        **(extra or {}),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    np.savez(out / "params.npz", **{k: np.asarray(v, dtype=np.float32) for k, v in params.items()})


def _read_split(path: Path, split: str, meta: dict[str, Any]) -> SplitArrays:
    if not path.is_file():
        raise CacheError(f"{path}: cache split {split!r} missing; rerun `ltray train` to write it")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CacheError(f"{path}: unreadable Parquet ({exc}); rerun `ltray train`") from None
    md = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    version = md.get("ltray.schema_version")
    if version != str(SCHEMA_VERSION):
        raise CacheError(
            f"{path}: cache schema version {version}, this ltray reads {SCHEMA_VERSION}; "
            "rerun `ltray train` with this version"
        )
    if md.get("ltray.config_hash") != meta["config_hash"]:
        raise CacheError(
            f"{path}: config hash {md.get('ltray.config_hash')} differs from meta.json's "
            f"{meta['config_hash']}; the cache mixes two runs, rerun `ltray train`"
        )

    def mat(name: str, width: int) -> np.ndarray:
        col = table.column(name).combine_chunks()
        return col.values.to_numpy(zero_copy_only=False).reshape(len(col), width)

    c, d = int(meta["num_classes"]), int(meta["feat_dim"])
    return SplitArrays(
        features=mat("feature", d),
        logits=mat("logits", c),
        labels=table.column("label").to_numpy().astype(np.int64),
        kt_logits=mat("kt_logits", c) if "kt_logits" in table.column_names else None,
    )


def read_cache(run_dir: str | Path) -> FeatureCache:
    """Read ``RUN_DIR/cache`` (or a cache directory itself) into memory."""
    root = Path(run_dir)
    cache_dir = root / "cache" if (root / "cache").is_dir() else root
    meta_path = cache_dir / "meta.json"
    if not meta_path.is_file():
        raise CacheError(
            f"{meta_path}: no feature cache here; pass a run directory written by `ltray train`"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise CacheError(
            f"{meta_path}: cache schema version {meta.get('schema_version')}, this ltray reads "
            f"{SCHEMA_VERSION}; rerun `ltray train`"
        )
    splits = {s: _read_split(cache_dir / f"{s}.parquet", s, meta) for s in SPLITS}
    params_path = cache_dir / "params.npz"
    params: dict[str, np.ndarray] = {}
    if params_path.is_file():
        with np.load(params_path, allow_pickle=False) as npz:
            params = {k: npz[k] for k in npz.files}
    return FeatureCache(path=cache_dir, meta=meta, params=params, **splits)
