"""The episode store: one zarr v3 directory per dataset, episode-major, crash safe, checked on read.

Layout (see docs/design.md): per-step arrays under `data/` concatenated along time and chunked
along time only; per-episode columns under `meta/`; named boolean episode masks under `masks/`;
the schema and task in the root attributes; `quarantine/` holds what `repair_store` moved aside.

Crash safety rests on two facts. zarr's LocalStore writes every chunk and metadata file
atomically (temporary file + rename), so a file is either old or new, never torn. And an
episode is written in a fixed order -- an explicit "not committed" marker (-1) appended to
`meta/episode_ends`, per-step arrays, per-episode columns, then the marker overwritten with the
episode's end in one chunk write -- so an episode exists exactly when its end is in
`episode_ends`, and anything after the last end is provably uncommitted.

Integrity: every chunk carries a crc32c checksum (zarr v3 `crc32c` codec) and every chunk a
committed episode needs must exist, so a deleted or corrupted chunk is an error naming the
episode and array, never zeros. Opening checks the commit records against the step arrays and
the length column; a disagreement is an error pointing to `robolearn data repair`, which moves
damaged pieces into the store's quarantine instead of deleting them. A writer opening the store
trims only the provably uncommitted tail.

Every filesystem operation on a store path (temporary siblings, publishing, swaps, chunk files,
quarantine) goes through the small helpers in the "paths" section, so other storage backends
need only those replaced.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import errno
import fcntl
import json
import os
import shutil
import tempfile
import uuid
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from robolearn import __version__
from robolearn.data.location import RemoteLocation, RemoteLock, is_remote, store_location
from robolearn.data.schema import STANDARD_FEATURES, Feature, features_from_json, features_to_json

SCHEMA_VERSION = 1
SOURCES: tuple[str, ...] = ("demo", "policy", "recovery", "correction")
SOURCE_CODES: dict[str, int] = {name: i for i, name in enumerate(SOURCES)}
LOCK_NAME = ".robolearn.lock"
QUARANTINE_DIR = "quarantine"
_MASKS_PENDING = ".masks-pending"
_MASKS_OLD = ".masks-old"
UNCOMMITTED = -1  # the commit marker an episode's end replaces

# Per-episode columns: name -> (dtype, fill value for rows not yet written).
EPISODE_COLUMNS: dict[str, tuple[Any, Any]] = {
    "length": ("int64", 0),
    "success": ("bool", False),
    "return": ("float64", 0.0),
    "collector": (str, ""),
    "task": (str, ""),
    "seed": ("int64", -1),
    "created": (str, ""),
    "intervention_count": ("int32", 0),
    "metadata": (str, ""),
}

_TARGET_CHUNK_BYTES = 1 << 21  # ~2 MiB uncompressed per chunk for low-dim arrays
_TARGET_IMAGE_CHUNK_BYTES = 1 << 18  # images are read at random: small chunks decode fast
_META_CHUNK = 4096


class StoreError(ValueError):
    """A store that cannot be opened or an append that does not fit its schema."""


class StoreLockedError(StoreError):
    """Another process holds the store's single-writer lock."""


class StoreIntegrityError(StoreError):
    """A damaged store: a missing or corrupt chunk, or commit records that disagree with the data."""


def _zarr():
    # zarr 3 warns about the (still draft) variable-length string dtype; it is what we want.
    import zarr

    warnings.filterwarnings("ignore", message=".*(StringDType|vlen-utf8|not part of the Zarr format 3).*")
    return zarr


