"""Task registry (explicit dicts, no import side effects) and config / model construction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mujoco

from robolearn.config import ConfigError, load_config, parse_overrides, project_root
from robolearn.tasks.base import ModelLayout, Task, TaskConfig, compile_model
from robolearn.tasks.expert import Expert
from robolearn.tasks.pick_place import PickPlace, PickPlaceExpert
from robolearn.tasks.push_cube import PushCube, PushCubeExpert
from robolearn.tasks.push_t import PushT, PushTExpert
from robolearn.tasks.sort import Sort, SortExpert

# name -> (task class, scripted expert class, gymnasium id)
TASKS: dict[str, tuple[type[Task], type[Expert], str]] = {
    "push_cube": (PushCube, PushCubeExpert, "robolearn/PushCube-v0"),
    "pick_place": (PickPlace, PickPlaceExpert, "robolearn/PickPlace-v0"),
    "push_t": (PushT, PushTExpert, "robolearn/PushT-v0"),
    "sort": (Sort, SortExpert, "robolearn/Sort-v0"),
}


# sort: control steps added to the config's horizon (written for K <= 3) per cube beyond 3, unless
# the horizon is overridden. The expert needs ~40 steps per cube on average and up to ~55 (K=5:
# mean 203, max 271 steps over 16 seeds), so K=5 gets 400.
SORT_STEPS_PER_EXTRA_CUBE = 100


def check_task(name: str) -> None:
    from robolearn.tasks.gym_adapter import GYM_TASKS

    if name not in TASKS and name not in GYM_TASKS:
        known = ", ".join(list(TASKS) + list(GYM_TASKS))
        raise ValueError(f"unknown task {name!r} (known: {known})")


def config_path(name: str) -> Path:
    return project_root() / "envs" / f"{name}.yaml"


def load_task_config(name: str, overrides: dict[str, Any] | list[str] | None = None,
                     path: str | Path | None = None) -> TaskConfig:
    """Defaults of TaskConfig <- envs/<name>.yaml <- overrides (unknown keys are errors)."""
    if name not in TASKS:
        check_task(name)
        raise ValueError(f"task {name!r} is a gymnasium adapter task without a TaskConfig")
    path = Path(path) if path is not None else config_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"task config {path} not found")
    cfg = load_config(TaskConfig, path, overrides or None)
    if cfg.task not in ("", name):
        raise ConfigError(f"config {path} is for task {cfg.task!r}, not {name!r}")
    cfg.task = name
    if name == "sort":
        if cfg.num_cubes is None or not 1 <= cfg.num_cubes <= 5:
            raise ConfigError(f"sort: num_cubes must be between 1 and 5, got {cfg.num_cubes}")
        given = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
        if "horizon" not in given:  # the config's horizon is for K <= 3 (see envs/sort.yaml)
            cfg.horizon += SORT_STEPS_PER_EXTRA_CUBE * max(0, cfg.num_cubes - 3)
    elif cfg.num_cubes is not None:
        raise ConfigError(f"num_cubes is only valid for task 'sort', not {name!r}")
    cfg.validate(TASKS[name][0].perturbations)
    return cfg


def build_model(name: str, cfg: TaskConfig) -> tuple[type[Task], mujoco.MjModel]:
    """Task class and compiled MjModel of a task config."""
    check_task(name)
    if name not in TASKS:
        raise ValueError(f"task {name!r} is a gymnasium adapter task; use make_env")
    cls = TASKS[name][0]
    return cls, compile_model(cls.build_xml(cfg))


def build_task(name: str, overrides: dict[str, Any] | list[str] | None = None) -> Task:
    """A task definition bound to its compiled model (no simulator data): for reading its layout,
    e.g. which observation columns belong to which stage."""
    cfg = load_task_config(name, overrides)
    cls, model = build_model(name, cfg)
    return cls(cfg, ModelLayout(model))
