"""Behaviour cloning: observation history -> MLP -> action chunk (deterministic or GMM head)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robolearn.data.normalizer import Normalizer
from robolearn.nn.gmm import GMMHead
from robolearn.nn.mlp import MLP
from robolearn.policies.base import Batch, Policy
from robolearn.policies.bc.configuration import BCConfig
from robolearn.policies.observation import ObservationEncoder


class BCPolicy(Policy):
    """robomimic-style BC. `cond_dim` > 0 adds an extra conditioning vector (e.g. a primitive id
    one-hot from the hierarchical policy) that is concatenated to the observation features."""

    name = "bc"

    def __init__(self, config: BCConfig, normalizer: Normalizer, cond_dim: int = 0) -> None:
        super().__init__(config, normalizer)
        self.config: BCConfig = config
        self.cond_dim = cond_dim
        self.obs_encoder = ObservationEncoder(config)
        in_dim = self.obs_encoder.out_dim + cond_dim
        chunk_dim = config.horizon * config.action_dim
        if config.head == "gmm":
            self.head: torch.nn.Module = GMMHead(
                in_dim,
                chunk_dim,
                num_modes=config.gmm_num_modes,
                hidden_dims=config.hidden_dims,
                activation=config.activation,
                min_std=config.gmm_min_std,
                tanh_means=config.gmm_tanh_means,
                low_noise_eval=config.gmm_low_noise_eval,
            )
        else:
            self.head = MLP(in_dim, chunk_dim, config.hidden_dims, config.activation, config.layer_norm, config.dropout)

    def compute_loss(self, batch: Batch, cond: torch.Tensor | None = None) -> torch.Tensor:
        target = self.normalized_actions(batch).flatten(1)
        features = self.encode_with_cond(batch["obs"], cond)
        if self.config.head == "gmm":
            # Negative log-likelihood per action dimension, so its scale does not grow with T*Da.
            return -self.head.log_prob(features, target) / target.shape[1]
        prediction = self.head(features)
        if self.config.loss == "l1":
            return F.l1_loss(prediction, target, reduction="none").mean(dim=1)
        return F.mse_loss(prediction, target, reduction="none").mean(dim=1)

    @torch.no_grad()
    def predict_action(
        self,
        obs: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        features = self.encode_with_cond(obs, cond)
        if self.config.head == "gmm":
            if self.config.gmm_inference == "mode":
                flat = self.head.mode(features)
            else:
                flat = self.head.sample(features, generator=generator)
        else:
            flat = self.head(features)
        chunk = flat.reshape(-1, self.config.horizon, self.config.action_dim)
        return self.unnormalize_actions(chunk)
