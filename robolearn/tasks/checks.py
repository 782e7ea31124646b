"""`robolearn.tasks.check_env`: what a task author runs before using a new task.

gymnasium's env checker (spaces, seeding, reset/step signatures) on the task's `TaskEnv`, then
robolearn's own contract: the observation has `obs_dim` entries and leads with `proprio_dim`
robot entries, the same seed gives the same initial state, the per-step results are finite and of
the right shapes, `sim_state` restores a state exactly, and (when the task declares
`numpy_host_path`) its functions agree on torch tensors and numpy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class TaskCheckError(AssertionError):
    """A task breaks the robolearn task contract (the message says which part)."""


def _fail(name: str, msg: str) -> None:
    raise TaskCheckError(f"task {name!r}: {msg}")


def check_task_env(name: str, steps: int = 20, **overrides: Any) -> None:
    import torch
    from gymnasium.utils.env_checker import check_env as gym_check_env

    from robolearn.tasks import make_env
    from robolearn.tasks.base import SimState

    from robolearn.tasks.registry import get_spec

    if get_spec(name).is_gym:  # a gymnasium env: gymnasium's own checker on it
        import gymnasium as gym

        raw = gym.make(get_spec(name).gym_env, **overrides)
        try:
            gym_check_env(raw.unwrapped, skip_render_check=True)
        finally:
            raw.close()
        return
    env = make_env(name, **overrides)
    try:
        gym_check_env(env, skip_render_check=True)
        sim = env.unwrapped.sim
        task = sim.task
        obs, info = env.reset(seed=123)
        if obs["state"].shape != (task.obs_dim,):
            _fail(name, f"observe() gives {obs['state'].shape[0]} entries, obs_dim says {task.obs_dim}")
        if not 0 <= task.proprio_dim <= task.obs_dim:
            _fail(name, f"proprio_dim {task.proprio_dim} is outside [0, obs_dim={task.obs_dim}]")
        first = env.get_sim_state()
        again, _ = env.reset(seed=123)
        if not np.array_equal(first, env.get_sim_state()) or not np.array_equal(obs["state"], again["state"]):
            _fail(name, "reset(seed=123) twice gave different initial states: sample_init must draw only from its generator")
        rng = np.random.default_rng(0)
        saved, saved_obs = None, None
        for t in range(steps):
            action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            obs, reward, term, trunc, info = env.step(action)
            if not np.isfinite(obs["state"]).all() or not np.isfinite(reward):
                _fail(name, f"non-finite observation or reward at step {t}")
            if t == steps // 2:
                saved, saved_obs = env.get_sim_state(), obs["state"].copy()
            if term or trunc:
                break
        if saved is not None:
            restored = env.set_sim_state(saved)
            if not np.allclose(restored["state"], saved_obs, atol=1e-6):
                _fail(name, "set_sim_state(get_sim_state()) does not reproduce the observation")
        if task.numpy_host_path:  # the same functions on numpy arrays must agree with torch
            s_t = sim.read()
            s_np = SimState(*(x.numpy() for x in s_t))
            a, b = np.asarray(task.observe(s_np)), task.observe(s_t).numpy()
            if not np.allclose(a, b, atol=1e-9):
                _fail(name, "observe() differs between numpy and torch arrays (numpy_host_path = True needs array_ops)")
        with torch.no_grad():
            s = sim.read()
            for fn in ("success", "reward", "stage"):
                out = getattr(task, fn)(s)
                if tuple(out.shape) != (sim.num_envs,):
                    _fail(name, f"{fn}() returns shape {tuple(out.shape)}, expected ({sim.num_envs},)")
    finally:
        env.close()
