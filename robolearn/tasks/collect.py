"""Scripted-expert data collection into an EpisodeStore (source=demo, collector=scripted).

Per-step alignment (index t of an episode): `obs/*`, `stage`, `sim_state`, `failure_event` and
`primitive` describe the state the expert saw before `action[t]` (failure_event[t] != 0 means a
perturbation hit, or a failure was detected, on the transition into that state); `reward[t]` and
`done[t]` are the results of `action[t]`. Each finished episode is committed on its own, so an
interrupted collection keeps every episode finished before the interrupt.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.tasks.base import TaskConfig
from robolearn.tasks.registry import expert_class, get_spec, load_task_config
from robolearn.tasks.rollout import ExpertActor, FixedSeeds, HostBatch, RolloutEngine, StoreWriter
from robolearn.tasks.sim import TaskSim


def open_task_store(path: str | Path, features: dict[str, Any], sim: TaskSim, task: str) -> Any:
    """Append to an existing store of the same task whose state/action shapes match, else create
    one with `features` (eval --save and intervene write rollouts this way)."""
    from robolearn.data.store import EpisodeStore

    path = Path(path)
    if not path.exists():
        return EpisodeStore.create(path, features, task=task, env_kwargs=dataclasses.asdict(sim.cfg),
                                   control_period=sim.control_period)
    store = EpisodeStore.open(path, mode="a")
    if store.task not in ("", task):
        store.close()
        raise ValueError(f"{path} holds task {store.task!r}, not {task!r}")
    for key in ("obs/state", "action"):
        if key in store.features and key in features and store.features[key].shape != features[key].shape:
            store.close()
            raise ValueError(f"{path}: {key} has shape {store.features[key].shape}, task {task} gives {features[key].shape}")
    return store


def store_features(sim: TaskSim, expert_labels: bool = False) -> dict[str, Any]:
    """Feature schema of the episodes `collect` writes for this task config.

    expert_labels: also an `expert_action` column, the expert's noise-free action at each step
    (collect with noise > 0 adds it; train with `data.action_key=expert_action` for DART-style
    labels, while `action` stays the executed one so stored episodes still replay exactly).
    """
    from robolearn.data.schema import Feature

    size = sim.cfg.image_size
    feats = {
        "obs/state": Feature("float32", (sim.obs_dim,), "obs"),
        "action": Feature("float32", (sim.action_dim,), "action"),
        "sim_state": Feature("float64", (sim.backend.layout.state_size,), "sim_state"),
        "primitive": Feature("int32", (), "aux"),
        "failure_event": Feature("int32", (), "aux"),
    }
    if expert_labels:
        feats["expert_action"] = Feature("float32", (sim.action_dim,), "aux")
    if sim.image_keys:
        feats["obs/proprio"] = Feature("float32", (sim.proprio_dim,), "obs")
    for key in sim.image_keys:
        feats[f"obs/{key}"] = Feature("uint8", (size, size, 3), "obs")
    return feats


def _open_store(path: Path, sim: TaskSim, cfg: TaskConfig, expert_labels: bool):
    from robolearn.data.store import EpisodeStore

    feats = store_features(sim, expert_labels)
    if path.exists():
        store = EpisodeStore.open(path, mode="a")
        if store.task != cfg.task:
            store.close()
            raise ValueError(f"store {path} holds task {store.task!r}, not {cfg.task!r}")
        for key, feat in feats.items():
            if key == "expert_action":  # optional column: written when the store has it
                continue
            have = store.features.get(key)
            if have is None or have.shape != feat.shape or have.dtype != feat.dtype:
                store.close()
                raise ValueError(f"store {path} has feature {key}={have}, this collection writes {feat} "
                                 "(different obs mode or task config)")
        return store
    return EpisodeStore.create(path, features=feats, task=cfg.task, env_kwargs=dataclasses.asdict(cfg),
                               control_period=sim.control_period)


def collect(task: str, episodes: int, out: str | Path, num_envs: int = 1, noise: float = 0.0,
            perturb: float | None = None, image: bool = False, seed: int = 0,
            overrides: list[str] | dict | None = None, progress: bool = True,
            expert_mode: int | None = None, backend: str = "cpu") -> dict[str, Any]:
    """Run the scripted expert for `episodes` episodes and append them to the store at `out`.
    expert_mode fixes the expert's per-episode mode (unimodal demos, e.g. for ablations).
    backend: "cpu" (MuJoCo C), or "gpu" / "warp-cpu" (MuJoCo Warp, the expert batched on the
    device: robolearn.tasks.device_collect; state observations, no perturbations).

    Episode k is reset with seed `seed + k` (initial state and perturbations reproduce from it).
    Returns a summary {episodes, steps, successes, success_rate, failure_events}.
    """
    spec = get_spec(task)
    if spec.is_gym:
        raise ValueError(f"task {task!r} is a gymnasium env: it has no scripted expert to collect with "
                         "(use `robolearn data rollout --policy random|CHECKPOINT`)")
    expert_cls = expert_class(task)
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if num_envs < 1:
        raise ValueError(f"--num-envs must be >= 1, got {num_envs}")
    cfg = load_task_config(task, overrides)
    if perturb is not None:
        cfg.perturb_rate = float(perturb)
    if image:
        cfg.obs_mode = "state+image"
    cfg.validate(spec.task_class().perturbations)
    if backend != "cpu":
        from robolearn.tasks.device_collect import collect_on_device

        return collect_on_device(task, episodes, out, backend, num_envs=num_envs, noise=noise, seed=seed,
                                 progress=progress, expert_mode=expert_mode, cfg=cfg)
    n = min(num_envs, episodes)
    sim = TaskSim(task, cfg=cfg, num_envs=n)
    expert = expert_cls(sim.task, n, noise=noise, seed=seed, mode=expert_mode)
    store = _open_store(Path(out), sim, cfg, expert_labels=noise > 0)
    summary = {"episodes": 0, "steps": 0, "successes": 0, "failure_events": 0}
    actor = ExpertActor(expert, sim)

    def metadata(row: int, steps: dict[str, np.ndarray], success: bool) -> dict[str, Any]:
        n_events = int(np.count_nonzero(steps["failure_event"]))
        summary["episodes"] += 1
        summary["steps"] += len(steps["action"])
        summary["successes"] += int(success)
        summary["failure_events"] += n_events
        return {"noise": noise, "perturb_rate": cfg.perturb_rate, "expert_mode": int(expert.mode[row]),
                "failure_events": n_events}

    writer = StoreWriter(store, source="demo", collector="scripted", metadata=metadata)
    batch = HostBatch(sim, FixedSeeds([seed + k for k in range(episodes)]))
    engine = RolloutEngine(batch, actor, [writer], progress=progress, desc=f"collect {task}")
    try:
        engine.run()
    finally:
        store.close()
        sim.close()
    summary["success_rate"] = summary["successes"] / max(1, summary["episodes"])
    return summary


def replay(sim: TaskSim, sim_states: np.ndarray, actions: np.ndarray,
           failure_events: np.ndarray | None = None) -> np.ndarray:
    """Re-run stored actions from the first stored state (env 0 of `sim`); returns the states.

    Perturbations are external state edits, so at steps whose failure_event is a perturbation
    code (1-3) the stored state is restored instead of being re-simulated. On the CPU backend the
    returned states equal the stored ones bit for bit.
    """
    sim.set_state(sim_states[:1])
    out = [sim.get_state()[0]]
    for t in range(len(actions) - 1):
        sim.step(np.asarray(actions[t], np.float64)[None])
        if failure_events is not None and 1 <= int(failure_events[t + 1]) <= 3:
            sim.set_state(sim_states[t + 1:t + 2])
        out.append(sim.get_state()[0])
    return np.stack(out)
