"""Implicit Q-Learning (Kostrikov, Nair & Levine, 2021), readable top to bottom.

Never queries Q at actions outside the dataset:
  1. V(s) <- expectile_tau of Q_target(s, a) over dataset actions      (L2 with asymmetric weight)
  2. Q(s, a) <- r + gamma (1 - terminal) V(s')                          (every ensemble member)
  3. pi <- argmax E[exp(beta (Q_target(s, a) - V(s))) log pi(a|s)]     (advantage-weighted regression)
Defaults follow the paper's MuJoCo settings: tau = 0.7, beta = 3, advantage weights clipped at 100.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from robolearn.config import ConfigError
from robolearn.rl.agent import Agent, AgentConfig, mse
from robolearn.rl.networks import QEnsemble, ValueNet, soft_update


@dataclass
class IQLConfig(AgentConfig):
    expectile: float = 0.7
    beta: float = 3.0
    max_weight: float = 100.0
    value_lr: float = 3e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.expectile < 1.0:
            raise ConfigError(f"agent.expectile must be in (0, 1), got {self.expectile}")


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return (weight * diff**2).mean()


class IQL(Agent):
    name = "iql"

    def __init__(self, cfg: IQLConfig, obs_dim: int, action_dim: int, stats: dict) -> None:
        super().__init__(cfg, obs_dim, action_dim, stats)
        self.cfg: IQLConfig = cfg
        self.critic = QEnsemble(obs_dim, action_dim, cfg.num_qs, cfg.hidden_dims, cfg.activation, cfg.critic_layer_norm)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = ValueNet(obs_dim, cfg.hidden_dims, cfg.activation, cfg.critic_layer_norm)
        self._opt = {
            "actor": torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr),
            "value": torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr),
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._opt

    @torch.no_grad()
    def advantage_weights(self, obs: torch.Tensor, action: torch.Tensor,
                          q_target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantage, regression weight) of dataset pairs, obs already normalized: A = min_e Q_target_e(s, a)
        - V(s), weight = min(exp(beta A), max_weight). The actor's loss weights each pair by it; exposed so
        that a trained agent's weighting of a dataset can be inspected (which data the actor imitates)."""
        if q_target is None:
            q_target = self.critic_target(obs, action).min(0).values
        adv = q_target - self.value(obs)
        return adv, torch.exp(self.cfg.beta * adv).clamp(max=self.cfg.max_weight)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.cfg
        obs, next_obs = self.norm(batch["obs"]), self.norm(batch["next_obs"])
        action, reward, not_done = batch["action"], batch["reward"], 1.0 - batch["terminal"]

        # 1) value: expectile regression towards the (target) critic's min over members
        with torch.no_grad():
            q_target = self.critic_target(obs, action).min(0).values
        v = self.value(obs)
        value_loss = expectile_loss(q_target - v, cfg.expectile)
        self._opt["value"].zero_grad(set_to_none=True)
        value_loss.backward()
        self._opt["value"].step()

        # 2) actor: advantage-weighted regression on dataset actions
        adv, weight = self.advantage_weights(obs, action, q_target)  # no grad: the method runs under no_grad
        actor_loss = -(weight * self.actor.mean_log_prob(obs, action)).mean()
        self._opt["actor"].zero_grad(set_to_none=True)
        actor_loss.backward()
        self._opt["actor"].step()

        # 3) critics: one-step TD towards r + gamma V(s')
        with torch.no_grad():
            target = reward + cfg.discount * not_done * self.value(next_obs)
        q = self.critic(obs, action)
        critic_loss = mse(q, target.expand_as(q)) * q.shape[0]
        self._opt["critic"].zero_grad(set_to_none=True)
        critic_loss.backward()
        self._opt["critic"].step()
        soft_update(self.critic_target, self.critic, cfg.tau)

        self.num_updates += 1
        return {"value_loss": value_loss.item(), "actor_loss": actor_loss.item(), "critic_loss": critic_loss.item(),
                "q_mean": q.mean().item(), "adv_mean": adv.mean().item()}
