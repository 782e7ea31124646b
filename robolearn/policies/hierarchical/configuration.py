"""Configuration of the hierarchical primitive policy (after Luo et al., multi-stage cable routing).

Horizons, observation keys and shapes belong to the low-level policy's config (`bc:` or
`diffusion:`, picked by `low_level_type`); this config exposes them as read-only properties so
callers treat every policy config alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

from robolearn.config import ConfigError
from robolearn.data.schema import Feature
from robolearn.policies.bc.configuration import BCConfig
from robolearn.policies.configuration import PolicyConfig, VisionConfig
from robolearn.policies.diffusion.configuration import DiffusionConfig

LOW_LEVEL_TYPES = ("bc", "diffusion")
LOW_LEVEL_MODES = ("conditioned", "per_primitive")
STAGE_HEADS = ("scene", "first_not_done")


def _bc_low_level_default() -> BCConfig:
    # The termination head compares the primitive label of the previous step with the current one,
    # which the training window only holds with an observation history of at least two steps.
    return BCConfig(n_obs_steps=2, horizon=2, n_action_steps=1, hidden_dims=[512, 512])


@dataclass
class HierarchicalConfig:
    """A high-level primitive selector, a learned termination head and low-level primitive policies.

    Labels: per-step integer primitive ids in the batch under `label_key` (`primitive`, or the
    store's `stage`), -1 meaning unknown. `low_level_mode: conditioned` trains one low-level policy
    fed a one-hot primitive id; `per_primitive` trains one policy per primitive.
    """

    num_primitives: int = 2
    label_key: str = "primitive"
    low_level_type: str = "bc"
    low_level_mode: str = "conditioned"
    bc: BCConfig = field(default_factory=_bc_low_level_default)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    high_level_hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    termination_hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    termination_threshold: float = 0.5
    max_primitive_steps: int = 200  # time-out (env steps) after which the high level is re-queried
    high_level_loss_weight: float = 1.0
    termination_loss_weight: float = 1.0
    termination_pos_weight: float = 1.0  # boundaries are rare; >1 up-weights them in the BCE
    # Object-centric low level: the high level also selects the stage (e.g. which cube), and the
    # low-level policy sees only that stage's columns of `stage_obs_key` (the robot plus the stage's
    # object and target), so one primitive skill serves every stage. The columns come from the task
    # (`Task.stage_obs_columns`) when training starts and are saved with the checkpoint.
    object_centric: bool = False
    stage_obs_others: bool = False  # also pass the other objects, after the stage's own (reordered)
    # Object-centric high level too: the stage head alone sees the whole observation; the primitive
    # selector and the termination head see the selected stage's slice, so "is this object ready to
    # grasp / has this primitive finished" is judged in the same frame whatever the number of objects.
    stage_sliced_heads: bool = False
    # Object-centric: re-query the high level as soon as the stage head's choice differs from the
    # stage the active primitive was started on (else only on termination or time-out).
    requery_on_stage_change: bool = False
    # How the stage is chosen: "scene", scores over stages from the whole observation; or
    # "first_not_done", one shared "is this object done?" head on each stage's slice, the stage being
    # the first object not done (for tasks whose stages take the objects in a fixed order, as sort).
    stage_head: str = "scene"
    stage_key: str = "stage"
    stage_obs_key: str = "state"
    stage_obs_columns: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.num_primitives < 1:
            raise ConfigError(f"num_primitives must be >= 1, got {self.num_primitives}")
        if self.low_level_type not in LOW_LEVEL_TYPES:
            raise ConfigError(f"low_level_type must be one of {', '.join(LOW_LEVEL_TYPES)}, got {self.low_level_type!r}")
        if self.low_level_mode not in LOW_LEVEL_MODES:
            raise ConfigError(f"low_level_mode must be one of {', '.join(LOW_LEVEL_MODES)}, got {self.low_level_mode!r}")
        if self.low_level.n_obs_steps < 2:
            raise ConfigError(
                f"{self.low_level_type}.n_obs_steps must be >= 2 for a hierarchical policy: the termination "
                "head learns from the primitive labels of the previous and the current step"
            )
        if not 0.0 < self.termination_threshold < 1.0:
            raise ConfigError(f"termination_threshold must be in (0, 1), got {self.termination_threshold}")
        if self.max_primitive_steps < 1:
            raise ConfigError(f"max_primitive_steps must be >= 1, got {self.max_primitive_steps}")
        if self.stage_head not in STAGE_HEADS:
            raise ConfigError(f"stage_head must be one of {', '.join(STAGE_HEADS)}, got {self.stage_head!r}")
        if self.stage_sliced_heads and not self.object_centric:
            raise ConfigError("stage_sliced_heads needs object_centric: true (the heads see the selected stage's columns)")
        if self.stage_obs_columns:
            widths = {len(c) for c in self.stage_obs_columns}
            if len(widths) != 1 or 0 in widths:
                raise ConfigError("stage_obs_columns must list the same, non-zero number of columns for every stage")
            if min(min(c) for c in self.stage_obs_columns) < 0:
                raise ConfigError("stage_obs_columns must be non-negative column indices")

    @property
    def num_stages(self) -> int:
        return len(self.stage_obs_columns)

    def with_task(self, task: str, task_overrides: Mapping | None = None) -> "HierarchicalConfig":
        """Fill `stage_obs_columns` from the task when `object_centric` is on (no-op otherwise)."""
        if not self.object_centric or self.stage_obs_columns:
            return self
        from robolearn.tasks.registry import build_task

        columns = build_task(task, dict(task_overrides or {})).stage_obs_columns(others=self.stage_obs_others)
        if not columns:
            raise ConfigError(f"policy.object_centric needs per-stage observation columns, which task {task!r} does not define")
        return dataclasses.replace(self, stage_obs_columns=[list(map(int, c)) for c in columns])

    def low_level_config(self) -> PolicyConfig:
        """The low-level policy's config: `low_level`, with the stage-sliced observation shape when
        object-centric."""
        if not self.object_centric:
            return self.low_level
        if not self.stage_obs_columns:
            raise ConfigError("policy.object_centric is on but stage_obs_columns is empty (train with a task store)")
        shapes = dict(self.low_level.input_shapes)
        shapes[self.stage_obs_key] = [len(self.stage_obs_columns[0])]
        return dataclasses.replace(self.low_level, input_shapes=shapes)

    # -- the PolicyConfig interface, delegated to the selected low-level config ----------------
    @property
    def low_level(self) -> PolicyConfig:
        return self.bc if self.low_level_type == "bc" else self.diffusion

    n_obs_steps = property(lambda self: self.low_level.n_obs_steps)
    horizon = property(lambda self: self.low_level.horizon)
    n_action_steps = property(lambda self: self.low_level.n_action_steps)
    state_keys = property(lambda self: self.low_level.state_keys)
    image_keys = property(lambda self: self.low_level.image_keys)
    obs_keys = property(lambda self: self.low_level.obs_keys)
    input_shapes = property(lambda self: self.low_level.input_shapes)
    action_dim = property(lambda self: self.low_level.action_dim)

    @property
    def extra_batch_keys(self) -> tuple[str, ...]:
        """The primitive (and, object-centric, stage) labels, shaped like the action window (B, T)."""
        return (self.label_key, self.stage_key) if self.object_centric else (self.label_key,)

    @property
    def vision(self) -> VisionConfig:
        return self.low_level.vision

    def with_features(self, features: Mapping[str, Feature]) -> "HierarchicalConfig":
        return dataclasses.replace(self, **{self.low_level_type: self.low_level.with_features(features)})

    def require_features(self) -> None:
        self.low_level.require_features()

    def normalizer_modes(self) -> dict[str, str]:
        return self.low_level.normalizer_modes()

    def feature_spec(self) -> dict[str, Feature]:
        return self.low_level.feature_spec()
