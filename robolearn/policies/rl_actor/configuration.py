"""Configuration of the RL actor policy (what `robolearn offline` / `finetune` checkpoints hold)."""

from __future__ import annotations

from dataclasses import dataclass, field

from robolearn.config import ConfigError
from robolearn.policies.configuration import PolicyConfig


@dataclass
class RLActorConfig(PolicyConfig):
    """A tanh-Gaussian actor over the state vector; acts with its deterministic mean tanh(mu(s)).

    One step of observation and action (n_obs_steps = horizon = n_action_steps = 1), state
    observations normalised with dataset mean/std, actions already in [-1, 1] (identity).
    """

    state_norm: str = "gaussian"
    action_norm: str = "identity"
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    layer_norm: bool = False
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_obs_steps != 1 or self.horizon != 1 or self.n_action_steps != 1:
            raise ConfigError("rl_actor acts on one step: n_obs_steps, horizon and n_action_steps must be 1")
        if self.image_keys or len(self.state_keys) != 1:
            raise ConfigError(f"rl_actor reads exactly one state key and no images, got {self.state_keys} / {self.image_keys}")
        if self.action_norm != "identity":
            raise ConfigError("rl_actor actions are already in [-1, 1]: action_norm must be identity")
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise ConfigError(f"hidden_dims must list positive widths, got {self.hidden_dims}")
