"""Array namespace of the per-step task functions: one copy of the logic for torch and numpy.

Task functions (observe, evaluate, action_to_ctrl and their helpers) are written against the
common subset of torch tensors and numpy arrays (operators, indexing, `.any/.all/.sum/.mean/
.reshape`, builtin `abs`) plus the functions of the namespace `xp = of(x)` returned here. On torch
tensors they run as before, batched on any device (MuJoCo Warp / GPU backends, experts, device
env). On numpy arrays they run on the MuJoCo C backend's host buffers: a single env's arrays are
(1, d), where torch's per-op dispatch (1-4 us) cost several times the numpy op (0.1-0.5 us).

The two namespaces agree to rounding: elementwise arithmetic, comparisons, where/clip/minimum/
maximum, casts and sums of 0/1 values are exact IEEE operations in both libraries (same
bits); transcendental functions (cos, sin, tanh, atan2) and vector norms come from different
kernels and may differ in the last bit or two (~1e-16 relative). numpy's own ufuncs are used on the
host path because a round trip through a torch kernel costs 2-3 us per call on (1, d) arrays, the
single env's main overhead over raw physics after MuJoCo itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


_vector_norm = torch.linalg.vector_norm  # what Tensor.norm(dim=-1) dispatches to (same kernel)


class TorchOps:
    """torch functions under the shared names (no wrappers on the hot path where avoidable)."""

    name = "torch"
    float32, float64, int32, int64, bool_ = torch.float32, torch.float64, torch.int32, torch.int64, torch.bool
    cat = staticmethod(torch.cat)
    stack = staticmethod(torch.stack)
    where = staticmethod(torch.where)
    minimum = staticmethod(torch.minimum)
    maximum = staticmethod(torch.maximum)
    clip = staticmethod(torch.clamp)
    cos = staticmethod(torch.cos)
    sin = staticmethod(torch.sin)
    tanh = staticmethod(torch.tanh)
    atan2 = staticmethod(torch.atan2)
    remainder = staticmethod(torch.remainder)
    zeros_like = staticmethod(torch.zeros_like)
    ones_like = staticmethod(torch.ones_like)
    full_like = staticmethod(torch.full_like)

    @staticmethod
    def norm(x: torch.Tensor) -> torch.Tensor:
        """Euclidean norm over the last axis (= x.norm(dim=-1))."""
        return _vector_norm(x, 2, -1)

    @staticmethod
    def astype(x: torch.Tensor, dtype) -> torch.Tensor:
        return x.to(dtype)

    @staticmethod
    def count_true(x: torch.Tensor, dtype) -> torch.Tensor:
        """Number of True entries over the last axis, as `dtype`."""
        return x.sum(-1).to(dtype)

    @staticmethod
    def copy(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def none(mask: torch.Tensor) -> bool:
        """Never claims "no True entry" on torch: reading a device tensor on the host would stall
        the GPU stream, so torch code never takes the short cut (see NumpyOps.none)."""
        return False

    @staticmethod
    def zeros(n: int, dtype, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, dtype=dtype, device=like.device)

    @staticmethod
    def arange(n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.arange(n, device=like.device)

    @staticmethod
    def const(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A torch constant (e.g. a grid of points) in `like`'s dtype and device."""
        return t.to(like)

    @staticmethod
    def index(t: torch.Tensor | slice, like: torch.Tensor) -> torch.Tensor | slice:
        """An integer index tensor usable on `like` (slices pass through)."""
        return t


class NumpyOps:
    """numpy under the same names (see the module doc on rounding)."""

    name = "numpy"
    float32, float64, int32, int64, bool_ = np.float32, np.float64, np.int32, np.int64, np.bool_
    cat = staticmethod(np.concatenate)
    stack = staticmethod(np.stack)
    where = staticmethod(np.where)
    minimum = staticmethod(np.minimum)
    maximum = staticmethod(np.maximum)
    cos = staticmethod(np.cos)
    sin = staticmethod(np.sin)
    tanh = staticmethod(np.tanh)
    atan2 = staticmethod(np.arctan2)
    remainder = staticmethod(np.remainder)  # sign of the divisor, like torch.remainder
    zeros_like = staticmethod(np.zeros_like)
    ones_like = staticmethod(np.ones_like)
    full_like = staticmethod(np.full_like)
    _consts: dict[tuple[int, Any], tuple[torch.Tensor, np.ndarray]] = {}

    @staticmethod
    def clip(x: np.ndarray, lo=None, hi=None) -> np.ndarray:
        """torch.clamp semantics with the bare ufuncs (np.clip's wrapper costs several us)."""
        if lo is not None:
            x = np.maximum(x, lo)
        return x if hi is None else np.minimum(x, hi)

    @staticmethod
    def norm(x: np.ndarray) -> np.ndarray:
        return np.sqrt(np.add.reduce(x * x, -1))

    @staticmethod
    def astype(x: np.ndarray, dtype) -> np.ndarray:
        return x.astype(dtype)

    @staticmethod
    def count_true(x: np.ndarray, dtype) -> np.ndarray:
        return np.add.reduce(x, -1).astype(dtype)  # bools sum as int64; count_nonzero(axis=) is 2x slower

    @staticmethod
    def copy(x: np.ndarray) -> np.ndarray:
        return x.copy()

    @staticmethod
    def none(mask: np.ndarray) -> bool:
        """True when no entry is True: host code may then skip work whose result would be all
        zeros (e.g. failure events, which almost never fire). Writing `if xp.none(m): ...` keeps
        one code path for both namespaces, torch simply never takes the short cut."""
        return not np.count_nonzero(mask)  # ~4x cheaper than mask.any() on the few entries of one step

    @staticmethod
    def zeros(n: int, dtype, like: np.ndarray) -> np.ndarray:
        return np.zeros(n, dtype=dtype)

    @staticmethod
    def arange(n: int, like: np.ndarray) -> np.ndarray:
        return np.arange(n)

    @classmethod
    def const(cls, t: torch.Tensor, like: np.ndarray) -> np.ndarray:
        key = (id(t), like.dtype)
        hit = cls._consts.get(key)
        if hit is None or hit[0] is not t:  # the tensor is kept alive in the cache, so ids are not reused
            hit = cls._consts[key] = (t, t.detach().cpu().numpy().astype(like.dtype))
        return hit[1]

    @classmethod
    def index(cls, t: torch.Tensor | slice, like: np.ndarray) -> np.ndarray | slice:
        if isinstance(t, slice):
            return t
        key = (id(t), None)
        hit = cls._consts.get(key)
        if hit is None or hit[0] is not t:
            hit = cls._consts[key] = (t, t.detach().cpu().numpy())
        return hit[1]


def of(x) -> type[TorchOps] | type[NumpyOps]:
    """The namespace of an array: NumpyOps for numpy arrays, TorchOps otherwise."""
    return NumpyOps if isinstance(x, np.ndarray) else TorchOps
