"""Batched gymnasium VectorEnv over one TaskSim backend (MuJoCo C here, optionally threaded).

Autoreset modes (gymnasium.vector.AutoresetMode):
- NEXT_STEP (default, gymnasium's): an env that ended at step t is reset during step t+1; that
  call ignores its action and returns its first observation with reward 0 and
  terminated = truncated = False.
- SAME_STEP: an env that ends is reset within the same call; the returned observation is the
  new episode's first one and the last observation/info are in `info["final_obs"]` /
  `info["final_info"]` (masked by `info["_final_obs"]`).
- DISABLED: no automatic reset; call `reset(options={"reset_mask": mask})`.

Seeds: `reset(seed=s)` seeds env i with s + i (or pass a list of per-env seeds); later automatic
resets draw seeds from each env's own generator, so runs are reproducible.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from robolearn.tasks.base import TaskConfig
from robolearn.tasks.env import action_space, observation_space
from robolearn.tasks.sim import TaskSim


class TaskVectorEnv(gym.vector.VectorEnv):
    """`num_envs` copies of one task stepped as a batch; info has success/stage/failure_event."""

    def __init__(self, task: str, num_envs: int, config: TaskConfig | None = None, num_threads: int = 1,
                 autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP, **overrides: Any):
        self.sim = TaskSim(task, cfg=config, num_envs=num_envs, num_threads=num_threads, **overrides)
        self.task_name = task
        self.cfg = self.sim.cfg
        self.num_envs = num_envs
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.metadata = {"autoreset_mode": self.autoreset_mode, "render_fps": round(1 / self.sim.control_period)}
        self.single_observation_space = observation_space(self.sim)
        self.single_action_space = action_space(self.sim)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._needs_reset = np.zeros(num_envs, bool)

    @property
    def task(self):
        return self.sim.task

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed if isinstance(seed, int) else None)
        mask = np.ones(self.num_envs, bool)
        if options and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"], bool)
        n = int(mask.sum())
        if seed is None:
            seeds = None
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(n)]
        else:
            seeds = [int(x) for x in seed]
        self.sim.reset(torch.as_tensor(mask), seeds=seeds)
        self._needs_reset[mask] = False
        return self.sim.observe(), self._info(self.sim.status())

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.float64)
        resetting = self._needs_reset.copy() if self.autoreset_mode == AutoresetMode.NEXT_STEP else None
        if resetting is not None and resetting.any():
            # These envs' actions are ignored; replace them so a stale/NaN entry cannot matter.
            actions = actions.copy()
            actions[resetting] = 0.0
        obs, rew, term, trunc, info = self.sim.step(actions)
        info = self._info(info)
        done = term | trunc
        if resetting is not None:
            if resetting.any():
                new_obs = self.sim.reset(torch.as_tensor(resetting))
                for k in obs:
                    obs[k][resetting] = new_obs[k][resetting]
                rew[resetting] = 0.0
                term[resetting] = False
                trunc[resetting] = False
                status = self._info(self.sim.status())
                for k in info:
                    info[k][resetting] = status[k][resetting]
            self._needs_reset = done & ~resetting
        elif self.autoreset_mode == AutoresetMode.SAME_STEP and done.any():
            info["final_obs"] = {k: v.copy() for k, v in obs.items()}
            info["final_info"] = {k: v.copy() for k, v in info.items()}
            info["_final_obs"] = done.copy()
            info["_final_info"] = done.copy()
            new_obs = self.sim.reset(torch.as_tensor(done))
            for k in obs:
                obs[k][done] = new_obs[k][done]
            status = self._info(self.sim.status())
            for k in ("success", "stage", "failure_event", "t", "sim_state"):
                info[k][done] = status[k][done]
        return obs, rew, term, trunc, info

    def get_sim_state(self) -> np.ndarray:
        """(num_envs, state_size) float64 full physics states."""
        return self.sim.get_state()

    def set_sim_state(self, states: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        self.sim.set_state(states, mask)
        return self.sim.observe()

    def close_extras(self, **kwargs: Any) -> None:
        self.sim.close()

    def _info(self, info: dict[str, np.ndarray]) -> dict[str, Any]:
        out = dict(info)
        out["sim_state"] = self.sim.get_state()
        return out
