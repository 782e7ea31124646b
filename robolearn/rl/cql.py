"""Conservative Q-Learning (Kumar et al., 2020) and Cal-QL (Nakamoto et al., 2023).

SAC (robolearn.rl.sac) plus a conservative penalty on every critic, as in the JaxCQL code:

  penalty_e = cql_temp * logsumexp_j [ Q_e(s, a_j) - log density(a_j) ] / cql_temp - Q_e(s, a_data)

over n_actions uniform random actions (density 0.5^A), n_actions policy actions at s and
n_actions policy actions at s' (importance-sampled by their log-probabilities). The critic loss
is TD + cql_alpha * mean(penalty_e), summed over members.

Cal-QL (`calql: true`) calibrates the penalty: the Q-values of policy actions are first lower-
bounded by the Monte-Carlo return-to-go of the dataset trajectory (`mc_return`), so the critic
is never pushed below a reference policy's value -- which is what keeps online fine-tuning from
an initial unlearning dip. Online fine-tuning (`robolearn finetune --algo calql`) gives online
rows their return-to-go once their episode ends (ReplayBuffer `returns_to_go`); rows of running
episodes carry -inf, i.e. no bound, and so do batches without `mc_return`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from robolearn.config import ConfigError
from robolearn.rl.agent import mse
from robolearn.rl.sac import SAC, SACConfig


@dataclass
class CQLConfig(SACConfig):
    num_qs: int = 2
    num_min_qs: int = 2
    utd: int = 1
    backup_entropy: bool = False
    cql_alpha: float = 5.0
    cql_n_actions: int = 10
    cql_temp: float = 1.0
    calql: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cql_n_actions < 1:
            raise ConfigError(f"agent.cql_n_actions must be >= 1, got {self.cql_n_actions}")
        if self.cql_temp <= 0:
            raise ConfigError(f"agent.cql_temp must be > 0, got {self.cql_temp}")


class CQL(SAC):
    name = "cql"

    def __init__(self, cfg: CQLConfig, obs_dim: int, action_dim: int, stats: dict) -> None:
        super().__init__(cfg, obs_dim, action_dim, stats)
        self.cfg: CQLConfig = cfg

    def _q_repeated(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q of (B, N, A) actions at (B, D) states -> (E, B, N)."""
        b, n, a = actions.shape
        obs_rep = obs[:, None].expand(b, n, obs.shape[-1]).reshape(b * n, -1)
        return self.critic(obs_rep, actions.reshape(b * n, a)).reshape(-1, b, n)

    def _policy_actions(self, obs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = obs.shape[0]
        rep = obs[:, None].expand(b, n, obs.shape[-1]).reshape(b * n, -1)
        with torch.no_grad():
            act, logp = self.actor.sample(rep)
        return act.reshape(b, n, -1), logp.reshape(b, n)

    def critic_loss(self, obs, action, target, batch, next_obs):
        cfg = self.cfg
        q = self.critic(obs, action)  # (E, B)
        td = mse(q, target.expand_as(q)) * q.shape[0]
        b, n, a_dim = obs.shape[0], cfg.cql_n_actions, self.action_dim
        rand = torch.rand(b, n, a_dim, device=obs.device) * 2 - 1
        cur_a, cur_logp = self._policy_actions(obs, n)
        nxt_a, nxt_logp = self._policy_actions(next_obs, n)
        q_rand = self._q_repeated(obs, rand)
        q_cur = self._q_repeated(obs, cur_a)
        q_nxt = self._q_repeated(obs, nxt_a)
        bound_rate = bound_rate_next = 0.0  # shares of the policy actions' Q-values (drawn at s, at s') below the bound
        if cfg.calql and "mc_return" in batch:
            lower = batch["mc_return"][None, :, None]
            bound_rate = (q_cur < lower).float().mean().item()
            bound_rate_next = (q_nxt < lower).float().mean().item()
            q_cur = torch.maximum(q_cur, lower)
            q_nxt = torch.maximum(q_nxt, lower)
        log_density = a_dim * math.log(0.5)
        cat = torch.cat([q_rand - log_density, q_nxt - nxt_logp[None], q_cur - cur_logp[None]], dim=2)
        ood = cfg.cql_temp * torch.logsumexp(cat / cfg.cql_temp, dim=2)  # (E, B)
        penalty = (ood - q).mean(1).sum()
        loss = td + cfg.cql_alpha * penalty
        return loss, {"td_loss": td.item(), "cql_penalty": penalty.item(), "q_mean": q.mean().item(),
                      "calql_bound_rate": bound_rate, "calql_bound_rate_next": bound_rate_next}


class CalQL(CQL):
    """CQL with the Cal-QL calibration switched on (registered as algorithm `calql`)."""

    name = "calql"
