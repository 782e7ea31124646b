"""SAILOR configuration: model sizes, planner and loop schedule (defaults: the official code's).

`policies/sailor.yaml` holds the official values; `scripts/sailor_experiment.py` scales them to a
small CPU with overrides (`world_model.deter=128 planner.num_samples=64 ...`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from robolearn.config import ConfigError, load_config, project_root
from robolearn.data.schema import Feature
from robolearn.policies.diffusion.configuration import DiffusionConfig


@dataclass
class WorldModelConfig:
    """RSSM (DreamerV3-style): GRU deterministic state + discrete stochastic latent."""

    deter: int = 512
    stoch: int = 32  # number of categorical variables
    classes: int = 32  # classes per variable
    hidden: int = 512
    units: int = 512  # encoder/decoder/head widths
    mlp_layers: int = 2
    unimix: float = 0.01
    kl_free: float = 1.0
    dyn_scale: float = 0.5
    rep_scale: float = 0.1
    cont_scale: float = 1.0
    lr: float = 1e-4
    eps: float = 1e-8
    grad_clip: float = 1000.0
    batch_size: int = 16  # half expert, half replay
    batch_length: int = 32

    def __post_init__(self) -> None:
        for name in ("deter", "stoch", "classes", "hidden", "units", "batch_size", "batch_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"world_model.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2 or self.batch_size % 2:
            raise ConfigError(f"world_model.batch_size must be even (half expert, half replay), got {self.batch_size}")
        if not 0.0 <= self.unimix < 1.0:
            raise ConfigError(f"world_model.unimix must be in [0, 1), got {self.unimix}")

    @property
    def feat_dim(self) -> int:
        return self.stoch * self.classes + self.deter


@dataclass
class RewardConfig:
    """Moment-matching reward f(z): L = E_learner[f] - E_expert[f] + gp_weight * GP."""

    layers: int = 2
    units: int = 512
    gp_weight: float = 10.0
    gp_target: float = 0.4
    update_every: int = 100  # world-model updates per reward-model update
    lr: float = 1e-4

    def __post_init__(self) -> None:
        if self.update_every < 1:
            raise ConfigError(f"reward.update_every must be >= 1, got {self.update_every}")
        if self.gp_weight < 0 or self.gp_target < 0:
            raise ConfigError("reward.gp_weight and reward.gp_target must be >= 0")


@dataclass
class CriticConfig:
    """Value ensemble on latent features, trained on TD(lambda) returns of imagined base rollouts."""

    num_models: int = 5
    num_subsample: int = 2
    layers: int = 2
    units: int = 512
    slow_target_fraction: float = 0.02
    lr: float = 3e-5
    eps: float = 1e-5
    grad_clip: float = 100.0
    discount: float = 0.99
    lam: float = 0.95
    imag_horizon: int = 7

    def __post_init__(self) -> None:
        if not 1 <= self.num_subsample <= self.num_models:
            raise ConfigError(f"critic.num_subsample must be in [1, num_models={self.num_models}], got {self.num_subsample}")
        if not 0.0 < self.discount <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise ConfigError("critic.discount must be in (0, 1] and critic.lam in [0, 1]")
        if self.imag_horizon < 1:
            raise ConfigError(f"critic.imag_horizon must be >= 1, got {self.imag_horizon}")


@dataclass
class PlannerConfig:
    """Residual MPPI/CEM over action chunks added to the base policy's chunk."""

    num_samples: int = 256
    iterations: int = 6
    num_elites: int = 32
    temperature: float = 0.5
    horizon: int = 8
    init_std: float = 0.05
    min_std: float = 0.01
    max_std: float = 0.1
    abs_residual: float = 0.2
    uncertainty_cost: float = 1.0  # beta: weight of the critic ensemble's std
    discount: float = 0.99
    # guards (see robolearn/sailor/planner.py)
    guard: bool = True  # base plan as a candidate, weighted-mean output, acceptance test; false: best sample, always run
    common_random_numbers: bool = True  # every candidate scored with the same latent draws
    particles: int = 1  # latent sample sets per candidate during the search
    check_particles: int = 8  # fresh sample sets for the acceptance test (proposal vs base, paired)
    accept_margin_se: float = 2.0  # run the residual only if its re-scored gain > this many standard errors
    residual_gripper: bool = True  # false: the gripper dimension keeps the base policy's action
    gripper_dim: int = -1  # the gripper's action index (pick_place, sort: the last)

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.iterations < 1 or self.horizon < 1:
            raise ConfigError("planner.num_samples, iterations and horizon must be >= 1")
        if self.particles < 1 or self.check_particles < 1:
            raise ConfigError("planner.particles and planner.check_particles must be >= 1")
        if self.accept_margin_se < 0:
            raise ConfigError(f"planner.accept_margin_se must be >= 0, got {self.accept_margin_se}")
        if not 1 <= self.num_elites <= self.num_samples:
            raise ConfigError(f"planner.num_elites must be in [1, num_samples={self.num_samples}], got {self.num_elites}")
        if not 0 < self.min_std <= self.max_std:
            raise ConfigError(f"planner needs 0 < min_std <= max_std, got {self.min_std}, {self.max_std}")
        if self.abs_residual < 0 or self.uncertainty_cost < 0:
            raise ConfigError("planner.abs_residual and planner.uncertainty_cost must be >= 0")


