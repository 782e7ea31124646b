"""Single-env gymnasium API over TaskSim (num_envs = 1)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from robolearn.tasks.base import FAILURE_EVENTS, PRIMITIVES, TaskConfig
from robolearn.tasks.sim import TaskSim


def observation_space(sim: TaskSim) -> gym.spaces.Dict:
    spaces: dict[str, gym.Space] = {"state": gym.spaces.Box(-np.inf, np.inf, (sim.obs_dim,), np.float32)}
    if sim.image_keys:
        spaces["proprio"] = gym.spaces.Box(-np.inf, np.inf, (sim.proprio_dim,), np.float32)
    for key in sim.image_keys:
        size = sim.cfg.image_size
        spaces[key] = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
    return gym.spaces.Dict(spaces)


def action_space(sim: TaskSim) -> gym.spaces.Box:
    return gym.spaces.Box(-1.0, 1.0, (sim.action_dim,), np.float32)


class TaskEnv(gym.Env):
    """One robolearn task as a `gymnasium.Env`.

    Observations are dicts: `state` (float32) and, with obs_mode "state+image", `proprio` (the
    robot's own leading entries of `state`) and `image` (and `wrist_image`) uint8 HxWx3. `info`
    carries `success`, `stage`, `failure_event` (code, see base.FAILURE_EVENTS), `t` and `sim_state`
    (full physics state, float64). The episode terminates on success (config
    `terminate_on_success`) and truncates at `horizon`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, task: str, render_mode: str | None = None, config: TaskConfig | None = None,
                 **overrides: Any):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.sim = TaskSim(task, cfg=config, num_envs=1, **overrides)
        self.task_name = task
        self.cfg = self.sim.cfg
        self.render_mode = render_mode
        self.observation_space = observation_space(self.sim)
        self.action_space = action_space(self.sim)
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self.sim.control_period)}
        self.primitives = PRIMITIVES
        self.failure_events = FAILURE_EVENTS
        self._started = False

    @property
    def task(self):
        """The bound task definition (torch functions, layout)."""
        return self.sim.task

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        state = None if not options or "sim_state" not in options else options["sim_state"]
        if state is not None:
            self.sim.reset(seeds=[seed])
            self.sim.set_state(np.asarray(state, np.float64)[None])
            obs = self.sim.observe()
        else:
            obs = self.sim.reset(seeds=[seed])
        self._started = True
        return self._one(obs), self._info(self.sim.status())

    def step(self, action):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        obs, rew, term, trunc, info = self.sim.step(action)  # (action_dim,) is taken as the one env's row
        return {k: v[0] for k, v in obs.items()}, float(rew[0]), bool(term[0]), bool(trunc[0]), self._info(info)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self.sim.render_images(size=256)["image"][0]

    def close(self):
        self.sim.close()

    # -- state access ----------------------------------------------------------------------
    def get_sim_state(self) -> np.ndarray:
        """Full physics state (state_size,) float64: restores the episode exactly."""
        return self.sim.get_state(0)

    def set_sim_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Restore a state from `get_sim_state`/`info['sim_state']`; returns its observation."""
        self.sim.set_state(np.asarray(state, np.float64)[None])
        return self._one(self.sim.observe())

    def _one(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in obs.items()}

    def _info(self, info: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"success": bool(info["success"][0]), "stage": int(info["stage"][0]),
                "failure_event": int(info["failure_event"][0]), "t": int(info["t"][0]),
                "sim_state": self.get_sim_state()}
