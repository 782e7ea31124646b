"""The retrieval interface: load (state, action) transitions, score every prior step, select.

A method maps the prior's and the target's transitions to one relevance score per prior step
(higher = more like the target); the selection rule (`fraction`, `threshold` or `top_k`) turns
scores into a mask. Methods read only observations and actions, never labels or metadata.
Image observations are not embedded: the low-dimensional `obs/*` keys (state, proprio) are used
and a store without any is refused (see docs/results/retrieval.md, limitations).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from robolearn.data.store import EpisodeStore

METHODS = ("br", "strap", "importance")
# Task-config fields that change the observation layout: stores must agree on them.
LAYOUT_FIELDS = ("task", "obs_mode", "obs_relative", "num_cubes", "image_size", "wrist_camera")


class RetrievalError(ValueError):
    """Stores that cannot be combined, or a retrieval request that cannot be met."""


@dataclass
class RetrievalConfig:
    """How to retrieve. Exactly one of fraction / threshold / top_k selects (default per method)."""

    method: str = "br"
    fraction: float | None = None  # keep this share of the prior's steps, best scores first
    threshold: float | None = None  # keep steps scoring at least this (score units: see each method)
    top_k: int | None = None  # br/importance: k best steps; strap: k best segments per target sub-trajectory
    seed: int = 0
    obs_keys: list[str] | None = None  # default: every low-dim obs/* key the stores share
    # shallow (state, action) VAE, as in Behavior Retrieval (robomimic VAE, latent 14, [300, 400])
    latent_dim: int = 14
    hidden_dims: list[int] = field(default_factory=lambda: [300, 400])
    kl_weight: float = 1e-4
    vae_epochs: float = 20.0  # passes over the prior (so training time is linear in its size)
    vae_batch_size: int = 256
    vae_lr: float = 1e-3
    similarity: str = "cosine"  # br: cosine (paper) or l2 (the released code's negative distance)
    # STRAP: target sub-trajectories of segment_len steps, subsequence DTW over embeddings or states
    strap_features: str = "embedding"  # embedding | state
    segment_len: int = 16
    # importance: density ratio p_target / p_prior in embedding space
    density: str = "kde"  # kde | classifier
    kde_reference: int = 4096  # prior points the prior's KDE is built on (a seeded subsample)
    # training weights written with the result: target steps' share of every batch (paper: 1/2)
    target_share: float = 0.5
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise RetrievalError(f"unknown retrieval method {self.method!r} (known: {', '.join(METHODS)})")
        given = [n for n in ("fraction", "threshold", "top_k") if getattr(self, n) is not None]
        if len(given) > 1:
            raise RetrievalError(f"give one of --fraction, --threshold, --top-k (got {', '.join(given)})")
        if not given:
            if self.method == "strap":
                self.top_k = 100
            else:
                self.fraction = 0.25
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise RetrievalError(f"--fraction must be in (0, 1], got {self.fraction}")
        if self.top_k is not None and self.top_k < 1:
            raise RetrievalError(f"--top-k must be >= 1, got {self.top_k}")
        if not 0.0 < self.target_share < 1.0:
            raise RetrievalError(f"target share must be in (0, 1), got {self.target_share}")
        if self.similarity not in ("cosine", "l2"):
            raise RetrievalError(f"similarity must be cosine or l2, got {self.similarity!r}")
        if self.strap_features not in ("embedding", "state"):
            raise RetrievalError(f"strap features must be embedding or state, got {self.strap_features!r}")
        if self.density not in ("kde", "classifier"):
            raise RetrievalError(f"density must be kde or classifier, got {self.density!r}")
        if self.segment_len < 2:
            raise RetrievalError(f"segment length must be >= 2, got {self.segment_len}")


@dataclass
class Transitions:
    """Per-step [obs..., action] rows of a store (raw units) and its episode boundaries."""

    states: np.ndarray  # (N, Ds) float32, the low-dim observations concatenated
    actions: np.ndarray  # (N, Da) float32
    episode_ends: np.ndarray  # (E,) int64

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.actions)


@dataclass
class RetrievalResult:
    """One score per prior step, the selected steps, and what was done (for the store's attrs)."""

    scores: np.ndarray  # (N_prior,) float32
    mask: np.ndarray  # (N_prior,) bool
    info: dict[str, Any]


def check_compatible(prior: EpisodeStore, target: EpisodeStore, obs_keys: list[str] | None = None) -> list[str]:
    """The obs keys both stores share with equal shapes; a RetrievalError naming the first mismatch."""
    for name, store in (("prior", prior), ("target", target)):
        if "action" not in store.features:
            raise RetrievalError(f"{name} store {store.path} has no actions (retrieval embeds (state, action) pairs)")
        if store.num_episodes == 0:
            raise RetrievalError(f"{name} store {store.path} holds no episodes")
    if prior.features["action"].shape != target.features["action"].shape:
        raise RetrievalError(f"action shapes differ: prior {prior.features['action'].shape}, target "
                             f"{target.features['action'].shape} (different task layout)")
    if prior.task and target.task and prior.task != target.task:
        raise RetrievalError(f"different tasks: prior {prior.task!r}, target {target.task!r}")
    pk, tk = prior.env_kwargs, target.env_kwargs
    for key in LAYOUT_FIELDS:
        if key in pk and key in tk and pk[key] != tk[key]:
            raise RetrievalError(f"different task layout: {key}={pk[key]!r} in the prior, {tk[key]!r} in the target")
    def low_dim(store: EpisodeStore) -> dict[str, tuple]:
        return {k[4:]: f.shape for k, f in store.features.items() if k.startswith("obs/") and len(f.shape) == 1}
    p_obs, t_obs = low_dim(prior), low_dim(target)
    keys = list(obs_keys) if obs_keys else [k for k in t_obs if k in p_obs]
    for k in keys:
        if k not in p_obs or k not in t_obs:
            raise RetrievalError(f"obs key {k!r} is not a low-dim observation of both stores "
                                 f"(prior: {sorted(p_obs)}, target: {sorted(t_obs)}; image-only stores are not supported)")
        if p_obs[k] != t_obs[k]:
            raise RetrievalError(f"obs/{k} shapes differ: prior {p_obs[k]}, target {t_obs[k]} (different task layout)")
    if not keys:
        raise RetrievalError("the stores share no low-dim observation (image-only stores are not supported)")
    return keys


def load_transitions(store: EpisodeStore, obs_keys: list[str]) -> Transitions:
    states = np.concatenate([store.read(f"obs/{k}", cache=False).astype(np.float32) for k in obs_keys], axis=1)
    actions = store.read("action", cache=False).astype(np.float32)
    if not (np.isfinite(states).all() and np.isfinite(actions).all()):
        raise RetrievalError(f"{store.path} holds NaN or inf observations/actions")
    return Transitions(states, actions, store.episode_ends)


class MinMaxScaler:
    """Maps each dimension's prior [min, max] to [-1, 1] (constant dimensions to 0)."""

    def __init__(self, x: np.ndarray) -> None:
        lo, hi = x.min(0), x.max(0)
        span = hi - lo
        self.const = span < 1e-8
        self.scale = np.where(self.const, 1.0, 2.0 / np.where(self.const, 1.0, span)).astype(np.float32)
        self.offset = np.where(self.const, -lo, -1.0 - lo * self.scale).astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x * self.scale + self.offset).astype(np.float32)


