"""Normalization statistics (exact, streamed over a whole store) and the Normalizer module.

Stats live with the store (root attribute `stats`) and inside checkpoints (JSON), so a policy
trained on a dataset normalizes exactly as it did in training wherever it is loaded.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

STAT_NAMES = ("min", "max", "mean", "std", "q01", "q99")
MODES = ("minmax", "gaussian", "identity")
_EPS = 1e-6


def _exact_quantiles(store: Any, key: str, qs: Sequence[float], chunk: int) -> list[np.ndarray]:
    """Exact per-dimension quantiles (numpy 'linear'), gathering one dimension at a time.

    Quantiles need the whole column, so memory is one float64 column (n_steps values), never the
    whole feature; a store of 100M steps needs 800 MB for this pass.
    """
    arr = store.array(key)
    n = store.num_steps
    feat_shape = tuple(arr.shape[1:])
    d = int(np.prod(feat_shape, dtype=np.int64)) if feat_shape else 1
    out = np.zeros((len(qs), d))
    dims_per_pass = max(1, int(2**26 // max(n, 1)))  # ~512 MB of float64 per pass
    for j0 in range(0, d, dims_per_pass):
        j1 = min(d, j0 + dims_per_pass)
        cols = np.empty((n, j1 - j0), np.float64)
        for s in range(0, n, chunk):
            x = np.asarray(arr[s : min(n, s + chunk)], np.float64).reshape(-1, d)
            cols[s : s + len(x)] = x[:, j0:j1]
        out[:, j0:j1] = np.quantile(cols, qs, axis=0)
    return [row.reshape(feat_shape) for row in out]


def compute_stats(store: Any, keys: Sequence[str], chunk: int = 65536) -> dict[str, dict[str, np.ndarray]]:
    """Exact min/max/mean/std/q01/q99 per dimension over every committed step of each key.

    Streams the store in chunks (never a random sample). Mean/std use Chan's parallel
    combination in float64 so large stores do not lose precision.
    """
    stats: dict[str, dict[str, np.ndarray]] = {}
    n_total = store.num_steps
    if n_total == 0:
        raise ValueError(f"cannot compute normalization stats: {store.path} has no committed steps")
    for key in keys:
        arr = store.array(key)
        feat_shape = tuple(arr.shape[1:])
        count = 0
        mean = np.zeros(feat_shape, np.float64)
        m2 = np.zeros(feat_shape, np.float64)
        lo = np.full(feat_shape, np.inf)
        hi = np.full(feat_shape, -np.inf)
        for s in range(0, n_total, chunk):
            x = np.asarray(arr[s : min(n_total, s + chunk)], np.float64)
            if not np.all(np.isfinite(x)):
                raise ValueError(f"'{key}' holds NaN or inf values at steps {s}..{s + len(x)}; cannot normalize")
            nb = len(x)
            bm = x.mean(axis=0)
            bm2 = ((x - bm) ** 2).sum(axis=0)
            delta = bm - mean
            tot = count + nb
            mean = mean + delta * nb / tot
            m2 = m2 + bm2 + delta**2 * count * nb / tot
            count = tot
            lo = np.minimum(lo, x.min(axis=0))
            hi = np.maximum(hi, x.max(axis=0))
        q01, q99 = _exact_quantiles(store, key, (0.01, 0.99), chunk)
        stats[key] = {
            "min": lo.astype(np.float32),
            "max": hi.astype(np.float32),
            "mean": mean.astype(np.float32),
            "std": np.sqrt(m2 / count).astype(np.float32),
            "q01": q01.astype(np.float32),
            "q99": q99.astype(np.float32),
        }
    return stats


def stats_to_json(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: {n: np.asarray(v, np.float64).tolist() for n, v in s.items()} for k, s in stats.items()}


def stats_from_json(data: dict[str, dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    try:
        return {k: {n: np.asarray(v, np.float32) for n, v in s.items()} for k, s in data.items()}
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed normalization stats: {exc}") from None


def save_stats(store: Any, stats: dict[str, dict[str, Any]]) -> None:
    """Persist stats in the store's root attributes (the store must be open for writing)."""
    existing = dict(store.attrs.get("stats", {}) or {})
    existing.update(stats_to_json(stats))
    store.set_attr("stats", existing)


