"""TD3+BC (Fujimoto & Gu, 2021): TD3 with a behaviour-cloning term, readable top to bottom.

  critic: y = r + gamma (1 - terminal) min_e Q'_e(s', clip(pi'(s') + clip(N(0, sigma), -c, c)))
  actor (every `policy_freq` updates): maximise lambda Q_1(s, pi(s)) - ||pi(s) - a||^2 with
         lambda = alpha / mean|Q_1(s, pi(s))|
The deterministic policy is the shared tanh-Gaussian actor's mode tanh(mu(s)) (its std is unused),
so a TD3+BC checkpoint evaluates and fine-tunes like any other.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from robolearn.rl.agent import Agent, AgentConfig, mse
from robolearn.rl.networks import QEnsemble, soft_update


@dataclass
class TD3BCConfig(AgentConfig):
    alpha: float = 2.5
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_freq: int = 2


class TD3BC(Agent):
    name = "td3bc"

    def __init__(self, cfg: TD3BCConfig, obs_dim: int, action_dim: int, stats: dict) -> None:
        super().__init__(cfg, obs_dim, action_dim, stats)
        self.cfg: TD3BCConfig = cfg
        self.critic = QEnsemble(obs_dim, action_dim, cfg.num_qs, cfg.hidden_dims, cfg.activation, cfg.critic_layer_norm)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self._opt = {
            "actor": torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr),
        }
        self._last_actor: dict[str, float] = {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._opt

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.cfg
        obs, next_obs = self.norm(batch["obs"]), self.norm(batch["next_obs"])
        action, reward, not_done = batch["action"], batch["reward"], 1.0 - batch["terminal"]

        with torch.no_grad():
            noise = (torch.randn_like(action) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            next_action = (self.actor_target.mode(next_obs) + noise).clamp(-1.0, 1.0)
            target = reward + cfg.discount * not_done * self.critic_target(next_obs, next_action).min(0).values
        q = self.critic(obs, action)
        critic_loss = mse(q, target.expand_as(q)) * q.shape[0]
        self._opt["critic"].zero_grad(set_to_none=True)
        critic_loss.backward()
        self._opt["critic"].step()

        self.num_updates += 1
        if self.num_updates % cfg.policy_freq == 0:
            pi = self.actor.mode(obs)
            q_pi = self.critic(obs, pi, member=0)
            lam = cfg.alpha / q_pi.abs().mean().detach().clamp_min(1e-6)
            bc = mse(pi, action)
            actor_loss = -lam * q_pi.mean() + bc
            self._opt["actor"].zero_grad(set_to_none=True)
            actor_loss.backward()
            self._opt["actor"].step()
            soft_update(self.critic_target, self.critic, cfg.tau)
            soft_update(self.actor_target, self.actor, cfg.tau)
            self._last_actor = {"actor_loss": actor_loss.item(), "bc_mse": bc.item()}
        return {"critic_loss": critic_loss.item(), "q_mean": q.mean().item(), **self._last_actor}
