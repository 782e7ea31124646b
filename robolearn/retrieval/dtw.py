"""Subsequence dynamic time warping (S-DTW) of a short query against a long concatenated series.

The match may start and end anywhere inside one episode of the series (free start and end) and
never crosses an episode boundary. Step pattern: each query step advances the series by 0, 1
or 2 steps, so every path sums exactly one local cost per query step (costs of different
matches compare directly, and mean cost = total / query length) and a match spans between 1 and
2L-1 series steps. With no horizontal moves every DP row depends only on the previous one, so a
row is one vectorised numpy pass over the whole series: time and memory are linear in its length.
"""

from __future__ import annotations

import numpy as np


def subsequence_dtw(query: np.ndarray, series: np.ndarray, episode_ends: np.ndarray) -> dict[str, np.ndarray]:
    """Best match of `query` (L, D) in each episode of `series` (N, D).

    Returns per episode: `cost` (mean Euclidean distance along the best path; inf if none),
    `start` and `end` (series indices, end inclusive).
    """
    query = np.asarray(query, np.float64)
    series = np.asarray(series, np.float64)
    n = len(series)
    ends = np.asarray(episode_ends, np.int64)
    episode = np.repeat(np.arange(len(ends)), np.diff(np.concatenate([[0], ends])))
    # predecessor at j-1 / j-2 must lie in the same episode
    same1 = np.zeros(n, bool)
    same1[1:] = episode[1:] == episode[:-1]
    same2 = np.zeros(n, bool)
    same2[2:] = episode[2:] == episode[:-2]
    sq_series = (series**2).sum(1)

    def local(i: int) -> np.ndarray:
        d2 = sq_series - 2.0 * series @ query[i] + float(query[i] @ query[i])
        return np.sqrt(np.maximum(d2, 0.0))

    cost = local(0)
    start = np.arange(n, dtype=np.int64)
    inf = np.inf
    for i in range(1, len(query)):
        stay = cost
        one = np.full(n, inf)
        one[1:] = np.where(same1[1:], cost[:-1], inf)
        two = np.full(n, inf)
        two[2:] = np.where(same2[2:], cost[:-2], inf)
        choice = np.argmin(np.stack([stay, one, two]), axis=0)
        best = np.choose(choice, [stay, one, two])
        prev_start = np.choose(choice, [start, np.concatenate([[0], start[:-1]]), np.concatenate([[0, 0], start[:-2]])])
        cost = best + local(i)
        start = prev_start
    total = cost
    # best end per episode
    n_ep = len(ends)
    out_cost = np.full(n_ep, inf)
    out_start = np.full(n_ep, -1, np.int64)
    out_end = np.full(n_ep, -1, np.int64)
    order = np.lexsort((total, episode))  # by episode, then cost
    first = np.ones(len(order), bool)
    first[1:] = episode[order][1:] != episode[order][:-1]
    best_idx = order[first]
    ep_ids = episode[best_idx]
    out_cost[ep_ids] = total[best_idx] / len(query)
    out_start[ep_ids] = start[best_idx]
    out_end[ep_ids] = best_idx
    return {"cost": out_cost, "start": out_start, "end": out_end}


def split_segments(length: int, segment_len: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) pieces of segment_len steps; a short tail joins the last piece."""
    if length <= segment_len:
        return [(0, length)]
    bounds = list(range(0, length, segment_len))
    pieces = [(b, min(b + segment_len, length)) for b in bounds]
    if pieces[-1][1] - pieces[-1][0] < segment_len // 2 and len(pieces) > 1:
        last = pieces.pop()
        pieces[-1] = (pieces[-1][0], last[1])
    return pieces
