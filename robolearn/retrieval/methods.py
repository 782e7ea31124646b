"""The three retrieval methods. Each returns (per-prior-step scores, optional mask, info).

- `behavior_retrieval` (Du et al., RSS 2023): a shallow (state, action) VAE trained on the prior;
  a prior step's score is its highest cosine similarity (or, as in the released code, negative
  L2 distance) to any target step's embedding. The selection rule then keeps a fraction, the
  top k, or everything above a threshold (cosine in [-1, 1]).
- `strap` (Memmel et al. 2024): the target demos are cut into sub-trajectories; each is matched
  against every prior episode with subsequence DTW (over the VAE embeddings or the raw
  normalized states); the k lowest-cost matches per sub-trajectory are retrieved as whole
  segments. A step's score is exp(-cost / median cost) of the best match covering it (0 if none).
- `importance` (Xie et al., CoRL 2025): the density ratio p_target / p_prior in the VAE
  embedding space, from Gaussian kernel density estimates (Scott bandwidth) or a probabilistic
  classifier; the score is its log, and steps are retrieved by it (threshold 0 = as likely under
  the target as under the prior).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robolearn.retrieval.core import MinMaxScaler, RetrievalConfig, RetrievalError, Transitions, select
from robolearn.retrieval.dtw import split_segments, subsequence_dtw
from robolearn.retrieval.vae import train_vae


def embed_transitions(prior: Transitions, target: Transitions, cfg: RetrievalConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Train the VAE on the prior's normalized [state, action] rows; embed prior and target."""
    rows_p = np.concatenate([prior.states, prior.actions], 1)
    rows_t = np.concatenate([target.states, target.actions], 1)
    scale = MinMaxScaler(rows_p)
    xp, xt = scale(rows_p), scale(rows_t)
    vae, history = train_vae(xp, cfg.latent_dim, cfg.hidden_dims, cfg.kl_weight, cfg.vae_epochs, cfg.vae_batch_size,
                             cfg.vae_lr, cfg.seed, cfg.progress)
    info = {"vae_recon_first_epoch": round(history[0], 6), "vae_recon_last_epoch": round(history[-1], 6)}
    return vae.embed(xp), vae.embed(xt), info


def _max_similarity(zp: np.ndarray, zt: np.ndarray, kind: str, chunk: int = 16384) -> np.ndarray:
    out = np.empty(len(zp), np.float32)
    if kind == "cosine":
        zt_n = zt / np.maximum(np.linalg.norm(zt, axis=1, keepdims=True), 1e-8)
    for s in range(0, len(zp), chunk):
        block = zp[s : s + chunk]
        if kind == "cosine":
            b = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-8)
            out[s : s + chunk] = (b @ zt_n.T).max(1)
        else:
            d2 = (block**2).sum(1)[:, None] - 2 * block @ zt.T + (zt**2).sum(1)[None]
            out[s : s + chunk] = -np.sqrt(np.maximum(d2, 0)).min(1)
    return out


def behavior_retrieval(prior: Transitions, target: Transitions, cfg: RetrievalConfig):
    zp, zt, info = embed_transitions(prior, target, cfg)
    return _max_similarity(zp, zt, cfg.similarity), None, {**info, "score": f"max {cfg.similarity} similarity to the target"}