def select(scores: np.ndarray, cfg: RetrievalConfig) -> np.ndarray:
    """Mask of the steps kept by the config's rule (ties at the cut are broken by step order)."""
    n = len(scores)
    if cfg.threshold is not None:
        return scores >= cfg.threshold
    k = n if cfg.fraction is not None and cfg.fraction >= 1.0 else (
        int(round(cfg.fraction * n)) if cfg.fraction is not None else min(int(cfg.top_k), n))
    mask = np.zeros(n, bool)
    if k > 0:
        mask[np.argsort(-scores, kind="stable")[:k]] = True
    return mask


Method = Callable[[Transitions, Transitions, RetrievalConfig], tuple[np.ndarray, np.ndarray | None, dict[str, Any]]]


def retrieve(prior: EpisodeStore, target: EpisodeStore, cfg: RetrievalConfig) -> RetrievalResult:
    """Score and select the prior's steps for the target's behaviour with `cfg.method`."""
    from robolearn.retrieval import methods

    keys = check_compatible(prior, target, cfg.obs_keys)
    t0 = time.perf_counter()
    p, t = load_transitions(prior, keys), load_transitions(target, keys)
    fn: Method = {"br": methods.behavior_retrieval, "strap": methods.strap, "importance": methods.importance}[cfg.method]
    scores, mask, extra = fn(p, t, cfg)
    if mask is None:
        mask = select(scores, cfg)
    seconds = time.perf_counter() - t0
    if not mask.any():
        raise RetrievalError(f"{cfg.method} retrieved nothing from {prior.path} (lower --threshold or raise --fraction / --top-k)")
    rule = {k: getattr(cfg, k) for k in ("fraction", "threshold", "top_k") if getattr(cfg, k) is not None}
    info = {
        "method": cfg.method,
        "rule": rule,
        "obs_keys": keys,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"},
        "prior_steps": int(len(p)),
        "target_steps": int(len(t)),
        "retrieved_steps": int(mask.sum()),
        "fraction_retrieved": float(mask.mean()),
        "seconds": round(seconds, 3),
        **extra,
    }
    return RetrievalResult(scores.astype(np.float32), mask, info)
