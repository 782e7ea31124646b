"""Robots as parts: a task declares which robots it runs with (`Task.robots`) and its config picks
one (`robot: gripper | arm`); the robot supplies the MJCF a scene includes, the action mapping
and the proprioception (robolearn/robots/base.py).

    ROBOTS          name -> "module:Class" (resolved on first use)
    get_robot(name) the Robot subclass
    register_robot(name, cls_or_target)  add your own (a Robot subclass; see docs/tasks.md)
"""

from __future__ import annotations

import importlib
from typing import Any

ROBOTS: dict[str, Any] = {
    "gripper": "robolearn.robots.gripper:Gripper",
    "arm": "robolearn.robots.arm:Arm",
}


def register_robot(name: str, robot: Any, replace: bool = False) -> None:
    """Make a robot known under `name` (a Robot subclass or "module:Class")."""
    if name in ROBOTS and ROBOTS[name] != robot and not replace:
        raise ValueError(f"robot {name!r} is already registered (pass replace=True to replace it)")
    ROBOTS[name] = robot


def get_robot(name: str) -> Any:
    """The Robot subclass registered under `name`."""
    if name not in ROBOTS:
        raise ValueError(f"unknown robot {name!r} (known: {', '.join(ROBOTS)})")
    target = ROBOTS[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = ROBOTS[name] = getattr(importlib.import_module(module), attr)
    return target


def __getattr__(name: str) -> Any:
    if name == "Robot":
        from robolearn.robots.base import Robot

        return Robot
    raise AttributeError(f"module 'robolearn.robots' has no attribute {name!r}")
