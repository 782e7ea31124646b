"""Algorithm registry (name -> agent class, config class), run configs and agent checkpoints.

Checkpoint directory of an RL run (same container as `robolearn train`, robolearn.checkpoint):
    model.safetensors   the RLActorPolicy (actor + state normaliser): `robolearn eval` loads it
    agent.safetensors   every network of the agent (critics, targets, value, temperature)
    opt_<name>.safetensors + rng.safetensors   optimizer / RNG state in checkpoints/last (resume)
    checkpoint.json     policy "rl_actor", its config and normaliser, plus "rl": algorithm,
                        agent config, dims, and (for resume) optimizer / sampler state
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robolearn.config import ConfigError, from_dict, to_dict

ALGOS: dict[str, tuple[str, str]] = {
    "iql": ("robolearn.rl.iql:IQL", "robolearn.rl.iql:IQLConfig"),
    "cql": ("robolearn.rl.cql:CQL", "robolearn.rl.cql:CQLConfig"),
    "calql": ("robolearn.rl.cql:CalQL", "robolearn.rl.cql:CQLConfig"),
    "td3bc": ("robolearn.rl.td3bc:TD3BC", "robolearn.rl.td3bc:TD3BCConfig"),
    "sac": ("robolearn.rl.sac:SAC", "robolearn.rl.sac:SACConfig"),
}
OFFLINE_ALGOS = ("iql", "cql", "calql", "td3bc")
FINETUNE_ALGOS = ("wsrl", "sac", "cql", "calql")
# the learner each fine-tuning algorithm runs online: WSRL and SAC run SAC; CQL / Cal-QL keep their penalty
# online (Cal-QL's Monte-Carlo bound needs returns-to-go, which online batches do not carry: plain CQL there)
FINETUNE_LEARNER = {"wsrl": "sac", "sac": "sac", "cql": "cql", "calql": "calql"}


def algo_classes(name: str) -> tuple[type, type]:
    if name not in ALGOS:
        raise ValueError(f"unknown RL algorithm {name!r} (known: {', '.join(ALGOS)})")
    agent_t, cfg_t = ALGOS[name]
    from robolearn.policies import resolve_entry

    return resolve_entry(agent_t), resolve_entry(cfg_t)


def build_agent(name: str, cfg: Any, obs_dim: int, action_dim: int, stats: dict[str, Any]) -> Any:
    agent_cls, _ = algo_classes(name)
    if name == "calql" and not cfg.calql:
        cfg = dataclasses.replace(cfg, calql=True)
    return agent_cls(cfg, obs_dim, action_dim, stats)


# ------------------------------------------------------------------------------------ run configs
@dataclass
class RLTrainConfig:
    """`train:` section of `robolearn offline`."""

    steps: int = 20_000
    batch_size: int = 256
    seed: int = 0
    log_every: int = 500
    eval_every: int = 5_000
    eval_episodes: int = 10
    eval_seed: int = 100_000
    eval_num_envs: int = 10  # evaluation episodes run as one batch of this many envs (our tasks)
    save_every: int = 10_000
    device: str = "cpu"
    threads: int = 1  # torch CPU threads (RL updates are small; 1 keeps shared boxes usable)
    # none | return_range: rewards times L / (max - min episode return) of the data, L its longest episode:
    # IQL's locomotion recipe (L = 1000 there); the scale replaces agent.reward_scale and is recorded in
    # the run's config.yaml
    reward_norm: str = "none"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"train.steps and train.batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.reward_norm not in ("none", "return_range"):
            raise ConfigError(f"train.reward_norm must be none or return_range, got {self.reward_norm!r}")
        if self.eval_num_envs < 1:
            raise ConfigError(f"train.eval_num_envs must be >= 1, got {self.eval_num_envs}")
        if self.eval_every < 1 or self.save_every < 1 or self.log_every < 1:
            raise ConfigError("train.eval_every, save_every and log_every must be >= 1")
        if self.eval_episodes < 0 or self.threads < 1:
            raise ConfigError("train.eval_episodes must be >= 0 and train.threads >= 1")


@dataclass
class SamplerConfig:
    """`sampler:` section: trajectory reweighting (robolearn.rl.weighting)."""

    kind: str = "uniform"  # uniform | rw | aw | topk
    alpha: float | None = None  # softmax temperature; default 0.1 (iql, td3bc) / 0.2 (cql, calql)
    topk: float = 0.1  # fraction of trajectories kept by `topk`

    def __post_init__(self) -> None:
        from robolearn.rl.weighting import SAMPLERS

        if self.kind not in SAMPLERS:
            raise ConfigError(f"sampler.kind must be one of {', '.join(SAMPLERS)}, got {self.kind!r}")
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"sampler.alpha must be > 0, got {self.alpha}")
        if not 0.0 < self.topk <= 1.0:
            raise ConfigError(f"sampler.topk must be in (0, 1], got {self.topk}")


@dataclass
class FinetuneConfig:
    """`finetune:` section of `robolearn finetune`. Steps count online env steps incl. warm-up."""

    steps: int = 20_000
    warmup: int = 5_000  # env steps with the pre-trained policy before any gradient update
    retain_offline: float = 0.0  # fraction of each batch drawn from the offline data
    init: str = "checkpoint"  # checkpoint | scratch (random weights, random-action warm-up)
    batch_size: int = 256
    buffer_capacity: int = 1_000_000
    seed: int = 0
    log_every: int = 1_000
    eval_every: int = 1_000
    eval_episodes: int = 10
    eval_seed: int = 100_000
    eval_num_envs: int = 10  # evaluation episodes run as one batch of this many envs (our tasks)
    save_every: int = 10_000
    device: str = "cpu"
    threads: int = 1
    num_envs: int = 1  # envs stepped together; each loop step adds num_envs transitions (our tasks when > 1)
    backend: str = "cpu"  # cpu: MuJoCo C; gpu / warp-cpu: MuJoCo Warp, agent + replay on its device
    # fresh: new Adam moments; checkpoint: continue the pre-trained agent's (from a checkpoints/last directory).
    # WSRL's reference code, as we read it, restores the whole offline agent. Learning rates stay this config's.
    optimizer_state: str = "fresh"
    critic_only: int = 0  # env steps after the warm-up whose updates train only the critics (actor, temperature held)

    def __post_init__(self) -> None:
        if self.eval_num_envs < 1:
            raise ConfigError(f"finetune.eval_num_envs must be >= 1, got {self.eval_num_envs}")
        if self.num_envs < 1:
            raise ConfigError(f"finetune.num_envs must be >= 1, got {self.num_envs}")
        if self.backend not in ("cpu", "gpu", "warp-cpu"):
            raise ConfigError(f"finetune.backend must be cpu, gpu or warp-cpu, got {self.backend!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"finetune.steps and finetune.batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.warmup < 0:
            raise ConfigError(f"finetune.warmup must be >= 0, got {self.warmup}")
        if not 0.0 <= self.retain_offline < 1.0:
            raise ConfigError(f"finetune.retain_offline must be in [0, 1), got {self.retain_offline}")
        if self.init not in ("checkpoint", "scratch"):
            raise ConfigError(f"finetune.init must be 'checkpoint' or 'scratch', got {self.init!r}")
        if self.eval_every < 1 or self.save_every < 1 or self.log_every < 1 or self.eval_episodes < 0:
            raise ConfigError("finetune.eval_every/save_every/log_every must be >= 1, eval_episodes >= 0")
        if self.buffer_capacity < 1 or self.threads < 1:
            raise ConfigError("finetune.buffer_capacity and finetune.threads must be >= 1")
        if self.optimizer_state not in ("fresh", "checkpoint"):
            raise ConfigError(f"finetune.optimizer_state must be 'fresh' or 'checkpoint', got {self.optimizer_state!r}")
        if self.critic_only < 0:
            raise ConfigError(f"finetune.critic_only must be >= 0, got {self.critic_only}")


@functools.cache
def run_config_class(name: str, kind: str) -> type:
    """Dataclass of a whole YAML: `name`, `agent:` and `train:`+`sampler:` (offline) or `finetune:`."""
    _, cfg_cls = algo_classes(FINETUNE_LEARNER[name] if kind == "finetune" else name)
    fields: list[Any] = [("name", str, field(default=name)), ("agent", cfg_cls, field(default_factory=cfg_cls))]
    if kind == "offline":
        fields += [("train", RLTrainConfig, field(default_factory=RLTrainConfig)),
                   ("sampler", SamplerConfig, field(default_factory=SamplerConfig))]
    else:
        fields += [("finetune", FinetuneConfig, field(default_factory=FinetuneConfig))]
    return dataclasses.make_dataclass(f"{cfg_cls.__name__}{kind.title()}Run", fields)


def load_run_config(name: str, kind: str, path: str | Path | None, overrides: list[str] | None) -> Any:
    from robolearn.config import load_config, project_root, read_yaml

    # an algorithm that is both offline and fine-tuning (CQL, Cal-QL) has one YAML per kind
    both = kind == "finetune" and name in OFFLINE_ALGOS
    path = Path(path) if path else project_root() / "policies" / f"{name}{'_finetune' if both else ''}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no config for {name!r} at {path}")
    in_file = read_yaml(path).get("name")
    if in_file not in (None, name):
        raise ConfigError(f"{path} is a {in_file!r} config, expected {name!r}")
    from robolearn.validation import check_config_values

    cfg = load_config(run_config_class(name, kind), path, overrides)
    check_config_values(cfg, "config")  # offline and finetune, fresh or resumed: one line, before any work
    return cfg


# ------------------------------------------------------------------------------------ checkpoints
def save_agent(agent: Any, directory: str | Path, *, step: int, task: str | None, extra_meta: dict[str, Any] | None = None,
               train_state: bool = False, rng: dict[str, torch.Tensor] | None = None,
               extra_groups: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Actor policy as the model group, the whole agent as group `agent`; optimizers when resuming.

    `extra_groups` adds further tensor groups (e.g. the online replay buffer of `finetune`)."""
    from robolearn.checkpoint import save_policy
    from robolearn.training import optimizer_to_tensors

    groups: dict[str, dict[str, torch.Tensor]] = {"agent": agent.state_dict(), **(extra_groups or {})}
    rl_meta: dict[str, Any] = {
        "algo": agent.name, "agent_config": to_dict(agent.cfg), "obs_dim": agent.obs_dim,
        "action_dim": agent.action_dim, "num_updates": agent.num_updates,
    }
    if train_state:
        opt_meta = {}
        for name, opt in agent.optimizers().items():
            tensors, meta = optimizer_to_tensors(opt)
            groups[f"opt_{name}"] = tensors
            opt_meta[name] = meta
        rl_meta["optimizers"] = opt_meta
        groups["rng"] = rng or {"torch": torch.get_rng_state()}
    meta = {"rl": rl_meta, **(extra_meta or {})}
    return save_policy(agent.policy, directory, step=step, task=task, extra_meta=meta, extra_groups=groups)


