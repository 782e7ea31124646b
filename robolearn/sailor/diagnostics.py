"""What a SAILOR run measures about its own models (logged by every run, see loop.py).

- the world model's k-step open-loop error on held-out demo windows next to the constant-state
  ("nothing moves") predictor: the planner stays off until the model beats it;
- the reward model's AUROC separating demo states from states of failed base-policy episodes;
- the planner's predicted gain over the base plan, the same gain re-scored with fresh samples, and
  how often a residual was accepted (`agent.PlannerStats`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score(pos) > score(neg)) + 0.5 P(tie): the Mann-Whitney AUROC."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if not len(pos) or not len(neg):
        raise ValueError("AUROC needs at least one positive and one negative score")
    scores = np.concatenate([pos, neg])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    uniq, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    if (counts > 1).any():  # average ranks of ties
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@torch.no_grad()
def reward_scores(agent, states: Sequence[np.ndarray], actions: Sequence[np.ndarray]) -> np.ndarray:
    """r(z_t) along recorded trajectories (raw concatenated states (T, Ds), actions (T, A)); z_t is
    the world model's posterior with latent modes (no sampling)."""
    wm = agent.world_model
    device = agent.device
    out = []
    keys = agent.config.base.state_keys
    dims = [agent.config.base.input_shapes[k][0] for k in keys]
    for s, a in zip(states, actions):
        parts = torch.split(torch.as_tensor(np.asarray(s), dtype=torch.float32, device=device), dims, -1)
        st = agent.wm_state(dict(zip(keys, parts)))[None]
        act = torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)
        prev = torch.cat([torch.zeros_like(act[:1]), act[:-1]])[None]
        embed = wm.embed(st)
        latent = None
        feats = []
        for t in range(st.shape[1]):
            latent, _ = wm.dynamics.obs_step(latent, prev[:, t], embed[:, t], torch.tensor([t == 0], device=device), sample=False)
            feats.append(wm.dynamics.feat(latent))
        out.append(agent.reward_model(torch.cat(feats)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def windows_for_check(states: Sequence[np.ndarray], actions: Sequence[np.ndarray], length: int, stride: int,
                      limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows (W, length, Ds) of states and the matching prev_actions, never crossing an episode end;
    at most `limit`, spread evenly."""
    ws, ps = [], []
    for s, a in zip(states, actions):
        prev = np.concatenate([np.zeros_like(a[:1]), a[:-1]])
        for t in range(0, len(s) - length + 1, stride):
            ws.append(s[t : t + length])
            ps.append(prev[t : t + length])
    if not ws:
        return np.zeros((0, length, 0), np.float32), np.zeros((0, length, 0), np.float32)
    pick = np.linspace(0, len(ws) - 1, min(limit, len(ws))).round().astype(int)
    return np.stack([ws[i] for i in pick]).astype(np.float32), np.stack([ps[i] for i in pick]).astype(np.float32)


@torch.no_grad()
def world_model_check(agent, states: np.ndarray, prev_actions: np.ndarray, context: int, horizon: int,
                      normalize) -> dict[str, float | list[float]]:
    """k-step error (k = 1..horizon) of the world model vs the constant predictor on windows
    (W, context + horizon, Ds) of raw states; `normalize` maps raw states to the model's input."""
    if not len(states):
        return {}
    device = agent.device
    st = normalize(torch.as_tensor(states, device=device))
    pa = torch.as_tensor(prev_actions, device=device)
    per_model, per_const = agent.world_model.open_loop_error(st, pa, context, horizon, per_window=True)
    per_model, per_const = per_model.cpu().numpy(), per_const.cpu().numpy()
    model, const = per_model.mean(axis=0), per_const.mean(axis=0)
    # one window can dominate the mean (docs/results/sailor.md): the median of per-window ratios too
    window_ratio = per_model.mean(axis=1) / np.maximum(per_const.mean(axis=1), 1e-12)
    return {"wm_kstep_err": [float(x) for x in model], "const_kstep_err": [float(x) for x in const],
            "wm_err_mean": float(model.mean()), "const_err_mean": float(const.mean()),
            "wm_err_ratio": float(model.mean() / max(const.mean(), 1e-12)),
            "wm_err_ratio_median": float(np.median(window_ratio)), "wm_check_windows": int(len(states))}
