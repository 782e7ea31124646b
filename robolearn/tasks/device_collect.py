"""Scripted-expert collection on a device backend (`robolearn collect --backend gpu|warp-cpu`).

The task's own expert runs over the device env's batched tensors (its `policy` is plain torch;
tensors it creates are put on the device by running it under `torch.device(...)`), the rollout
engine steps a `DeviceVectorEnv`, and `DeviceStoreWriter` keeps every per-step column on the
device, moves a chunk of steps to the host every `flush_every` steps and cuts it into episodes
there. The store is the one the host path (robolearn.tasks.collect) writes: the same columns and
per-step alignment (obs, stage, failure_event, sim_state and primitive of the state the expert
saw before action[t]; reward/done of action[t]), the same episode order (by finishing step, then
env), seeds, success and metadata.

Same seeds, same episodes: initial states come from the episode seeds as on the host, finished
envs take the next episode in env order as on the host, and the expert's random draws (per-episode
mode, action noise) come from the same CPU generator in the same order -- modes are redrawn only on
steps where some env started a new episode, which costs one host read of a flag per step. What
differs is float32 physics and expert arithmetic (MuJoCo Warp) against float64 (MuJoCo C).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from robolearn.tasks.base import STATE_SPEC
from robolearn.tasks.rollout import DeviceBatch, EpisodeStats, FixedSeeds, Hook, RolloutEngine, Step


class CollectBatch(DeviceBatch):
    """DeviceBatch whose `restarted` flags only envs that began a new episode (not those that went
    idle), as HostBatch does: the expert redraws modes exactly when the host collector would."""

    def restart(self, step: Step) -> dict[str, torch.Tensor]:
        step.restarted = step.info["done"] & (self.env.slot_episode >= 0)
        return step.obs


def _expert_tensors(expert: Any) -> list[str]:
    return [k for k, v in vars(expert).items() if torch.is_tensor(v)]


def _move_expert(expert: Any, device: torch.device) -> None:
    """Put the expert's per-env memory (mode, hysteresis flags, ...) on `device`."""
    for k in _expert_tensors(expert):
        setattr(expert, k, getattr(expert, k).to(device))


class DeviceExpertActor:
    """A scripted expert acting on the device env's state tensors. Its random draws stay on the
    expert's CPU generator (same stream as the host collector); the draws are copied over."""

    def __init__(self, expert: Any, env: Any) -> None:
        self.expert, self.env = expert, env
        self.device = env.device
        _move_expert(expert, self.device)
        self.last_primitive: torch.Tensor | None = None
        self.last_clean: torch.Tensor | None = None

    def reset(self, obs: dict[str, Any], rows: torch.Tensor | None = None) -> None:
        if rows is not None and not bool(rows.any()):  # the host collector resets only when an episode starts
            return
        ex = self.expert
        _move_expert(ex, torch.device("cpu"))
        ex.reset() if rows is None else ex.reset(rows.cpu())
        _move_expert(ex, self.device)

    def observe(self, obs: dict[str, Any]) -> None:
        pass

    def act(self, obs: dict[str, Any]) -> torch.Tensor:
        ex = self.expert
        with torch.device(self.device):
            action, prim = ex.policy(self.env.backend.read())
        self.last_clean = action.clamp(-1, 1).to(torch.float32)
        self.last_primitive = prim.to(torch.int32)
        if ex.noise > 0:  # float64 draws as on the host (action dtype float64 there)
            noise = torch.randn(action.shape, generator=ex.gen, dtype=torch.float64)
            action = action + (ex.noise * noise).to(self.device, action.dtype)
        return action.clamp(-1, 1).to(torch.float32)


def state_reader(backend: Any):
    """A function returning the full STATE_SPEC state (N, S) as a new tensor on the backend's device
    (MuJoCo Warp: one mjw.get_state launch, no host copy; other backends: get_state())."""
    wp = getattr(backend, "wp", None)
    if wp is None:
        return lambda: backend.get_state().to(backend.device)
    mjw = backend.mjw
    with wp.ScopedDevice(backend.wp_device):
        buf = wp.zeros((backend.num_envs, backend.layout.state_size), dtype=float)
    view = wp.to_torch(buf)

    def read() -> torch.Tensor:
        with wp.ScopedDevice(backend.wp_device):
            backend._after_torch()
            mjw.get_state(backend.m, backend.d, buf, STATE_SPEC)
            backend._before_torch()
        return view.clone()

    return read