def _compressors() -> tuple[Any, ...]:
    """Blosc-zstd, then a crc32c checksum over the compressed bytes (verified on every read)."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    return (BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), Crc32cCodec())


def _chunk_len(shape: tuple[int, ...], dtype: np.dtype) -> int:
    per_step = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize if shape else np.dtype(dtype).itemsize
    if per_step > 4096:
        return int(max(1, _TARGET_IMAGE_CHUNK_BYTES // per_step))
    return int(max(16, min(8192, _TARGET_CHUNK_BYTES // max(per_step, 1))))


def encode_source(source: Any, length: int) -> np.ndarray:
    """Turn a source name, a list of names or integer codes into uint8 codes of `length` steps."""
    if isinstance(source, str):
        if source not in SOURCE_CODES:
            raise StoreError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
        return np.full(length, SOURCE_CODES[source], dtype=np.uint8)
    arr = np.asarray(source)
    if arr.dtype.kind in "US" or arr.dtype == object:
        bad = sorted({str(s) for s in arr.tolist()} - set(SOURCE_CODES))
        if bad:
            raise StoreError(f"unknown source {bad[0]!r}; expected one of {', '.join(SOURCES)}")
        arr = np.array([SOURCE_CODES[str(s)] for s in arr.tolist()], dtype=np.uint8)
    if arr.dtype.kind not in "iu":
        raise StoreError(f"source must be names or integer codes, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= len(SOURCES)):
        raise StoreError(f"source codes must lie in [0, {len(SOURCES) - 1}]")
    return arr.astype(np.uint8)


# ---------------------------------------------------------------------------------------- paths
# Every filesystem operation on a store location lives here.

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; False where the call or flag is unsupported (caller falls back)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP if hasattr(errno, "ENOTSUP") else errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def same_location(a: str | Path, b: str | Path) -> bool:
    """True when two paths name the same file or directory, or one lies inside the other."""
    ra, rb = os.path.realpath(a), os.path.realpath(b)
    return ra == rb or ra.startswith(rb.rstrip(os.sep) + os.sep) or rb.startswith(ra.rstrip(os.sep) + os.sep)


def temp_sibling(path: Path, tag: str) -> Path:
    """A fresh hidden name next to `path` (same filesystem, so a rename publishes it).

    Temporary siblings of `path` left by a process that no longer runs (a SIGKILLed writer) are
    provably abandoned -- never published, never an input -- and are removed first."""
    remove_abandoned(path)
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_abandoned(path: Path) -> list[str]:
    """Remove `.NAME.<tag>-<pid>-<hex>` siblings of `path` whose process is gone; returns their names."""
    import re

    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(creating|partial|repair|rewrite)-(\d+)-[0-9a-f]{{8}}$")
    removed = []
    try:
        siblings = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in siblings:
        m = pattern.match(entry.name)
        if not m:
            continue
        pid = int(m.group(2))
        try:
            os.kill(pid, 0)
            continue  # still running (or another user's process): not ours to judge
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        remove_tree(Path(entry.path))
        removed.append(entry.name)
    return removed


def publish(tmp: Path, dst: Path, overwrite: bool = False) -> None:
    """Move a finished output (file or store directory) to `dst` in one rename.

    Without `overwrite` an existing `dst` -- including one that appeared while the output was
    being built -- makes this fail and leaves it untouched. With `overwrite` the old one is
    swapped out atomically and then removed.
    """
    if not overwrite or not os.path.lexists(dst):
        try:
            if _renameat2(tmp, dst, _RENAME_NOREPLACE):
                return
        except FileExistsError:
            raise StoreError(f"{dst} already exists (it appeared while the output was being written)") from None
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise StoreError(f"{dst} already exists (it appeared while the output was being written)") from None
            raise
        if os.path.lexists(dst):
            raise StoreError(f"{dst} already exists (it appeared while the output was being written)")
        os.rename(tmp, dst)
        return
    if os.path.isdir(dst) != os.path.isdir(tmp):
        kind = "a directory" if os.path.isdir(dst) else "a file"
        raise StoreError(f"refusing to overwrite {dst}: it is {kind}")
    if not os.path.isdir(dst):
        os.replace(tmp, dst)
        return
    swap_dirs(tmp, dst)  # tmp now holds the old output
    remove_tree(tmp)


def swap_dirs(a: Path, b: Path) -> None:
    """Exchange two directories atomically (renameat2 RENAME_EXCHANGE, or two renames)."""
    if _renameat2(a, b, _RENAME_EXCHANGE):
        return
    hold = temp_sibling(b, "swap")
    os.rename(b, hold)
    os.rename(a, b)
    os.rename(hold, a)


def remove_tree(path: Path) -> None:
    """Remove a temporary or superseded directory (never a store's only copy of data)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def _discard(path: Path) -> None:
    """Remove an unpublished output after a failure. zarr writes chunks concurrently on its own
    event-loop thread, so writes already in flight when one failed (e.g. disk full) can land
    after a first removal: wait for them and remove again."""
    import time

    for _ in range(20):
        remove_tree(path)
        time.sleep(0.05)
        if not os.path.lexists(path):
            return


def _chunk_file(root: Path, array: Any, chunk_index: int) -> Path:
    tail = (0,) * (len(array.shape) - 1)
    return root / array.path / array.metadata.encode_chunk_key((chunk_index, *tail))


def _store_root(group: Any) -> Path:
    return Path(str(group.store.root))


def _move_into(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dst)


@contextmanager
def staged_output(path: str | Path, inputs: Sequence[str | Path] = (), overwrite: bool = False,
                  kind: str = "store") -> Iterator[Path]:
    """A temporary location for an output; published to `path` only if the block succeeds.

    A failure (bad input, disk full, kill) leaves nothing at `path` and never touches the inputs;
    an output equal to (or inside) an input is refused; an existing `path` is refused unless
    `overwrite`, and then only when it is the same kind of thing (a store for a store).
    """
    if is_remote(store_location(path)):
        raise StoreError(f"{path}: this command writes its output locally and publishes it with a rename; "
                         "write it to a local path (then copy it to object storage)")
    path = Path(path)
    for src in inputs:
        if same_location(path, src):
            exists = " (it already exists)" if os.path.lexists(path) else ""
            raise StoreError(f"output {path} is the input {src}{exists}: write to a new path")
    if os.path.lexists(path):
        if not overwrite:
            raise StoreError(f"{path} already exists (pass --overwrite to replace it)")
        if kind == "store" and not _is_store_dir(path):
            raise StoreError(f"refusing to overwrite {path}: it is not a robolearn episode store")
        if kind == "file" and os.path.isdir(path):
            raise StoreError(f"refusing to overwrite {path}: it is a directory")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output directory {path.parent} does not exist")
    tmp = temp_sibling(path, "partial")
    try:
        yield tmp
        publish(tmp, path, overwrite=overwrite)
    finally:
        if os.path.lexists(tmp):
            _discard(tmp)


def _is_store_dir(path: Path | RemoteLocation) -> bool:
    if is_remote(path):
        return path.is_group()
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return False
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return data.get("node_type") == "group"


def _acquire_lock(path: Path | RemoteLocation) -> int | RemoteLock:
    """One writer at a time: an flock that the OS releases even when the writer is SIGKILLed
    (on object storage a lock object with a lease, see robolearn.data.location)."""
    if is_remote(path):
        return RemoteLock.acquire(path)
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(f"{path} is being written by another process (single writer); try again when it finishes") from None
    return fd


def _release_lock(lock: int | RemoteLock) -> None:
    if isinstance(lock, int):
        os.close(lock)
    else:
        lock.release()


def _open_zarr_group(path: Path | RemoteLocation, mode: str) -> Any:
    """The root zarr group of a local or remote store."""
    zarr = _zarr()
    if is_remote(path):
        return path.open_group(mode)
    return zarr.open_group(str(path), mode=mode)


def _chunk_present(path: Path | RemoteLocation, group: Any, array: Any, chunk_index: int) -> bool:
    """Whether a chunk exists (a file locally, an object remotely): a missing chunk reads as fill."""
    if is_remote(path):
        return path.has_chunk(array, chunk_index)
    return _chunk_file(_store_root(group), array, chunk_index).is_file()


# ------------------------------------------------------------------------------- integrity scan
@dataclass
class Damage:
    """One problem found in a store: what, where (array, episodes, steps) and why."""

    kind: str  # commit | missing_chunk | corrupt_chunk | column | layout
    detail: str
    array: str | None = None
    episodes: list[int] = field(default_factory=list)
    chunk: int | None = None

    def line(self) -> str:
        where = f" {self.array}" if self.array else ""
        eps = ""
        if self.episodes:
            shown = ", ".join(str(e) for e in self.episodes[:6]) + (" ..." if len(self.episodes) > 6 else "")
            eps = f" (episode{'s' if len(self.episodes) > 1 else ''} {shown})"
        return f"{self.kind}{where}{eps}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "detail": self.detail, "array": self.array, "episodes": self.episodes, "chunk": self.chunk}


@dataclass
class EpisodeRecord:
    """Where one raw commit record says its episode lives, and whether that holds up."""

    index: int
    start: int
    end: int
    good: bool


def _writes_every_chunk(array: Any) -> bool:
    """Arrays with the crc32c codec were written by this store with write_empty_chunks, so a
    missing chunk is damage. Older stores skipped chunks equal to the fill value (all-zero
    rewards, all-demo sources), so for them a missing chunk cannot be told from a deleted one."""
    try:
        return any(c.to_dict().get("name") == "crc32c" for c in array.metadata.codecs)
    except Exception:
        return False


def _episodes_in(starts: np.ndarray, ends: np.ndarray, lo: int, hi: int) -> list[int]:
    """Indices of episodes (given by step ranges) that overlap steps [lo, hi)."""
    if not len(ends):
        return []
    hit = (starts < hi) & (ends > lo)
    return [int(i) for i in np.flatnonzero(hit)]


class EpisodeStore:
    """A dataset of episodes on disk. Create with `create`, open with `open`."""

    def __init__(self, path: Path, group: Any, mode: str, lock_fd: int | None, check: bool = True) -> None:
        self.path = path
        self.mode = mode
        self._group = group
        self._lock_fd = lock_fd
        attrs = dict(group.attrs)
        self.features: dict[str, Feature] = features_from_json(attrs["features"])
        self._arrays: dict[str, Any] = {}
        self._columns: dict[str, Any] = {}
        self._ends_array: Any = None
        self._verified_chunks: dict[str, int] = {}  # array path -> chunks known to exist
        self.skipped_episodes: list[int] = []
        self._load_handles(check)

    # ------------------------------------------------------------------ creation / opening
    @classmethod
    def create(
        cls,
        path: str | Path,
        features: dict[str, Feature],
        task: str = "",
        env_kwargs: dict[str, Any] | None = None,
        control_period: float | None = None,
        overwrite: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> "EpisodeStore":
        """Create an empty store (opened for appending) with the given per-step features.

        `path` is a directory, a `file://` / fsspec URL (`memory://`, `s3://...`, with
        `storage_options`) or a zarr store object (robolearn.data.location).

        `reward`, `done`, `source` and `stage` are always present; pass others (obs/*, action,
        sim_state, extra labels) explicitly. Race-free: the store is built under a private name
        and published with one no-replace rename, so of two concurrent creators one wins and the
        other gets a StoreError.
        """
        path = store_location(path, storage_options)
        if (not path.is_empty()) if is_remote(path) else os.path.lexists(path):
            if not overwrite:
                raise StoreError(f"{path} already exists (open it with mode='a' to append)")
            if not _is_store_dir(path):
                raise StoreError(f"refusing to overwrite {path}: it is not a robolearn episode store")
        all_features = dict(features)
        for key, feat in STANDARD_FEATURES.items():
            all_features.setdefault(key, feat)
        for key in all_features:
            if not key or key.startswith("/") or ".." in key.split("/"):
                raise StoreError(f"bad feature key {key!r}")
        if not any(f.role == "action" for f in all_features.values()):
            raise StoreError("a store needs an 'action' feature")
        zarr = _zarr()
        remote = is_remote(path)
        if remote:  # no rename on object storage: built in place, the root attributes (what makes it a store) last
            if overwrite:
                path.clear()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path if remote else temp_sibling(path, "creating")
        try:
            group = path.open_group("w-") if remote else zarr.open_group(str(tmp), mode="w-")
            for key, feat in all_features.items():
                group.create_array(
                    f"data/{key}",
                    shape=(0, *feat.shape),
                    chunks=(_chunk_len(feat.shape, np.dtype(feat.dtype)), *feat.shape),
                    dtype=feat.dtype,
                    compressors=_compressors(),
                )
            group.create_array("meta/episode_ends", shape=(0,), chunks=(_META_CHUNK,), dtype="int64",
                               fill_value=UNCOMMITTED, compressors=_compressors())
            for name, (dtype, fill) in EPISODE_COLUMNS.items():
                group.create_array(f"meta/{name}", shape=(0,), chunks=(_META_CHUNK,), dtype=dtype, fill_value=fill,
                                   compressors=_compressors())
            group.require_group("masks")
            group.attrs.update(
                {
                    "schema_version": SCHEMA_VERSION,
                    "format": "robolearn.episode_store",
                    "features": features_to_json(all_features),
                    "sources": list(SOURCES),
                    "control_period": control_period,
                    "task": task,
                    "env_kwargs": env_kwargs or {},
                    "robolearn_version": __version__,
                }
            )
            if not remote:
                publish(tmp, path, overwrite=overwrite)  # the store appears whole or not at all
        finally:
            if not remote and os.path.lexists(tmp):
                _discard(tmp)
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", skip_damaged: bool = False, check: bool = True,
             storage_options: dict[str, Any] | None = None) -> "EpisodeStore":
        """Open an existing store read-only (`r`) or as its single writer (`a`).

        The commit records and the chunks every committed episode needs are checked first; a
        damaged store raises StoreIntegrityError (run `robolearn data repair`). With
        `skip_damaged` (read-only) a damaged store opens as a temporary copy of its healthy
        episodes (`skipped_episodes` lists the others). `check=False` is for verify/repair.
        """
        if mode not in ("r", "a"):
            raise StoreError(f"mode must be 'r' or 'a', got {mode!r}")
        if skip_damaged and mode != "r":
            raise StoreError("skip_damaged is for reading; repair the store to write to it")
        path = store_location(path, storage_options)
        if is_remote(path):
            if not path.is_group():
                if path.is_empty():
                    raise FileNotFoundError(f"no episode store at {path}")
                raise StoreError(f"{path} is not a robolearn episode store (no zarr group with robolearn attributes)")
        elif not os.path.lexists(path):
            raise FileNotFoundError(f"no episode store at {path}")
        elif not path.is_dir():
            raise StoreError(f"{path} is not a robolearn episode store (it is a file)")
        elif not _is_store_dir(path):
            raise StoreError(f"{path} is not a robolearn episode store (no zarr group with robolearn attributes)")
        try:
            group = _open_zarr_group(path, "r" if mode == "r" else "r+")
            attrs = dict(group.attrs)
        except OSError:
            raise
        except Exception as exc:  # zarr raises several types for unreadable metadata
            raise StoreError(f"{path} is not a readable zarr store: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        if attrs.get("format") != "robolearn.episode_store" or "features" not in attrs:
            raise StoreError(f"{path} is a zarr group but not a robolearn episode store")
        version = attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(f"{path} has schema version {version!r}; this robolearn reads version {SCHEMA_VERSION}")
        if skip_damaged:
            return _healthy_view(path)
        lock_fd = None
        if mode == "a":
            lock_fd = _acquire_lock(path)
            if not is_remote(path):
                _recover_masks(path)  # only the lock holder may judge a pending update abandoned
        try:
            store = cls(path, group, mode, lock_fd, check=check)
            if mode == "a" and check:
                store._trim_uncommitted()
        except BaseException:
            if lock_fd is not None:
                _release_lock(lock_fd)
            raise
        return store

    def close(self) -> None:
        """Release the writer lock (readers hold none)."""
        if self._lock_fd is not None:
            _release_lock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "EpisodeStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _handle(self, key: str) -> Any:
        arr = self._group[key]
        if self.mode == "a":  # zeros must be written too: a missing chunk always means damage
            arr = arr.with_config({"write_empty_chunks": True})
        return arr

    def _load_handles(self, check: bool = True) -> None:
        # The commit point first: everything it commits was written before it, so the step arrays
        # and columns opened after it cover it even while a live writer appends.
        try:
            self._ends_array = self._handle("meta/episode_ends")
            raw = self._read_meta_array(self._ends_array, "meta/episode_ends").astype(np.int64)
            self._arrays = {key: self._handle(f"data/{key}") for key in self.features}
            self._columns = {name: self._handle(f"meta/{name}") for name in EPISODE_COLUMNS}
        except KeyError as exc:
            raise StoreIntegrityError(f"{self.path} is missing array {exc}; the store is damaged (run `robolearn data verify {self.path}`)") from None
        for key, arr in self._arrays.items():
            if tuple(arr.shape[1:]) != self.features[key].shape:
                raise StoreIntegrityError(f"{self.path}: data/{key} has per-step shape {tuple(arr.shape[1:])}, the schema says {self.features[key].shape}")
        self._cache: dict[str, np.ndarray] = {}
        n = len(raw)
        # A plain reader takes a trailing -1 as the commit a (possibly live) writer has not made
        # yet; a writer, and verify/repair, accept it only when provably uncommitted.
        lenient = self.mode == "r" and check
        self._pending_marker = bool(n and raw[n - 1] == UNCOMMITTED and (lenient or self._marker_is_uncommitted(n - 1, raw)))
        if self._pending_marker:
            n -= 1
        self._raw_ends = raw[:n].copy()
        self.records, damage = self._commit_records(self._raw_ends)
        if check:
            if damage:
                raise StoreIntegrityError(f"{self.path}: {damage[0].line()}; the commit point disagrees with the step arrays: "
                                          f"run `robolearn data repair {self.path}`")
            self._ends = self._raw_ends
            missing = self._missing_chunks(self.episode_starts, self._ends, self.num_steps, self.num_episodes)
            if missing:
                raise StoreIntegrityError(f"{self.path}: {missing[0].line()} (run `robolearn data verify {self.path}`, "
                                          f"then `robolearn data repair`)")
        else:
            ok = 0
            for rec in self.records:
                if not rec.good:
                    break
                ok += 1
            self._ends = self._raw_ends[:ok].copy()

    def _read_meta_array(self, arr: Any, name: str) -> np.ndarray:
        try:
            return np.asarray(arr[:])
        except OSError:
            raise
        except Exception as exc:
            raise StoreIntegrityError(f"{self.path}: {name} cannot be read ({_short(exc)}): run `robolearn data verify {self.path}`") from None

    def _marker_is_uncommitted(self, index: int, raw: np.ndarray) -> bool:
        """A trailing -1 in episode_ends is a commit that never happened, provably, when the
        marker is stored (its chunk exists) or, when its chunk is absent, when nothing of the
        episode was written yet (a writer killed while appending the marker itself)."""
        if _chunk_present(self.path, self._group, self._ends_array, index // _META_CHUNK):
            return True
        if not _writes_every_chunk(self._ends_array):  # an older store: its writers left no marker
            return True
        prev_end = int(raw[index - 1]) if index > 0 else 0
        if index % _META_CHUNK != 0:
            return False
        data_len = min((int(a.shape[0]) for a in self._arrays.values()), default=0)
        rows = max(int(c.shape[0]) for c in self._columns.values())
        return data_len <= prev_end and rows <= index

    def _commit_records(self, ends: np.ndarray) -> tuple[list[EpisodeRecord], list[Damage]]:
        """Check every commit record against the step arrays and the length column."""
        data_lens = {key: int(a.shape[0]) for key, a in self._arrays.items()}
        short_key = min(data_lens, key=data_lens.get) if data_lens else ""
        data_len = data_lens.get(short_key, 0)
        try:
            lengths = np.asarray(self._columns["length"][: len(ends)], dtype=np.int64)
        except OSError:
            raise
        except Exception:
            lengths = np.zeros(0, np.int64)  # reported below as a damaged column
        col_rows = {name: int(c.shape[0]) for name, c in self._columns.items()}
        records: list[EpisodeRecord] = []
        damage: list[Damage] = []
        prev_end, last_good = 0, True
        for i, e in enumerate(ends.tolist()):
            length = int(lengths[i]) if i < len(lengths) else -1
            start = e - length
            why = ""
            if length <= 0:
                why = f"its length column entry is {length}" if i < len(lengths) else "meta/length has no row for it"
            elif e > data_len:
                why = f"its commit record ends it at step {e} but data/{short_key} holds {data_len} steps"
            elif start < prev_end:
                why = f"its commit record ({start}..{e}) overlaps the previous episode (ends at {prev_end})"
            elif last_good and start != prev_end:
                why = f"its length {length} disagrees with the commit records (previous end {prev_end}, this end {e})"
            short_cols = [name for name, rows in col_rows.items() if rows <= i]
            if not why and short_cols:
                why = f"meta/{short_cols[0]} has no row for it"
            good = not why
            records.append(EpisodeRecord(i, max(0, min(start, data_len)) if length > 0 else prev_end, min(e, data_len) if e > 0 else prev_end, good))
            if not good:
                damage.append(Damage("commit", why, None, [i]))
            else:
                prev_end = e
            last_good = good
        return records, damage

    def _chunk_targets(self, n_steps: int, n_ep: int) -> list[tuple[str, Any, int, bool]]:
        """(name, array, entries in use, per-step?) for every array a committed episode needs."""
        targets: list[tuple[str, Any, int, bool]] = [(f"data/{k}", a, n_steps, True) for k, a in self._arrays.items()]
        targets += [(f"meta/{k}", c, n_ep, False) for k, c in self._columns.items()]
        targets.append(("meta/episode_ends", self._ends_array, n_ep, False))
        for name in self.mask_names():
            try:
                m = self._group[f"masks/{name}"]
            except KeyError:  # deleted by the live writer since the listing (masks/ is swapped whole)
                continue
            targets.append((f"masks/{name}", m, min(int(m.shape[0]), n_ep), False))
        return targets

    def _missing_chunks(self, starts: np.ndarray, ends: np.ndarray, n_steps: int, n_ep: int,
                        stop_at_first: bool = True) -> list[Damage]:
        """Chunks a committed episode needs that are not on disk (a deleted chunk reads as zeros)."""
        out: list[Damage] = []
        ep_idx = np.arange(n_ep)
        targets = self._chunk_targets(n_steps, n_ep)
        for name, arr, n_items, per_step in targets:
            if n_items <= 0 or any(int(s) == 0 for s in arr.shape[1:]) or not _writes_every_chunk(arr):
                continue
            chunk = int(arr.chunks[0])
            n_chunks = -(-n_items // chunk)
            done = self._verified_chunks.get(name, 0)
            for c in range(done, n_chunks):
                if not _chunk_present(self.path, self._group, arr, c):
                    lo, hi = c * chunk, min((c + 1) * chunk, n_items)
                    eps = _episodes_in(starts, ends, lo, hi) if per_step else [int(e) for e in ep_idx[lo:hi]]
                    out.append(Damage("missing_chunk", f"chunk {c} (entries {lo}..{hi - 1}) is missing", name, eps, c))
                    if stop_at_first:
                        return out
                    continue
                if not out:
                    self._verified_chunks[name] = c + 1
        return out

    def _scan_chunks(self, starts: np.ndarray, ends: np.ndarray, n_steps: int, n_ep: int) -> list[Damage]:
        """Decode every chunk a committed episode needs (checksums verified); list the failures."""
        out: list[Damage] = []
        targets = self._chunk_targets(n_steps, n_ep)
        for name, arr, n_items, per_step in targets:
            if n_items <= 0:
                continue
            chunk = int(arr.chunks[0])
            n_chunks = -(-n_items // chunk)
            group_size = 64
            for c0 in range(0, n_chunks, group_size):
                c1 = min(n_chunks, c0 + group_size)
                try:
                    arr[c0 * chunk : min(c1 * chunk, n_items)]
                    continue
                except OSError:
                    raise
                except Exception:
                    pass
                for c in range(c0, c1):
                    lo, hi = c * chunk, min((c + 1) * chunk, n_items)
                    try:
                        arr[lo:hi]
                    except OSError:
                        raise
                    except Exception as exc:
                        eps = _episodes_in(starts, ends, lo, hi) if per_step else list(range(lo, hi))
                        out.append(Damage("corrupt_chunk", f"chunk {c} (entries {lo}..{hi - 1}) fails its checksum or cannot be decoded ({_short(exc)})", name, eps, c))
        return out

    def _integrity_error(self, key: str, lo: int, hi: int, exc: BaseException) -> StoreIntegrityError:
        """Turn a failed read of steps [lo, hi) of `key` into an error naming episode and array."""
        arr = self._arrays[key]
        chunk = int(arr.chunks[0])
        ends = self._ends
        starts = self.episode_starts
        for c in range(lo // chunk, -(-hi // chunk)):
            a, b = c * chunk, min((c + 1) * chunk, int(arr.shape[0]))
            try:
                arr[a:b]
            except OSError:
                continue
            except Exception as err:
                eps = _episodes_in(starts, ends, max(a, lo), min(b, hi))
                return StoreIntegrityError(f"{self.path}: {Damage('corrupt_chunk', f'chunk {c} fails its checksum or cannot be decoded ({_short(err)})', f'data/{key}', eps, c).line()}; "
                                           f"run `robolearn data verify {self.path}`")
        eps = _episodes_in(starts, ends, lo, hi)
        return StoreIntegrityError(f"{self.path}: data/{key} steps {lo}..{hi - 1} (episodes {eps[:6]}) cannot be read: {_short(exc)}")

    def _read_steps(self, key: str, lo: int, hi: int) -> np.ndarray:
        try:
            return np.asarray(self._arrays[key][lo:hi])
        except (OSError, KeyError, MemoryError):
            raise
        except Exception as exc:
            raise self._integrity_error(key, lo, hi, exc) from None

    def refresh(self) -> None:
        """Re-read the committed prefix (a reader following a live writer calls this)."""
        self._group = _open_zarr_group(self.path, "r" if self.mode == "r" else "r+")
        self._load_handles()

    def _trim_uncommitted(self) -> None:
        """Writer-side: cut away what was written after the last commit record (provably
        uncommitted: a killed writer's tail). Committed episodes are never touched."""
        n_ep = len(self._ends)
        n_steps = int(self._ends[-1]) if n_ep else 0
        for arr in self._arrays.values():
            if arr.shape[0] > n_steps:
                arr.resize((n_steps, *arr.shape[1:]))
        for col in self._columns.values():
            if col.shape[0] > n_ep:
                col.resize((n_ep,))
        if self._ends_array.shape[0] > n_ep:  # only the uncommitted marker
            self._ends_array.resize((n_ep,))
        self._pending_marker = False
        for partial in ([] if is_remote(self.path) else self.path.rglob("*.partial")):  # zarr's temporary files of a killed write
            partial.unlink(missing_ok=True)

    # ------------------------------------------------------------------ properties
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._group.attrs)

    @property
    def task(self) -> str:
        return str(self._group.attrs.get("task", ""))

    @property
    def env_kwargs(self) -> dict[str, Any]:
        return dict(self._group.attrs.get("env_kwargs", {}) or {})

    @property
    def control_period(self) -> float | None:
        return self._group.attrs.get("control_period")

    @property
    def num_episodes(self) -> int:
        return len(self._ends)

    @property
    def num_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self._ends[:-1]]).astype(np.int64) if len(self._ends) else self._ends.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self._ends])).astype(np.int64)

    @property
    def checksummed(self) -> bool:
        """Whether this store's chunks carry crc32c checksums (stores before them do not)."""
        return all(any(c.to_dict().get("name") == "crc32c" for c in a.metadata.codecs) for a in self._arrays.values())

    def __len__(self) -> int:
        return self.num_episodes

    def __repr__(self) -> str:
        return f"EpisodeStore({str(self.path)!r}, episodes={self.num_episodes}, steps={self.num_steps}, mode={self.mode!r})"

    # ------------------------------------------------------------------ reading
    def array(self, key: str) -> Any:
        """The zarr array of a per-step feature (may hold an uncommitted tail: slice by ends).

        Reads through it that hit a corrupt chunk raise StoreIntegrityError naming the array and
        episodes (attributes are the zarr array's)."""
        if key not in self._arrays:
            raise KeyError(f"store has no feature {key!r} (features: {', '.join(self.features)})")
        return _CheckedArray(self, key)

    def read(self, key: str, cache: bool = True) -> np.ndarray:
        """All committed steps of one feature as numpy (cached in memory when `cache`)."""
        if key in self._cache:
            return self._cache[key]
        self.array(key)
        out = self._read_steps(key, 0, self.num_steps)
        if cache:
            self._cache[key] = out
        return out

    def get_episode(self, index: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One committed episode's per-step arrays."""
        n = self.num_episodes
        if not -n <= index < n:
            raise IndexError(f"episode {index} out of range (store has {n})")
        index %= n
        start = int(self._ends[index - 1]) if index > 0 else 0
        end = int(self._ends[index])
        keys = list(self.features) if keys is None else list(keys)
        out = {}
        for key in keys:
            if key in self._cache:
                out[key] = self._cache[key][start:end]
            else:
                self.array(key)
                out[key] = self._read_steps(key, start, end)
        return out

    def episodes(self, keys: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self.num_episodes):
            yield self.get_episode(i, keys)

    def column(self, name: str) -> np.ndarray:
        """A per-episode column over the committed episodes."""
        if name not in self._columns:
            raise KeyError(f"unknown episode column {name!r} (columns: {', '.join(EPISODE_COLUMNS)})")
        try:
            values = self._columns[name][: self.num_episodes]
        except (OSError, MemoryError):
            raise
        except Exception as exc:
            raise StoreIntegrityError(f"{self.path}: meta/{name} cannot be read ({_short(exc)}): run `robolearn data verify {self.path}`") from None
        return np.asarray(values).astype(object) if EPISODE_COLUMNS[name][0] is str else np.asarray(values)

    def episode_table(self) -> dict[str, np.ndarray]:
        return {name: self.column(name) for name in EPISODE_COLUMNS}

    def episode_metadata(self, index: int) -> dict[str, Any]:
        raw = self.column("metadata")[index]
        return json.loads(raw) if raw else {}

    def mask_names(self) -> list[str]:
        return sorted(self._group["masks"].array_keys()) if "masks" in self._group else []

    def mask(self, name: str) -> np.ndarray:
        """Named boolean episode mask (episodes appended after it was written count as False)."""
        if name not in self.mask_names():
            raise KeyError(f"store has no mask {name!r} (masks: {', '.join(self.mask_names()) or 'none'})")
        try:
            values = np.asarray(self._group[f"masks/{name}"][:], dtype=bool)[: self.num_episodes]
        except (OSError, MemoryError):
            raise
        except Exception as exc:
            raise StoreIntegrityError(f"{self.path}: masks/{name} cannot be read ({_short(exc)}): run `robolearn data verify {self.path}`") from None
        out = np.zeros(self.num_episodes, dtype=bool)
        out[: len(values)] = values
        return out

    @property
    def masks(self) -> dict[str, np.ndarray]:
        return {name: self.mask(name) for name in self.mask_names()}

    def source_counts(self) -> dict[str, int]:
        codes = self.read("source", cache=False)
        counts = np.bincount(codes, minlength=len(SOURCES)) if len(codes) else np.zeros(len(SOURCES), int)
        return {name: int(counts[i]) for i, name in enumerate(SOURCES)}

    def select(
        self,
        source: str | Sequence[str] | None = None,
        success: bool | None = None,
        task: str | None = None,
        mask: str | Sequence[str] | None = None,
    ) -> np.ndarray:
        """Episode indices matching every given filter.

        `source`: episodes holding at least one step of the given source(s). `mask`: episodes in
        every named mask (robomimic filter keys).
        """
        keep = np.ones(self.num_episodes, dtype=bool)
        if source is not None:
            names = [source] if isinstance(source, str) else list(source)
            codes = encode_source(names, len(names))
            step_codes = self.read("source", cache=False)
            hit = np.isin(step_codes, codes).astype(np.int64)
            csum = np.concatenate([[0], np.cumsum(hit)])
            keep &= (csum[self._ends] - csum[self.episode_starts]) > 0
        if success is not None:
            keep &= self.column("success").astype(bool) == bool(success)
        if task is not None:
            keep &= self.column("task") == task
        if mask is not None:
            for name in [mask] if isinstance(mask, str) else mask:
                keep &= self.mask(name)
        return np.flatnonzero(keep)

    # ------------------------------------------------------------------ writing
    def _require_writer(self) -> None:
        if self.mode != "a" or self._lock_fd is None:
            raise StoreError(f"{self.path} is open read-only; open it with mode='a' to write")
        if isinstance(self._lock_fd, RemoteLock):
            self._lock_fd.renew()

    def _validate_steps(self, steps: dict[str, Any]) -> tuple[dict[str, np.ndarray], int]:
        if "action" not in steps:
            raise StoreError("episode is missing required key 'action'")
        length = len(np.asarray(steps["action"]))
        if length == 0:
            raise StoreError("episode has no steps")
        unknown = sorted(set(steps) - set(self.features))
        if unknown:
            raise StoreError(f"episode has key(s) {', '.join(unknown)} not in the store's features ({', '.join(self.features)})")
        defaults: dict[str, Any] = {
            "reward": np.zeros(length, np.float32),
            "done": np.zeros(length, bool),
            "source": "demo",
            "stage": np.full(length, -1, np.int32),
        }
        arrays: dict[str, np.ndarray] = {}
        for key, feat in self.features.items():
            if key in steps:
                value = steps[key]
            elif key in defaults:
                value = defaults[key]
            elif feat.role == "sim_state" or feat.role == "aux":
                # optional columns: absent -> fill (NaN for floats, -1 for ints, False for bools)
                dt = np.dtype(feat.dtype)
                fill = np.nan if dt.kind == "f" else (False if dt.kind == "b" else -1)
                value = np.full((length, *feat.shape), fill, dtype=dt)
            else:
                raise StoreError(f"episode is missing key {key!r}")
            if key == "source":
                value = encode_source(value, length)
            arr = np.asarray(value)
            if arr.shape != (length, *feat.shape):
                raise StoreError(
                    f"'{key}' has shape {arr.shape}, expected {(length, *feat.shape)} "
                    f"({length} steps of {feat.shape})"
                )
            want = np.dtype(feat.dtype)
            if arr.dtype != want:
                if not np.can_cast(arr.dtype, want, casting="same_kind") or (want.kind in "iub" and arr.dtype.kind == "f"):
                    raise StoreError(f"'{key}' has dtype {arr.dtype}, the store expects {want}")
                arr = arr.astype(want)
            arrays[key] = arr
        return arrays, length

    def append_episode(
        self,
        steps: dict[str, Any],
        success: bool = False,
        collector: str = "",
        task: str | None = None,
        seed: int = -1,
        metadata: dict[str, Any] | None = None,
        intervention_count: int | None = None,
    ) -> int:
        """Validate then commit one episode; returns its index. Nothing is written on bad input."""
        self._require_writer()
        arrays, length = self._validate_steps(steps)
        try:
            meta_json = json.dumps(metadata or {})
        except TypeError as exc:
            raise StoreError(f"episode metadata is not JSON-serialisable: {exc}") from None
        if intervention_count is None:
            src = arrays["source"]
            starts = (src == SOURCE_CODES["recovery"]) | (src == SOURCE_CODES["correction"])
            prev = np.concatenate([[False], starts[:-1]])
            intervention_count = int(np.sum(starts & ~prev))
        row = {
            "length": length,
            "success": bool(success),
            "return": float(np.sum(arrays["reward"], dtype=np.float64)),
            "collector": str(collector),
            "task": self.task if task is None else str(task),
            "seed": int(seed),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "intervention_count": int(intervention_count),
            "metadata": meta_json,
        }
        n_ep = self.num_episodes
        n_steps = self.num_steps
        # 0) an explicit "not committed" marker: whatever follows is provably uncommitted until 3)
        if self._ends_array.shape[0] != n_ep + 1:
            self._ends_array.resize((n_ep + 1,))
        self._ends_array[n_ep] = UNCOMMITTED
        # 1) per-step data (beyond the committed prefix: invisible until step 3)
        for key, arr in arrays.items():
            zarr_arr = self._arrays[key]
            if zarr_arr.shape[0] != n_steps:  # a failed earlier append in this process
                zarr_arr.resize((n_steps, *zarr_arr.shape[1:]))
            zarr_arr.append(arr, axis=0)
        # 2) per-episode columns
        for name, value in row.items():
            col = self._columns[name]
            if col.shape[0] != n_ep:
                col.resize((n_ep,))
            if EPISODE_COLUMNS[name][0] is str:
                col.append(np.array([value], dtype=str))
            else:
                col.append(np.array([value], dtype=EPISODE_COLUMNS[name][0]))
        # 3) commit: one chunk write replaces the marker with the episode's end
        self._ends_array[n_ep] = n_steps + length
        self._ends = np.concatenate([self._ends, [n_steps + length]]).astype(np.int64)
        self._raw_ends = self._ends
        self._cache.clear()
        return n_ep

    @contextmanager
    def writer(self, collector: str = "", seed: int = -1, task: str | None = None) -> Iterator["EpisodeWriter"]:
        """Step-wise episode recording; nothing is stored unless `.commit()` is called."""
        self._require_writer()
        yield EpisodeWriter(self, collector=collector, seed=seed, task=task)

    def _mask_values(self, name: str, episodes: np.ndarray | Sequence[int] | Sequence[bool]) -> np.ndarray:
        if not name or "/" in name or name.startswith("."):
            raise StoreError(f"bad mask name {name!r}")
        values = np.asarray(episodes)
        if values.dtype == bool:
            if values.shape != (self.num_episodes,):
                raise StoreError(f"mask {name!r} has {values.shape[0]} entries for {self.num_episodes} episodes")
            return values
        mask = np.zeros(self.num_episodes, dtype=bool)
        idx = values.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_episodes):
            raise StoreError(f"mask {name!r} names episodes outside [0, {self.num_episodes})")
        mask[idx] = True
        return mask

    def set_mask(self, name: str, episodes: np.ndarray | Sequence[int] | Sequence[bool]) -> None:
        """Write a named episode mask from a boolean array or a list of episode indices."""
        self.set_masks({name: episodes})

    def set_masks(self, masks: dict[str, Any]) -> None:
        """Write several masks as one atomic update (all or none become visible)."""
        self._require_writer()
        values = {name: self._mask_values(name, v) for name, v in masks.items()}
        self._rewrite_masks(values, ())

    def delete_mask(self, name: str) -> None:
        self._require_writer()
        if name not in self.mask_names():
            raise KeyError(f"store has no mask {name!r}")
        self._rewrite_masks({}, (name,))

    def _rewrite_masks(self, update: dict[str, np.ndarray], delete: Sequence[str]) -> None:
        """Build the new `masks/` group next to the old one, then exchange them in one rename."""
        if is_remote(self.path):
            for name in delete:
                del self._group[f"masks/{name}"]
            for name, mask in update.items():
                arr = self._group.create_array(f"masks/{name}", shape=(len(mask),), chunks=(_META_CHUNK,), dtype="bool",
                                               fill_value=False, compressors=_compressors(),
                                               config={"write_empty_chunks": True}, overwrite=True)
                if len(mask):
                    arr[:] = mask
            self._verified_chunks = {k: v for k, v in self._verified_chunks.items() if not k.startswith("masks/")}
            return
        zarr = _zarr()
        pending = self.path / _MASKS_PENDING
        remove_tree(pending)
        try:
            group = zarr.open_group(str(pending), mode="w-")
            current = {name: np.asarray(self._group[f"masks/{name}"][:], bool) for name in self.mask_names()
                       if name not in update and name not in delete}
            for name, mask in {**current, **update}.items():
                arr = group.create_array(name, shape=(len(mask),), chunks=(_META_CHUNK,), dtype="bool", fill_value=False,
                                         compressors=_compressors(), config={"write_empty_chunks": True})
                if len(mask):
                    arr[:] = mask
            target = self.path / "masks"
            if target.is_dir():
                swap_dirs(pending, target)
            else:
                os.rename(pending, target)
        finally:
            remove_tree(pending)
        self._verified_chunks = {k: v for k, v in self._verified_chunks.items() if not k.startswith("masks/")}

    def set_attr(self, key: str, value: Any) -> None:
        """Store a JSON value in the root attributes (e.g. normalization stats)."""
        self._require_writer()
        if key in ("schema_version", "format", "features", "sources"):
            raise StoreError(f"root attribute {key!r} is managed by the store")
        self._group.attrs[key] = value

    def drop_episodes(self, indices: Sequence[int]) -> None:
        """Remove episodes by rewriting the store next to itself and swapping it in."""
        self._require_writer()
        if is_remote(self.path):
            raise StoreError(f"{self.path}: dropping episodes rewrites the store next to itself, which needs a local "
                             "directory; filter it into a new store instead")
        drop = set(int(i) % max(self.num_episodes, 1) for i in indices)
        keep = [i for i in range(self.num_episodes) if i not in drop]
        tmp_path = temp_sibling(self.path, "rewrite")
        try:
            dst = copy_store(self, tmp_path, keep)
            dst.close()
            if (self.path / QUARANTINE_DIR).is_dir():  # what repair moved aside stays with the store
                shutil.copytree(self.path / QUARANTINE_DIR, tmp_path / QUARANTINE_DIR)
            swap_dirs(tmp_path, self.path)
        finally:
            remove_tree(tmp_path)
        # re-point this handle at the new directory, keeping the lock semantics
        self.close()
        fresh = EpisodeStore.open(self.path, mode="a")
        self.__dict__.update(fresh.__dict__)
        fresh._lock_fd = None  # ownership moved to self

    # ------------------------------------------------------------------ raw access (verify/repair)
    def _raw_rows(self, index: int) -> dict[str, Any]:
        """One raw row of every per-episode column (None where unreadable)."""
        row: dict[str, Any] = {}
        for name, col in self._columns.items():
            try:
                value = col[index] if index < col.shape[0] else None
                row[name] = value.item() if hasattr(value, "item") else (str(value) if value is not None else None)
            except OSError:
                raise
            except Exception:
                row[name] = None
        return row


