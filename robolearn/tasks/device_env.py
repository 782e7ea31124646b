"""Device-resident batched task envs and evaluation (MuJoCo Warp on CUDA; any backend works).

`DeviceVectorEnv` is the torch counterpart of the gymnasium `TaskVectorEnv`: actions, obs,
reward, success, stage, failure events, episode bookkeeping and automatic resets are tensors on
the backend's device, and a step never waits for the host (no `.item()`, no boolean indexing).
Initial states are sampled on the host once, per episode seed, exactly as `TaskSim.reset(seeds=)`
does (so the same seeds give the same initial states on every backend), and copied to the device
as a pool; a finished env takes the next pool entry inside the step (SAME_STEP autoreset: the
returned obs is the new episode's first, `info` holds the finished step's success/episode).

Learners that collect without end (`robolearn finetune` and `robolearn sailor` with `--backend
gpu|warp-cpu`) give it an endless episode source instead (`set_episode_source`): the pool is then
a ring of initial states that the host tops up every few steps (`top_up`, one read of a counter),
so a step still never waits for the host. With `final_obs=True` the step's `info["final_obs"]`
holds every env's observation before the in-step reset (the true next state of a finished
episode, which off-policy learners bootstrap from on a time limit).

`robolearn eval --backend gpu|warp-cpu` runs it through the rollout engine
(robolearn.tasks.rollout.DeviceBatch): the same seeds and report as the host evaluation, with
per-episode results scattered into device arrays and the host consulted only every `sync_every`
steps to see whether all episodes are done. This module imports nothing of robolearn.evaluation.
"""

from __future__ import annotations

from typing import Any

import torch

from robolearn.tasks.base import SimState, Task, TaskConfig


