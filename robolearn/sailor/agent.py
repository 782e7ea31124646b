"""The planner-augmented policy: base diffusion policy + world model + reward model + critic.

`SailorPolicy` has the interface evaluation drives (`config.n_obs_steps`, `config.obs_keys`,
`select_action(obs_history)`, `reset(mask)`) and is registered as policy "sailor", so
`robolearn eval --checkpoint RUN/policy` rebuilds it with `load_policy`. Its checkpoint is an
ordinary robolearn checkpoint whose weights are nested: `base.*` (the diffusion policy, with its
normalizer), `world_model.*`, `reward_model.*`, `critic.*`.

Every step: the base policy proposes a chunk from the observation history; the world model's
posterior is updated with the current state and the previously executed action; the residual
MPPI planner corrects the next `planner.horizon` actions of the chunk in imagination; the first
corrected action is executed (re-planning every step, as in the official code).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from robolearn.data.normalizer import Normalizer
from robolearn.policies.configuration import obs_stat_key
from robolearn.policies.diffusion.modeling import DiffusionPolicy
from robolearn.sailor.configuration import SailorConfig
from robolearn.sailor.critic import CriticEnsemble
from robolearn.sailor.planner import latent_score_fn, plan_residual, total_action
from robolearn.sailor.reward_model import RewardModel
from robolearn.sailor.world_model import State, WorldModel, repeat_state


class SailorPolicy(nn.Module):
    name: ClassVar[str] = "sailor"

    def __init__(self, config: SailorConfig, normalizer: Normalizer) -> None:
        super().__init__()
        config.require_features()
        if config.critic.imag_horizon > config.planner.horizon:
            raise ValueError(
                f"critic.imag_horizon ({config.critic.imag_horizon}) cannot exceed planner.horizon "
                f"({config.planner.horizon}): imagined rollouts use the stored base chunks"
            )
        self.config = config
        self.base = DiffusionPolicy(config.base, normalizer)
        self.world_model = WorldModel(config.world_model, config.state_dim, config.action_dim)
        self.reward_model = RewardModel(config.reward, config.world_model.feat_dim)
        self.critic = CriticEnsemble(config.critic, config.world_model.feat_dim)
        self.use_planner = config.use_planner
        self._latent: State | None = None
        self._prev_action: torch.Tensor | None = None
        self._is_first: torch.Tensor | None = None
        # what the last select_action did (the loop records these)
        self.last_base_chunk: torch.Tensor | None = None  # (B, T, A) the base policy's full chunk
        self.last_residual: torch.Tensor | None = None  # (B, H, A)

    @classmethod
    def from_stats(cls, config: SailorConfig, stats: dict[str, dict[str, Any]]) -> "SailorPolicy":
        modes = config.normalizer_modes()
        return cls(config, Normalizer({k: stats[k] for k in modes if k in stats}, modes))

    @property
    def normalizer(self) -> Normalizer:
        return self.base.normalizer

    @property
    def device(self) -> torch.device:
        return next(iter(self.parameters())).device

    # -- helpers ---------------------------------------------------------------------------------
    def wm_state(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalized state features (..., Ds) the world model reads, from raw {key: (..., D)}."""
        parts = [self.normalizer.normalize(obs_stat_key(k), obs[k].to(self.device).float()) for k in self.config.base.state_keys]
        return torch.cat(parts, -1)

    def plan_slice(self, chunk: torch.Tensor) -> torch.Tensor:
        """The next `planner.horizon` actions (from the current step) of a base chunk (B, T, A)."""
        start = self.config.n_obs_steps - 1
        return chunk[:, start : start + self.config.planner.horizon]

    def posterior_step(self, state_t: torch.Tensor, is_first: torch.Tensor, latent: State | None,
                       prev_action: torch.Tensor) -> State:
        embed = self.world_model.embed(state_t)
        post, _ = self.world_model.dynamics.obs_step(latent, prev_action, embed, is_first)
        return post

    @torch.no_grad()
    def plan(self, latent: State, base_plan: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Residual chunk (B, H, A) for posteriors `latent` (B, ...) and base plans (B, H, A)."""
        pcfg = self.config.planner
        start = repeat_state(latent, pcfg.num_samples)
        score = latent_score_fn(self.world_model, self.reward_model, self.critic, start, pcfg, generator)
        residual, _ = plan_residual(base_plan, score, pcfg, generator)
        return residual

    # -- closed loop -----------------------------------------------------------------------------
    @torch.no_grad()
    def select_action(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        batch = next(iter(obs.values())).shape[0]
        device = self.device
        if self._prev_action is None or self._prev_action.shape[0] != batch:
            self._latent = None
            self._prev_action = torch.zeros(batch, self.config.action_dim, device=device)
            self._is_first = torch.ones(batch, dtype=torch.bool, device=device)
        chunk = self.base.predict_action(obs, generator=generator)
        base_plan = self.plan_slice(chunk)
        state_t = self.wm_state({k: v[:, -1] for k, v in obs.items() if k in self.config.base.state_keys})
        self._latent = self.posterior_step(state_t, self._is_first, self._latent, self._prev_action)
        if self.use_planner:
            residual = self.plan(self._latent, base_plan, generator)
        else:
            residual = torch.zeros_like(base_plan)
        action = total_action(base_plan[:, 0], residual[:, 0])
        self.last_base_chunk, self.last_residual = chunk, residual
        self._prev_action = action
        self._is_first = torch.zeros_like(self._is_first)
        return action

    def set_executed(self, action: torch.Tensor) -> None:
        """Tell the world model which action was really executed (e.g. after exploration noise)."""
        self._prev_action = action.to(self.device, torch.float32)

    def reset(self, env_mask: torch.Tensor | None = None) -> None:
        self.base.reset(env_mask)
        if env_mask is None or self._is_first is None:
            self._latent, self._prev_action, self._is_first = None, None, None
        else:
            self._is_first[env_mask.to(self._is_first.device)] = True