class _CheckedArray:
    """A store array whose failed reads name the array and the episodes they touch."""

    def __init__(self, store: EpisodeStore, key: str) -> None:
        self._store = store
        self._key = key
        self._array = store._arrays[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._array, name)

    def __len__(self) -> int:
        return int(self._array.shape[0])

    def __getitem__(self, index: Any) -> Any:
        try:
            return self._array[index]
        except (OSError, KeyError, IndexError, MemoryError):
            raise
        except Exception as exc:
            lo, hi = 0, int(self._array.shape[0])
            first = index[0] if isinstance(index, tuple) and index else index
            if isinstance(first, slice):
                lo, hi, _ = first.indices(hi)
            raise self._store._integrity_error(self._key, lo, max(hi, lo + 1), exc) from None


class EpisodeWriter:
    """Accumulates one episode's steps in memory and commits them in one append."""

    def __init__(self, store: EpisodeStore, collector: str, seed: int, task: str | None) -> None:
        self.store = store
        self.collector = collector
        self.seed = seed
        self.task = task
        self._steps: dict[str, list[Any]] = {}
        self.committed: int | None = None

    def __len__(self) -> int:
        return len(self._steps.get("action", []))

    def add(
        self,
        obs: dict[str, Any],
        action: Any,
        reward: float = 0.0,
        done: bool = False,
        source: str = "demo",
        stage: int = -1,
        extra: dict[str, Any] | None = None,
    ) -> None:
        row: dict[str, Any] = {f"obs/{k}": v for k, v in obs.items()}
        row.update(action=action, reward=reward, done=done, source=source, stage=stage)
        row.update(extra or {})
        for key, value in row.items():
            self._steps.setdefault(key, []).append(value)

    def discard(self) -> None:
        """Forget the steps recorded so far (re-record)."""
        self._steps.clear()

    def commit(self, success: bool, metadata: dict[str, Any] | None = None, intervention_count: int | None = None) -> int:
        steps = {k: (np.asarray(v) if k != "source" else list(v)) for k, v in self._steps.items()}
        self.committed = self.store.append_episode(
            steps,
            success=success,
            collector=self.collector,
            task=self.task,
            seed=self.seed,
            metadata=metadata,
            intervention_count=intervention_count,
        )
        self._steps.clear()
        return self.committed


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def direct_chunk_reader(array: Any) -> Any:
    """A reader decoding chunk c of a local store array straight into a buffer (file read, crc32c
    check, one blosc call), or None for layouts it does not know (then read through zarr).

    zarr's own path costs ~0.6 ms of Python per chunk, many times the decode of an image chunk. A
    missing chunk or a checksum mismatch raises StoreIntegrityError, never fills zeros.
    """
    try:
        import sys

        import google_crc32c
        from numcodecs import blosc
        from zarr.storage import LocalStore

        meta = array.metadata
        names = [c.to_dict()["name"] for c in meta.codecs]
        if not isinstance(array.store, LocalStore) or getattr(meta, "zarr_format", 2) != 3:
            return None
        if names not in (["bytes", "blosc"], ["bytes", "blosc", "crc32c"]):
            return None
        bytes_cfg = meta.codecs[0].to_dict().get("configuration") or {}
        if np.dtype(array.dtype).itemsize > 1 and bytes_cfg.get("endian", "little") != sys.byteorder:
            return None
        root = Path(str(array.store.root)) / array.path
        checked = names[-1] == "crc32c"
        tail = (0,) * (len(array.shape) - 1)
        chunk = int(array.chunks[0])
    except Exception:  # any other zarr layout or version: the generic path
        return None

    def read(c: int, dest: np.ndarray) -> None:
        path = root / meta.encode_chunk_key((c, *tail))
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise StoreIntegrityError(f"{array.path} chunk {c} (steps {c * chunk}..{(c + 1) * chunk - 1}) is missing: "
                                      f"run `robolearn data verify`") from None
        if checked:
            body, stored = raw[:-4], raw[-4:]
            if len(raw) < 4 or np.uint32(google_crc32c.value(body)).tobytes() != stored:
                raise StoreIntegrityError(f"{array.path} chunk {c} (steps {c * chunk}..{(c + 1) * chunk - 1}) fails its "
                                          f"crc32c checksum: run `robolearn data verify`")
            raw = body
        try:
            blosc.decompress(raw, dest)
        except Exception as exc:
            raise StoreIntegrityError(f"{array.path} chunk {c} cannot be decoded ({_short(exc)}): run `robolearn data verify`") from None

    return read


