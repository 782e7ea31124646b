"""Residual MPPI planner over the base policy's chunk, with guards so that search cannot hurt.

For each environment the planner searches residuals delta (H, A) added to the base policy's plan
b (H, A): total = clip(b + delta, -1, 1), |delta| <= abs_residual (the gripper dimension can be
left out: `residual_gripper=false`). Each iteration samples `num_samples` residual chunks from
N(mean, std), scores them in imagination, keeps the top `num_elites` and refits mean/std with
softmax(temperature * (score - max)) weights; std is clamped to [min_std, max_std].

Guards (`guard=true`, the default), because a search over a noisy score picks noise (the
winner's curse measured in docs/results/sailor.md):
- the unchanged base plan (delta = 0) is candidate 0 of every iteration;
- every candidate is scored with the same random numbers (`common_random_numbers`: the latent
  draws of imagination come from one set of uniforms per particle, shared by all candidates), so
  two equal candidates score exactly alike and differences between candidates are not sampling
  noise;
- the value is the whole critic ensemble's mean and the uncertainty penalty its spread;
- the proposal is MPPI's weighted elite mean, not the single best sample;
- the proposal is executed only if its gain over the base plan, re-scored with `check_particles`
  fresh particles (paired: both plans share them), exceeds `accept_margin_se` standard errors;
  the standard error combines the spread over particles and over critic members
  (SE^2 = var_p(gain_p) / P + var_m(gain_m) / M). Otherwise the base plan runs unchanged.
`guard=false` is the unguarded planner (no base candidate, the best sample, always executed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from robolearn.sailor.configuration import PlannerConfig
from robolearn.sailor.world_model import State

# member_scores(total actions (B, N, H, A), uniforms) -> (B, N, P, M) scores per particle and critic member
ScoreFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def total_action(base: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    return (base + residual).clamp(-1.0, 1.0)


def residual_mask(cfg: PlannerConfig, action_dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(A,) 1 for the action dimensions the planner may change, 0 for the gripper when excluded."""
    mask = torch.ones(action_dim, device=device)
    if not cfg.residual_gripper:
        dim = cfg.gripper_dim % action_dim
        mask[dim] = 0.0
    return mask


