"""Configuration of behaviour cloning (robomimic's BC and BC-GMM, extended to action chunks)."""

from __future__ import annotations

from dataclasses import dataclass, field

from robolearn.config import ConfigError
from robolearn.policies.configuration import PolicyConfig

HEADS = ("deterministic", "gmm")


@dataclass
class BCConfig(PolicyConfig):
    """An MLP from the flattened observation history to a whole action chunk.

    `head: deterministic` regresses the chunk (`loss`: mse or l1); `head: gmm` fits a Gaussian
    mixture over the flattened chunk by maximum likelihood, which keeps multi-modal
    demonstrations apart. At inference the GMM samples (`gmm_inference: sample`, robomimic's
    behaviour, with tiny stds in eval mode) or returns its most probable component's mean (`mode`).
    """

    hidden_dims: list[int] = field(default_factory=lambda: [1024, 1024])
    activation: str = "relu"
    layer_norm: bool = False
    dropout: float = 0.0
    head: str = "deterministic"
    loss: str = "mse"
    gmm_num_modes: int = 5
    gmm_min_std: float = 1e-4
    gmm_tanh_means: bool = True
    gmm_low_noise_eval: bool = True
    gmm_inference: str = "sample"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head not in HEADS:
            raise ConfigError(f"bc head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.loss not in ("mse", "l1"):
            raise ConfigError(f"bc loss must be 'mse' or 'l1', got {self.loss!r}")
        if self.gmm_inference not in ("sample", "mode"):
            raise ConfigError(f"gmm_inference must be 'sample' or 'mode', got {self.gmm_inference!r}")
        if self.gmm_num_modes < 1:
            raise ConfigError(f"gmm_num_modes must be >= 1, got {self.gmm_num_modes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
