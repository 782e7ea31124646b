"""Critic ensemble on latent features with a slow EMA target, trained on TD(lambda) returns.

As in the official code: `num_models` MLPs; `forward` averages `num_subsample` randomly chosen
members (used for bootstrapping and the planner's terminal value); `std` is the ensemble's
standard deviation (the planner's uncertainty penalty). Each update regresses every member on the
lambda-returns of imagined base-policy rollouts and on the slow target's prediction, weighted by
the imagined continuation probabilities; the slow copy tracks the weights with fraction 0.02.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from robolearn.sailor.configuration import CriticConfig
from robolearn.sailor.world_model import mlp


class CriticEnsemble(nn.Module):
    def __init__(self, cfg: CriticConfig, feat_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        # official outscale 0.0: every member starts at V = 0
        self.members = nn.ModuleList([mlp(feat_dim, 1, cfg.units, cfg.layers, out_scale=0.0) for _ in range(cfg.num_models)])

    def all_values(self, feat: torch.Tensor) -> torch.Tensor:
        """(M, ...) values of every member."""
        return torch.stack([m(feat).squeeze(-1) for m in self.members], 0)

    def forward(self, feat: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean of `num_subsample` random members."""
        idx = torch.randperm(self.cfg.num_models, generator=generator)[: self.cfg.num_subsample].tolist()
        return torch.stack([self.members[i](feat).squeeze(-1) for i in idx], 0).mean(0)

    def std(self, feat: torch.Tensor) -> torch.Tensor:
        values = self.all_values(feat)
        if values.shape[0] <= 1:
            return torch.zeros_like(values[0])
        return values.std(0, unbiased=False)


def lambda_return(reward: torch.Tensor, value: torch.Tensor, discount: torch.Tensor, lam: float) -> torch.Tensor:
    """TD(lambda) targets (H, N) for states 0..H-1 of an imagined trajectory of H+1 states.

    reward/discount: (H, N) for states 0..H-1 (discount = gamma * P(continue)); value: (H+1, N).
    R_H = V_H;  R_k = r_k + d_k * ((1 - lam) * V_{k+1} + lam * R_{k+1}).
    """
    out = []
    ret = value[-1]
    for k in reversed(range(reward.shape[0])):
        ret = reward[k] + discount[k] * ((1 - lam) * value[k + 1] + lam * ret)
        out.append(ret)
    return torch.stack(out[::-1], 0)


class CriticTrainer:
    """Owns the ensemble's optimizer and slow target."""

    def __init__(self, critic: CriticEnsemble) -> None:
        self.critic = critic
        self.slow = copy.deepcopy(critic).requires_grad_(False)
        cfg = critic.cfg
        self.opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr, eps=cfg.eps)

    @torch.no_grad()
    def update_slow(self) -> None:
        mix = self.critic.cfg.slow_target_fraction
        for s, d in zip(self.critic.parameters(), self.slow.parameters()):
            d.lerp_(s, mix)

    def train_step(self, feats: torch.Tensor, reward: torch.Tensor, cont: torch.Tensor) -> dict[str, float]:
        """feats (H+1, N, F) imagined features; reward, cont (H+1, N) per imagined state."""
        cfg = self.critic.cfg
        self.update_slow()
        feats = feats.detach()
        with torch.no_grad():
            value = self.critic(feats)
            discount = cfg.discount * cont
            target = lambda_return(reward[:-1], value, discount[:-1], cfg.lam)
            weights = torch.cumprod(torch.cat([torch.ones_like(discount[:1]), discount[:-2]], 0), 0)
            slow = self.slow(feats[:-1])
        members = self.critic.all_values(feats[:-1])  # (M, H, N)
        loss = ((members - target).pow(2) + (members - slow).pow(2)).mean(0)  # normal, fixed std: MSE
        loss = (weights * loss).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
        self.opt.step()
        return {"critic_loss": loss.item(), "value_mean": value.mean().item(), "target_mean": target.mean().item(),
                "imag_reward": reward.mean().item(), "ensemble_std": members.std(0).mean().item()}