@dataclass
class SailorConfig:
    """The planner-augmented policy: base diffusion config + model and planner configs.

    This is what a SAILOR checkpoint stores as its `config`; `robolearn eval` rebuilds the agent
    from it. `n_obs_steps`/`obs_keys` mirror the base policy (evaluation reads them).
    """

    base: DiffusionConfig = field(default_factory=DiffusionConfig)
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    use_planner: bool = True  # false: act exactly as the base policy (its chunks, n_action_steps at a time)
    planner_seed: int = 0  # the planner's own generator (reseeded on a full reset); the base keeps torch's global RNG

    def __post_init__(self) -> None:
        if self.base.image_keys:
            raise ConfigError("SAILOR here supports state observations only (base.image_keys must be empty)")

    # the fields evaluation and checkpoints read from a policy config
    @property
    def n_obs_steps(self) -> int:
        return self.base.n_obs_steps

    @property
    def obs_keys(self) -> list[str]:
        return self.base.obs_keys

    @property
    def action_dim(self) -> int:
        return self.base.action_dim

    @property
    def state_dim(self) -> int:
        return int(sum(self.base.input_shapes[k][0] for k in self.base.state_keys))

    def check_horizons(self) -> None:
        """The planner and critic horizons against the base policy's chunking (checked when the
        agent is built, once `base` is the trained policy's config, not the YAML's default)."""
        needed = self.base.n_obs_steps - 1 + self.planner.horizon
        if needed > self.base.horizon:
            raise ConfigError(
                f"planner.horizon ({self.planner.horizon}) needs base.horizon >= n_obs_steps - 1 + planner.horizon = {needed}, "
                f"got {self.base.horizon}"
            )
        if self.planner.horizon < self.base.n_action_steps:
            raise ConfigError(
                f"planner.horizon ({self.planner.horizon}) must cover the executed chunk "
                f"(base.n_action_steps = {self.base.n_action_steps})"
            )
        critic_needed = self.base.n_obs_steps - 1 + self.base.n_action_steps - 1 + self.critic.imag_horizon
        if critic_needed > self.base.horizon:
            raise ConfigError(
                f"critic.imag_horizon ({self.critic.imag_horizon}) needs base.horizon >= n_obs_steps - 1 + n_action_steps - 1 "
                f"+ imag_horizon = {critic_needed} (imagined rollouts follow the rest of the executed chunk), "
                f"got {self.base.horizon}"
            )

    def require_features(self) -> None:
        self.base.require_features()

    def normalizer_modes(self) -> dict[str, str]:
        return self.base.normalizer_modes()

    def feature_spec(self) -> dict[str, Feature]:
        return self.base.feature_spec()