def _recover_masks(path: Path) -> None:
    """Before a writer opens: a pending masks group is an unfinished update, never visible."""
    pending = path / _MASKS_PENDING
    if pending.exists():
        if not (path / "masks").exists():
            return  # cannot happen with an atomic exchange; leave it for `repair` to look at
        remove_tree(pending)


def copy_store(
    src: EpisodeStore,
    dst_path: str | Path,
    episodes: Sequence[int] | None = None,
    dst: EpisodeStore | None = None,
) -> EpisodeStore:
    """Copy (a subset of) `src`'s episodes, columns and masks into a new store or `dst`."""
    episodes = list(range(src.num_episodes)) if episodes is None else [int(i) for i in episodes]
    if dst is None:
        dst = _empty_like(src, dst_path)
    elif dst.features != src.features:
        raise StoreError(
            f"cannot combine {src.path} with {dst.path}: features differ "
            f"({sorted(src.features)} vs {sorted(dst.features)})"
        )
    table = src.episode_table()
    first_new = dst.num_episodes
    for i in episodes:
        ep = src.get_episode(i)
        dst.append_episode(
            ep,
            success=bool(table["success"][i]),
            collector=str(table["collector"][i]),
            task=str(table["task"][i]),
            seed=int(table["seed"][i]),
            metadata=json.loads(table["metadata"][i]) if table["metadata"][i] else None,
            intervention_count=int(table["intervention_count"][i]),
        )
    # carry masks over, aligned to the copied episodes
    update = {}
    for name in src.mask_names():
        src_mask = src.mask(name)[episodes] if episodes else np.zeros(0, bool)
        old = dst.mask(name) if name in dst.mask_names() else np.zeros(first_new, dtype=bool)
        update[name] = np.concatenate([old[:first_new], src_mask]).astype(bool)
    if update:
        dst.set_masks(update)
    return dst


