"""The RL actor as a robolearn Policy, so `robolearn eval` and every evaluator can drive it."""

from __future__ import annotations

import torch

from robolearn.data.normalizer import Normalizer
from robolearn.policies.base import Batch, Policy
from robolearn.policies.configuration import obs_stat_key
from robolearn.policies.rl_actor.configuration import RLActorConfig
from robolearn.rl.networks import TanhGaussianActor


class RLActorPolicy(Policy):
    """Wraps a TanhGaussianActor: normalised state -> tanh(mean) (deterministic) in [-1, 1]."""

    name = "rl_actor"

    def __init__(self, config: RLActorConfig, normalizer: Normalizer) -> None:
        super().__init__(config, normalizer)
        self.config: RLActorConfig = config
        self.state_key = config.state_keys[0]
        obs_dim = int(config.input_shapes[self.state_key][0])
        self.actor = TanhGaussianActor(obs_dim, config.action_dim, config.hidden_dims, config.activation,
                                       config.layer_norm, config.log_std_min, config.log_std_max)

    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        """(B, D) raw states -> normalised actor input."""
        return self.normalizer.normalize(obs_stat_key(self.state_key), state.to(self.device).float())

    def compute_loss(self, batch: Batch) -> torch.Tensor:
        """Behaviour cloning by maximum likelihood (lets `robolearn train` pretrain the actor)."""
        obs = self.normalize_obs(batch["obs"])[self.state_key][:, -1]
        action = self.normalized_actions(batch)[:, 0]
        return -self.actor.mean_log_prob(obs, action) / self.config.action_dim

    @torch.no_grad()
    def predict_action(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        state = self.normalize_obs(obs)[self.state_key]
        if state.ndim != 3 or state.shape[1] != 1:
            raise ValueError(f"rl_actor expects observations of shape (B, 1, D), got {tuple(state.shape)}")
        action = self.actor.mode(state[:, -1])
        return self.unnormalize_actions(action)[:, None]
