"""Configuration shared by every policy: horizons, features, normalization, vision, training.

A policy's config declares everything needed to rebuild it (and to build its training windows):
observation history length To (`n_obs_steps`), predicted chunk length T (`horizon`), executed
actions per chunk (`n_action_steps`), which observations it reads and their shapes. Shapes come
from the episode store's feature schema via `with_features`, so YAML files only name keys.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from robolearn.config import ConfigError, load_config, parse_overrides, read_yaml
from robolearn.data.schema import Feature

NORM_MODES = ("minmax", "gaussian", "identity")


def obs_stat_key(name: str) -> str:
    """Normalizer/store key of observation `name` (batches use bare names, the store `obs/<name>`)."""
    return f"obs/{name}"


ACTION_KEY = "action"


@dataclass
class VisionConfig:
    """Image encoder used for every entry of `image_keys` (one encoder per camera)."""

    crop_shape: list[int] | None = None  # (h, w); random crop in training, center crop in eval
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    num_keypoints: int = 32
    feature_dim: int = 64

    def __post_init__(self) -> None:
        if self.crop_shape is not None and (len(self.crop_shape) != 2 or min(self.crop_shape) < 1):
            raise ConfigError(f"vision.crop_shape must be [height, width], got {self.crop_shape}")
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"vision.channels must list positive widths, got {self.channels}")


@dataclass
class PolicyConfig:
    """Fields every policy has. `input_shapes`/`action_dim` are filled from the store (`with_features`)."""

    n_obs_steps: int = 1
    horizon: int = 1
    n_action_steps: int = 1
    state_keys: list[str] = field(default_factory=lambda: ["state"])
    image_keys: list[str] = field(default_factory=list)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    action_dim: int = 0
    state_norm: str = "minmax"
    action_norm: str = "minmax"
    vision: VisionConfig = field(default_factory=VisionConfig)

    def __post_init__(self) -> None:
        if self.n_obs_steps < 1 or self.horizon < 1 or self.n_action_steps < 1:
            raise ConfigError(
                f"n_obs_steps, horizon and n_action_steps must be >= 1, got "
                f"{self.n_obs_steps}, {self.horizon}, {self.n_action_steps}"
            )
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ConfigError(
                f"horizon ({self.horizon}) must cover the executed actions: n_obs_steps - 1 + n_action_steps "
                f"= {self.n_obs_steps - 1 + self.n_action_steps}"
            )
        if not self.state_keys and not self.image_keys:
            raise ConfigError("a policy needs at least one observation key (state_keys or image_keys)")
        overlap = set(self.state_keys) & set(self.image_keys)
        if overlap:
            raise ConfigError(f"keys {sorted(overlap)} are listed both as state and image observations")
        for name, mode in (("state_norm", self.state_norm), ("action_norm", self.action_norm)):
            if mode not in NORM_MODES:
                raise ConfigError(f"{name} must be one of {', '.join(NORM_MODES)}, got {mode!r}")
        try:
            self.input_shapes = {str(k): [int(s) for s in v] for k, v in self.input_shapes.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"input_shapes must map names to lists of ints, got {self.input_shapes}") from None

    @property
    def obs_keys(self) -> list[str]:
        return [*self.state_keys, *self.image_keys]

    @property
    def extra_batch_keys(self) -> tuple[str, ...]:
        """Per-step store features the sampler must add to batches (its `extra_keys`)."""
        return ()

    def with_features(self, features: Mapping[str, Feature]) -> "PolicyConfig":
        """A copy with input shapes and action dim taken from a store schema ({'obs/state': Feature})."""
        missing = [obs_stat_key(k) for k in self.obs_keys if obs_stat_key(k) not in features]
        if ACTION_KEY not in features:
            missing.append(ACTION_KEY)
        if missing:
            raise ConfigError(f"the dataset lacks features {', '.join(missing)} (has: {', '.join(features)})")
        action_shape = features[ACTION_KEY].shape
        if len(action_shape) != 1:
            raise ConfigError(f"actions must be flat vectors, the dataset's have shape {action_shape}")
        shapes = {k: list(features[obs_stat_key(k)].shape) for k in self.obs_keys}
        return dataclasses.replace(self, input_shapes=shapes, action_dim=int(action_shape[0]))

    def require_features(self) -> None:
        """Raise a clear error when shapes were never filled in (a policy cannot be built without)."""
        missing = [k for k in self.obs_keys if k not in self.input_shapes]
        if missing or self.action_dim < 1:
            raise ConfigError(
                f"policy config lacks input shapes for {missing or 'none'} / action_dim={self.action_dim}: "
                "fill them from the dataset with config.with_features(store.features)"
            )
        for key in self.image_keys:
            shape = self.input_shapes[key]
            if len(shape) != 3:
                raise ConfigError(f"image {key!r} must have shape [H, W, C], got {shape}")
            crop = self.vision.crop_shape
            if crop is not None and (crop[0] > shape[0] or crop[1] > shape[1]):
                raise ConfigError(f"vision.crop_shape {crop} is larger than image {key!r} {shape[:2]}")

    def normalizer_modes(self) -> dict[str, str]:
        """Normalizer mode per stats key; images are scaled inside the image encoder instead."""
        modes = {obs_stat_key(k): self.state_norm for k in self.state_keys}
        modes[ACTION_KEY] = self.action_norm
        return modes

    def feature_spec(self) -> dict[str, Feature]:
        """The features this policy consumes and produces, as stored in checkpoints."""
        self.require_features()
        spec = {obs_stat_key(k): Feature("float32", tuple(self.input_shapes[k]), "obs") for k in self.state_keys}
        spec.update({obs_stat_key(k): Feature("uint8", tuple(self.input_shapes[k]), "obs") for k in self.image_keys})
        spec[ACTION_KEY] = Feature("float32", (self.action_dim,), "action")
        return spec


@dataclass
class TrainConfig:
    """Optimisation hyper-parameters shared by every policy's training run."""

    steps: int = 100_000
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    grad_clip_norm: float | None = None
    lr_warmup_steps: int = 500
    lr_schedule: str = "cosine"  # cosine decay to zero after warm-up, or constant
    ema: bool = True
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    val_ratio: float = 0.02
    eval_every: int = 5_000
    eval_episodes: int = 0  # closed-loop rollouts at each eval (needs --task); 0 = validation loss only
    save_every: int = 10_000
    log_every: int = 100
    seed: int = 0
    num_workers: int = 2
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"train.steps and train.batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ConfigError(f"train.lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if not 0.0 <= self.val_ratio < 1.0:
            raise ConfigError(f"train.val_ratio must be in [0, 1), got {self.val_ratio}")
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas must hold two numbers, got {self.betas}")