def _empty_like(src: EpisodeStore, path: str | Path) -> EpisodeStore:
    """A new store with `src`'s features, task and user attributes, opened for writing."""
    dst = EpisodeStore.create(path, dict(src.features), task=src.task, env_kwargs=src.env_kwargs,
                              control_period=src.control_period)
    for key, value in src.attrs.items():
        if key not in ("schema_version", "format", "features", "sources", "task", "env_kwargs", "control_period", "robolearn_version"):
            dst.set_attr(key, value)
    return dst


def merge_stores(out: str | Path, inputs: Sequence[str | Path]) -> EpisodeStore:
    """Concatenate stores with identical features into a new store at `out` (atomically: a
    failure leaves nothing at `out`)."""
    if not inputs:
        raise StoreError("merge needs at least one input store")
    out = Path(out)
    sources = [EpisodeStore.open(p, mode="r") for p in inputs]
    first = sources[0]
    for other in sources[1:]:
        if other.features != first.features:
            raise StoreError(f"cannot merge {other.path} into {first.path}: features differ")
    with staged_output(out, inputs) as tmp:
        dst = copy_store(first, tmp)
        for other in sources[1:]:
            copy_store(other, tmp, dst=dst)
        tasks = sorted({s.task for s in sources})
        if len(tasks) > 1:
            dst.set_attr("task", ",".join(tasks))
        dst.close()
    return EpisodeStore.open(out, mode="a")


