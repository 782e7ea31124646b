"""Residual MPPI/CEM planner over action chunks (pure torch, a batch of environments at once).

For each environment the planner searches residuals delta (H, A) added to the base policy's chunk
b (H, A): total = clip(b + delta, -1, 1), delta clipped to +-abs_residual. Each iteration samples
`num_samples` residual chunks from N(mean, std), scores them, keeps the top `num_elites`, and
refits mean/std with softmax(temperature * (score - max)) weights; std is clamped to
[min_std, max_std]. Like the official code, the result is the best-scoring sample of the last
iteration. Only the scoring function knows about world models: see `latent_score_fn`.
"""

from __future__ import annotations

from typing import Callable

import torch

from robolearn.sailor.configuration import PlannerConfig

# score_fn(total_actions (B*N, H, A)) -> scores (B*N,), rows grouped per environment (N consecutive)
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def total_action(base: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    return (base + residual).clamp(-1.0, 1.0)


@torch.no_grad()
def plan_residual(base: torch.Tensor, score_fn: ScoreFn, cfg: PlannerConfig,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """base (B, H, A) -> (residual (B, H, A) with |residual| <= abs_residual, its score (B,))."""
    if base.ndim != 3:
        raise ValueError(f"base chunk must be (batch, horizon, action_dim), got {tuple(base.shape)}")
    B, H, A = base.shape
    N, K = cfg.num_samples, cfg.num_elites
    mean = torch.zeros(B, H, A, device=base.device, dtype=base.dtype)
    std = torch.full((B, H, A), cfg.init_std, device=base.device, dtype=base.dtype)
    base_rep = base.unsqueeze(1).expand(B, N, H, A)
    for _ in range(cfg.iterations):
        noise = torch.randn(B, N, H, A, generator=generator, device=base.device, dtype=base.dtype)
        samples = (mean.unsqueeze(1) + std.unsqueeze(1) * noise).clamp(-cfg.abs_residual, cfg.abs_residual)
        scores = score_fn(total_action(base_rep, samples).reshape(B * N, H, A)).reshape(B, N)
        scores = torch.nan_to_num(scores, nan=-1e9, neginf=-1e9, posinf=1e9)
        elite_scores, idx = scores.topk(K, dim=1)
        elites = torch.gather(samples, 1, idx[:, :, None, None].expand(B, K, H, A))
        w = torch.softmax(cfg.temperature * (elite_scores - elite_scores.max(1, keepdim=True).values), dim=1)
        w = w[:, :, None, None]
        mean = (w * elites).sum(1)
        std = ((w * (elites - mean.unsqueeze(1)).pow(2)).sum(1)).sqrt().clamp(cfg.min_std, cfg.max_std)
    best = scores.argmax(1)
    rows = torch.arange(B, device=base.device)
    return samples[rows, best], scores[rows, best]


def latent_score_fn(world_model, reward_model, critic, start, cfg: PlannerConfig,
                    generator: torch.Generator | None = None) -> ScoreFn:
    """Score = sum_{k<H-1} d_k * (r(z_{k+1}) - beta * sd(z_{k+1})) + d_{H-1} * (V(z_H) - beta * sd(z_H)).

    z_{k+1} is the imagined latent after the k-th of H actions from `start` (already repeated per
    sample), sd the critic ensemble's std, d_0 = 1, d_{k+1} = d_k * gamma * P(continue | z_{k+1}).
    The value of the last state already counts its reward (it is trained on r_k + ...), as in the
    official code, which sums rewards over the first H-1 imagined states and bootstraps the last.
    """
    beta = cfg.uncertainty_cost

    def score(actions: torch.Tensor) -> torch.Tensor:
        feats = world_model.imagine(start, actions)[1:]  # (H, M, F) states after each action
        reward = reward_model(feats)
        cont = world_model.cont_prob(feats)
        penalty = critic.std(feats) if beta > 0 else torch.zeros_like(reward)
        disc = torch.ones_like(reward[0])
        total = torch.zeros_like(reward[0])
        for k in range(feats.shape[0] - 1):
            total = total + disc * (reward[k] - beta * penalty[k])
            disc = disc * cfg.discount * cont[k]
        return total + disc * (critic(feats[-1], generator) - beta * penalty[-1])

    return score
