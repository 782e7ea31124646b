"""Moment-matching reward model (SAILOR's "discriminator", state-only as in the official code).

f: latent feature -> scalar. Loss = E_learner[f(z)] - E_expert[f(z)] + gp_weight * GP, where GP
pulls the gradient norm of f at random interpolates of expert and learner features towards
`gp_target` (official: weight 10, target 0.4). The planner's reward is r(z) = f(z).
"""

from __future__ import annotations

import torch
from torch import nn

from robolearn.sailor.configuration import RewardConfig
from robolearn.sailor.world_model import mlp


class RewardModel(nn.Module):
    def __init__(self, cfg: RewardConfig, feat_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = mlp(feat_dim, 1, cfg.units, cfg.layers, out_scale=0.0)  # outscale 0: starts at r = 0

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.net(feat).squeeze(-1)

    def gradient_penalty(self, learner: torch.Tensor, expert: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n = min(len(learner), len(expert))
        learner, expert = learner[:n].detach(), expert[:n].detach()
        alpha = torch.rand(n, 1, generator=generator, device=expert.device, dtype=expert.dtype)
        mix = (alpha * expert + (1 - alpha) * learner).requires_grad_(True)
        out = self(mix)
        (grad,) = torch.autograd.grad(out.sum(), mix, create_graph=True)
        norm = torch.sqrt(grad.pow(2).sum(-1) + 1e-12)
        return (norm - self.cfg.gp_target).pow(2).mean()

    def loss(self, learner: torch.Tensor, expert: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """learner/expert: (N, F) latent features (detached from the world model)."""
        pure = self(learner.detach()).mean() - self(expert.detach()).mean()
        gp = self.gradient_penalty(learner, expert)
        loss = pure + self.cfg.gp_weight * gp
        return loss, {"rm_loss": loss.item(), "rm_moment_gap": -pure.item(), "rm_gp": gp.item()}
