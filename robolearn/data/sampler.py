"""Sequence windows over an episode store, weighted sampling and episode splits.

A window is anchored at a step t of an episode: observations cover the To steps ending at t,
actions the T steps starting at t-To+1 (diffusion_policy's convention). Windows that reach past an
episode's edges repeat the edge step, and `pad_mask` marks which steps are real. Windows never
cross episodes because every index is clipped to its own episode.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from robolearn.data.store import EpisodeStore


def split_episodes(n_episodes: int, val_ratio: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split by episode; at least one training episode is kept."""
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_episodes)
    n_val = int(round(n_episodes * val_ratio))
    n_val = min(n_val, max(n_episodes - 1, 0))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def available_memory_bytes() -> int:
    """Memory the OS can give without swapping (MemAvailable), or half of physical memory where
    /proc/meminfo is missing."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _direct_chunk_reader(array: Any) -> Callable[[int, np.ndarray], None] | None:
    """The store's direct chunk decoder (file read, checksum, one blosc call), or None when the
    array's layout is not the plain one the store writes (then zarr reads it)."""
    from robolearn.data.store import direct_chunk_reader

    return direct_chunk_reader(array)


class _ChunkCache:
    """Decoded chunks of one lazily read array, held in a pool of chunk-sized slots.

    A batch's gather is one fancy index into the pool (`pool[slot_of[chunk], offset]`) however
    many chunks it touches; only chunks not yet in the pool are decoded (least recently used slots
    are reused when the pool is smaller than the array). Thread-safe: prefetch workers share it.
    """

    def __init__(self, array: Any, max_bytes: int) -> None:
        self.array = array
        self.chunk = int(array.chunks[0])
        self.item_shape = tuple(array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        self.n_chunks = max(1, -(-int(array.shape[0]) // self.chunk))
        chunk_bytes = self.chunk * int(np.prod(self.item_shape, dtype=np.int64)) * self.dtype.itemsize
        self.n_slots = int(max(1, min(self.n_chunks, max_bytes // max(chunk_bytes, 1))))
        # np.empty: pages are committed only as chunks land, so a generous size costs nothing upfront
        self.pool = np.empty((self.n_slots, self.chunk, *self.item_shape), dtype=self.dtype)
        self.slot_of = np.full(self.n_chunks, -1, np.int64)
        self.chunk_in = np.full(self.n_slots, -1, np.int64)
        self.last_used = np.zeros(self.n_slots, np.int64)
        self.clock = 0
        self.decoded = 0  # chunks decoded so far (misses)
        self._lock = threading.Lock()
        self._read = _direct_chunk_reader(array)

    @property
    def nbytes(self) -> int:
        return int(self.pool.nbytes)

    def _decode_into(self, c: int, slot: int) -> None:
        if self._read is not None:
            self._read(c, self.pool[slot])
            return
        data = np.asarray(self.array[c * self.chunk : (c + 1) * self.chunk])
        self.pool[slot, : len(data)] = data

    def load(self, chunks: np.ndarray) -> None:
        """Make sure the given (unique) chunks are in the pool; caller holds the lock."""
        self.clock += 1
        present = self.slot_of[chunks] >= 0
        self.last_used[self.slot_of[chunks[present]]] = self.clock
        missing = chunks[~present]
        if not len(missing):
            return
        # victims: free slots first (chunk_in -1, last_used 0), else the least recently used ones
        # that this batch does not need (its present chunks were just stamped with the clock)
        victims = np.argpartition(self.last_used, len(missing) - 1)[: len(missing)] if len(missing) < self.n_slots \
            else np.arange(self.n_slots)
        old = self.chunk_in[victims]
        self.slot_of[old[old >= 0]] = -1
        for c, slot in zip(missing.tolist(), victims.tolist()):
            self._decode_into(c, slot)
        self.slot_of[missing] = victims
        self.chunk_in[victims] = missing
        self.last_used[victims] = self.clock
        self.decoded += len(missing)

    def take(self, idx: np.ndarray) -> np.ndarray:
        flat = idx.reshape(-1)
        chunks = flat // self.chunk
        needed = np.unique(chunks)
        if len(needed) > self.n_slots:  # a pool smaller than one batch: decode per chunk, uncached
            out = np.empty((len(flat), *self.item_shape), dtype=self.dtype)
            for c in needed.tolist():
                sel = chunks == c
                out[sel] = np.asarray(self.array[c * self.chunk : (c + 1) * self.chunk])[flat[sel] - c * self.chunk]
            return out.reshape(*idx.shape, *self.item_shape)
        with self._lock:
            self.load(needed)
            out = self.pool[self.slot_of[chunks], flat - chunks * self.chunk]
        return out.reshape(*idx.shape, *self.item_shape)

    def warm(self, stop: threading.Event | None = None, group: int = 16) -> None:
        """Decode every chunk the pool can hold, in order, a group at a time (so batches that need
        other chunks wait at most one group): a background fill that turns a cold cache warm."""
        for lo in range(0, min(self.n_chunks, self.n_slots), group):
            if stop is not None and stop.is_set():
                return
            with self._lock:
                todo = np.arange(lo, min(lo + group, self.n_chunks, self.n_slots))
                todo = todo[self.slot_of[todo] < 0]
                if len(todo) and int((self.chunk_in < 0).sum()) >= len(todo):  # never evict to warm
                    self.load(todo)


class SequenceDataset(Dataset):
    """Fixed-length windows (To obs steps, T action steps) over chosen episodes of a store.

    Low-dimensional arrays are read once and kept in memory; arrays with more than
    `lazy_threshold` values per step (images) are read lazily through a chunk cache of
    `image_cache_bytes` (default: sized from the store, the decoded size of its lazy arrays, capped
    at half the memory available). Weights are per step (the anchor step's weight is the window's
    weight) and feed `WeightedWindowSampler`.
    """

    def __init__(
        self,
        store: EpisodeStore | str,
        obs_keys: Sequence[str],
        n_obs_steps: int = 2,
        horizon: int = 16,
        pad_before: int | None = None,
        pad_after: int | None = None,
        episodes: Sequence[int] | np.ndarray | None = None,
        step_weights: np.ndarray | None = None,
        action_key: str = "action",
        extra_keys: Sequence[str] = (),
        lazy_threshold: int = 4096,
        image_cache_bytes: int | None = None,
    ) -> None:
        if isinstance(store, str) or not isinstance(store, EpisodeStore):
            store = EpisodeStore.open(store, mode="r")
        if n_obs_steps < 1 or horizon < n_obs_steps:
            raise ValueError(f"need 1 <= n_obs_steps <= horizon, got To={n_obs_steps}, T={horizon}")
        self.store_path = str(store.path)
        self.n_obs_steps = int(n_obs_steps)
        self.horizon = int(horizon)
        self.pad_before = self.n_obs_steps - 1 if pad_before is None else int(pad_before)
        self.pad_after = self.horizon - self.n_obs_steps if pad_after is None else int(pad_after)
        self.obs_keys = [k if k.startswith("obs/") else f"obs/{k}" for k in obs_keys]
        self.action_key = action_key
        self.extra_keys = list(extra_keys)
        for key in [*self.obs_keys, action_key, *self.extra_keys]:
            if key not in store.features:
                raise KeyError(f"store {store.path} has no feature {key!r} (features: {', '.join(store.features)})")
        self.image_cache_bytes = image_cache_bytes

        ends = store.episode_ends
        starts = store.episode_starts
        all_eps = np.arange(store.num_episodes) if episodes is None else np.asarray(episodes, dtype=np.int64)
        if all_eps.size and (all_eps.min() < 0 or all_eps.max() >= store.num_episodes):
            raise IndexError(f"episode indices must lie in [0, {store.num_episodes})")
        self.episodes = all_eps

        # Window table: anchor-relative start (first obs step) and the episode bounds.
        win_start, ep_lo, ep_hi = [], [], []
        for e in all_eps:
            lo, hi = int(starts[e]), int(ends[e])
            length = hi - lo
            first = -self.pad_before
            last = length - self.horizon + self.pad_after  # inclusive
            if last < first:
                continue
            s = np.arange(first, last + 1, dtype=np.int64) + lo
            win_start.append(s)
            ep_lo.append(np.full_like(s, lo))
            ep_hi.append(np.full_like(s, hi))
        self.win_start = np.concatenate(win_start) if win_start else np.zeros(0, np.int64)
        self.ep_lo = np.concatenate(ep_lo) if ep_lo else np.zeros(0, np.int64)
        self.ep_hi = np.concatenate(ep_hi) if ep_hi else np.zeros(0, np.int64)

        n_steps = store.num_steps
        if step_weights is not None:
            step_weights = np.asarray(step_weights, dtype=np.float64)
            if step_weights.shape != (n_steps,):
                raise ValueError(f"step_weights has shape {step_weights.shape}, expected ({n_steps},)")
            if not np.all(np.isfinite(step_weights)) or np.any(step_weights < 0):
                raise ValueError("step_weights must be finite and non-negative")
        self.step_weights = step_weights
        anchor = np.clip(self.win_start + self.n_obs_steps - 1, self.ep_lo, self.ep_hi - 1)
        self.anchor = anchor
        self.window_weights = (
            step_weights[anchor].astype(np.float32) if step_weights is not None else np.ones(len(anchor), np.float32)
        )

        self._memory: dict[str, np.ndarray] = {}
        self._lazy_keys: list[str] = []
        for key in [*self.obs_keys, action_key, *self.extra_keys]:
            feat = store.features[key]
            per_step = int(np.prod(feat.shape, dtype=np.int64)) if feat.shape else 1
            if per_step > lazy_threshold:
                self._lazy_keys.append(key)
            else:
                self._memory[key] = store.read(key, cache=False)
        self._lazy: dict[str, _ChunkCache] | None = None
        self._lazy_lock = threading.Lock()
        self._warmer: threading.Thread | None = None
        self._stop_warm = threading.Event()
        if self.image_cache_bytes is None:
            decoded = sum(int(np.prod(store.array(k).shape, dtype=np.int64)) * np.dtype(store.array(k).dtype).itemsize
                          for k in self._lazy_keys)
            self.image_cache_bytes = int(min(decoded, available_memory_bytes() // 2))

    # Worker processes re-open lazily read arrays themselves.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_lazy=None, _lazy_lock=None, _warmer=None, _stop_warm=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lazy_lock, self._stop_warm = threading.Lock(), threading.Event()

    def _lazy_arrays(self) -> dict[str, _ChunkCache]:
        with self._lazy_lock:
            if self._lazy is None:
                store = EpisodeStore.open(self.store_path, mode="r")
                per_key = self.image_cache_bytes // max(len(self._lazy_keys), 1)
                self._lazy = {k: _ChunkCache(store.array(k), per_key) for k in self._lazy_keys}
            return self._lazy

    def warm_cache(self, background: bool = True) -> None:
        """Decode the lazily read arrays into the cache ahead of use (in a daemon thread unless
        `background` is False); batches asked for meanwhile decode what they miss themselves."""
        if not self._lazy_keys or self._warmer is not None:
            return
        caches = list(self._lazy_arrays().values())

        def fill() -> None:
            for cache in caches:
                cache.warm(self._stop_warm)

        if not background:
            fill()
            return
        self._warmer = threading.Thread(target=fill, name="robolearn-cache-warm", daemon=True)
        self._warmer.start()

    def close(self) -> None:
        """Stop a background cache fill (the cache itself is freed with the dataset)."""
        self._stop_warm.set()
        if self._warmer is not None:
            self._warmer.join()

    def __len__(self) -> int:
        return len(self.win_start)

    def _indices(self, windows: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        raw = self.win_start[windows, None] + np.arange(length)[None]
        lo = self.ep_lo[windows, None]
        hi = self.ep_hi[windows, None]
        return np.clip(raw, lo, hi - 1), (raw >= lo) & (raw < hi)

    def _take(self, key: str, idx: np.ndarray) -> np.ndarray:
        if key in self._memory:
            return self._memory[key][idx]
        return self._lazy_arrays()[key].take(idx)

    def get_batch(self, windows: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """Vectorised gather of many windows (numpy); the fast path for training loops."""
        windows = np.asarray(windows, dtype=np.int64)
        act_idx, pad_mask = self._indices(windows, self.horizon)
        obs_idx = act_idx[:, : self.n_obs_steps]  # observations are the window's first To steps
        batch: dict[str, Any] = {
            "obs": {k[4:]: self._take(k, obs_idx) for k in self.obs_keys},
            "action": self._take(self.action_key, act_idx),
            "pad_mask": pad_mask,
            "weight": self.window_weights[windows],
            "index": windows,
        }
        for key in self.extra_keys:
            batch[key] = self._take(key, act_idx)
        return batch

    def __getitem__(self, i: int) -> dict[str, Any]:
        batch = self.get_batch(np.array([i]))
        return _to_torch(_squeeze0(batch))

    def torch_batch(self, windows: Sequence[int] | np.ndarray, device: str | torch.device = "cpu") -> dict[str, Any]:
        return _to_torch(self.get_batch(windows), device)


def _squeeze0(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _squeeze0(v) for k, v in tree.items()}
    return tree[0]


def _to_torch(tree: Any, device: str | torch.device = "cpu") -> Any:
    if isinstance(tree, dict):
        return {k: _to_torch(v, device) for k, v in tree.items()}
    return torch.as_tensor(np.asarray(tree)).to(device)


class WeightedWindowSampler(Sampler[int]):
    """Draws window indices with probability proportional to `weights`, with replacement.

    Seeded and checkpointable: `state_dict()` captures the generator and the position within the
    current epoch so a resumed run draws exactly the same indices.
    """

    def __init__(self, weights: np.ndarray, num_samples: int | None = None, seed: int = 0, replacement: bool = True) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or len(w) == 0:
            raise ValueError("weights must be a non-empty 1-D array")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        self.probs = w / w.sum()
        self.num_samples = int(num_samples or len(w))
        self.replacement = replacement
        if not replacement and self.num_samples > int(np.count_nonzero(w)):
            raise ValueError("without replacement, num_samples cannot exceed the number of non-zero weights")
        self.seed = seed
        self.epoch = 0
        self._pos = 0
        self._order: np.ndarray | None = None

    def _draw(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.replacement:
            return rng.choice(len(self.probs), size=self.num_samples, replace=True, p=self.probs)
        if np.all(self.probs == self.probs[0]):
            return rng.permutation(len(self.probs))[: self.num_samples]
        return rng.choice(len(self.probs), size=self.num_samples, replace=False, p=self.probs)

    def __iter__(self) -> Iterator[int]:
        if self._order is None:
            self._order = self._draw()
        while self._pos < len(self._order):
            i = int(self._order[self._pos])
            self._pos += 1
            yield i
        self.epoch += 1
        self._pos = 0
        self._order = None

    def __len__(self) -> int:
        return self.num_samples

    def next_batch(self, batch_size: int) -> np.ndarray:
        """Next `batch_size` indices, crossing epochs as needed (for step-based training loops)."""
        out = np.empty(batch_size, dtype=np.int64)
        filled = 0
        while filled < batch_size:
            if self._order is None:
                self._order = self._draw()
            take = min(batch_size - filled, len(self._order) - self._pos)
            out[filled : filled + take] = self._order[self._pos : self._pos + take]
            filled += take
            self._pos += take
            if self._pos >= len(self._order):
                self.epoch += 1
                self._pos = 0
                self._order = None
        return out

    def state_dict(self) -> dict[str, int]:
        return {"seed": int(self.seed), "epoch": int(self.epoch), "pos": int(self._pos)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self._pos = int(state["seed"]), int(state["epoch"]), int(state["pos"])
        self._order = self._draw() if self._pos else None


class BatchPrefetcher:
    """Training batches built off the training thread, by `num_workers` threads, in sampler order.

    Window indices are drawn on the calling thread, so the sequence of batches is the sampler's
    whatever the workers' timing, and each batch comes back with the sampler state right after its
    draw: a checkpoint records the position of the last batch trained on, not of those still in
    flight. Threads, not processes: the gather (numpy fancy indexing, blosc decode) runs without the
    GIL and batches need no inter-process copy. `num_workers=0` builds each batch when asked.
    """

    def __init__(self, dataset: SequenceDataset, sampler: WeightedWindowSampler, batch_size: int,
                 num_workers: int = 2, device: str | torch.device = "cpu", depth: int | None = None) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.dataset, self.sampler, self.batch_size, self.device = dataset, sampler, int(batch_size), device
        self.num_workers = int(num_workers)
        self.depth = int(depth or 2 * self.num_workers)
        self._pending: list[tuple[Any, dict[str, int]]] = []
        self._pool = None
        if self.num_workers:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="robolearn-batch")

    def _draw(self) -> tuple[np.ndarray, dict[str, int]]:
        windows = self.sampler.next_batch(self.batch_size)
        return windows, self.sampler.state_dict()

    def next(self) -> tuple[dict[str, Any], dict[str, int]]:
        """(next batch as torch tensors, sampler state after its draw)."""
        if self._pool is None:
            windows, state = self._draw()
            return self.dataset.torch_batch(windows, self.device), state
        while len(self._pending) < self.depth:
            windows, state = self._draw()
            self._pending.append((self._pool.submit(self.dataset.torch_batch, windows, self.device), state))
        future, state = self._pending.pop(0)
        return future.result(), state

    def close(self) -> None:
        for future, _ in self._pending:
            future.cancel()
        self._pending = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def uniform_sampler(n_windows: int, seed: int = 0) -> WeightedWindowSampler:
    """Shuffled epochs over all windows (each window once per epoch)."""
    return WeightedWindowSampler(np.ones(n_windows), seed=seed, replacement=False)
