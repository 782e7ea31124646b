"""The task registry: names -> `TaskSpec`, and config / model construction.

Importing this module is cheap (no torch, no mujoco): the command line checks a `--task` name
before anything heavy loads. A name resolves, in this order, to

1. a task registered with `register(...)`. The built-in tasks are registered the same way, by
   `register_builtin_tasks()`, called explicitly on first lookup (not as an import side effect);
2. `gym:<id>`: any registered gymnasium env id (robolearn.tasks.gym_adapter);
3. `package.module:Class`: a `Task` subclass (or a `TaskSpec`) imported from that module, so a
   fresh process finds a user's task without installing anything (the current directory is put
   on `sys.path` for the import, as `python -m` does);
4. an installed plugin: an entry point of group `robolearn.tasks` whose name is the task name and
   whose value is a `Task` subclass, a `TaskSpec` or a list of them (read only when a name is
   missing, or when tasks are listed; a plugin that fails to import is reported and skipped).

A task's config class and defaults travel with the task: `Task.config_class` (a `TaskConfig`
subclass) and an optional YAML beside the task's module (`Task.config_yaml`), or none.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

ENTRY_POINT_GROUP = "robolearn.tasks"


class UnknownTaskError(ValueError):
    """A task name that resolves to nothing (the message lists the known names)."""


@dataclass(frozen=True)
class TaskSpec:
    """What the registry knows about one task, as plain data (classes may stay "module:attr"
    strings until first use).

    name: the name commands take and stores / checkpoints record.
    task: the `Task` subclass, or "module:Class".
    expert: the scripted `Expert` subclass, "module:Class", or None (the task's `expert`
        attribute when None).
    config_yaml: defaults file; None: the task class's `config_yaml` beside its module, if any.
    gym_id: id under which `register_gym_envs()` registers the task with gymnasium.
    gym_env: for gymnasium tasks, the gymnasium id wrapped by the adapter (then `task` is unused).
    """

    name: str
    task: Any = None
    expert: Any = None
    config_yaml: str | Path | None = None
    gym_id: str | None = None
    gym_env: str | None = None
    description: str = ""

    @property
    def is_gym(self) -> bool:
        return self.gym_env is not None

    def task_class(self) -> type:
        if self.is_gym:
            raise ValueError(f"task {self.name!r} is a gymnasium env ({self.gym_env}); it has no Task class")
        return _resolve(self.task, f"task {self.name!r}")

    def expert_class(self) -> type | None:
        if self.is_gym:
            return None
        target = self.expert if self.expert is not None else getattr(self.task_class(), "expert", None)
        return None if target is None else _resolve(target, f"expert of task {self.name!r}")

    def config_class(self) -> type:
        return self.task_class().config_class

    def defaults_path(self) -> Path | None:
        """The YAML of defaults, or None when the task has none (dataclass defaults only)."""
        if self.config_yaml is not None:
            return Path(self.config_yaml)
        if self.is_gym:
            return None
        cls = self.task_class()
        name = getattr(cls, "config_yaml", None)
        if not name:
            return None
        path = Path(name)
        return path if path.is_absolute() else Path(inspect.getfile(cls)).resolve().parent / path


_REGISTRY: dict[str, TaskSpec] = {}
_BUILTINS_LOADED = False
_PLUGINS_SCANNED = False


def register(name: str | type | TaskSpec, task: Any = None, *, expert: Any = None,
             config_yaml: str | Path | None = None, gym_id: str | None = None, description: str = "",
             replace: bool = False) -> TaskSpec:
    """Make a task known under a name; returns its spec.

        register("lift", "my_pkg.lift:Lift")            # class imported on first use
        register(Lift)                                    # name from Lift.name
        register(TaskSpec("lift", task=Lift, expert=LiftExpert))

    Registering a name twice is an error unless `replace=True` (or the same spec again).
    """
    if isinstance(name, TaskSpec):
        spec = name
    elif isinstance(name, type):
        cls = name
        spec = TaskSpec(getattr(cls, "name", "") or cls.__name__, task=cls, expert=expert, config_yaml=config_yaml,
                        gym_id=gym_id, description=description or getattr(cls, "description", ""))
    else:
        if task is None:
            raise TypeError("register(name, task): pass the Task subclass or 'module:Class'")
        spec = TaskSpec(name, task=task, expert=expert, config_yaml=config_yaml, gym_id=gym_id, description=description)
    if not spec.name or any(c in spec.name for c in " \t\n"):
        raise ValueError(f"task name must be non-empty without whitespace, got {spec.name!r}")
    have = _REGISTRY.get(spec.name)
    if have is not None and have != spec and not replace:
        raise ValueError(f"task {spec.name!r} is already registered (pass replace=True to replace it)")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Forget a registered task (tests, notebooks)."""
    _REGISTRY.pop(name, None)


