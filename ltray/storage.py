"""Where a sweep's files live: a local folder or any pyarrow filesystem (``s3://``, ``gs://``…).

:class:`Storage` is a folder on a ``pyarrow.fs`` filesystem: a local path (``LocalFileSystem``)
or a URI resolved by ``pyarrow.fs.FileSystem.from_uri``. For ``s3://`` the credentials, region
and endpoint come from the standard AWS environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` for an S3-compatible server such as MinIO). A ``Storage`` pickles with its
filesystem, so the driver resolves it once and trials on other nodes use the same one.

Trials never write to a remote storage file by file: they train into a local scratch folder
(:func:`node_scratch`, under the node's Ray temp dir) and :class:`FolderSync` uploads what changed
at each report and at the end. The driver keeps its own working files of a remote sweep (MLflow's
run map and spool) in a mirror folder (:func:`driver_folder`) and reads everything else from the
storage.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pyarrow.fs as pafs

from ltray.errors import ConfigError
from ltray.paths import ltray_home

__all__ = [
    "Storage",
    "FolderSync",
    "is_uri",
    "node_scratch",
    "driver_folder",
    "mirror_path",
    "local_copy",
    "pull_files",
    "push_files",
]

# In a driver's mirror folder: the storage it mirrors ({"uri": ...}).
POINTER = "storage.json"
_CHUNK = 1 << 20
# Object stores have no directories: creating one would only write an empty marker object.
_NO_DIRS = ("s3", "gcs")
# Storages the driver resolved in this process, by the mirror folder that points at them.
_KNOWN: dict[str, Storage] = {}


def is_uri(where: str | Path) -> bool:
    return "://" in str(where)


def _with_env_endpoint(uri: str) -> str:
    """An ``s3://`` URI with the endpoint of ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` and
    the region of ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` as query parameters, unless the URI
    sets them (newer pyarrow reads the endpoint itself, older ones do not; without a region
    pyarrow asks AWS for the bucket's). The resolved filesystem then carries both to the nodes
    it is pickled to."""
    if not uri.startswith("s3://"):
        return uri
    query: dict[str, str] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_override=" not in uri:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        query.update(endpoint_override=parts.netloc, scheme=parts.scheme)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region and "region=" not in uri:
        query["region"] = region
    if not query:
        return uri
    return uri + ("&" if "?" in uri else "?") + urlencode(query)


@dataclass(frozen=True)
class Storage:
    """A folder (or file) on a pyarrow filesystem: ``fs``, the ``path`` on it, and ``uri``, how a
    user writes it (a local path, or ``scheme://path``)."""

    fs: Any
    path: str
    uri: str

    @classmethod
    def at(cls, where: str | Path | Storage) -> Storage:
        """A local path (made absolute) or a URI (``s3://bucket/prefix``, ``file:///x``...)."""
        if isinstance(where, Storage):
            return where
        text = str(where)
        if not is_uri(text):
            path = str(Path(text).expanduser().resolve())
            return cls(pafs.LocalFileSystem(), path, path)
        try:
            fs, path = pafs.FileSystem.from_uri(_with_env_endpoint(text))
        except (OSError, ValueError) as exc:  # unknown scheme, bucket unreachable, ...
            raise ConfigError(
                f"storage {text}: {exc}; check the URI and, for s3://, the AWS_* variables "
                "(credentials, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3 for another server)"
            ) from None
        scheme = text.split("://", 1)[0]
        path = path.rstrip("/") or path
        return cls(fs, path, f"{scheme}://{path}")

    # -- naming --------------------------------------------------------------------------------
    @property
    def remote(self) -> bool:
        """Given as a URI: written through the filesystem, never as a local folder."""
        return is_uri(self.uri)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def __truediv__(self, rel: str) -> Storage:
        rel = str(rel).strip("/")
        return Storage(self.fs, posixpath.join(self.path, rel), f"{self.uri.rstrip('/')}/{rel}")

    def __str__(self) -> str:
        return self.uri

    # -- queries -------------------------------------------------------------------------------
    def _type(self) -> Any:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def children(self) -> list[Storage]:
        """What the folder holds, sorted by name ([] when it does not exist)."""
        sel = pafs.FileSelector(self.path, allow_not_found=True)
        infos = sorted(self.fs.get_file_info(sel), key=lambda i: i.base_name)
        return [self / i.base_name for i in infos]

    def files(self) -> dict[str, int]:
        """Every file under the folder: relative POSIX path → size."""
        sel = pafs.FileSelector(self.path, recursive=True, allow_not_found=True)
        base = self.path.rstrip("/") + "/"
        return {
            i.path[len(base) :]: i.size
            for i in self.fs.get_file_info(sel)
            if i.type == pafs.FileType.File and i.path.startswith(base)
        }

    # -- reading and writing -------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self, *, missing_ok: bool = False) -> str | None:
        """The file's text; with ``missing_ok``, None when there is no such file."""
        data = self.read_bytes_or_none() if missing_ok else self.read_bytes()
        return None if data is None else data.decode()

    def read_bytes_or_none(self) -> bytes | None:
        """The file's bytes, or None when there is no such file."""
        try:
            return self.read_bytes()
        except (FileNotFoundError, OSError):
            if not self.is_file():
                return None
            raise

    def read_json(self, *, missing_ok: bool = False) -> Any:
        text = self.read_text(missing_ok=missing_ok)
        return None if text is None else json.loads(text)

    def _parent_dir(self) -> None:
        if self.fs.type_name not in _NO_DIRS:
            self.fs.create_dir(posixpath.dirname(self.path), recursive=True)

    def _write_stream(self, copy: Any) -> None:
        self._parent_dir()
        if self.fs.type_name == "local":
            # Atomic on a local disk: a reader never sees half a file. (An object store's PUT
            # is atomic by itself.)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with self.fs.open_output_stream(tmp) as out:
                copy(out)
            self.fs.move(tmp, self.path)
            return
        with self.fs.open_output_stream(self.path) as out:
            copy(out)

    def write_bytes(self, data: bytes) -> None:
        self._write_stream(lambda out: out.write(data))

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def write_json(self, obj: Any, **kwargs: Any) -> None:
        self.write_text(json.dumps(obj, **kwargs))

    def delete(self) -> None:
        if self.is_file():
            self.fs.delete_file(self.path)

    def upload_file(self, local: Path) -> None:
        with open(local, "rb") as src:
            self._write_stream(lambda out: shutil.copyfileobj(src, out, _CHUNK))

    def upload(self, local_dir: Path, *, skip: Iterable[str] = ()) -> None:
        """Copy a local folder here (every file, except those under a ``skip`` prefix)."""
        FolderSync(Path(local_dir), self).push(skip=tuple(skip))

    def download(self, local: Path, *, recursive: bool = True, skip: Iterable[str] = ()) -> Path:
        """Copy this folder's files (``recursive=False``: only those directly in it) under
        ``local``; files under a ``skip`` prefix stay behind. Returns ``local``."""
        local = Path(local)
        local.mkdir(parents=True, exist_ok=True)
        skip = tuple(s.rstrip("/") + "/" for s in skip)
        for rel in self.files():
            if (not recursive and "/" in rel) or rel.startswith(skip) or rel.endswith(".tmp"):
                continue
            target = local / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
            src_path = posixpath.join(self.path, rel)
            with self.fs.open_input_stream(src_path) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            os.replace(tmp, target)
        return local


class FolderSync:
    """Keeps a storage folder up to date with a local one: :meth:`push` uploads the files that
    changed (size or modification time) since the last push."""

    def __init__(self, local: Path, dest: Storage) -> None:
        self.local = Path(local)
        self.dest = dest
        self._sent: dict[str, tuple[int, int]] = {}

    def pull(self, *, skip: tuple[str, ...] = ()) -> Path:
        """Download the storage folder into the local one (a run continued on another node);
        what came down counts as sent."""
        self.dest.download(self.local, skip=skip)
        self._mark(skip)
        return self.local

    def _mark(self, skip: tuple[str, ...]) -> None:
        for path, rel in self._local_files(skip):
            st = path.stat()
            self._sent[rel] = (st.st_size, st.st_mtime_ns)

    def _local_files(self, skip: tuple[str, ...]) -> list[tuple[Path, str]]:
        if not self.local.is_dir():
            return []
        out = []
        for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
            rel = path.relative_to(self.local).as_posix()
            if rel.endswith(".tmp") or any(rel == s or rel.startswith(s + "/") for s in skip):
                continue
            out.append((path, rel))
        return out

    def push(self, *, skip: tuple[str, ...] = ()) -> int:
        """Upload what changed, except files under a ``skip`` prefix; returns how many."""
        sent = 0
        for path, rel in self._local_files(skip):
            try:
                st = path.stat()
            except FileNotFoundError:  # replaced while listing
                continue
            key = (st.st_size, st.st_mtime_ns)
            if self._sent.get(rel) == key:
                continue
            (self.dest / rel).upload_file(path)
            self._sent[rel] = key
            sent += 1
        return sent


def node_scratch(*parts: str) -> Path:
    """A local folder on this node for files on their way to a remote storage: under the node's
    Ray temp dir (each node of a cluster has its own), or the system temp dir outside Ray."""
    root = None
    try:
        import ray

        if ray.is_initialized():
            root = ray.get_runtime_context().get_temp_dir()
    except Exception:  # noqa: BLE001 - outside a Ray worker: the system temp dir
        root = None
    path = Path(root or tempfile.gettempdir(), "ltray-scratch", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def driver_folder(root: Storage) -> Path:
    """The local folder where the driver keeps its own files of ``root``: ``root`` itself on a
    local path; for a URI, a mirror under ``$LTRAY_HOME/remote/<scheme>/<path>`` with a pointer
    back to the storage (so :func:`local_copy` can fetch from it)."""
    path = mirror_path(root)
    path.mkdir(parents=True, exist_ok=True)
    if root.remote:
        (path / POINTER).write_text(json.dumps({"uri": root.uri}))
        _KNOWN[str(path)] = root
    return path


def mirror_path(root: Storage) -> Path:
    """:func:`driver_folder`'s path, nothing created."""
    if not root.remote:
        return Path(root.path)
    scheme = root.uri.split("://", 1)[0]
    return ltray_home() / "remote" / scheme / root.path.lstrip("/")


def local_copy(folder: str | Path, rel: str, *, recursive: bool = False) -> Path:
    """``folder/rel`` as a local path. ``folder`` is a local sweep folder (returned as is) or a
    driver's mirror of a remote one (:func:`driver_folder`), into which ``rel`` is fetched from
    the storage first (``recursive=False``: only the files directly in it, not checkpoints or
    the feature cache)."""
    folder = Path(folder)
    pointer = folder / POINTER
    if not pointer.is_file():
        return folder / rel
    root = _KNOWN.get(str(folder)) or Storage.at(json.loads(pointer.read_text())["uri"])
    return (root / rel).download(folder / rel, recursive=recursive)


def pull_files(root: Storage, local: Path, names: Iterable[str]) -> None:
    """Fetch the named files of ``root`` into ``local`` where ``local`` has none (as bytes:
    ``optuna.db`` is an SQLite file)."""
    for name in names:
        if not (Path(local) / name).exists():
            data = (root / name).read_bytes_or_none()
            if data is not None:
                (Path(local) / name).write_bytes(data)


def push_files(root: Storage, local: Path, names: Iterable[str]) -> None:
    """Make the named files of ``root`` those of ``local`` (uploaded, or deleted where ``local``
    has none)."""
    for name in names:
        path = Path(local) / name
        if path.is_file():
            (root / name).upload_file(path)
        else:
            (root / name).delete()