class DeviceStoreWriter(Hook):
    """StoreWriter for a device env: per-step columns are kept as device tensors, moved to the host
    every `flush_every` steps (one copy per column) and cut into episodes there; each finished
    episode is committed on its own, in the host collector's order."""

    device_ok = True

    def __init__(self, store: Any, env: Any, seeds: list[int], flush_every: int, source: str = "demo",
                 collector: str = "scripted", metadata: Any = None) -> None:
        self.store, self.env, self.seeds = store, env, seeds
        self.flush_every = max(1, int(flush_every))
        self.source, self.collector, self.metadata = source, collector, metadata
        self.features = store.features
        self.read_state = state_reader(env.backend)
        self.chunk: dict[str, list[torch.Tensor]] = {}
        self.host: dict[str, np.ndarray] = {}  # per column (T, N, ...): steps since `base`
        self.base = 0  # global step index of host row 0
        self.global_step = 0
        self.start: np.ndarray | None = None  # global step at which each env's episode began
        self.committed: list[tuple[int, int]] = []
        self.successes = 0
        self.store_seconds = 0.0  # time spent in append_episode (the host side of collection)

    # -- hook ---------------------------------------------------------------------------------
    def on_start(self, engine: RolloutEngine, obs: Any) -> None:
        self._observe_state(torch.zeros(self.env.num_envs, dtype=torch.bool, device=self.env.device), None)
        self.start = np.zeros(self.env.num_envs, np.int64)

    def on_step(self, engine: RolloutEngine, step: Step, pre_obs: Any, action: Any, pre_state: Any) -> None:
        actor, info = engine.actor, step.info
        cols = {"obs/state": pre_obs["state"], "action": action.clamp(-1, 1).to(torch.float32),
                "reward": step.reward.to(torch.float32), "done": step.terminated | step.truncated,
                "stage": self.stage, "failure_event": self.event, "sim_state": self.state,
                "primitive": actor.last_primitive, "expert_action": actor.last_clean, "mode": actor.expert.mode,
                "episode": step.episode, "success": info["success"], "ended": step.done}
        for k, v in cols.items():
            if k in ("episode", "success", "ended", "mode") or k in self.features:
                self.chunk.setdefault(k, []).append(v)
        self._observe_state(info["done"], info)

    def on_restart(self, engine: RolloutEngine, step: Step, obs: Any) -> None:
        if len(self.chunk.get("action", ())) >= self.flush_every:
            self.flush()

    def on_close(self, engine: RolloutEngine) -> None:
        self.flush()

    # -- internals ------------------------------------------------------------------------------
    def _observe_state(self, reset: torch.Tensor, info: dict[str, torch.Tensor] | None) -> None:
        """Stage / failure event / full state of the state the next action sees (hooks run after
        the device env's in-step resets: a reset env holds its new episode's first state, whose
        stage is computed and whose event is 0, like TaskSim.status())."""
        task, s = self.env.task, self.env.backend.read()
        fresh = task.stage(s).to(torch.int32)
        if info is None:
            self.stage, self.event = fresh, torch.zeros_like(fresh)
        else:
            self.stage = torch.where(reset, fresh, info["stage"].to(torch.int32))
            self.event = torch.where(reset, 0, info["failure_event"].to(torch.int32))
        self.state = self.read_state()

    def flush(self) -> None:
        """Move the buffered steps to the host and commit the episodes that finished in them."""
        if not self.chunk:
            return
        new = {k: torch.stack(v).cpu().numpy() for k, v in self.chunk.items()}
        self.chunk = {}
        K = len(new["action"])
        for k, v in new.items():
            self.host[k] = v if k not in self.host else np.concatenate([self.host[k], v])
        ended = new["ended"]
        for k in range(K):
            g = self.global_step + k
            for r in np.flatnonzero(ended[k]):
                self._commit(int(r), int(self.start[r]), g)
                self.start[r] = g + 1
        self.global_step += K
        # Drop host rows no unfinished episode needs.
        keep_from = int(self.start.min()) if len(self.start) else self.global_step
        keep_from = min(keep_from, self.global_step)
        if keep_from > self.base:
            cut = keep_from - self.base
            self.host = {k: v[cut:] for k, v in self.host.items()}
            self.base = keep_from

    def _commit(self, row: int, first: int, last: int) -> None:
        a, b = first - self.base, last - self.base + 1
        h = self.host
        episode = int(h["episode"][b - 1, row])
        if episode < 0 or not (h["episode"][a:b, row] == episode).all():
            raise RuntimeError(f"device collection lost track of env {row}'s episode (steps {first}..{last})")
        steps = {k: np.ascontiguousarray(h[k][a:b, row]) for k in self.features if k in h}
        steps["source"] = np.full(b - a, self.source)
        success = bool(h["success"][b - 1, row])
        meta = self.metadata(steps, success, int(h["mode"][b - 1, row])) if self.metadata else None
        t0 = time.perf_counter()
        self.store.append_episode(steps, success=success, collector=self.collector, seed=int(self.seeds[episode]),
                                  **({"metadata": meta} if meta is not None else {}))
        self.store_seconds += time.perf_counter() - t0
        self.committed.append((episode, b - a))
        self.successes += int(success)