# Built-in tasks: plain strings, nothing imported until used.
_ENVS = Path(__file__).resolve().parent.parent.parent / "envs"
BUILTIN_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("push_cube", "robolearn.tasks.push_cube:PushCube", "robolearn.tasks.push_cube:PushCubeExpert",
             _ENVS / "push_cube.yaml", "robolearn/PushCube-v0", description="push a cube into a goal region"),
    TaskSpec("pick_place", "robolearn.tasks.pick_place:PickPlace", "robolearn.tasks.pick_place:PickPlaceExpert",
             _ENVS / "pick_place.yaml", "robolearn/PickPlace-v0", description="pick a cube, place it in a bin"),
    TaskSpec("push_t", "robolearn.tasks.push_t:PushT", "robolearn.tasks.push_t:PushTExpert",
             _ENVS / "push_t.yaml", "robolearn/PushT-v0", description="push a T block onto its goal pose"),
    TaskSpec("sort", "robolearn.tasks.sort:Sort", "robolearn.tasks.sort:SortExpert",
             _ENVS / "sort.yaml", "robolearn/Sort-v0", description="K cubes into their colour's bins"),
    # gymnasium MuJoCo v5 envs under short names (the same as gym:<id>)
    TaskSpec("hopper", gym_env="Hopper-v5"),
    TaskSpec("half_cheetah", gym_env="HalfCheetah-v5"),
    TaskSpec("walker2d", gym_env="Walker2d-v5"),
    TaskSpec("ant", gym_env="Ant-v5"),
    TaskSpec("pusher", gym_env="Pusher-v5"),
    TaskSpec("reacher", gym_env="Reacher-v5"),
    TaskSpec("inverted_pendulum", gym_env="InvertedPendulum-v5"),
)


def register_builtin_tasks() -> None:
    """Register the built-in tasks through `register` (idempotent)."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    for spec in BUILTIN_TASKS:
        register(spec, replace=True)


def get_spec(name: str) -> TaskSpec:
    """The spec of a task name (see the module doc for the lookup order)."""
    if not isinstance(name, str) or not name:
        raise UnknownTaskError(f"task name must be a non-empty string, got {name!r}")
    register_builtin_tasks()
    spec = _REGISTRY.get(name)
    if spec is not None:
        return spec
    if name.startswith("gym:"):
        from robolearn.tasks.gym_adapter import gym_spec

        return gym_spec(name)
    if ":" in name:
        return _register_import(name)
    found = _plugins(only=name)
    if name in found:
        return found[name]
    raise UnknownTaskError(f"unknown task {name!r} (known: {', '.join(task_names())}; "
                           "your own: package.module:Class; a gymnasium env: gym:<id>)")


def check_task(name: str) -> TaskSpec:
    """Raise UnknownTaskError unless `name` resolves; returns its spec."""
    return get_spec(name)


def task_names(plugins: bool = True) -> list[str]:
    """Registered names (built-ins first), with installed plugins when `plugins`."""
    register_builtin_tasks()
    if plugins:
        _plugins()
    return list(_REGISTRY)


def _register_import(target: str) -> TaskSpec:
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise UnknownTaskError(f"task {target!r}: expected package.module:Class")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # like `python -m`: a module in the working directory is importable
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise UnknownTaskError(f"task {target!r}: no module named {exc.name!r}") from None
        raise
    obj = getattr(mod, attr, None)
    if obj is None:
        raise UnknownTaskError(f"task {target!r}: module {module!r} has no attribute {attr!r}")
    if isinstance(obj, TaskSpec):
        spec = dataclasses.replace(obj, name=target)
    elif isinstance(obj, type) and hasattr(obj, "config_class") and hasattr(obj, "observe"):
        spec = TaskSpec(target, task=obj, description=getattr(obj, "description", ""))
    else:
        raise UnknownTaskError(f"task {target!r}: {attr} is neither a robolearn Task subclass nor a TaskSpec")
    return register(spec, replace=True)


def _plugins(only: str | None = None) -> dict[str, TaskSpec]:
    """Load entry points of group `robolearn.tasks` (only the one named `only`, if given)."""
    global _PLUGINS_SCANNED
    if only is None and _PLUGINS_SCANNED:
        return {}
    from importlib.metadata import entry_points

    found: dict[str, TaskSpec] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if only is not None and ep.name != only:
            continue
        try:
            obj = ep.load()
            items = obj if isinstance(obj, (list, tuple)) else [obj]
            for item in items:
                spec = item if isinstance(item, TaskSpec) else TaskSpec(ep.name if len(items) == 1 else item.name, task=item)
                found[spec.name] = register(spec, replace=True)
        except Exception as exc:  # a broken plugin must not break every command
            print(f"robolearn: skipped task plugin {ep.name!r} ({ep.value}): {type(exc).__name__}: {exc}",
                  file=sys.stderr)
    if only is None:
        _PLUGINS_SCANNED = True
    return found


def _resolve(target: Any, what: str) -> Any:
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{what}: cannot import {target!r} ({exc})") from None


# ----------------------------------------------------------------------------- configs and models

def task_class(name: str) -> type:
    return get_spec(name).task_class()


def expert_class(name: str) -> type:
    """The task's scripted expert class; a clear error when it has none."""
    cls = get_spec(name).expert_class()
    if cls is None:
        raise ValueError(f"task {name!r} has no scripted expert")
    return cls


