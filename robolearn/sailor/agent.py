"""The planner-augmented policy: base diffusion policy + world model + reward model + critic.

`SailorPolicy` has the interface evaluation drives (`config.n_obs_steps`, `config.obs_keys`,
`select_action(obs_history)`, `reset(mask)`) and is registered as policy "sailor", so
`robolearn eval --checkpoint RUN/policy` rebuilds it with `load_policy`. Its checkpoint is an
ordinary robolearn checkpoint whose weights are nested: `base.*` (the diffusion policy, with its
normalizer), `world_model.*`, `reward_model.*`, `critic.*`, and the `planner_ready` flag.

Execution is the base policy's own: a decision is made once per chunk, when an environment's
queue of `n_action_steps` actions runs out. The base policy draws its chunk exactly as it does
alone (same rows, same order, torch's global RNG), the planner corrects the next
`planner.horizon` actions, and the first `n_action_steps` of the corrected plan are queued. The
world model's posterior follows every step (state and executed action); the planner and the
posterior draw only from the agent's own generator, so with the planner off, not ready, or its
residual rejected, the actions are exactly the base policy's.
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
from robolearn.sailor.planner import LatentScorer, PlanResult, plan_residual, total_action
from robolearn.sailor.reward_model import RewardModel
from robolearn.sailor.world_model import State, WorldModel


class PlannerStats:
    """Running sums of the planner's decisions (the loop logs and resets them)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.decisions = 0
        self.accepted = 0
        self.predicted_gain = 0.0
        self.rescored_gain = 0.0
        self.gain_se = 0.0

    def add(self, result: PlanResult) -> None:
        self.decisions += int(result.accepted.numel())
        self.accepted += int(result.accepted.sum())
        self.predicted_gain += float(result.predicted_gain.sum())
        self.rescored_gain += float(result.rescored_gain.sum())
        self.gain_se += float(result.gain_se.sum())

    def summary(self, prefix: str = "planner_") -> dict[str, float]:
        n = max(self.decisions, 1)
        return {f"{prefix}decisions": self.decisions, f"{prefix}accept_frac": self.accepted / n,
                f"{prefix}predicted_gain": self.predicted_gain / n, f"{prefix}rescored_gain": self.rescored_gain / n,
                f"{prefix}gain_se": self.gain_se / n}