def load_agent(directory: str | Path, device: str | torch.device = "cpu", with_optimizers: bool = False) -> tuple[Any, dict[str, Any]]:
    """(agent, checkpoint metadata) of a checkpoint written by `save_agent`."""
    from robolearn.checkpoint import CheckpointError, load_tensors, read_meta
    from robolearn.data.normalizer import Normalizer
    from robolearn.evaluation import resolve_checkpoint
    from robolearn.training import optimizer_from_tensors

    directory = resolve_checkpoint(directory)
    meta = read_meta(directory)
    rl = meta.get("rl")
    if not isinstance(rl, dict) or "algo" not in rl:
        raise CheckpointError(f"{directory} is not an RL agent checkpoint (no 'rl' entry; written by robolearn offline/finetune?)")
    _, cfg_cls = algo_classes(rl["algo"])
    try:
        cfg = from_dict(cfg_cls, rl["agent_config"], where=f"{directory}:rl.agent_config")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    stats = Normalizer.from_json(meta["normalizer"]).stats
    agent = build_agent(rl["algo"], cfg, int(rl["obs_dim"]), int(rl["action_dim"]), stats)
    state = load_tensors(directory, "agent", meta)
    missing = sorted(set(agent.state_dict()) - set(state))
    if missing:
        raise CheckpointError(f"{directory}: agent weights lack {', '.join(missing[:5])}")
    agent.load_state_dict(state)
    agent.num_updates = int(rl.get("num_updates", 0))
    if with_optimizers:
        if "optimizers" not in rl:
            raise CheckpointError(f"{directory} holds no optimizer state (not a checkpoints/last directory)")
        for name, opt in agent.optimizers().items():
            optimizer_from_tensors(opt, load_tensors(directory, f"opt_{name}", meta), rl["optimizers"][name])
    return agent.to(device), meta


