"""Configuration of Diffusion Policy (Chi et al., 2023), CNN-based variant."""

from __future__ import annotations

from dataclasses import dataclass, field

from robolearn.config import ConfigError
from robolearn.policies.configuration import PolicyConfig

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "sample")


@dataclass
class DiffusionConfig(PolicyConfig):
    """Defaults are the paper's: To=2, T=16, 8 executed actions, 100 DDPM training steps with the
    squared-cosine schedule and epsilon prediction, 10 DDIM steps at inference."""

    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    # ConditionalUnet1D
    down_dims: list[int] = field(default_factory=lambda: [256, 512, 1024])
    diffusion_step_embed_dim: int = 128
    kernel_size: int = 5
    n_groups: int = 8
    cond_predict_scale: bool = True
    # noise schedule
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    num_inference_steps: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.down_dims:
            raise ConfigError("down_dims must list at least one channel width")
        multiple = 2 ** (len(self.down_dims) - 1)
        if self.horizon % multiple:
            raise ConfigError(
                f"horizon ({self.horizon}) must be a multiple of {multiple} for a U-Net with {len(self.down_dims)} levels"
            )
        if any(d % self.n_groups for d in self.down_dims):
            raise ConfigError(f"every down_dims entry must be divisible by n_groups ({self.n_groups}), got {self.down_dims}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {self.beta_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {self.prediction_type!r}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ConfigError(
                f"num_inference_steps must be in [1, num_train_timesteps={self.num_train_timesteps}], got {self.num_inference_steps}"
            )
