"""Trajectory reweighting (Hong et al., ICLR 2023) as per-transition sampling probabilities.

Follows the JaxCQL / IQL versions of the authors' harness code: every transition of trajectory i
gets the trajectory's weight w_i, and the sampling distribution over *transitions* is

    uniform:  p_j = 1 / N
    rw:       w_i = minmax(G_i)                               p_j ∝ exp(w_i(j) / alpha)
    aw:       A_i = G_i - V(s0_i),  V linear in s0 (LSQ)      p_j ∝ exp(minmax(A)_i(j) / alpha)
    topk:     the ceil-free int(k * E) highest-return trajectories (at least 1), uniform over
              their transitions, zero elsewhere

where G_i is the undiscounted return, minmax(x) = (x - min x) / (max x - min x) (all zeros when
every trajectory is equal), and the softmax runs over transitions, so longer trajectories get
proportionally more mass. alpha is the temperature: 0.1 for IQL and TD3+BC, 0.2 for CQL in the
paper; larger is closer to uniform.

The probabilities feed robolearn.data.sampler.WeightedWindowSampler (seeded, resumable).
"""

from __future__ import annotations

import numpy as np

from robolearn.data.sampler import WeightedWindowSampler

SAMPLERS = ("uniform", "rw", "aw", "topk")
DEFAULT_ALPHA = {"iql": 0.1, "td3bc": 0.1, "cql": 0.2, "calql": 0.2}


def minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    span = x.max() - x.min()
    if span <= 0:
        return np.zeros_like(x)
    return (x - x.min()) / span


def linear_value_baseline(initial_obs: np.ndarray, returns: np.ndarray) -> np.ndarray:
    """V(s0) from an ordinary least-squares fit of return on initial state (with intercept)."""
    x = np.concatenate([np.asarray(initial_obs, np.float64), np.ones((len(returns), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(x, np.asarray(returns, np.float64), rcond=None)
    return x @ coef


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def trajectory_scores(kind: str, returns: np.ndarray, initial_obs: np.ndarray | None = None) -> np.ndarray:
    """Per-trajectory scores in [0, 1] before the softmax (rw: minmax G, aw: minmax advantage)."""
    returns = np.asarray(returns, np.float64)
    if kind == "rw":
        return minmax(returns)
    if kind == "aw":
        if initial_obs is None:
            raise ValueError("aw weighting needs the initial state of every trajectory")
        return minmax(returns - linear_value_baseline(initial_obs, returns))
    raise ValueError(f"no trajectory scores for sampler {kind!r}")


def transition_probs(kind: str, episode: np.ndarray, returns: np.ndarray, initial_obs: np.ndarray | None = None,
                     alpha: float = 0.1, topk: float = 0.1) -> np.ndarray:
    """Sampling probability of each transition (sums to 1); `episode[j]` indexes `returns`."""
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r} (known: {', '.join(SAMPLERS)})")
    episode = np.asarray(episode, np.int64)
    n = len(episode)
    if n == 0:
        raise ValueError("no transitions to weight")
    if kind == "uniform":
        return np.full(n, 1.0 / n)
    if kind == "topk":
        if not 0.0 < topk <= 1.0:
            raise ValueError(f"topk fraction must be in (0, 1], got {topk}")
        present = np.unique(episode)
        order = present[np.argsort(-np.asarray(returns)[present], kind="stable")]
        keep = order[: max(1, int(len(present) * topk))]
        w = np.isin(episode, keep).astype(np.float64)
        return w / w.sum()
    if alpha <= 0:
        raise ValueError(f"sampler temperature alpha must be > 0, got {alpha}")
    scores = trajectory_scores(kind, returns, initial_obs)
    return softmax(scores[episode] / alpha)


def make_sampler(probs: np.ndarray, seed: int = 0) -> WeightedWindowSampler:
    """A seeded, resumable sampler drawing transition indices with replacement."""
    return WeightedWindowSampler(probs, num_samples=len(probs), seed=seed, replacement=True)
