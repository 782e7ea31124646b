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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robolearn.data.normalizer import Normalizer
from robolearn.nn.mlp import MLP
from robolearn.policies.base import Batch, Policy
from robolearn.policies.configuration import obs_stat_key
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
        low_cfg = config.low_level_config()
        low_norm = normalizer
        if config.object_centric:  # the low level sees stage-sliced observations: sliced stats
            low_norm = _stage_normalizer(normalizer, obs_stat_key(config.stage_obs_key), config.stage_obs_columns)
            self.register_buffer("stage_columns", torch.tensor(config.stage_obs_columns, dtype=torch.long),
                                 persistent=False)
        if config.low_level_mode == "conditioned":
            self.low_level = nn.ModuleList([low_cls(low_cfg, low_norm, cond_dim=num)])
        else:
            self.low_level = nn.ModuleList([low_cls(low_cfg, low_norm) for _ in range(num)])
        self.obs_encoder = ObservationEncoder(config.low_level)
        features = self.obs_encoder.out_dim
        # stage_sliced_heads / stage_head first_not_done read stage-sliced observations.
        sliced = config.stage_sliced_heads or config.stage_head == "first_not_done"
        self.sliced_encoder = ObservationEncoder(low_cfg) if sliced else None
        head_features = self.sliced_encoder.out_dim if config.stage_sliced_heads else features
        # Object-centric: the high level also picks the stage whose object the low level acts on:
        # scores over stages from the whole scene, or one "is this object done?" logit per object
        # from its own slice (shared weights), the stage being the first object not done.
        self.stage_selector = None
        if config.object_centric:
            self.stage_selector = (MLP(self.sliced_encoder.out_dim, 1, config.high_level_hidden_dims, config.activation)
                                   if config.stage_head == "first_not_done"
                                   else MLP(features, config.num_stages, config.high_level_hidden_dims, config.activation))
        self.selector = MLP(head_features, num, config.high_level_hidden_dims, config.activation)
        # One termination logit per primitive; the active primitive's logit is read out.
        self.termination = MLP(head_features, num, config.termination_hidden_dims, config.activation)
        self._active: torch.Tensor | None = None  # (B,) active primitive per env, -1 = none yet
        self._active_stage: torch.Tensor | None = None  # (B,) stage the active primitive acts on
        self._steps_in_primitive: torch.Tensor | None = None  # (B,)

    # -- heads ---------------------------------------------------------------------------------
    def _obs_features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.obs_encoder(self.normalize_obs(obs))

    def _sliced_features(self, obs: dict[str, torch.Tensor], stage: torch.Tensor) -> torch.Tensor:
        """Features of each sample's `stage` (B,) slice, normalized like the low level's input."""
        return self.sliced_encoder(self.low_level[0].normalize_obs(self._stage_obs(obs, stage)))

    def _head_features(self, obs: dict[str, torch.Tensor], stage: torch.Tensor | None) -> torch.Tensor:
        """Input of the primitive and termination heads: the whole observation's features, or
        (stage_sliced_heads) the stage's slice; stage None = the stage head's choice."""
        if not self.config.stage_sliced_heads:
            return self._obs_features(obs)
        if stage is None:
            stage = self.stage_logits(obs).argmax(dim=-1)
        return self._sliced_features(obs, stage)

    def primitive_logits(self, obs: dict[str, torch.Tensor], stage: torch.Tensor | None = None) -> torch.Tensor:
        """High-level scores (B, num_primitives) of which primitive should run now (on `stage`'s
        object when the heads are stage-sliced; None = the stage head's choice)."""
        return self.selector(self._head_features(obs, stage))

    def termination_prob(self, obs: dict[str, torch.Tensor], primitive: torch.Tensor,
                         stage: torch.Tensor | None = None) -> torch.Tensor:
        """Probability (B,) that `primitive` (B,) (acting on `stage`) has finished given the current
        observations."""
        logits = self.termination(self._head_features(obs, stage))
        return torch.sigmoid(logits.gather(1, primitive.long().to(logits.device)[:, None]).squeeze(1))

    def stage_logits(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """High-level scores (B, num_stages) of which stage's object to act on (object-centric)."""
        if self.stage_selector is None:
            raise RuntimeError("stage_logits needs policy.object_centric")
        if self.config.stage_head != "first_not_done":
            return self.stage_selector(self._obs_features(obs))
        # log P(stage = k) = sum_{j<k} log P(j done) + log P(k not done); the last stage takes
        # "all before it done" (all done counts as the last stage, as in training).
        done = self.object_done_logits(obs)
        before = F.pad(F.logsigmoid(done).cumsum(1)[:, :-1], (1, 0))
        not_done = F.pad(F.logsigmoid(-done[:, :-1]), (0, 1))
        return before + not_done

    def object_done_logits(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, num_stages) logits that each stage's object is done, each read from its own slice
        by one shared head (stage_head first_not_done)."""
        batch = next(iter(obs.values())).shape[0]
        logits = [self.stage_selector(self._sliced_features(obs, torch.full((batch,), k, dtype=torch.long, device=self.device)))
                  for k in range(self.config.num_stages)]
        return torch.cat(logits, dim=1)

    def _one_hot(self, primitive: torch.Tensor) -> torch.Tensor:
        return F.one_hot(primitive.long(), self.config.num_primitives).float()

    def _stage_obs(self, obs: dict[str, torch.Tensor], stage: torch.Tensor) -> dict[str, torch.Tensor]:
        """obs with `stage_obs_key` cut to each sample's stage columns (identity unless
        object-centric); stage (B,) is clamped to the known stages (K = all done -> the last)."""
        if not self.config.object_centric:
            return obs
        key = self.config.stage_obs_key
        x = obs[key]
        cols = self.stage_columns.to(x.device)[stage.long().to(x.device).clamp(0, self.config.num_stages - 1)]
        return {**obs, key: x.gather(-1, cols[:, None, :].expand(x.shape[0], x.shape[1], cols.shape[1]))}

    # -- training ------------------------------------------------------------------------------
    def _labels(self, batch: Batch, key: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        key = key or self.config.label_key
        if key not in batch:
            raise KeyError(f"batch has no {key!r} labels (add {key!r} to the sampler's extra_keys)")
        labels = batch[key].to(self.device).long()
        if labels.ndim != 2 or labels.shape[1] != self.config.horizon:
            raise ValueError(f"batch[{key!r}] must have shape (B, {self.config.horizon}), got {tuple(labels.shape)}")
        if key == self.config.label_key and (labels >= self.config.num_primitives).any():
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
        low_batch, stage_loss = batch, 0.0
        features = self._obs_features(batch["obs"])
        select_features = term_features = features
        if self.config.object_centric:  # stage labels: K (all done) counts as the last stage
            previous_stage, stage = self._labels(batch, self.config.stage_key)
            stage_known = (stage >= 0).float()
            stage = stage.clamp(0, self.config.num_stages - 1)
            low_batch = {**batch, "obs": self._stage_obs(batch["obs"], stage)}
            if self.config.stage_head == "first_not_done":  # object k is done once the stage is past it
                done = self.object_done_logits(batch["obs"])
                target = (stage[:, None] > torch.arange(done.shape[1], device=done.device)[None]).float()
                stage_loss = F.binary_cross_entropy_with_logits(done, target, reduction="none").sum(1) * stage_known
            else:
                stage_loss = F.cross_entropy(self.stage_selector(features), stage, reduction="none") * stage_known
            if self.config.stage_sliced_heads:
                # The selector judges the current stage's object; the termination head judges the
                # object the previous primitive acted on (at run time: the stage it was started on).
                select_features = self._sliced_features(batch["obs"], stage)
                term_features = self._sliced_features(batch["obs"], previous_stage.clamp(0, self.config.num_stages - 1))

        low_loss = torch.zeros(current.shape[0], device=self.device)
        if self.config.low_level_mode == "conditioned":
            low_loss = self.low_level[0].compute_loss(low_batch, cond=self._one_hot(current_safe))
        else:
            for primitive, policy in enumerate(self.low_level):
                rows = (current == primitive).nonzero().squeeze(1)
                if rows.numel():
                    low_loss = low_loss.index_put((rows,), policy.compute_loss(_select_rows(low_batch, rows)))

        selector_loss = F.cross_entropy(self.selector(select_features), current_safe, reduction="none")

        has_previous = (previous >= 0) & known
        term_logits = self.termination(term_features).gather(1, previous.clamp(min=0)[:, None]).squeeze(1)
        ended = (current != previous).float()
        pos_weight = torch.tensor(self.config.termination_pos_weight, device=self.device)
        term_loss = F.binary_cross_entropy_with_logits(term_logits, ended, pos_weight=pos_weight, reduction="none")

        return (
            low_loss * known
            + self.config.high_level_loss_weight * (selector_loss * known + stage_loss)
            + self.config.termination_loss_weight * term_loss * has_previous
        )

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_action(
        self,
        obs: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
        primitive: torch.Tensor | None = None,
        stage: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Action chunk for `primitive` (B,) (and, object-centric, `stage` (B,)) or, if omitted,
        for the high level's choice."""
        if self.config.object_centric and stage is None:
            stage = self.stage_logits(obs).argmax(dim=-1)
        if primitive is None:
            primitive = self.primitive_logits(obs, stage).argmax(dim=-1)
        primitive = primitive.to(self.device).long()
        if self.config.object_centric:
            obs = self._stage_obs(obs, stage)
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
            self._active_stage = torch.zeros(batch, dtype=torch.long, device=self.device)
            self._steps_in_primitive = torch.zeros(batch, dtype=torch.long, device=self.device)
        requery = self._active < 0
        running = (~requery) & (self._steps_in_primitive > 0)
        if running.any():
            rows = running.nonzero().squeeze(1)
            sub_obs = {k: v[rows.to(v.device)] for k, v in obs.items()}
            done = self.termination_prob(sub_obs, self._active[rows], self._active_stage[rows]) > self.config.termination_threshold
            requery[rows] |= done
        requery |= self._steps_in_primitive >= self.config.max_primitive_steps
        stage_now = None
        if self.config.object_centric and self.config.requery_on_stage_change:
            # The stage head reads the whole scene every step (once, reused below): when the object
            # to act on changes (this one is done, or an earlier one was knocked out of place) the
            # primitive is re-chosen.
            stage_now = self.stage_logits(obs).argmax(dim=-1)
            requery |= stage_now != self._active_stage
        if requery.any():
            rows = requery.nonzero().squeeze(1)
            sub_obs = {k: v[rows.to(v.device)] for k, v in obs.items()}
            if self.config.object_centric:
                self._active_stage[rows] = (stage_now[rows] if stage_now is not None
                                            else self.stage_logits(sub_obs).argmax(dim=-1))
            self._active[rows] = self.primitive_logits(
                sub_obs, self._active_stage[rows] if self.config.object_centric else None).argmax(dim=-1)
            self._steps_in_primitive[rows] = 0
        self._steps_in_primitive += 1
        return requery | (self._queue_pos >= self.config.n_action_steps)

    def _plan(self, obs: dict[str, torch.Tensor], rows: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.predict_action(obs, generator=generator, primitive=self._active[rows],
                                   stage=self._active_stage[rows] if self.config.object_centric else None)

    def reset(self, env_mask: torch.Tensor | None = None) -> None:
        super().reset(env_mask)
        if self._active is None:
            return
        if env_mask is None:
            self._active = None
            self._active_stage = None
            self._steps_in_primitive = None
        else:
            mask = env_mask.to(self._active.device)
            self._active[mask] = -1
            self._active_stage[mask] = 0
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


def _stage_normalizer(normalizer: Normalizer, key: str, columns: list[list[int]]) -> Normalizer:
    """The normalizer of stage-sliced observations: column j of the slice covers column
    columns[k][j] of every stage k (union of ranges, mean of means, largest spread), so one
    low-level policy sees every stage's object on the same scale."""
    stats = {k: dict(v) for k, v in normalizer.stats.items()}
    if key not in stats:
        raise ValueError(f"normalizer has no stats for {key!r} (object-centric stage slicing)")
    idx = np.asarray(columns)  # (K, d)
    full = stats[key]
    merged = {}
    for name, value in full.items():
        v = np.asarray(value)[idx]  # (K, d)
        if name in ("min", "q01"):
            merged[name] = v.min(0)
        elif name in ("max", "q99"):
            merged[name] = v.max(0)
        elif name == "std":
            merged[name] = v.max(0)
        else:
            merged[name] = v.mean(0)
    stats[key] = merged
    return Normalizer(stats, dict(normalizer.modes))
