"""What every RL algorithm shares: config fields, the actor-as-Policy, obs normalisation, acting.

An `Agent` is one nn.Module holding `policy` (an RLActorPolicy: the actor and the state
normaliser, exactly what `robolearn eval` loads) plus the algorithm's critics, target networks
and temperatures. Algorithms implement `update(batch) -> {metric: float}` on batches of
*unnormalised* transitions {obs, action, reward, next_obs, terminal, mc_return}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from robolearn.config import ConfigError
from robolearn.data.normalizer import Normalizer
from robolearn.policies.rl_actor.configuration import RLActorConfig
from robolearn.policies.rl_actor.modeling import RLActorPolicy

STATE_KEY = "obs/state"
MIN_STATE_STD = 1e-2  # states nearly constant in the data must not be blown up online


@dataclass
class AgentConfig:
    """Fields of every algorithm (YAML section `agent:`)."""

    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    critic_layer_norm: bool = True
    actor_layer_norm: bool = False
    num_qs: int = 2
    discount: float = 0.99
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    reward_scale: float = 1.0
    reward_bias: float = 0.0
    obs_norm: bool = True

    def __post_init__(self) -> None:
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise ConfigError(f"agent.hidden_dims must list positive widths, got {self.hidden_dims}")
        if self.num_qs < 1:
            raise ConfigError(f"agent.num_qs must be >= 1, got {self.num_qs}")
        if not 0.0 <= self.discount < 1.0:
            raise ConfigError(f"agent.discount must be in [0, 1), got {self.discount}")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"agent.tau must be in (0, 1], got {self.tau}")
        if self.actor_lr <= 0 or self.critic_lr <= 0:
            raise ConfigError("agent.actor_lr and agent.critic_lr must be positive")


def state_stats(obs: np.ndarray | None, obs_dim: int) -> dict[str, dict[str, np.ndarray]]:
    """Normaliser stats of the state vector from data (or identity-like stats without data)."""
    if obs is None or len(obs) == 0:
        zeros, ones = np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32)
        return {STATE_KEY: {"min": -ones, "max": ones, "mean": zeros, "std": ones}}
    obs = np.asarray(obs, np.float64)
    return {STATE_KEY: {"min": obs.min(0), "max": obs.max(0), "mean": obs.mean(0),
                        "std": np.maximum(obs.std(0), MIN_STATE_STD)}}


def build_policy(cfg: AgentConfig, obs_dim: int, action_dim: int, stats: dict[str, Any]) -> RLActorPolicy:
    pcfg = RLActorConfig(
        input_shapes={"state": [obs_dim]}, action_dim=action_dim,
        state_norm="gaussian" if cfg.obs_norm else "identity",
        hidden_dims=list(cfg.hidden_dims), activation=cfg.activation, layer_norm=cfg.actor_layer_norm,
    )
    modes = pcfg.normalizer_modes()
    return RLActorPolicy(pcfg, Normalizer({STATE_KEY: stats[STATE_KEY]}, modes))


class Agent(nn.Module):
    """Base class: subclasses set `name`, build critics in __init__, implement `update`."""

    name: ClassVar[str]

    def __init__(self, cfg: AgentConfig, obs_dim: int, action_dim: int, stats: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.policy = build_policy(cfg, obs_dim, action_dim, stats)
        self.num_updates = 0

    @property
    def actor(self) -> nn.Module:
        return self.policy.actor

    @property
    def device(self) -> torch.device:
        return next(iter(self.parameters())).device

    def norm(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy.normalize_state(obs)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimizers (checkpointed by name)."""
        raise NotImplementedError

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True, generator: torch.Generator | None = None) -> np.ndarray:
        """One action in [-1, 1] for one (D,) or a batch (B, D) of raw states."""
        x = torch.as_tensor(np.asarray(obs, np.float32), device=self.device)
        single = x.ndim == 1
        x = self.norm(x[None] if single else x)
        if deterministic:
            a = self.actor.mode(x)
        else:
            a, _ = self.actor.sample(x, generator=generator)
        a = a.cpu().numpy()
        return a[0] if single else a

    def to_batch_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dev = self.device
        return {k: v.to(dev) for k, v in batch.items()}


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2).mean()