@dataclass
class LoopConfig:
    """The SAILOR schedule (train_dp_mppi_params of the official config)."""

    num_envs: int = 10
    warmstart_fraction: float = 0.2  # of env_steps, collected with the noisy base policy
    warmstart_train_ratio: float = 1.5  # model updates per warm-start env step
    warmstart: bool = True
    min_env_steps_per_round: int = 3500
    rounds_train_ratio: float = 1.5  # model updates per collected env step
    data_collect_noise_std: float = 0.1
    num_buffer_transitions: int = 100_000  # replay trimming (oldest episodes drop out)
    eval_every_round: int = 10
    eval_episodes: int = 50
    update_dp_every: int = 10  # expert iteration every N rounds (0 = never)
    n_dp_train_itrs: int = 1000
    n_traj_to_relabel_per_round: int = 64
    n_dp_traj_buffer_size: int = 64
    dp_expert_buffer_ratio: float = 0.5
    dp_batch_size: int = 256
    dp_lr: float = 1e-4
    relabel_batch: int = 32
    max_episode_steps: int | None = None  # default: the task's horizon
    dp_after_win: bool = True  # expert iteration only once an evaluation showed the planner above the base
    holdout_demo_fraction: float = 0.1  # demo episodes kept out of model training (readiness test, AUROC)
    require_ready: bool = True  # planner off until the world model beats the constant-state predictor
    ready_ratio: float = 1.0  # ready: mean k-step error (k = 1..planner.horizon) < ratio x the constant predictor's
    ready_statistic: str = "mean"  # over held-out windows: "mean" (pooled errors) or "median" (of per-window ratios)
    ready_context: int = 8  # posterior steps before the open-loop prediction
    checkpoint_every_updates: int = 1000  # RUN/checkpoints/last during long training phases (and after every phase)

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout_demo_fraction < 1.0:
            raise ConfigError(f"loop.holdout_demo_fraction must be in [0, 1), got {self.holdout_demo_fraction}")
        if self.ready_statistic not in ("mean", "median"):
            raise ConfigError(f"loop.ready_statistic must be 'mean' or 'median', got {self.ready_statistic!r}")
        if self.ready_ratio <= 0 or self.ready_context < 1 or self.checkpoint_every_updates < 1:
            raise ConfigError("loop.ready_ratio must be > 0, loop.ready_context and loop.checkpoint_every_updates >= 1")
        if self.num_envs < 1 or self.min_env_steps_per_round < 1:
            raise ConfigError("loop.num_envs and loop.min_env_steps_per_round must be >= 1")
        if not 0.0 <= self.warmstart_fraction < 1.0:
            raise ConfigError(f"loop.warmstart_fraction must be in [0, 1), got {self.warmstart_fraction}")
        if not 0.0 <= self.dp_expert_buffer_ratio <= 1.0:
            raise ConfigError(f"loop.dp_expert_buffer_ratio must be in [0, 1], got {self.dp_expert_buffer_ratio}")
        if self.update_dp_every < 0 or self.eval_every_round < 1:
            raise ConfigError("loop.update_dp_every must be >= 0 and loop.eval_every_round >= 1")


@dataclass
class SailorRunConfig:
    """Everything of `robolearn sailor`: the agent's config plus the loop schedule."""

    name: str = "sailor"
    agent: SailorConfig = field(default_factory=SailorConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    seed: int = 0
    device: str = "auto"
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.name != "sailor":
            raise ConfigError(f"a SAILOR config must have name: sailor, got {self.name!r}")


def load_sailor_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SailorRunConfig:
    """policies/sailor.yaml (or `path`) <- key=value overrides; unknown keys are errors."""
    path = Path(path) if path is not None else project_root() / "policies" / "sailor.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"SAILOR config {path} not found")
    from robolearn.validation import check_config_values

    cfg = load_config(SailorRunConfig, path, overrides)
    check_config_values(cfg, "config")  # absurd or negative sizes fail here, before the base policy loads
    return cfg


def with_base(cfg: SailorConfig, base: DiffusionConfig) -> SailorConfig:
    """A copy whose base-policy config is the (trained) base policy's."""
    return dataclasses.replace(cfg, base=base)
