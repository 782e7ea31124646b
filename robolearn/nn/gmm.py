"""Gaussian-mixture output head (robomimic's BC-GMM), usable on any feature vector.

A mixture of diagonal Gaussians represents multi-modal targets (two ways around an obstacle)
that a deterministic L2 head would average into an invalid middle. Trained by maximum likelihood.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from robolearn.nn.mlp import MLP


class GMMHead(nn.Module):
    """features (B, in_dim) -> mixture of `num_modes` diagonal Gaussians over `out_dim` values.

    `tanh_means` squashes component means into [-1, 1], matching minmax-normalized actions.
    `low_noise_eval` shrinks stds to `eval_std` in eval mode so sampling stays near the modes
    (robomimic's default).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_modes: int = 5,
        hidden_dims: Sequence[int] = (),
        activation: str = "relu",
        min_std: float = 1e-4,
        tanh_means: bool = True,
        low_noise_eval: bool = True,
        eval_std: float = 1e-4,
    ) -> None:
        super().__init__()
        if num_modes < 1:
            raise ValueError(f"a GMM needs at least one mode, got {num_modes}")
        self.out_dim = out_dim
        self.num_modes = num_modes
        self.min_std = min_std
        self.tanh_means = tanh_means
        self.low_noise_eval = low_noise_eval
        self.eval_std = eval_std
        # One projection predicts means, pre-softplus stds and mixture logits together.
        self.proj = MLP(in_dim, num_modes * (2 * out_dim + 1), hidden_dims, activation)

    def parameters_of(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Means (B, M, D), stds (B, M, D) and mixture logits (B, M)."""
        m, d = self.num_modes, self.out_dim
        out = self.proj(features)
        means = out[:, : m * d].reshape(-1, m, d)
        raw_std = out[:, m * d : 2 * m * d].reshape(-1, m, d)
        logits = out[:, 2 * m * d :]
        if self.tanh_means:
            means = torch.tanh(means)
        if self.low_noise_eval and not self.training:
            stds = torch.full_like(raw_std, self.eval_std)
        else:
            stds = F.softplus(raw_std) + self.min_std
        return means, stds, logits

    def forward(self, features: torch.Tensor) -> D.MixtureSameFamily:
        means, stds, logits = self.parameters_of(features)
        components = D.Independent(D.Normal(means, stds), 1)
        return D.MixtureSameFamily(D.Categorical(logits=logits), components)

    def log_prob(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample log-likelihood (B,) of targets (B, out_dim)."""
        return self(features).log_prob(target)

    def mode(self, features: torch.Tensor) -> torch.Tensor:
        """The mean of the most probable component (B, out_dim): a deterministic action."""
        means, _, logits = self.parameters_of(features)
        best = logits.argmax(dim=-1)
        return means[torch.arange(means.shape[0], device=means.device), best]

    def sample(self, features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A sample (B, out_dim); pass a generator for reproducible draws."""
        means, stds, logits = self.parameters_of(features)
        component = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
        rows = torch.arange(means.shape[0], device=means.device)
        noise = torch.randn(means.shape[0], self.out_dim, generator=generator, device=means.device, dtype=means.dtype)
        return means[rows, component] + stds[rows, component] * noise