def load_task_config(name: str, overrides: dict[str, Any] | list[str] | None = None,
                     path: str | Path | None = None) -> Any:
    """The task's config: its config class's defaults <- its YAML (if any; `path` replaces it)
    <- overrides (unknown keys are errors), then the class's own `resolve` and `validate`."""
    from robolearn.config import ConfigError, load_config, parse_overrides

    spec = get_spec(name)
    if spec.is_gym:
        raise ValueError(f"task {name!r} is a gymnasium env ({spec.gym_env}) without a task config")
    cls = spec.task_class()
    if isinstance(overrides, dict):
        # A recorded config (a store's env_kwargs) of the old single TaskConfig carries fields other
        # tasks left unset (None), e.g. `num_cubes`: those are not this task's keys, and not errors.
        known = {f.name for f in dataclasses.fields(cls.config_class)}
        overrides = {k: v for k, v in overrides.items() if k in known or v is not None}
    path = Path(path) if path is not None else spec.defaults_path()
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"task config {path} not found")
    cfg = load_config(cls.config_class, path, overrides or None)
    if cfg.task not in ("", name):
        raise ConfigError(f"config {path} is for task {cfg.task!r}, not {name!r}")
    cfg.task = name
    given = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    cfg.resolve(given)
    cfg.validate(cls.perturbations)
    return cfg


def build_model(name: str, cfg: Any) -> tuple[type, Any]:
    """Task class and compiled MjModel of a task config (the robot's MJCF attached)."""
    from robolearn.tasks.base import compile_task_model

    cls = task_class(name)
    return cls, compile_task_model(cls, cfg)


def build_task(name: str, overrides: dict[str, Any] | list[str] | None = None) -> Any:
    """A task definition bound to its compiled model (no simulator data): for reading its layout,
    e.g. which observation columns belong to which stage."""
    from robolearn.tasks.base import ModelLayout

    cfg = load_task_config(name, overrides)
    cls, model = build_model(name, cfg)
    return cls(cfg, ModelLayout(model))


def structural_overrides(name: str, recorded: dict[str, Any] | None) -> list[str]:
    """`key=value` overrides of the structural fields (`config_class.structural_fields`) recorded
    with data or a checkpoint of the same task: what evaluation must reproduce."""
    import json

    recorded = recorded or {}
    spec = get_spec(name)
    if spec.is_gym or recorded.get("task") not in (None, name):
        return []
    fields = getattr(spec.config_class(), "structural_fields", ())
    return [f"{k}={json.dumps(recorded[k])}" for k in fields if recorded.get(k) is not None]


def iter_specs(names: Iterable[str] | None = None) -> list[TaskSpec]:
    return [get_spec(n) for n in (names if names is not None else task_names())]