class DeviceVectorEnv:
    """`num_envs` envs of one task on one backend; every per-step tensor stays on its device."""

    on_device = True  # persistent_rollout drives it through DeviceBatch

    def __init__(self, task_name: str, num_envs: int, backend: Any = "gpu", cfg: TaskConfig | None = None,
                 overrides: list[str] | dict[str, Any] | None = None, max_episode_steps: int | None = None,
                 final_obs: bool = False, **backend_kwargs: Any):
        from robolearn.tasks.registry import build_model, load_task_config
        from robolearn.tasks.warp_backend import make_backend

        self.cfg = cfg if cfg is not None else load_task_config(task_name, overrides)
        if self.cfg.perturb_rate > 0:
            raise ValueError("perturbation events are drawn per env on the host: use --backend cpu for perturb_rate > 0")
        if self.cfg.image:
            raise ValueError("images are rendered on the host: the device env serves state observations only")
        task_cls, model = build_model(task_name, self.cfg)
        self.model = model
        self.backend = make_backend(backend, model, num_envs, **backend_kwargs) if isinstance(backend, str) else backend
        self.num_envs = self.backend.num_envs
        self.task: Task = task_cls(self.cfg, self.backend.layout)
        self.device = self.backend.device
        N, dev = self.num_envs, self.device
        self.t = torch.zeros(N, dtype=torch.int64, device=dev)
        self.slot_episode = torch.full((N,), -1, dtype=torch.int64, device=dev)
        self._pool: torch.Tensor | None = None
        self._next = torch.zeros((), dtype=torch.int64, device=dev)
        self._cycle = False
        self._prev: SimState | None = None
        self._bad_action = torch.zeros(N, dtype=torch.bool, device=dev)
        # episodes end at the task's horizon, or earlier at max_episode_steps (SAILOR's loop.max_episode_steps)
        self.horizon = int(self.cfg.horizon if max_episode_steps is None else min(self.cfg.horizon, max_episode_steps))
        self.final_obs = bool(final_obs)
        self._next_seed: Any = None  # endless episode source (set_episode_source)
        self.episode_seeds: list[int] = []  # seed of every episode index handed out so far (endless source)
        self._filled = 0  # endless source: pool entries exist for episodes < _filled

    @property
    def obs_dim(self) -> int:
        return self.task.obs_dim

    @property
    def action_dim(self) -> int:
        return self.task.action_dim

    @property
    def num_episodes(self) -> int:
        return 0 if self._pool is None else self._pool.shape[0]

    def set_episodes(self, seeds: list[int], cycle: bool = False) -> None:
        """Initial states of episodes with these seeds (cycle=True: reuse them forever, for benchmarks)."""
        if not seeds:
            raise ValueError("need at least one episode seed")
        self._pool = self._initial_states(seeds).to(self.device)
        self._cycle = cycle
        self._next_seed = None

    def _initial_states(self, seeds: list[int]) -> torch.Tensor:
        """Initial states of these episode seeds, sampled on the host exactly as TaskSim.reset(seeds=) does."""
        return torch.cat([self.task.sample_init(torch.Generator().manual_seed(int(s)), 1) for s in seeds])

    def set_episode_source(self, next_seed: Any, refill_every: int) -> None:
        """Endless episodes: episode k (k = 0, 1, ... in the order envs start them) has the k-th
        seed `next_seed()` returns. The pool is a ring of `num_envs * (refill_every + 1)` initial
        states; `top_up()` must run at least every `refill_every` steps (it reads one counter from
        the device), which is what keeps every episode that can start before the next top-up
        sampled in advance."""
        if refill_every < 1:
            raise ValueError(f"refill_every must be >= 1, got {refill_every}")
        self._next_seed = next_seed
        self._cycle = True
        self.episode_seeds = []
        self._filled = 0
        size = self.num_envs * (int(refill_every) + 1)
        self._pool = torch.zeros(size, self.backend.layout.state_size, dtype=torch.float64, device=self.device)
        self._next = torch.zeros((), dtype=torch.int64, device=self.device)
        self.top_up()

    def top_up(self) -> None:
        """Endless source: sample the episodes up to (next episode + pool size) into the ring (host
        sync: reads the next-episode counter)."""
        if self._next_seed is None:
            return
        size = self._pool.shape[0]
        target = int(self._next) + size
        if target <= self._filled:
            return
        seeds = [int(self._next_seed()) for _ in range(target - self._filled)]
        rows = torch.arange(self._filled, target, device=self.device) % size
        self._pool[rows] = self._initial_states(seeds).to(self.device, self._pool.dtype)
        self.episode_seeds.extend(seeds)
        self._filled = target

    def reset(self) -> torch.Tensor:
        """Every env starts the next episode of the pool (envs beyond the pool stay idle, episode -1)."""
        if self._pool is None:
            raise RuntimeError("call set_episodes(seeds) before reset()")
        E, N = self.num_episodes, self.num_envs
        idx = torch.arange(N, device=self.device)
        valid = torch.ones_like(idx, dtype=torch.bool) if self._cycle else idx < E
        self._reset_where(torch.ones(N, dtype=torch.bool, device=self.device), self._pool[idx % E])
        self.slot_episode = torch.where(valid, idx, -1)
        self._next = torch.tensor(N if self._cycle else min(N, E), dtype=torch.int64, device=self.device)
        self.t.zero_()
        self._prev = _clone(self.backend.read())
        return self.observe()

    def observe(self) -> torch.Tensor:
        return self.task.observe(self.backend.read()).to(torch.float32)

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One control step of every env; finished envs are reset to their next episode in place."""
        a = action.to(self.device)
        self._bad_action |= ~torch.isfinite(a).all(1)
        a = torch.nan_to_num(a, 0.0, 0.0, 0.0).clamp(-1.0, 1.0)
        task, cfg = self.task, self.cfg
        self.backend.set_ctrl(task.action_to_ctrl(self.backend.read(), a))
        self.backend.step(cfg.frame_skip)
        self.t += 1
        s = self.backend.read()
        success, reward, stage, events = task.evaluate(self._prev, s)
        terminated = success if cfg.terminate_on_success else torch.zeros_like(success)
        truncated = (self.t >= self.horizon) & ~terminated
        done = terminated | truncated
        info = {"success": success, "stage": stage, "failure_event": events, "episode": self.slot_episode.clone(),
                "done": done}
        if self.final_obs:  # the observation a finished env's episode ended in (before its reset below)
            info["final_obs"] = self.task.observe(s).to(torch.float32, copy=True)
        # Automatic reset: done envs take the next episodes of the pool, in env order.
        E = self.num_episodes
        new_ep = self._next + torch.cumsum(done.to(torch.int64), 0) - 1
        has_next = done & (torch.ones_like(done) if self._cycle else new_ep < E)
        self._reset_where(has_next, self._pool[new_ep.clamp(min=0) % E])
        self.slot_episode = torch.where(has_next, new_ep, torch.where(done, -1, self.slot_episode))
        self._next = self._next + has_next.sum()
        self.t = torch.where(done, 0, self.t)
        self._prev = _clone(self.backend.read())
        return self.observe(), reward, terminated, truncated, info

    def _reset_where(self, mask: torch.Tensor, states: torch.Tensor) -> None:
        reset_where = getattr(self.backend, "reset_where", None)
        if reset_where is not None:  # device backends: no host sync
            reset_where(mask, states)
        elif bool(mask.any()):  # e.g. MujocoCBackend (host anyway)
            self.backend.reset(mask.cpu(), states[mask].cpu())

    def check(self) -> None:
        """Raise for NaN/inf actions and simulator errors since the last check (host sync)."""
        if bool(self._bad_action.any()):
            bad = torch.nonzero(self._bad_action).flatten().tolist()
            raise RuntimeError(f"the policy produced a NaN/inf action for env(s) {bad[:8]}")
        check = getattr(self.backend, "check", None)
        if check:
            check("step")

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close:
            close()


def _clone(s: SimState) -> SimState:
    return SimState(*(x.clone() for x in s))