# --------------------------------------------------------------------------- verify / repair
def _analyze(store: EpisodeStore, checksums: bool = True) -> dict[str, Any]:
    """Everything verify and repair need: per-record validity, chunk damage, the uncommitted tail."""
    records = store.records
    _, commit_damage = store._commit_records(store._raw_ends)
    starts = np.array([r.start for r in records], np.int64)
    ends = np.array([r.end for r in records], np.int64)
    good_ends = [r.end for r in records if r.good]
    n_steps = max(good_ends) if good_ends else 0
    n_ep = len(records)
    damage = list(commit_damage)
    damage += store._missing_chunks(starts, ends, n_steps, n_ep, stop_at_first=False)
    if checksums:
        missing = {(d.array, d.chunk) for d in damage if d.kind == "missing_chunk"}
        damage += [d for d in store._scan_chunks(starts, ends, n_steps, n_ep) if (d.array, d.chunk) not in missing]
    damaged = sorted({e for d in damage for e in d.episodes} | {r.index for r in records if not r.good})
    data_len = min((int(a.shape[0]) for a in store._arrays.values()), default=0)
    tail_steps = max(0, max((int(a.shape[0]) for a in store._arrays.values()), default=0) - n_steps)
    tail_rows = max(0, max(int(c.shape[0]) for c in store._columns.values()) - n_ep)
    return {
        "records": records,
        "damage": damage,
        "damaged": damaged,
        "n_steps": n_steps,
        "data_len": data_len,
        "uncommitted": {"steps": tail_steps, "column_rows": tail_rows, "marker": bool(store._pending_marker)},
    }