def collect_on_device(task: str, episodes: int, out: str | Path, backend: str, num_envs: int = 1,
                      noise: float = 0.0, seed: int = 0, overrides: list[str] | dict | None = None,
                      progress: bool = True, expert_mode: int | None = None, flush_every: int | None = None,
                      cfg: Any = None, **backend_kwargs: Any) -> dict[str, Any]:
    """`collect` on a MuJoCo Warp backend ("gpu" or "warp-cpu"): the same store and summary.
    cfg: the validated task config (collect() builds it); flush_every: steps per host copy
    (default: the task's horizon)."""
    from robolearn.tasks.collect import _open_store
    from robolearn.tasks.device_env import DeviceVectorEnv
    from robolearn.tasks.registry import expert_class, load_task_config

    cfg = cfg if cfg is not None else load_task_config(task, overrides)
    if cfg.image:
        raise ValueError(f"--backend {backend} collects state observations only (images are rendered on the host)")
    if cfg.perturb_rate > 0:
        raise ValueError(f"--backend {backend} does not inject perturbations (drawn per env on the host); use --backend cpu")
    n = min(num_envs, episodes)
    env = DeviceVectorEnv(task, n, backend=backend, cfg=cfg, **backend_kwargs)
    seeds = [seed + k for k in range(episodes)]
    summary = {"episodes": 0, "steps": 0, "successes": 0, "failure_events": 0}
    try:
        expert = expert_class(task)(env.task, n, noise=noise, seed=seed, mode=expert_mode)
        schema = SimpleNamespace(cfg=cfg, obs_dim=env.obs_dim, action_dim=env.action_dim, backend=env.backend,
                                 image_keys=(), proprio_dim=env.task.proprio_dim,
                                 control_period=env.backend.layout.timestep * cfg.frame_skip)
        store = _open_store(Path(out), schema, cfg, expert_labels=noise > 0)
    except BaseException:
        env.close()
        raise

    def metadata(steps: dict[str, np.ndarray], success: bool, mode: int) -> dict[str, Any]:
        n_events = int(np.count_nonzero(steps["failure_event"]))
        summary["episodes"] += 1
        summary["steps"] += len(steps["action"])
        summary["successes"] += int(success)
        summary["failure_events"] += n_events
        return {"noise": noise, "perturb_rate": cfg.perturb_rate, "expert_mode": mode, "failure_events": n_events,
                "backend": backend}

    writer = DeviceStoreWriter(store, env, seeds, flush_every or cfg.horizon, metadata=metadata)
    stats = EpisodeStats(episodes, seeds)
    engine = RolloutEngine(CollectBatch(env, FixedSeeds(seeds)), DeviceExpertActor(expert, env), [writer],
                           stats=stats, progress=progress, desc=f"collect {task} [{backend}]")
    t0 = time.perf_counter()
    try:
        engine.run()
    finally:
        try:
            writer.flush()  # episodes finished since the last flush (also after an interrupt)
        finally:
            store.close()
            env.close()
    summary["success_rate"] = summary["successes"] / max(1, summary["episodes"])
    summary["wall_s"] = time.perf_counter() - t0  # simulation, expert and store writes
    summary["store_s"] = writer.store_seconds  # of which: committing episodes to the store
    return summary
