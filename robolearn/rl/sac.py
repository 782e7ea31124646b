"""Soft Actor-Critic with a critic ensemble (REDQ-style), readable top to bottom.

  critic (every batch):  y = r + gamma (1 - terminal) [min_{e in M} Q'_e(s', a') - alpha_b log pi(a'|s')],
                         a' ~ pi(s'), M a random subset of `num_min_qs` of the `num_qs` target critics,
                         alpha_b = alpha if `backup_entropy` else 0
  actor (once per step): minimise alpha log pi(a|s) - mean_e Q_e(s, a),  a ~ pi(s)
                         (`actor_q: min`: min_e Q_e instead of the mean, as WSRL's reference code does)
  temperature:           minimise -log_alpha (log pi(a|s) + target_entropy)
LayerNorm critics and a high update-to-data ratio (`update(batches)` takes UTD batches: each
trains the critics, the last one also the actor and temperature) are what WSRL fine-tunes with.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from robolearn.config import ConfigError
from robolearn.rl.agent import Agent, AgentConfig, mse
from robolearn.rl.networks import QEnsemble, soft_update


@dataclass
class SACConfig(AgentConfig):
    num_qs: int = 10
    num_min_qs: int = 2
    init_temperature: float = 1.0
    temperature_lr: float = 3e-4
    target_entropy: float | None = None  # default -action_dim
    backup_entropy: bool = True
    utd: int = 4
    actor_q: str = "mean"  # the actor maximises the ensemble's mean (REDQ) or its min (more pessimistic)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.actor_q not in ("mean", "min"):
            raise ConfigError(f"agent.actor_q must be mean or min, got {self.actor_q!r}")
        if not 1 <= self.num_min_qs <= self.num_qs:
            raise ConfigError(f"agent.num_min_qs must be in [1, num_qs={self.num_qs}], got {self.num_min_qs}")
        if self.init_temperature <= 0:
            raise ConfigError(f"agent.init_temperature must be > 0, got {self.init_temperature}")
        if self.utd < 1:
            raise ConfigError(f"agent.utd must be >= 1, got {self.utd}")


class SAC(Agent):
    name = "sac"

    def __init__(self, cfg: SACConfig, obs_dim: int, action_dim: int, stats: dict) -> None:
        super().__init__(cfg, obs_dim, action_dim, stats)
        self.cfg: SACConfig = cfg
        self.critic = QEnsemble(obs_dim, action_dim, cfg.num_qs, cfg.hidden_dims, cfg.activation, cfg.critic_layer_norm)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))
        self.target_entropy = float(cfg.target_entropy if cfg.target_entropy is not None else -action_dim)
        self._opt = self._make_optimizers()

    def _make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {
            "actor": torch.optim.Adam(self.actor.parameters(), lr=self.cfg.actor_lr),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=self.cfg.critic_lr),
            "temperature": torch.optim.Adam([self.log_alpha], lr=self.cfg.temperature_lr),
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._opt

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp().detach()

    # -- pieces (CQL reuses them) ----------------------------------------------------------------
    def td_target(self, next_obs: torch.Tensor, reward: torch.Tensor, not_done: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            next_action, next_logp = self.actor.sample(next_obs)
            q_next = self.critic_target(next_obs, next_action)
            if self.cfg.num_min_qs < q_next.shape[0]:
                pick = torch.randperm(q_next.shape[0], device=q_next.device)[: self.cfg.num_min_qs]
                q_next = q_next[pick]
            q_next = q_next.min(0).values
            if self.cfg.backup_entropy:
                q_next = q_next - self.alpha * next_logp
            return reward + self.cfg.discount * not_done * q_next

    def critic_loss(self, obs: torch.Tensor, action: torch.Tensor, target: torch.Tensor,
                    batch: dict[str, torch.Tensor], next_obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        q = self.critic(obs, action)
        loss = mse(q, target.expand_as(q)) * q.shape[0]
        return loss, {"td_loss": loss.item(), "q_mean": q.mean().item()}

    def actor_and_temperature_step(self, obs: torch.Tensor) -> dict[str, float]:
        action, logp = self.actor.sample(obs)
        qs = self.critic(obs, action)
        q_pi = qs.min(0).values if self.cfg.actor_q == "min" else qs.mean(0)
        actor_loss = (self.alpha * logp - q_pi).mean()
        self._opt["actor"].zero_grad(set_to_none=True)
        actor_loss.backward()
        self._opt["actor"].step()
        temp_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self._opt["temperature"].zero_grad(set_to_none=True)
        temp_loss.backward()
        self._opt["temperature"].step()
        return {"actor_loss": actor_loss.item(), "temperature": self.alpha.item(), "entropy": -logp.mean().item()}

    # -- one update --------------------------------------------------------------------------------
    def update(self, batch: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]], update_actor: bool = True) -> dict[str, float]:
        """Critic steps on each batch (UTD = number of batches), then one actor/temperature step
        (skipped with `update_actor=False`: the critics adapt while the policy is held)."""
        batches = batch if isinstance(batch, list) else [batch]
        info: dict[str, float] = {}
        for b in batches:
            obs, next_obs = self.norm(b["obs"]), self.norm(b["next_obs"])
            target = self.td_target(next_obs, b["reward"], 1.0 - b["terminal"])
            loss, info = self.critic_loss(obs, b["action"], target, b, next_obs)
            self._opt["critic"].zero_grad(set_to_none=True)
            loss.backward()
            self._opt["critic"].step()
            soft_update(self.critic_target, self.critic, self.cfg.tau)
            self.num_updates += 1
        if update_actor:
            info.update(self.actor_and_temperature_step(obs))
        return info