def list_quarantine(path: str | Path) -> list[dict[str, Any]]:
    """What `repair` moved aside in this store (one manifest per repair)."""
    qdir = Path(path) / QUARANTINE_DIR
    out = []
    if qdir.is_dir():
        for manifest in sorted(qdir.glob("*/manifest.json")):
            try:
                data = json.loads(manifest.read_text())
            except (OSError, ValueError):
                data = {"error": "unreadable manifest"}
            data["dir"] = str(manifest.parent)
            out.append(data)
    return out


def verify_store(path: str | Path) -> dict[str, Any]:
    """Full scan: every committed episode readable, records consistent, checksums match.

    Returns a report with `ok`, `problems` (one line each), `damaged_episodes`, the uncommitted
    tail a killed writer left (not damage: a writer trims it), and the quarantine contents.
    """
    store = EpisodeStore.open(path, mode="r", check=False)
    found = _analyze(store, checksums=True)
    n = len(found["records"])
    return {
        "path": str(store.path),
        "ok": not found["damage"],
        "episodes": n,
        "healthy_episodes": n - len(found["damaged"]),
        "steps": found["n_steps"],
        "checksummed": store.checksummed,
        "problems": [d.line() for d in found["damage"]],
        "damage": [d.to_json() for d in found["damage"]],
        "damaged_episodes": found["damaged"],
        "uncommitted": found["uncommitted"],
        "quarantine": list_quarantine(store.path),
    }