# ------------------------------------------------------------------------------------ resume
def open_run(run_dir: str | Path, kind: str) -> tuple[Path, dict[str, Any]]:
    """(directory, run.json) of an `offline` or `finetune` run to `--resume`; one-line errors otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--resume {run_dir}: no such run directory")
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "run.json").is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no config.yaml / run.json (not a robolearn {kind} run)")
    try:
        run_json = json.loads((run_dir / "run.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--resume {run_dir}: run.json is not valid JSON ({exc})") from None
    algo = run_json.get("algo") if isinstance(run_json, dict) else None
    # a fine-tuning run records the algorithm of its checkpoint (`source_algo`); CQL / Cal-QL name both kinds
    algos_of = {"offline": OFFLINE_ALGOS, "finetune": FINETUNE_ALGOS}
    run_kind = "finetune" if isinstance(run_json, dict) and "source_algo" in run_json else "offline"
    if algo in algos_of[run_kind] and run_kind != kind:
        raise ConfigError(f"--resume {run_dir}: a robolearn {run_kind} run (algo {algo!r}); resume it with `robolearn {run_kind} --resume`, "
                          f"not a robolearn {kind} run")
    if algo not in algos_of[kind]:
        raise ConfigError(f"--resume {run_dir}: a run of algo {algo!r}, not a robolearn {kind} run")
    missing = [key for key in (("data", "task") if kind == "offline" else ("task",)) if key not in run_json]
    if missing:
        raise ConfigError(f"--resume {run_dir}: run.json lacks {', '.join(missing)}")
    return run_dir, run_json


def load_resume(run_dir: Path, total_steps: int, device: str | torch.device = "cpu", at_end_ok: bool = False,
                extend_hint: str = "") -> tuple[Any, dict[str, Any], dict[str, torch.Tensor], int]:
    """(agent with optimizers, checkpoint metadata, RNG tensors, step) of `<run_dir>/checkpoints/last`.

    A run is finished once its `policy/` (written last) holds `total_steps`; `extend_hint` says in that error how
    to train it further. `at_end_ok`: a checkpoint at `total_steps` is a run stopped before writing its outputs
    (offline training checkpoints its last step), not a finished one. The caller restores the RNG tensors once
    nothing else will draw from the generators."""
    from robolearn.checkpoint import load_tensors, read_meta, saved_step

    final = run_dir / "policy"
    if (final / "checkpoint.json").is_file() and saved_step(final, read_meta(final, verify=False)) >= total_steps:
        raise ValueError(f"run {run_dir} already finished ({total_steps} steps; {extend_hint})")
    last = run_dir / "checkpoints" / "last"
    if not last.is_dir():
        raise FileNotFoundError(f"--resume {run_dir}: no checkpoints/last yet (the run stopped before its first save_every)")
    agent, meta = load_agent(last, device, with_optimizers=True)
    rng = load_tensors(last, "rng", meta)
    start = saved_step(last, meta)
    if start > total_steps or (start == total_steps and not at_end_ok):
        raise ValueError(f"run {run_dir} already finished ({start} of {total_steps} steps)")
    return agent, meta, rng, start