class LatentScorer:
    """Scores total action chunks from posterior latents `start` (B, ...) in imagination.

    Member score of a chunk for particle p and critic member m:
      sum_{k<H-1} d_k (r(z_{k+1}) - beta sd(z_{k+1})) + d_{H-1} (V_m(z_H) - beta sd(z_H)),
    z_{k+1} the imagined latent after the k-th of H actions, sd the ensemble's spread, d_0 = 1,
    d_{k+1} = d_k * gamma * P(continue | z_{k+1}). The value of the last state already counts its
    reward (as in the official code). The planner ranks by the mean over particles and members.
    """

    def __init__(self, world_model, reward_model, critic, start: State, cfg: PlannerConfig) -> None:
        self.wm, self.rm, self.critic, self.start, self.cfg = world_model, reward_model, critic, start, cfg
        self.batch = start["deter"].shape[0]

    def noise(self, particles: int, horizon: int, generator: torch.Generator | None,
              per_candidate: int | None = None) -> torch.Tensor:
        """Uniforms for the latent draws: (P, H, B, S) shared by all candidates, or
        (P, H, B, N, S) independent per candidate (no common random numbers)."""
        stoch = self.wm.dynamics.stoch
        device = self.start["deter"].device
        shape = (particles, horizon, self.batch) + ((per_candidate,) if per_candidate else ()) + (stoch,)
        return torch.rand(shape, generator=generator, device=device)

    @torch.no_grad()
    def member_scores(self, actions: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """actions (B, N, H, A) totals; uniform from `noise` -> (B, N, P, M)."""
        B, N, H, A = actions.shape
        P = uniform.shape[0]
        rows = B * N * P
        start = {k: v.repeat_interleave(N * P, 0) for k, v in self.start.items()}
        acts = actions.unsqueeze(2).expand(B, N, P, H, A).reshape(rows, H, A)
        if uniform.dim() == 4:  # (P, H, B, S): shared by the N candidates
            u = uniform.permute(1, 2, 0, 3).unsqueeze(2).expand(H, B, N, P, uniform.shape[-1])
        else:  # (P, H, B, N, S)
            u = uniform.permute(1, 2, 3, 0, 4)
        u = u.reshape(H, rows, -1)
        feats = self.wm.imagine(start, acts, uniform=u)[1:]  # (H, R, F)
        beta = self.cfg.uncertainty_cost
        reward = self.rm(feats)
        cont = self.wm.cont_prob(feats)
        if beta > 0:
            values = self.critic.all_values(feats)  # (M, H, R)
            spread = values.std(0, unbiased=False) if values.shape[0] > 1 else torch.zeros_like(reward)
            last = values[:, -1]
        else:
            last = self.critic.all_values(feats[-1])  # (M, R)
            spread = torch.zeros_like(reward)
        disc = torch.ones_like(reward[0])
        total = torch.zeros_like(reward[0])
        for k in range(H - 1):
            total = total + disc * (reward[k] - beta * spread[k])
            disc = disc * self.cfg.discount * cont[k]
        members = total + disc * (last - beta * spread[-1])  # (M, R)
        return members.reshape(-1, B, N, P).permute(1, 2, 3, 0)


@dataclass
class PlanResult:
    residual: torch.Tensor  # (B, H, A) what runs: the proposal where accepted, else zeros
    proposal: torch.Tensor  # (B, H, A) the planner's output before the acceptance test
    accepted: torch.Tensor  # (B,) bool
    predicted_gain: torch.Tensor  # (B,) score(proposal) - score(base) under the selection's random numbers
    rescored_gain: torch.Tensor  # (B,) the same with fresh particles (mean over them)
    gain_se: torch.Tensor  # (B,) standard error of the re-scored gain


def _score(scorer: LatentScorer, totals: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(scorer.member_scores(totals, uniform).mean((2, 3)), nan=-1e9, neginf=-1e9, posinf=1e9)


@torch.no_grad()
def plan_residual(base: torch.Tensor, scorer: LatentScorer, cfg: PlannerConfig,
                  generator: torch.Generator | None = None) -> PlanResult:
    """base (B, H, A) plans -> PlanResult (see module docstring)."""
    if base.ndim != 3:
        raise ValueError(f"base chunk must be (batch, horizon, action_dim), got {tuple(base.shape)}")
    B, H, A = base.shape
    N, K, P = cfg.num_samples, cfg.num_elites, cfg.particles
    mask = residual_mask(cfg, A, base.device)
    mean = torch.zeros(B, H, A, device=base.device, dtype=base.dtype)
    std = torch.full((B, H, A), cfg.init_std, device=base.device, dtype=base.dtype)
    crn = cfg.common_random_numbers
    selection_noise = scorer.noise(P, H, generator) if crn else None
    for _ in range(cfg.iterations):
        noise = torch.randn(B, N, H, A, generator=generator, device=base.device, dtype=base.dtype)
        samples = (mean.unsqueeze(1) + std.unsqueeze(1) * noise).clamp(-cfg.abs_residual, cfg.abs_residual) * mask
        if cfg.guard:
            samples[:, 0] = 0.0  # the unchanged base plan is always a candidate
        uniform = selection_noise if crn else scorer.noise(P, H, generator, per_candidate=N)
        scores = _score(scorer, total_action(base.unsqueeze(1), samples), uniform)  # (B, N)
        elite_scores, idx = scores.topk(K, dim=1)
        elites = torch.gather(samples, 1, idx[:, :, None, None].expand(B, K, H, A))
        w = torch.softmax(cfg.temperature * (elite_scores - elite_scores.max(1, keepdim=True).values), dim=1)[:, :, None, None]
        mean = (w * elites).sum(1)
        std = ((w * (elites - mean.unsqueeze(1)).pow(2)).sum(1)).sqrt().clamp(cfg.min_std, cfg.max_std)
    rows = torch.arange(B, device=base.device)
    proposal = mean if cfg.guard else samples[rows, scores.argmax(1)]
    pair = torch.stack([total_action(base, proposal), total_action(base, torch.zeros_like(proposal))], 1)  # (B, 2, H, A)
    # predicted gain: under the random numbers the selection used (fresh per candidate without CRN)
    uniform = selection_noise if crn else scorer.noise(P, H, generator, per_candidate=2)
    predicted = _score(scorer, pair, uniform)
    predicted_gain = predicted[:, 0] - predicted[:, 1]
    # re-scored gain: fresh particles, shared by the two plans (a paired comparison)
    check = scorer.member_scores(pair, scorer.noise(cfg.check_particles, H, generator))  # (B, 2, Pc, M)
    gain = check[:, 0] - check[:, 1]  # (B, Pc, M)
    rescored = gain.mean((1, 2))
    var = torch.zeros_like(rescored)
    if gain.shape[1] > 1:
        var = var + gain.mean(2).var(1) / gain.shape[1]
    if gain.shape[2] > 1:
        var = var + gain.mean(1).var(1) / gain.shape[2]
    se = var.sqrt()
    nonzero = proposal.flatten(1).abs().amax(1) > 0
    if cfg.guard:
        accepted = nonzero & (rescored > 0) & (rescored > cfg.accept_margin_se * se)
    else:
        accepted = nonzero
    residual = proposal * accepted[:, None, None].to(proposal.dtype)
    return PlanResult(residual, proposal, accepted, predicted_gain, rescored, se)
