"""Sequence windows over an episode store, weighted sampling and episode splits.

A window is anchored at a step t of an episode: observations cover the To steps ending at t,
actions the T steps starting at t-To+1 (diffusion_policy's convention). Windows that reach past an
episode's edges repeat the edge step, and `pad_mask` marks which steps are real. Windows never
cross episodes because every index is clipped to its own episode.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator, Sequence

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


class _ChunkCache:
    """LRU cache of decompressed zarr chunks, so lazily read images decode each chunk once."""

    def __init__(self, array: Any, max_bytes: int) -> None:
        self.array = array
        self.chunk = int(array.chunks[0])
        self.max_bytes = max_bytes
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0

    def _get_chunk(self, c: int) -> np.ndarray:
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        data = np.asarray(self.array[c * self.chunk : (c + 1) * self.chunk])
        self._cache[c] = data
        self._bytes += data.nbytes
        while self._bytes > self.max_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old.nbytes
        return data

    def take(self, idx: np.ndarray) -> np.ndarray:
        flat = idx.reshape(-1)
        out = np.empty((len(flat), *self.array.shape[1:]), dtype=self.array.dtype)
        chunks = flat // self.chunk
        for c in np.unique(chunks):
            sel = chunks == c
            out[sel] = self._get_chunk(int(c))[flat[sel] - c * self.chunk]
        return out.reshape(*idx.shape, *self.array.shape[1:])


class SequenceDataset(Dataset):
    """Fixed-length windows (To obs steps, T action steps) over chosen episodes of a store.

    Low-dimensional arrays are read once and kept in memory; arrays with more than
    `lazy_threshold` values per step (images) are read lazily through a chunk cache. Weights are
    per step (the anchor step's weight is the window's weight) and feed `WeightedWindowSampler`.
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
        image_cache_bytes: int = 1 << 30,
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

    # Workers re-open lazily read arrays themselves.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lazy"] = None
        return state

    def _lazy_arrays(self) -> dict[str, _ChunkCache]:
        if self._lazy is None:
            store = EpisodeStore.open(self.store_path, mode="r")
            self._lazy = {k: _ChunkCache(store.array(k), self.image_cache_bytes // max(len(self._lazy_keys), 1)) for k in self._lazy_keys}
        return self._lazy

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


def uniform_sampler(n_windows: int, seed: int = 0) -> WeightedWindowSampler:
    """Shuffled epochs over all windows (each window once per epoch)."""
    return WeightedWindowSampler(np.ones(n_windows), seed=seed, replacement=False)
