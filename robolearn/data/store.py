"""The episode store: one zarr v3 directory per dataset, episode-major, crash safe.

Layout (see docs/design.md): per-step arrays under `data/` concatenated along time and chunked
along time only; per-episode columns under `meta/`; named boolean episode masks under `masks/`;
the schema and task in the root attributes.

Crash safety rests on two facts. zarr's LocalStore writes every chunk and metadata file
atomically (temporary file + rename), so a file is either old or new, never torn. And an
episode is written in a fixed order -- per-step arrays, then per-episode columns, then
`meta/episode_ends` -- so an episode exists exactly when its end is in `episode_ends`.
Readers trust only the valid prefix of `episode_ends`; the next writer truncates any tail a
killed writer left behind.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from robolearn import __version__
from robolearn.data.schema import STANDARD_FEATURES, Feature, features_from_json, features_to_json

SCHEMA_VERSION = 1
SOURCES: tuple[str, ...] = ("demo", "policy", "recovery", "correction")
SOURCE_CODES: dict[str, int] = {name: i for i, name in enumerate(SOURCES)}
LOCK_NAME = ".robolearn.lock"

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


class StoreError(ValueError):
    """A store that cannot be opened or an append that does not fit its schema."""


class StoreLockedError(StoreError):
    """Another process holds the store's single-writer lock."""


def _zarr():
    # zarr 3 warns about the (still draft) variable-length string dtype; it is what we want.
    import zarr

    warnings.filterwarnings("ignore", message=".*(StringDType|vlen-utf8|not part of the Zarr format 3).*")
    return zarr


def _compressor():
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


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


