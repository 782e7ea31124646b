"""MuJoCo tasks from backend-neutral definitions: the public task API (guide: docs/tasks.md).

Writing a task needs only names from here:

    from robolearn.tasks import Task, TaskConfig, Expert, SimState, register, uniform, canonical_quat

    class Lift(Task): ...                       # MJCF + observe / success / dense_reward / sample_init
    register("lift", Lift, expert=LiftExpert)   # or run it as --task my_module:Lift without registering

Entry points:
    register(name, task, ...)      make a task known (also: entry-point group `robolearn.tasks`)
    get_spec(name) / task_names()  look tasks up (`gym:<id>` and `package.module:Class` resolve too)
    load_task_config(name, ...)    the task's config dataclass from its defaults and overrides
    make_env(name, **overrides)    gymnasium.Env (robolearn task or gymnasium adapter)
    make_vector_env(name, n, ...)  gymnasium VectorEnv (batched backend)
    make_expert(env, noise, seed)  scripted expert bound to an env's task
    check_env(name)                gymnasium's env checker plus robolearn's own checks
    register_gym_envs()            registers ids like "robolearn/PushCube-v0" (explicit, idempotent)

Importing this package is cheap: the names below load their modules on first use, so a command
can check a task name before torch and mujoco are imported.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# Offscreen rendering needs the GL backend chosen before mujoco is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")

from robolearn.tasks.registry import (  # noqa: E402  (light: no torch, no mujoco)
    ENTRY_POINT_GROUP, TaskSpec, UnknownTaskError, build_task, check_task, expert_class, get_spec, load_task_config,
    register, task_class, task_names, unregister)

# public name -> module it lives in (imported on first access)
_LAZY = {
    # writing a task
    "Task": "robolearn.tasks.base", "TaskConfig": "robolearn.tasks.base", "SimState": "robolearn.tasks.base",
    "ModelLayout": "robolearn.tasks.base", "SimulationError": "robolearn.tasks.base",
    "canonical_quat": "robolearn.tasks.base", "uniform": "robolearn.tasks.base", "relative_obs": "robolearn.tasks.base",
    "quat_to_yaw": "robolearn.tasks.base", "yaw_to_quat": "robolearn.tasks.base", "wrap_angle": "robolearn.tasks.base",
    "out_of_reach_events": "robolearn.tasks.base", "read_asset": "robolearn.tasks.base",
    "STATE_SPEC": "robolearn.tasks.base", "EVENT": "robolearn.tasks.base", "FAILURE_EVENTS": "robolearn.tasks.base",
    "PERTURBATIONS": "robolearn.tasks.base", "PRIM": "robolearn.tasks.base", "PRIMITIVES": "robolearn.tasks.base",
    "Expert": "robolearn.tasks.expert", "navigate_around": "robolearn.tasks.expert",
    "Robot": "robolearn.robots", "get_robot": "robolearn.robots", "register_robot": "robolearn.robots",
    "TaskSim": "robolearn.tasks.sim",
}
_MODULES = {"array_ops": "robolearn.tasks.array_ops"}

__all__ = ["ENTRY_POINT_GROUP", "TaskSpec", "UnknownTaskError", "register", "unregister", "get_spec", "check_task",
           "task_names", "task_class", "expert_class", "load_task_config", "build_task", "make_env",
           "make_vector_env", "make_expert", "check_env", "register_gym_envs", "array_ops", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    else:
        raise AttributeError(f"module 'robolearn.tasks' has no attribute {name!r}")
    globals()[name] = value
    return value


def make_env(name: str, render_mode: str | None = None, **overrides: Any):
    """A single env: TaskEnv for robolearn tasks, the gymnasium adapter for gymnasium envs."""
    spec = get_spec(name)
    if spec.is_gym:
        from robolearn.tasks.gym_adapter import make_gym_task

        return make_gym_task(name, render_mode=render_mode, **overrides)
    from robolearn.tasks.env import TaskEnv

    return TaskEnv(name, render_mode=render_mode, **overrides)


def make_vector_env(name: str, num_envs: int, num_threads: int = 1, autoreset_mode: str = "NextStep",
                    **overrides: Any):
    """A batched env over one backend (robolearn tasks only)."""
    if get_spec(name).is_gym:
        raise ValueError(f"task {name!r} is a gymnasium env; use gymnasium.make_vec for it")
    from robolearn.tasks.vector_env import TaskVectorEnv

    return TaskVectorEnv(name, num_envs, num_threads=num_threads, autoreset_mode=autoreset_mode, **overrides)


def make_expert(env, noise: float = 0.0, seed: int | None = None, mode: int | None = None):
    """Scripted expert for a TaskEnv / TaskVectorEnv / TaskSim: `expert.act(env.sim.read())`.
    mode: always use this per-episode mode (unimodal demos) instead of drawing one."""
    sim = getattr(getattr(env, "unwrapped", env), "sim", env)
    return expert_class(sim.cfg.task)(sim.task, sim.num_envs, noise=noise, seed=seed, mode=mode)


def check_env(name: str, steps: int = 20, **overrides: Any) -> None:
    """gymnasium's env checker on the task's env, then robolearn's own checks (see
    robolearn.tasks.checks.check_task_env); raises with the first problem found."""
    from robolearn.tasks.checks import check_task_env

    check_task_env(name, steps=steps, **overrides)


_REGISTERED_GYM: set[str] = set()


def register_gym_envs() -> list[str]:
    """Register every robolearn task that has a `gym_id` with gymnasium
    (gym.make("robolearn/PushCube-v0", **overrides))."""
    import gymnasium as gym

    ids = []
    for spec_name in task_names():
        spec = get_spec(spec_name)
        if spec.is_gym or not spec.gym_id:
            continue
        if spec.gym_id not in _REGISTERED_GYM or spec.gym_id not in gym.registry:
            gym.register(id=spec.gym_id, entry_point="robolearn.tasks.env:TaskEnv", kwargs={"task": spec.name},
                         disable_env_checker=False)
            _REGISTERED_GYM.add(spec.gym_id)
        ids.append(spec.gym_id)
    return ids