def _save_range(store: EpisodeStore, key: str, lo: int, hi: int, qdir: Path, moved: list[str]) -> None:
    """Save steps [lo, hi) of one array into the quarantine, chunk by chunk; a chunk that cannot
    be decoded is moved there as its raw file instead."""
    arr = store._arrays[key]
    chunk = int(arr.chunks[0])
    root = _store_root(store._group)
    out_dir = qdir / "steps" / key
    for c in range(lo // chunk, -(-hi // chunk)):
        a, b = max(lo, c * chunk), min(hi, (c + 1) * chunk, int(arr.shape[0]))
        if a >= b:
            continue
        src = _chunk_file(root, arr, c)
        if not src.is_file():
            continue
        try:
            values = np.asarray(arr[a:b])
        except OSError:
            raise
        except Exception:
            rel = src.relative_to(root)
            dst = qdir / "chunks" / rel
            if not dst.exists():
                _move_into(src, dst)
                moved.append(str(rel))
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / f"{a:012d}-{b:012d}.npy", values)


def repair_store(path: str | Path) -> dict[str, Any]:
    """Move unreadable, inconsistent and uncommitted pieces into `STORE/quarantine/<time>/`.

    Nothing is deleted: healthy episodes stay (rewritten into a fresh store swapped in with one
    atomic exchange when damage sits between them); every step outside them is saved as .npy
    files by array and step range, chunks that cannot be decoded are moved there byte for byte,
    the original commit records and columns are kept, and `manifest.json` lists it all.
    """
    if is_remote(store_location(path)):
        raise StoreError(f"{path}: repair moves damaged pieces aside with renames, which needs a local store; "
                         "copy the store to local disk, repair it there and copy it back")
    path = Path(path)
    store = EpisodeStore.open(path, mode="a", check=False)
    try:
        found = _analyze(store, checksums=True)
        damaged = set(found["damaged"])
        keep = [r for r in found["records"] if r.good and r.index not in damaged]
        unc = found["uncommitted"]
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + f"-{uuid.uuid4().hex[:6]}"
        data_end = max((int(a.shape[0]) for a in store._arrays.values()), default=0)
        kept_ranges = [(r.start, r.end) for r in keep]
        outside: list[tuple[int, int]] = []
        pos = 0
        for a, b in kept_ranges + [(data_end, data_end)]:
            if a > pos:
                outside.append((pos, a))
            pos = max(pos, b)
        quarantined = [{"episode": r.index, "reason": next((d.line() for d in found["damage"] if r.index in d.episodes), "inconsistent commit record"),
                        "steps": [r.start, r.end], "columns": store._raw_rows(r.index)}
                       for r in found["records"] if r.index in damaged or not r.good]
        n_rows = max(int(c.shape[0]) for c in store._columns.values())
        tail_rows = [{"row": i, "columns": store._raw_rows(i)} for i in range(len(found["records"]), n_rows)]
        manifest: dict[str, Any] = {
            "repaired": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "problems": [d.line() for d in found["damage"]],
            "episodes_before": len(found["records"]),
            "episodes_kept": len(keep),
            "quarantined_episodes": quarantined,
            "uncommitted_column_rows": tail_rows,
            "step_ranges": [list(r) for r in outside],
            "moved_chunks": [],
        }
        if not found["damage"] and not outside and not tail_rows and not unc["marker"]:
            return {"path": str(path), "changed": False, "manifest": None, "kept": len(keep), "quarantined": 0}
        if not found["damage"]:
            # only a killed writer's tail: save it, then trim in place
            qdir = path / QUARANTINE_DIR / stamp
            qdir.mkdir(parents=True)
            for key in store._arrays:
                for a, b in outside:
                    _save_range(store, key, a, b, qdir, manifest["moved_chunks"])
            (qdir / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
            store._ends = np.asarray([r.end for r in keep], np.int64)
            store._trim_uncommitted()
            return {"path": str(path), "changed": True, "manifest": str(qdir / "manifest.json"), "kept": len(keep),
                    "quarantined": 0, "uncommitted_steps": unc["steps"]}
        tmp = temp_sibling(path, "repair")
        try:
            dst = _empty_like(store, tmp)
            _copy_episodes(store, dst, keep)
            masks = {}
            for name in store.mask_names():
                try:
                    raw = np.asarray(store._group[f"masks/{name}"][:], bool)
                except Exception:
                    manifest.setdefault("unreadable_masks", []).append(name)
                    continue
                masks[name] = np.array([bool(raw[r.index]) if r.index < len(raw) else False for r in keep], bool)
                manifest.setdefault("masks_before", {})[name] = [int(i) for i in np.flatnonzero(raw)]
            if masks:
                dst.set_masks(masks)
            dst.close()
            if (path / QUARANTINE_DIR).is_dir():
                shutil.copytree(path / QUARANTINE_DIR, tmp / QUARANTINE_DIR)
            qdir = tmp / QUARANTINE_DIR / stamp
            qdir.mkdir(parents=True)
            for key in store._arrays:
                for a, b in outside:
                    _save_range(store, key, a, b, qdir, manifest["moved_chunks"])
            shutil.copytree(path / "meta", qdir / "original_meta")  # the commit records as they were
            (qdir / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
            swap_dirs(tmp, path)  # tmp now holds the old directory; everything of value was carried over
        finally:
            remove_tree(tmp)
        return {"path": str(path), "changed": True, "manifest": str(path / QUARANTINE_DIR / stamp / "manifest.json"),
                "kept": len(keep), "quarantined": len(quarantined), "uncommitted_steps": unc["steps"]}
    finally:
        store.close()


def _copy_episodes(store: EpisodeStore, dst: EpisodeStore, records: list) -> None:
    """Append the given episodes (commit records) of `store` to `dst`, steps and episode columns."""
    for r in records:
        steps = {key: np.asarray(store._arrays[key][r.start : r.end]) for key in store.features}
        row = store._raw_rows(r.index)
        dst.append_episode(steps, success=bool(row["success"]), collector=str(row["collector"] or ""),
                           task=str(row["task"] or ""), seed=int(row["seed"] if row["seed"] is not None else -1),
                           metadata=json.loads(row["metadata"]) if row["metadata"] else None,
                           intervention_count=int(row["intervention_count"] or 0))


def _healthy_view(path: Path) -> EpisodeStore:
    """A read-only store of only the healthy episodes of a damaged store (a temporary copy)."""
    store = EpisodeStore.open(path, mode="r", check=False)
    found = _analyze(store, checksums=True)
    if not found["damage"]:
        return EpisodeStore.open(path, mode="r")
    damaged = set(found["damaged"])
    keep = [r for r in found["records"] if r.good and r.index not in damaged]
    if not keep:
        raise StoreIntegrityError(f"{path}: every episode is damaged ({found['damage'][0].line()})")
    tmpdir = Path(tempfile.mkdtemp(prefix="robolearn-healthy-"))
    try:
        dst = _empty_like(store, tmpdir / path.name)
        _copy_episodes(store, dst, keep)
        masks = {}
        for name in store.mask_names():
            raw = np.asarray(store._group[f"masks/{name}"][:], bool)
            masks[name] = np.array([bool(raw[r.index]) if r.index < len(raw) else False for r in keep], bool)
        if masks:
            dst.set_masks(masks)
        dst.close()
        view = EpisodeStore.open(tmpdir / path.name, mode="r")
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    view.skipped_episodes = sorted(damaged | {r.index for r in found["records"] if not r.good})
    weakref.finalize(view, shutil.rmtree, str(tmpdir), True)
    return view
