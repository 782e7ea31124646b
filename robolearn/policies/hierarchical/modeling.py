"""Hierarchical primitive policy (after Luo et al., "Multi-Stage Cable Routing through
Hierarchical Imitation Learning").

- High level: observation history -> which primitive to run (a classifier over primitive ids).
- Termination head: observation history + active primitive -> has that primitive finished?
- Low level: bc or diffusion policies that produce action chunks for the active primitive, either
  one policy conditioned on a one-hot primitive id or one policy per primitive.

At run time the high level is queried at the start, whenever the termination head fires, and when
the active primitive times out. Because the selector looks only at the current observations (not
at a fixed sequence), a failure that returns the scene to an earlier stage makes it re-select that
earlier primitive: retries emerge from the data instead of being scripted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robolearn.data.normalizer import Normalizer
from robolearn.nn.mlp import MLP
from robolearn.policies.base import Batch, Policy
from robolearn.policies.hierarchical.configuration import HierarchicalConfig
from robolearn.policies.observation import ObservationEncoder


def _low_level_class(kind: str) -> type[Policy]:
    if kind == "bc":
        from robolearn.policies.bc.modeling import BCPolicy

        return BCPolicy
    from robolearn.policies.diffusion.modeling import DiffusionPolicy

    return DiffusionPolicy


class HierarchicalPolicy(Policy):
    name = "hierarchical"

    def __init__(self, config: HierarchicalConfig, normalizer: Normalizer) -> None:
        super().__init__(config, normalizer)
        self.config: HierarchicalConfig = config
        num = config.num_primitives
        low_cls = _low_level_class(config.low_level_type)
        if config.low_level_mode == "conditioned":
            self.low_level = nn.ModuleList([low_cls(config.low_level, normalizer, cond_dim=num)])
        else:
            self.low_level = nn.ModuleList([low_cls(config.low_level, normalizer) for _ in range(num)])
        self.obs_encoder = ObservationEncoder(config.low_level)
        features = self.obs_encoder.out_dim
        self.selector = MLP(features, num, config.high_level_hidden_dims, config.activation)
        # One termination logit per primitive; the active primitive's logit is read out.
        self.termination = MLP(features, num, config.termination_hidden_dims, config.activation)
        self._active: torch.Tensor | None = None  # (B,) active primitive per env, -1 = none yet
        self._steps_in_primitive: torch.Tensor | None = None  # (B,)

    # -- heads ---------------------------------------------------------------------------------
    def _obs_features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.obs_encoder(self.normalize_obs(obs))

    def primitive_logits(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """High-level scores (B, num_primitives) of which primitive should run now."""
        return self.selector(self._obs_features(obs))

    def termination_prob(self, obs: dict[str, torch.Tensor], primitive: torch.Tensor) -> torch.Tensor:
        """Probability (B,) that `primitive` (B,) has finished given the current observations."""
        logits = self.termination(self._obs_features(obs))
        return torch.sigmoid(logits.gather(1, primitive.long().to(logits.device)[:, None]).squeeze(1))

    def _one_hot(self, primitive: torch.Tensor) -> torch.Tensor:
        return F.one_hot(primitive.long(), self.config.num_primitives).float()

    # -- training ------------------------------------------------------------------------------
    def _labels(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        key = self.config.label_key
        if key not in batch:
            raise KeyError(f"batch has no {key!r} labels (add {key!r} to the sampler's extra_keys)")
        labels = batch[key].to(self.device).long()
        if labels.ndim != 2 or labels.shape[1] != self.config.horizon:
            raise ValueError(f"batch[{key!r}] must have shape (B, {self.config.horizon}), got {tuple(labels.shape)}")
        if (labels >= self.config.num_primitives).any():
            raise ValueError(f"batch[{key!r}] holds ids >= num_primitives ({self.config.num_primitives})")
        current_step = self.config.n_obs_steps - 1
        return labels[:, current_step - 1], labels[:, current_step]

    def compute_loss(self, batch: Batch) -> torch.Tensor:
        """Per-sample sum of low-level loss, selector cross-entropy and termination BCE.

        Labels are read at the window's current step t (index To-1) and at t-1: the selector learns
        primitive(t), the low level imitates actions under primitive(t), and the termination head,
        given primitive(t-1), learns whether it has ended by t. Samples with unknown (-1) labels
        contribute nothing to the terms that need them.
        """
        previous, current = self._labels(batch)
        known = current >= 0
        current_safe = current.clamp(min=0)

        low_loss = torch.zeros(current.shape[0], device=self.device)
        if self.config.low_level_mode == "conditioned":
            low_loss = self.low_level[0].compute_loss(batch, cond=self._one_hot(current_safe))
        else:
            for primitive, policy in enumerate(self.low_level):
                rows = (current == primitive).nonzero().squeeze(1)
                if rows.numel():
                    low_loss = low_loss.index_put((rows,), policy.compute_loss(_select_rows(batch, rows)))

        features = self._obs_features(batch["obs"])
        selector_loss = F.cross_entropy(self.selector(features), current_safe, reduction="none")

        has_previous = (previous >= 0) & known
        term_logits = self.termination(features).gather(1, previous.clamp(min=0)[:, None]).squeeze(1)
        ended = (current != previous).float()
        pos_weight = torch.tensor(self.config.termination_pos_weight, device=self.device)
        term_loss = F.binary_cross_entropy_with_logits(term_logits, ended, pos_weight=pos_weight, reduction="none")

        return (
            low_loss * known
            + self.config.high_level_loss_weight * selector_loss * known
            + self.config.termination_loss_weight * term_loss * has_previous
        )

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_action(
        self,
        obs: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
        primitive: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Action chunk for `primitive` (B,) or, if omitted, for the high level's choice."""
        if primitive is None:
            primitive = self.primitive_logits(obs).argmax(dim=-1)
        primitive = primitive.to(self.device).long()
        if self.config.low_level_mode == "conditioned":
            return self.low_level[0].predict_action(obs, generator=generator, cond=self._one_hot(primitive))
        chunk = torch.zeros(primitive.shape[0], self.config.horizon, self.config.action_dim, device=self.device)
        for p in primitive.unique().tolist():
            rows = (primitive == p).nonzero().squeeze(1)
            sub_obs = {k: v[rows.to(v.device)] for k, v in obs.items()}
            chunk[rows] = self.low_level[p].predict_action(sub_obs, generator=generator)
        return chunk

    @property
    def active_primitive(self) -> torch.Tensor | None:
        """(B,) primitive each environment is executing (-1 before the first action)."""
        return self._active

    def _replan_mask(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Re-query the high level where needed; a switched primitive discards its queued actions."""
        batch = self._queue_pos.shape[0]
        if self._active is None or self._active.shape[0] != batch:
            self._active = torch.full((batch,), -1, dtype=torch.long, device=self.device)
            self._steps_in_primitive = torch.zeros(batch, dtype=torch.long, device=self.device)
        requery = self._active < 0
        running = (~requery) & (self._steps_in_primitive > 0)
        if running.any():
            rows = running.nonzero().squeeze(1)
            sub_obs = {k: v[rows.to(v.device)] for k, v in obs.items()}
            done = self.termination_prob(sub_obs, self._active[rows]) > self.config.termination_threshold
            requery[rows] |= done
        requery |= self._steps_in_primitive >= self.config.max_primitive_steps
        if requery.any():
            rows = requery.nonzero().squeeze(1)
            sub_obs = {k: v[rows.to(v.device)] for k, v in obs.items()}
            self._active[rows] = self.primitive_logits(sub_obs).argmax(dim=-1)
            self._steps_in_primitive[rows] = 0
        self._steps_in_primitive += 1
        return requery | (self._queue_pos >= self.config.n_action_steps)

    def _plan(self, obs: dict[str, torch.Tensor], rows: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.predict_action(obs, generator=generator, primitive=self._active[rows])

    def reset(self, env_mask: torch.Tensor | None = None) -> None:
        super().reset(env_mask)
        if self._active is None:
            return
        if env_mask is None:
            self._active = None
            self._steps_in_primitive = None
        else:
            mask = env_mask.to(self._active.device)
            self._active[mask] = -1
            self._steps_in_primitive[mask] = 0


def _select_rows(batch: Batch, rows: torch.Tensor) -> Batch:
    """The sub-batch of the given sample indices (nested obs dicts included)."""
    out: Batch = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = {k: v[rows.to(v.device)] for k, v in value.items()}
        elif isinstance(value, torch.Tensor) and value.ndim > 0:
            out[key] = value[rows.to(value.device)]
        else:
            out[key] = value
    return out