class SailorPolicy(nn.Module):
    name: ClassVar[str] = "sailor"

    def __init__(self, config: SailorConfig, normalizer: Normalizer) -> None:
        super().__init__()
        config.require_features()
        config.check_horizons()
        self.config = config
        self.base = DiffusionPolicy(config.base, normalizer)
        self.world_model = WorldModel(config.world_model, config.state_dim, config.action_dim)
        self.reward_model = RewardModel(config.reward, config.world_model.feat_dim)
        self.critic = CriticEnsemble(config.critic, config.world_model.feat_dim)
        # set by the training loop once the world model beats the constant-state predictor
        self.register_buffer("planner_ready", torch.zeros((), dtype=torch.bool))
        self.use_planner = config.use_planner
        self.generator = torch.Generator().manual_seed(config.planner_seed)
        self.stats = PlannerStats()
        self._clear()

    def _clear(self) -> None:
        self._latent: State | None = None
        self._prev_action: torch.Tensor | None = None
        self._is_first: torch.Tensor | None = None
        self._queue: torch.Tensor | None = None  # (B, n_action_steps, A) the executed part of each env's plan
        self._queue_pos: torch.Tensor | None = None  # (B,)
        self.current_chunk: torch.Tensor | None = None  # (B, T, A) the base chunk of each env's last decision
        self.current_residual: torch.Tensor | None = None  # (B, H, A) its executed residual (zeros if rejected)
        self.current_offset: torch.Tensor | None = None  # (B,) index of this step's action within the chunk

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "SailorPolicy":
        """Module moves (`.to(device)`) also move the planner's generator: a CPU generator cannot
        drive sampling on CUDA (moved, it is re-seeded with planner_seed, as `reset()` does)."""
        out = super()._apply(fn, *args, **kwargs)
        device = self.device
        if self.generator.device != device:
            self.generator = torch.Generator(device).manual_seed(self.config.planner_seed)
        return out

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

    @property
    def planning(self) -> bool:
        return bool(self.use_planner and self.planner_ready)

    # -- helpers ---------------------------------------------------------------------------------
    def wm_state(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalized state features (..., Ds) the world model reads, from raw {key: (..., D)}."""
        parts = [self.normalizer.normalize(obs_stat_key(k), obs[k].to(self.device).float()) for k in self.config.base.state_keys]
        return torch.cat(parts, -1)

    def plan_slice(self, chunk: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """`planner.horizon` actions of a base chunk (B, T, A) from the current step (+ offset)."""
        start = self.config.n_obs_steps - 1 + offset
        return chunk[:, start : start + self.config.planner.horizon]

    def posterior_step(self, state_t: torch.Tensor, is_first: torch.Tensor, latent: State | None,
                       prev_action: torch.Tensor) -> State:
        embed = self.world_model.embed(state_t)
        post, _ = self.world_model.dynamics.obs_step(latent, prev_action, embed, is_first, generator=self.generator)
        return post

    @torch.no_grad()
    def plan(self, latent: State, base_plan: torch.Tensor) -> PlanResult:
        """Guarded residual search for posteriors `latent` (B, ...) and base plans (B, H, A)."""
        scorer = LatentScorer(self.world_model, self.reward_model, self.critic, latent, self.config.planner)
        return plan_residual(base_plan, scorer, self.config.planner, self.generator)

    # -- closed loop -----------------------------------------------------------------------------
    @torch.no_grad()
    def select_action(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """The next action (B, A); a decision (base chunk + planner) only where a queue ran out."""
        batch = next(iter(obs.values())).shape[0]
        device = self.device
        cfg = self.config
        n_act, H, A = cfg.base.n_action_steps, cfg.planner.horizon, cfg.action_dim
        if self._queue is None or self._queue.shape[0] != batch:
            self._latent = None
            self._prev_action = torch.zeros(batch, A, device=device)
            self._is_first = torch.ones(batch, dtype=torch.bool, device=device)
            self._queue = torch.zeros(batch, n_act, A, device=device)
            self._queue_pos = torch.full((batch,), n_act, dtype=torch.long, device=device)
            self.current_chunk = torch.zeros(batch, cfg.base.horizon, A, device=device)
            self.current_residual = torch.zeros(batch, H, A, device=device)
            self.current_offset = torch.zeros(batch, dtype=torch.long, device=device)
        planning = self.planning
        if planning:
            state_t = self.wm_state({k: v[:, -1] for k, v in obs.items() if k in cfg.base.state_keys})
            self._latent = self.posterior_step(state_t, self._is_first, self._latent, self._prev_action)
        else:
            self._latent = None  # not followed while off: the posterior restarts when planning starts
        replan = self._queue_pos >= n_act
        if replan.any():
            rows = replan.nonzero().squeeze(1)
            sub_obs = {k: v[rows.to(v.device)] for k, v in obs.items()}
            chunk = self.base.predict_action(sub_obs, generator=generator)  # exactly as the base draws it
            base_plan = self.plan_slice(chunk)
            residual = torch.zeros_like(base_plan)
            executed = base_plan
            if planning:
                result = self.plan({k: v[rows] for k, v in self._latent.items()}, base_plan)
                self.stats.add(result)
                residual = result.residual
                accepted = result.accepted[:, None, None]
                executed = torch.where(accepted, total_action(base_plan, residual), base_plan)
            self._queue[rows] = executed[:, :n_act].to(self._queue.dtype)
            self._queue_pos[rows] = 0
            self.current_chunk[rows] = chunk.to(self.current_chunk.dtype)
            self.current_residual[rows] = residual.to(self.current_residual.dtype)
        idx = torch.arange(batch, device=device)
        action = self._queue[idx, self._queue_pos]
        self.current_offset = self._queue_pos.clone()
        self._queue_pos += 1
        self._prev_action = action
        self._is_first = torch.zeros_like(self._is_first)
        return action

    def set_executed(self, action: torch.Tensor) -> None:
        """Tell the world model which action was really executed (e.g. after exploration noise)."""
        self._prev_action = action.to(self.device, torch.float32)

    def reset(self, env_mask: torch.Tensor | None = None) -> None:
        self.base.reset(env_mask)
        if env_mask is None or self._queue is None:
            self._clear()
            self.generator.manual_seed(self.config.planner_seed)
        else:
            mask = env_mask.to(self._queue_pos.device)
            self._is_first[mask] = True
            self._queue_pos[mask] = self.config.base.n_action_steps

    # -- exact resume ----------------------------------------------------------------------------
    def closed_loop_state(self) -> dict[str, torch.Tensor]:
        """Tensors of the per-env execution state (queues, posterior, generator) for a checkpoint."""
        out: dict[str, torch.Tensor] = {"generator": self.generator.get_state()}
        if self._queue is None:
            return out
        for name in ("_prev_action", "_is_first", "_queue", "_queue_pos", "current_chunk", "current_residual", "current_offset"):
            out[name] = getattr(self, name).detach().cpu().clone()
        if self._latent is not None:
            out.update({f"latent.{k}": v.detach().cpu().clone() for k, v in self._latent.items()})
        return out

    def load_closed_loop_state(self, state: dict[str, torch.Tensor]) -> None:
        self._clear()
        self.generator.set_state(state["generator"])
        if "_queue" not in state:
            return
        device = self.device
        for name in ("_prev_action", "_is_first", "_queue", "_queue_pos", "current_chunk", "current_residual", "current_offset"):
            setattr(self, name, state[name].to(device))
        latent = {k[len("latent."):]: v.to(device) for k, v in state.items() if k.startswith("latent.")}
        self._latent = latent or None