def load_stats(store: Any, keys: Sequence[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    data = store.attrs.get("stats", {}) or {}
    missing = [k for k in (keys or []) if k not in data]
    if missing:
        raise KeyError(f"store {store.path} has no saved stats for {', '.join(missing)} (run compute_stats)")
    return stats_from_json({k: data[k] for k in (keys or data)})


class Normalizer(nn.Module):
    """Per-key affine normalization, saved as buffers so it moves with the policy's device.

    minmax maps [min, max] to [-1, 1] (diffusion policy's convention for actions); gaussian maps to
    zero mean, unit std; identity passes through (e.g. images, scaled inside encoders).
    """

    def __init__(self, stats: dict[str, dict[str, Any]] | None = None, modes: dict[str, str] | None = None) -> None:
        super().__init__()
        self.modes: dict[str, str] = {}
        self.stats: dict[str, dict[str, np.ndarray]] = {}
        stats = stats or {}
        modes = modes or {}
        for key, mode in modes.items():
            if mode not in MODES:
                raise ValueError(f"normalizer mode for {key!r} must be one of {', '.join(MODES)}, got {mode!r}")
            if mode != "identity" and key not in stats:
                raise ValueError(f"normalizer has no stats for {key!r}")
        for key, s in stats.items():
            mode = modes.get(key, "gaussian")
            missing = [n for n in ("min", "max", "mean", "std") if n not in s]
            if missing:
                raise ValueError(f"stats for {key!r} lack {', '.join(missing)}")
            st = {n: np.asarray(v, np.float32) for n, v in s.items()}
            self.stats[key] = st
            self.modes[key] = mode
            if mode == "minmax":
                span = np.maximum(st["max"] - st["min"], _EPS)
                scale = 2.0 / span
                offset = -1.0 - st["min"] * scale
                # constant dimensions map to 0
                const = (st["max"] - st["min"]) < _EPS
                offset = np.where(const, -st["min"], offset)
                scale = np.where(const, 1.0, scale)
            elif mode == "gaussian":
                scale = 1.0 / np.maximum(st["std"], _EPS)
                offset = -st["mean"] * scale
            else:
                scale = np.ones_like(st["mean"])
                offset = np.zeros_like(st["mean"])
            self.register_buffer(self._buf(key, "scale"), torch.as_tensor(scale, dtype=torch.float32))
            self.register_buffer(self._buf(key, "offset"), torch.as_tensor(offset, dtype=torch.float32))
        for key, mode in modes.items():
            if key not in self.modes:
                self.modes[key] = mode

    @staticmethod
    def _buf(key: str, what: str) -> str:
        return f"{key.replace('/', '__').replace('.', '_')}__{what}"

    def has(self, key: str) -> bool:
        return key in self.stats

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        if self.modes.get(key, "identity") == "identity" or key not in self.stats:
            return x
        return x * getattr(self, self._buf(key, "scale")) + getattr(self, self._buf(key, "offset"))

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        if self.modes.get(key, "identity") == "identity" or key not in self.stats:
            return x
        return (x - getattr(self, self._buf(key, "offset"))) / getattr(self, self._buf(key, "scale"))

    def to_json(self) -> dict[str, Any]:
        return {"modes": dict(self.modes), "stats": stats_to_json(self.stats)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Normalizer":
        if not isinstance(data, dict) or "stats" not in data:
            raise ValueError("normalizer JSON must hold 'stats' and 'modes'")
        return cls(stats_from_json(data["stats"]), data.get("modes", {}))
