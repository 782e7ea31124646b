"""MuJoCo tasks from backend-neutral definitions (see docs/design.md, "Tasks").

Entry points:
    TASKS                         name -> (Task class, Expert class, gymnasium id)
    make_env(name, **overrides)   gymnasium.Env (robolearn task or gymnasium MuJoCo adapter)
    make_vector_env(name, n, ...) gymnasium VectorEnv (batched backend)
    make_expert(env, noise, seed) scripted expert bound to an env's task
    register_gym_envs()           registers ids like "robolearn/PushCube-v0" (explicit, idempotent)
"""

from __future__ import annotations

import os

# Offscreen rendering needs the GL backend chosen before mujoco is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")

from typing import Any  # noqa: E402

from robolearn.tasks.base import (  # noqa: E402
    EVENT, FAILURE_EVENTS, PERTURBATIONS, PRIM, PRIMITIVES, STATE_SPEC, SimState, SimulationError, Task, TaskConfig)
from robolearn.tasks.registry import TASKS, check_task, load_task_config  # noqa: E402

__all__ = ["TASKS", "GYM_TASKS", "EVENT", "FAILURE_EVENTS", "PERTURBATIONS", "PRIM", "PRIMITIVES", "STATE_SPEC",
           "SimState", "SimulationError", "Task", "TaskConfig", "load_task_config", "make_env", "make_vector_env",
           "make_expert", "register_gym_envs", "task_names"]

from robolearn.tasks.gym_adapter import GYM_TASKS  # noqa: E402


def task_names() -> list[str]:
    return list(TASKS) + list(GYM_TASKS)


def make_env(name: str, render_mode: str | None = None, **overrides: Any):
    """A single env: TaskEnv for robolearn tasks, GymMujocoAdapter for GYM_TASKS."""
    check_task(name)
    if name in GYM_TASKS:
        from robolearn.tasks.gym_adapter import make_gym_task

        return make_gym_task(name, render_mode=render_mode, **overrides)
    from robolearn.tasks.env import TaskEnv

    return TaskEnv(name, render_mode=render_mode, **overrides)


def make_vector_env(name: str, num_envs: int, num_threads: int = 1, autoreset_mode: str = "NextStep",
                    **overrides: Any):
    """A batched env over one backend (robolearn tasks only)."""
    check_task(name)
    if name not in TASKS:
        raise ValueError(f"task {name!r} is a gymnasium adapter task; use gymnasium.make_vec for it")
    from robolearn.tasks.vector_env import TaskVectorEnv

    return TaskVectorEnv(name, num_envs, num_threads=num_threads, autoreset_mode=autoreset_mode, **overrides)


def make_expert(env, noise: float = 0.0, seed: int | None = None, mode: int | None = None):
    """Scripted expert for a TaskEnv / TaskVectorEnv / TaskSim: `expert.act(env.sim.read())`.
    mode: always use this per-episode mode (unimodal demos) instead of drawing one."""
    sim = getattr(getattr(env, "unwrapped", env), "sim", env)
    expert_cls = TASKS[sim.task.name][1]
    return expert_cls(sim.task, sim.num_envs, noise=noise, seed=seed, mode=mode)


_REGISTERED = False


def register_gym_envs() -> list[str]:
    """Register every task with gymnasium (gym.make("robolearn/PushCube-v0", **overrides))."""
    global _REGISTERED
    import gymnasium as gym

    ids = []
    for name, (_, _, gym_id) in TASKS.items():
        if not _REGISTERED or gym_id not in gym.registry:
            gym.register(id=gym_id, entry_point="robolearn.tasks.env:TaskEnv", kwargs={"task": name},
                         disable_env_checker=False)
        ids.append(gym_id)
    _REGISTERED = True
    return ids