class EpisodeStore:
    """A dataset of episodes on disk. Create with `create`, open with `open`."""

    def __init__(self, path: Path, group: Any, mode: str, lock_fd: int | None) -> None:
        self.path = path
        self.mode = mode
        self._group = group
        self._lock_fd = lock_fd
        attrs = dict(group.attrs)
        self.features: dict[str, Feature] = features_from_json(attrs["features"])
        self._arrays: dict[str, Any] = {}
        self._columns: dict[str, Any] = {}
        self._ends_array: Any = None
        self._load_handles()

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
    ) -> "EpisodeStore":
        """Create an empty store (opened for appending) with the given per-step features.

        `reward`, `done`, `source` and `stage` are always present; pass others (obs/*, action,
        sim_state, extra labels) explicitly.
        """
        path = Path(path)
        if path.exists():
            if not overwrite:
                raise StoreError(f"{path} already exists (open it with mode='a' to append)")
            if not _is_store_dir(path):
                raise StoreError(f"refusing to overwrite {path}: it is not a robolearn episode store")
            shutil.rmtree(path)
        all_features = dict(features)
        for key, feat in STANDARD_FEATURES.items():
            all_features.setdefault(key, feat)
        for key in all_features:
            if not key or key.startswith("/") or ".." in key.split("/"):
                raise StoreError(f"bad feature key {key!r}")
        if not any(f.role == "action" for f in all_features.values()):
            raise StoreError("a store needs an 'action' feature")
        zarr = _zarr()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".creating")
        if tmp.exists():
            shutil.rmtree(tmp)
        group = zarr.open_group(str(tmp), mode="w")
        for key, feat in all_features.items():
            group.create_array(
                f"data/{key}",
                shape=(0, *feat.shape),
                chunks=(_chunk_len(feat.shape, np.dtype(feat.dtype)), *feat.shape),
                dtype=feat.dtype,
                compressors=_compressor(),
            )
        group.create_array("meta/episode_ends", shape=(0,), chunks=(4096,), dtype="int64", fill_value=-1)
        for name, (dtype, fill) in EPISODE_COLUMNS.items():
            group.create_array(f"meta/{name}", shape=(0,), chunks=(4096,), dtype=dtype, fill_value=fill)
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
        os.replace(tmp, path)  # the store appears whole or not at all
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "EpisodeStore":
        """Open an existing store read-only (`r`) or as its single writer (`a`)."""
        if mode not in ("r", "a"):
            raise StoreError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no episode store at {path}")
        if not _is_store_dir(path):
            raise StoreError(f"{path} is not a robolearn episode store (no zarr group with robolearn attributes)")
        zarr = _zarr()
        try:
            group = zarr.open_group(str(path), mode="r" if mode == "r" else "r+")
        except Exception as exc:  # zarr raises several types for unreadable metadata
            raise StoreError(f"{path} is not a readable zarr store: {exc}") from None
        attrs = dict(group.attrs)
        if attrs.get("format") != "robolearn.episode_store" or "features" not in attrs:
            raise StoreError(f"{path} is a zarr group but not a robolearn episode store")
        version = attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(f"{path} has schema version {version!r}; this robolearn reads version {SCHEMA_VERSION}")
        lock_fd = None
        if mode == "a":
            lock_fd = _acquire_lock(path)
        try:
            store = cls(path, group, mode, lock_fd)
            if mode == "a":
                store._repair()
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        return store

    def close(self) -> None:
        """Release the writer lock (readers hold none)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
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

    def _load_handles(self) -> None:
        g = self._group
        try:
            self._arrays = {key: g[f"data/{key}"] for key in self.features}
            self._columns = {name: g[f"meta/{name}"] for name in EPISODE_COLUMNS}
            self._ends_array = g["meta/episode_ends"]
        except KeyError as exc:
            raise StoreError(f"{self.path} is missing array {exc}; the store is damaged") from None
        self._ends = self._valid_ends()
        self._cache: dict[str, np.ndarray] = {}

    def refresh(self) -> None:
        """Re-read the committed prefix (a reader following a live writer calls this)."""
        self._group = _zarr().open_group(str(self.path), mode="r" if self.mode == "r" else "r+")
        self._load_handles()

    def _valid_ends(self) -> np.ndarray:
        """The longest prefix of episode_ends that is fully backed by data and columns."""
        ends = np.asarray(self._ends_array[:], dtype=np.int64)
        data_len = min((int(a.shape[0]) for a in self._arrays.values()), default=0)
        col_len = min(int(c.shape[0]) for c in self._columns.values())
        n = 0
        prev = 0
        for e in ends[: col_len]:
            if e <= prev or e > data_len:
                break
            prev = int(e)
            n += 1
        return ends[:n].copy()

    def _repair(self) -> None:
        """Writer-side: cut every array back to the committed prefix."""
        n_ep = len(self._ends)
        n_steps = int(self._ends[-1]) if n_ep else 0
        for arr in self._arrays.values():
            if arr.shape[0] != n_steps:
                arr.resize((n_steps, *arr.shape[1:]))
        for col in (*self._columns.values(), self._ends_array):
            if col.shape[0] != n_ep:
                col.resize((n_ep,))
        for name in self.mask_names():
            m = self._group[f"masks/{name}"]
            if m.shape[0] > n_ep:
                m.resize((n_ep,))
        for partial in self.path.rglob("*.partial"):
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

    def __len__(self) -> int:
        return self.num_episodes

    def __repr__(self) -> str:
        return f"EpisodeStore({str(self.path)!r}, episodes={self.num_episodes}, steps={self.num_steps}, mode={self.mode!r})"

    # ------------------------------------------------------------------ reading
    def array(self, key: str) -> Any:
        """The raw zarr array of a per-step feature (may hold an uncommitted tail: slice by ends)."""
        if key not in self._arrays:
            raise KeyError(f"store has no feature {key!r} (features: {', '.join(self.features)})")
        return self._arrays[key]

    def read(self, key: str, cache: bool = True) -> np.ndarray:
        """All committed steps of one feature as numpy (cached in memory when `cache`)."""
        if key in self._cache:
            return self._cache[key]
        out = np.asarray(self.array(key)[: self.num_steps])
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
                out[key] = np.asarray(self.array(key)[start:end])
        return out

    def episodes(self, keys: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self.num_episodes):
            yield self.get_episode(i, keys)

    def column(self, name: str) -> np.ndarray:
        """A per-episode column over the committed episodes."""
        if name not in self._columns:
            raise KeyError(f"unknown episode column {name!r} (columns: {', '.join(EPISODE_COLUMNS)})")
        values = self._columns[name][: self.num_episodes]
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
        values = np.asarray(self._group[f"masks/{name}"][:], dtype=bool)[: self.num_episodes]
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
        # 3) commit
        if self._ends_array.shape[0] != n_ep:
            self._ends_array.resize((n_ep,))
        self._ends_array.append(np.array([n_steps + length], dtype=np.int64))
        self._ends = np.concatenate([self._ends, [n_steps + length]]).astype(np.int64)
        self._cache.clear()
        return n_ep

    @contextmanager
    def writer(self, collector: str = "", seed: int = -1, task: str | None = None) -> Iterator["EpisodeWriter"]:
        """Step-wise episode recording; nothing is stored unless `.commit()` is called."""
        self._require_writer()
        yield EpisodeWriter(self, collector=collector, seed=seed, task=task)

    def set_mask(self, name: str, episodes: np.ndarray | Sequence[int] | Sequence[bool]) -> None:
        """Write a named episode mask from a boolean array or a list of episode indices."""
        self._require_writer()
        if not name or "/" in name:
            raise StoreError(f"bad mask name {name!r}")
        values = np.asarray(episodes)
        if values.dtype == bool:
            if values.shape != (self.num_episodes,):
                raise StoreError(f"mask {name!r} has {values.shape[0]} entries for {self.num_episodes} episodes")
            mask = values
        else:
            mask = np.zeros(self.num_episodes, dtype=bool)
            idx = values.astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= self.num_episodes):
                raise StoreError(f"mask {name!r} names episodes outside [0, {self.num_episodes})")
            mask[idx] = True
        key = f"masks/{name}"
        if key in self._group:
            arr = self._group[key]
            arr.resize((len(mask),))
            if len(mask):
                arr[:] = mask
        else:
            arr = self._group.create_array(key, shape=(len(mask),), chunks=(4096,), dtype="bool", fill_value=False)
            if len(mask):
                arr[:] = mask

    def delete_mask(self, name: str) -> None:
        self._require_writer()
        if name not in self.mask_names():
            raise KeyError(f"store has no mask {name!r}")
        del self._group[f"masks/{name}"]

    def set_attr(self, key: str, value: Any) -> None:
        """Store a JSON value in the root attributes (e.g. normalization stats)."""
        self._require_writer()
        if key in ("schema_version", "format", "features", "sources"):
            raise StoreError(f"root attribute {key!r} is managed by the store")
        self._group.attrs[key] = value

    def drop_episodes(self, indices: Sequence[int]) -> None:
        """Remove episodes by rewriting the store next to itself and swapping it in."""
        self._require_writer()
        drop = set(int(i) % max(self.num_episodes, 1) for i in indices)
        keep = [i for i in range(self.num_episodes) if i not in drop]
        tmp_path = self.path.with_name(self.path.name + ".rewrite")
        if tmp_path.exists():
            shutil.rmtree(tmp_path)
        dst = copy_store(self, tmp_path, keep)
        dst.close()
        old = self.path.with_name(self.path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(self.path, old)
        os.replace(tmp_path, self.path)
        shutil.rmtree(old)
        # re-point this handle at the new directory, keeping the lock semantics
        self.close()
        fresh = EpisodeStore.open(self.path, mode="a")
        self.__dict__.update(fresh.__dict__)
        fresh._lock_fd = None  # ownership moved to self


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


def _is_store_dir(path: Path) -> bool:
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return data.get("node_type") == "group"


def _acquire_lock(path: Path) -> int:
    """One writer at a time: an flock that the OS releases even when the writer is SIGKILLed."""
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(f"{path} is being written by another process (single writer); try again when it finishes") from None
    return fd


def copy_store(
    src: EpisodeStore,
    dst_path: str | Path,
    episodes: Sequence[int] | None = None,
    dst: EpisodeStore | None = None,
) -> EpisodeStore:
    """Copy (a subset of) `src`'s episodes, columns and masks into a new store or `dst`."""
    episodes = list(range(src.num_episodes)) if episodes is None else [int(i) for i in episodes]
    if dst is None:
        user_features = {k: f for k, f in src.features.items()}
        dst = EpisodeStore.create(
            dst_path,
            user_features,
            task=src.task,
            env_kwargs=src.env_kwargs,
            control_period=src.control_period,
        )
        for key, value in src.attrs.items():
            if key not in ("schema_version", "format", "features", "sources", "task", "env_kwargs", "control_period", "robolearn_version"):
                dst.set_attr(key, value)
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
    for name in src.mask_names():
        src_mask = src.mask(name)[episodes] if episodes else np.zeros(0, bool)
        old = dst.mask(name) if name in dst.mask_names() else np.zeros(first_new, dtype=bool)
        dst.set_mask(name, np.concatenate([old[:first_new], src_mask]).astype(bool))
    return dst


def merge_stores(out: str | Path, inputs: Sequence[str | Path]) -> EpisodeStore:
    """Concatenate stores with identical features into a new store at `out`."""
    if not inputs:
        raise StoreError("merge needs at least one input store")
    sources = [EpisodeStore.open(p, mode="r") for p in inputs]
    first = sources[0]
    for other in sources[1:]:
        if other.features != first.features:
            raise StoreError(f"cannot merge {other.path} into {first.path}: features differ")
    out = Path(out)
    dst = copy_store(first, out)
    for other in sources[1:]:
        copy_store(other, out, dst=dst)
    tasks = sorted({s.task for s in sources})
    if len(tasks) > 1:
        dst.set_attr("task", ",".join(tasks))
    return dst
