"""The one policy interface: observation history in, action chunk out, normalizer inside.

Every policy maps {name: (B, To, ...)} to an action chunk (B, T, Da) in environment units, so
evaluation, intervention recording, SAILOR and RL drive any policy the same way. Closed-loop
execution (`select_action`) is implemented once here: each environment of a batch keeps a queue
of the `n_action_steps` actions taken from its last chunk (starting at index To-1, the current
step, as in Diffusion Policy) and re-plans when its queue runs out or it is reset.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from robolearn.data.normalizer import Normalizer
from robolearn.policies.configuration import ACTION_KEY, obs_stat_key

Batch = dict[str, Any]


class Policy(nn.Module):
    """Base class. Subclasses set `name` and implement `compute_loss` and `predict_action`.

    Training batches (from robolearn.data.sampler) hold `obs` {name: (B, To, ...)}, `action`
    (B, T, Da), `pad_mask` (B, T) and `weight` (B,); `compute_loss` returns the per-sample loss
    (B,) and leaves weighting (e.g. Sirius-style intervention weights) to the caller.
    """

    name: ClassVar[str]

    def __init__(self, config: Any, normalizer: Normalizer) -> None:
        super().__init__()
        config.require_features()
        for key, mode in config.normalizer_modes().items():
            if mode != "identity" and not normalizer.has(key):
                raise ValueError(f"normalizer has no stats for {key!r} (needed by {type(self).__name__})")
        self.config = config
        self.normalizer = normalizer
        self._queue: torch.Tensor | None = None  # (B, n_action_steps, Da)
        self._queue_pos: torch.Tensor | None = None  # (B,) index of the next action to execute

    @classmethod
    def from_stats(cls, config: Any, stats: dict[str, dict[str, Any]]) -> "Policy":
        """Build with a normalizer over the dataset stats this config needs."""
        config.require_features()
        modes = config.normalizer_modes()
        missing = [k for k, mode in modes.items() if mode != "identity" and k not in stats]
        if missing:
            raise KeyError(f"normalization stats lack {', '.join(missing)} (have: {', '.join(stats)})")
        return cls(config, Normalizer({k: stats[k] for k in modes if k in stats}, modes))

    @property
    def device(self) -> torch.device:
        return next(iter(self.parameters())).device

    # -- training / inference interface -------------------------------------------------------
    def compute_loss(self, batch: Batch) -> torch.Tensor:
        """Per-sample training loss (B,)."""
        raise NotImplementedError

    def predict_action(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """A full action chunk (B, horizon, Da) in environment units; no internal state is touched."""
        raise NotImplementedError

    @torch.no_grad()
    def select_action(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """The next action (B, Da) for each environment, re-planning only those whose queue ran out."""
        batch = _batch_size(obs)
        n_steps = self.config.n_action_steps
        if self._queue is None or self._queue.shape[0] != batch:
            self._queue = torch.zeros(batch, n_steps, self.config.action_dim, device=self.device)
            self._queue_pos = torch.full((batch,), n_steps, dtype=torch.long, device=self.device)
        replan = self._replan_mask(obs)
        if replan.any():
            rows = replan.nonzero().squeeze(1)
            sub_obs = {k: v[rows.to(v.device)] for k, v in obs.items()}
            chunk = self._plan(sub_obs, rows, generator)
            start = self.config.n_obs_steps - 1
            self._queue[rows] = chunk[:, start : start + n_steps].to(self._queue.dtype)
            self._queue_pos[rows] = 0
        rows = torch.arange(batch, device=self._queue.device)
        action = self._queue[rows, self._queue_pos]
        self._queue_pos += 1
        return action

    def reset(self, env_mask: torch.Tensor | None = None) -> None:
        """Forget queued actions (and any episode state) for all environments or the masked ones."""
        if self._queue_pos is None:
            return
        if env_mask is None:
            self._queue = None
            self._queue_pos = None
        else:
            self._queue_pos[env_mask.to(self._queue_pos.device)] = self.config.n_action_steps

    # -- hooks for stateful policies (hierarchical) --------------------------------------------
    def _replan_mask(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) bool: which environments need a new chunk before acting this step."""
        return self._queue_pos >= self.config.n_action_steps

    def _plan(self, obs: dict[str, torch.Tensor], rows: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A chunk for the environments `rows` (obs already restricted to them)."""
        return self.predict_action(obs, generator=generator)

    # -- helpers shared by subclasses -----------------------------------------------------------
    def normalize_obs(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """State observations normalized, on this policy's device; images passed through (uint8)."""
        device = self.device
        out = {}
        for key in self.config.state_keys:
            if key not in obs:
                raise KeyError(f"observation {key!r} is missing (got: {', '.join(obs)})")
            out[key] = self.normalizer.normalize(obs_stat_key(key), obs[key].to(device).float())
        for key in self.config.image_keys:
            if key not in obs:
                raise KeyError(f"observation {key!r} is missing (got: {', '.join(obs)})")
            out[key] = obs[key].to(device)
        return out

    def encode_with_cond(self, obs: dict[str, torch.Tensor], cond: torch.Tensor | None) -> torch.Tensor:
        """Observation features from `self.obs_encoder`, with the optional extra conditioning vector
        (e.g. a primitive one-hot from a hierarchical parent) appended when `self.cond_dim` > 0."""
        features = self.obs_encoder(self.normalize_obs(obs))
        cond_dim = getattr(self, "cond_dim", 0)
        if cond_dim:
            if cond is None or cond.shape != (features.shape[0], cond_dim):
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"this policy needs cond of shape ({features.shape[0]}, {cond_dim}), got {got}")
            features = torch.cat([features, cond.to(features)], dim=-1)
        return features

    def normalized_actions(self, batch: Batch) -> torch.Tensor:
        """The batch's action chunk (B, T, Da), validated and normalized."""
        if ACTION_KEY not in batch:
            raise KeyError("batch has no 'action' entry")
        actions = batch[ACTION_KEY].to(self.device).float()
        expected = (self.config.horizon, self.config.action_dim)
        if actions.ndim != 3 or tuple(actions.shape[1:]) != expected:
            raise ValueError(f"batch['action'] must have shape (B, {expected[0]}, {expected[1]}), got {tuple(actions.shape)}")
        return self.normalizer.normalize(ACTION_KEY, actions)

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.normalizer.unnormalize(ACTION_KEY, actions)


def _batch_size(obs: dict[str, torch.Tensor]) -> int:
    if not obs:
        raise ValueError("empty observation dict")
    sizes = {v.shape[0] for v in obs.values()}
    if len(sizes) != 1:
        raise ValueError(f"observations disagree on batch size: {sorted(sizes)}")
    return sizes.pop()