def strap(prior: Transitions, target: Transitions, cfg: RetrievalConfig):
    from tqdm import tqdm

    if cfg.strap_features == "embedding":
        fp, ft, info = embed_transitions(prior, target, cfg)
    else:
        scale = MinMaxScaler(prior.states)
        fp, ft, info = scale(prior.states), scale(target.states), {}
    queries = [(e, a, b) for e, (lo, hi) in enumerate(zip(target.episode_starts, target.episode_ends))
               for a, b in [(lo + s, lo + t) for s, t in split_segments(int(hi - lo), cfg.segment_len)]]
    matches = []  # (cost, start, end, query index)
    for q, (_, a, b) in enumerate(tqdm(queries, desc="S-DTW", disable=not cfg.progress, dynamic_ncols=True)):
        m = subsequence_dtw(ft[a:b], fp, prior.episode_ends)
        ok = np.isfinite(m["cost"])
        for c, s, e in zip(m["cost"][ok], m["start"][ok], m["end"][ok]):
            matches.append((float(c), int(s), int(e), q))
    if not matches:
        raise RetrievalError("STRAP found no match in the prior")
    costs = np.asarray([m[0] for m in matches])
    ref = float(np.median(costs)) or 1e-8
    scores = np.zeros(len(prior), np.float32)
    for c, s, e, _ in matches:  # best match covering each step
        np.maximum.at(scores, np.arange(s, e + 1), np.float32(np.exp(-c / ref)))
    mask = np.zeros(len(prior), bool)
    if cfg.top_k is not None:
        by_query: dict[int, list[tuple[float, int, int]]] = {}
        for c, s, e, q in matches:
            by_query.setdefault(q, []).append((c, s, e))
        for lst in by_query.values():
            for c, s, e in sorted(lst)[: cfg.top_k]:
                mask[s : e + 1] = True
    elif cfg.threshold is not None:
        mask = scores >= cfg.threshold
    else:  # fraction: whole segments, best first, until the share of prior steps is reached
        want = int(round(cfg.fraction * len(prior)))
        for c, s, e, _ in sorted(matches):
            if mask.sum() >= want:
                break
            mask[s : e + 1] = True
    info.update({"segments": len(queries), "matches": len(matches), "median_match_cost": round(ref, 6),
                 "score": "exp(-cost / median cost) of the best S-DTW match covering the step"})
    return scores, mask, info


def _scott_bandwidth(z: np.ndarray) -> float:
    n, d = z.shape
    return float(np.mean(z.std(0)) * n ** (-1.0 / (d + 4)) + 1e-6)


def _log_kde(points: np.ndarray, ref: np.ndarray, h: float, chunk: int = 1024) -> np.ndarray:
    """log of the Gaussian KDE built on `ref` (bandwidth h), evaluated at `points`."""
    d = ref.shape[1]
    out = np.empty(len(points))
    ref_sq = (ref**2).sum(1)
    norm = -np.log(len(ref)) - d * np.log(h * np.sqrt(2 * np.pi))
    for s in range(0, len(points), chunk):
        p = points[s : s + chunk]
        d2 = np.maximum((p**2).sum(1)[:, None] - 2 * p @ ref.T + ref_sq[None], 0)
        a = -d2 / (2 * h * h)
        m = a.max(1, keepdims=True)
        out[s : s + chunk] = (m[:, 0] + np.log(np.exp(a - m).sum(1))) + norm
    return out


def importance(prior: Transitions, target: Transitions, cfg: RetrievalConfig):
    zp, zt, info = embed_transitions(prior, target, cfg)
    zp = zp.astype(np.float64)
    zt = zt.astype(np.float64)
    rng = np.random.default_rng(cfg.seed)
    if cfg.density == "kde":
        ref = zp[rng.choice(len(zp), size=min(cfg.kde_reference, len(zp)), replace=False)]
        h_t, h_p = _scott_bandwidth(zt), _scott_bandwidth(ref)
        log_ratio = _log_kde(zp, zt, h_t) - _log_kde(zp, ref, h_p)
        info.update({"bandwidth_target": round(h_t, 6), "bandwidth_prior": round(h_p, 6)})
    else:
        log_ratio = _classifier_log_ratio(zp, zt, cfg.seed)
    info["score"] = "log density ratio log p_target - log p_prior"
    return log_ratio.astype(np.float32), None, info


def _classifier_log_ratio(zp: np.ndarray, zt: np.ndarray, seed: int, steps: int = 2000) -> np.ndarray:
    """log p_t/p_p from a classifier trained on balanced batches: its logit is the log odds."""
    from robolearn.nn.mlp import MLP

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MLP(zp.shape[1], 1, (64, 64))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
        tp, tt = torch.as_tensor(zp, dtype=torch.float32), torch.as_tensor(zt, dtype=torch.float32)
        for _ in range(steps):
            xb = torch.cat([tp[torch.randint(len(tp), (128,), generator=gen)], tt[torch.randint(len(tt), (128,), generator=gen)]])
            yb = torch.cat([torch.zeros(128), torch.ones(128)])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xb)[:, 0], yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            return np.concatenate([net(tp[s : s + 16384])[:, 0].numpy() for s in range(0, len(tp), 16384)])


__all__ = ["behavior_retrieval", "strap", "importance", "embed_transitions", "select"]
