"""gymnasium's own MuJoCo v5 environments as robolearn tasks (no scripted expert), for RL.

The adapter gives them the robolearn conventions: dict observation {"state": float32},
info with `success` (False; these tasks have none), `stage` (0), `failure_event` (0) and
`sim_state` (mj_getState, base.STATE_SPEC), plus get/set_sim_state for exact restores.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from robolearn.tasks.base import STATE_SPEC

# robolearn name -> gymnasium id
GYM_TASKS: dict[str, str] = {
    "hopper": "Hopper-v5",
    "half_cheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
    "pusher": "Pusher-v5",
    "reacher": "Reacher-v5",
    "inverted_pendulum": "InvertedPendulum-v5",
}


class GymMujocoAdapter(gym.Wrapper):
    """Wraps a gymnasium MuJoCo env; refuses non-finite actions like robolearn tasks do."""

    def __init__(self, env_id: str, **kwargs: Any):
        super().__init__(gym.make(env_id, **kwargs))
        box = self.env.observation_space
        self.observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, box.shape, np.float32)})
        self.env_id = env_id
        self._m = self.env.unwrapped.model
        self._d = self.env.unwrapped.data
        self._buf = np.zeros(mujoco.mj_stateSize(self._m, STATE_SPEC))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return {"state": np.asarray(obs, np.float32)}, self._info(info)

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ValueError("action contains NaN or inf; refused, simulation not stepped")
        obs, rew, term, trunc, info = self.env.step(a.astype(np.float32))
        return {"state": np.asarray(obs, np.float32)}, float(rew), bool(term), bool(trunc), self._info(info)

    def get_sim_state(self) -> np.ndarray:
        mujoco.mj_getState(self._m, self._d, self._buf, STATE_SPEC)
        return self._buf.copy()

    def set_sim_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        mujoco.mj_setState(self._m, self._d, np.asarray(state, np.float64), STATE_SPEC)
        mujoco.mj_forward(self._m, self._d)
        return {"state": np.asarray(self.env.unwrapped._get_obs(), np.float32)}

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        out = dict(info)
        out.update(success=False, stage=0, failure_event=0, sim_state=self.get_sim_state())
        return out


def make_gym_task(name: str, **kwargs: Any) -> GymMujocoAdapter:
    """Adapter env of a GYM_TASKS entry (kwargs go to gymnasium.make)."""
    if name not in GYM_TASKS:
        raise ValueError(f"unknown gymnasium task {name!r} (known: {', '.join(GYM_TASKS)})")
    return GymMujocoAdapter(GYM_TASKS[name], **kwargs)


class GymTaskBatch:
    """N adapter envs behind TaskSim's batch interface (reset(mask, seeds), step(actions)), so
    evaluation drives gymnasium MuJoCo tasks exactly like our own tasks."""

    def __init__(self, name: str, num_envs: int, **kwargs: Any) -> None:
        self.envs = [make_gym_task(name, **kwargs) for _ in range(num_envs)]
        self.num_envs = num_envs
        self.model = self.envs[0].unwrapped.model
        self.control_period = float(self.envs[0].unwrapped.dt)
        self.action_dim = int(self.envs[0].action_space.shape[0])
        self._obs = [None] * num_envs

    def _stack(self) -> dict[str, np.ndarray]:
        return {"state": np.stack([o["state"] for o in self._obs])}

    def reset(self, mask: Any = None, seeds: list[int] | None = None) -> dict[str, np.ndarray]:
        rows = range(self.num_envs) if mask is None else [int(i) for i in np.flatnonzero(np.asarray(mask))]
        for j, i in enumerate(rows):
            self._obs[i], _ = self.envs[i].reset(seed=None if seeds is None else int(seeds[j]))
        return self._stack()

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        actions = np.asarray(actions, np.float64)
        if actions.shape != (self.num_envs, self.action_dim):
            raise ValueError(f"action must have shape {(self.num_envs, self.action_dim)}, got {actions.shape}")
        out = [env.step(a) for env, a in zip(self.envs, actions)]
        self._obs = [o[0] for o in out]
        info = {
            "success": np.zeros(self.num_envs, bool),
            "stage": np.zeros(self.num_envs, np.int32),
            "failure_event": np.zeros(self.num_envs, np.int32),
        }
        return (self._stack(), np.array([o[1] for o in out], np.float32), np.array([o[2] for o in out]),
                np.array([o[3] for o in out]), info)

    def get_state(self) -> np.ndarray:
        return np.stack([env.get_sim_state() for env in self.envs])

    def close(self) -> None:
        for env in self.envs:
            env.close()