@dataclass
class DataConfig:
    """Which steps of the store train the policy (see robolearn.data.mixtures)."""

    mix: str = "all"  # all | rac | hg_dagger | iwr | sirius | retrieval
    # Store column the policy imitates: `action` (what was executed) or `expert_action` (the
    # scripted expert's noise-free action, written by `collect --noise > 0`: DART-style labels).
    action_key: str = ACTION_KEY

    def __post_init__(self) -> None:
        from robolearn.data.mixtures import MIXTURES

        if self.mix not in MIXTURES:
            raise ConfigError(f"data.mix must be one of {', '.join(MIXTURES)}, got {self.mix!r}")
        if self.action_key not in (ACTION_KEY, "expert_action"):
            raise ConfigError(f"data.action_key must be action or expert_action, got {self.action_key!r}")


@functools.cache
def run_config_class(policy_name: str) -> type:
    """The dataclass of a whole policy YAML: `name`, `policy:` (that policy's config) and `train:`."""
    from robolearn.policies import policy_classes

    config_cls, _ = policy_classes(policy_name)
    return dataclasses.make_dataclass(
        f"{config_cls.__name__}Run",
        [
            ("name", str, field(default=policy_name)),
            ("policy", config_cls, field(default_factory=config_cls)),
            ("train", TrainConfig, field(default_factory=TrainConfig)),
            ("data", DataConfig, field(default_factory=DataConfig)),
        ],
    )


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None, name: str | None = None) -> Any:
    """Parse a policy YAML (e.g. policies/diffusion.yaml) plus `key=value` overrides.

    The policy is picked by the file's (or an override's) top-level `name`, or by `name` here.
    """
    in_file = read_yaml(path).get("name") if path is not None else None
    in_overrides = parse_overrides(overrides).get("name") if overrides else None
    chosen = in_overrides or in_file or name
    if chosen is None:
        raise ConfigError(f"{path or 'config'}: no policy `name` given (e.g. name: diffusion)")
    if name is not None and chosen != name:
        raise ConfigError(f"{path or 'config'}: is a {chosen!r} config, expected {name!r}")
    return load_config(run_config_class(chosen), path, overrides)
