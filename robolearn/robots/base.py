"""A robot as a part that tasks declare: its MJCF, joints, actuators, action mapping and
proprioception, bound to one compiled model's layout.

A task scene includes the robot with `<include file="robot_body.xml"/>` (inside <worldbody>) and
`<include file="robot_control.xml"/>` (top level); the robot chosen by the task config's `robot`
field supplies both files. Every robot here is end-effector controlled: a normalized action moves
the end effector (the grasp point between the finger pads) by up to `pos_scale` per control step
along x, y, z, turns it by up to `yaw_scale` about the vertical, and sets the finger opening
(-1 open, +1 closed), so scripted experts and teleoperation devices written against
`ee_pos` / `ee_yaw` / `grip_width` work with any robot.

The per-step methods (`action_to_ctrl`, `hold_ctrl`, `ee_pos`, `ee_yaw`, `grip_width`,
`proprio`) are pure array functions over `SimState` written with `array_ops`, so they run on torch
tensors on any device and on the MuJoCo C backend's numpy buffers. `place` and `open_gripper` edit
full state vectors in torch (initial states, perturbations).
"""

from __future__ import annotations

from importlib import resources
from typing import Any, ClassVar

import numpy as np
import torch

from robolearn.tasks import array_ops
from robolearn.tasks.base import ModelLayout, SimState


def read_robot_asset(name: str) -> bytes:
    return resources.files("robolearn.robots").joinpath("assets").joinpath(name).read_bytes()


class Robot:
    """Base class; subclasses name their MJCF files and implement the kinematics."""

    name: ClassVar[str] = ""
    body_xml: ClassVar[str] = ""  # included as robot_body.xml (inside <worldbody>)
    control_xml: ClassVar[str] = ""  # included as robot_control.xml (top level: actuators, sensors)
    # Action axes this robot's controller understands, and those a task's action must contain.
    axes: ClassVar[tuple[str, ...]] = ("x", "y", "z", "yaw", "grip")
    required_axes: ClassVar[tuple[str, ...]] = ()
    proprio_dim: ClassVar[int] = 5  # ee xyz, ee yaw, finger opening
    # Largest per-step motion commanded by a normalized action of 1, and the open finger travel.
    pos_scale: ClassVar[float] = 0.03
    yaw_scale: ClassVar[float] = 0.25
    grip_open: ClassVar[float] = 0.045
    description: ClassVar[str] = ""

    def __init__(self, layout: ModelLayout, action_axes: tuple[str, ...]):
        unknown = [a for a in action_axes if a not in self.axes]
        missing = [a for a in self.required_axes if a not in action_axes]
        if unknown or missing:
            raise ValueError(f"robot {self.name!r} drives axes {', '.join(self.axes)} and needs "
                             f"{', '.join(self.required_axes) or 'none in particular'}; the task's action has "
                             f"{', '.join(action_axes)}")
        self.layout = layout
        self.action_axes = tuple(action_axes)
        L = layout
        self.q_fl, self.q_fr = L.qpos_adr["finger_l"], L.qpos_adr["finger_r"]
        self.a_fl, self.a_fr = L.actuator["afl"], L.actuator["afr"]
        self.v_fl, self.v_fr = L.dof_adr["finger_l"], L.dof_adr["finger_r"]

    @classmethod
    def assets(cls) -> dict[str, bytes]:
        """The files a task scene includes, under the names it includes them by."""
        return {"robot_body.xml": read_robot_asset(cls.body_xml), "robot_control.xml": read_robot_asset(cls.control_xml)}

    # -- readers (pure array functions) ------------------------------------------------------------
    def ee_pos(self, s: SimState) -> torch.Tensor:
        """(N, 3) position of the grasp point between the finger pads."""
        raise NotImplementedError

    def ee_yaw(self, s: SimState) -> torch.Tensor:
        """(N,) rotation of the hand about the vertical (0: fingers close along world y)."""
        raise NotImplementedError

    def grip_width(self, s: SimState) -> torch.Tensor:
        """(N,) distance between the finger pads."""
        return s.qpos[:, self.q_fl] + s.qpos[:, self.q_fr]

    def proprio(self, s: SimState) -> torch.Tensor:
        """(N, proprio_dim): ee xyz, ee yaw, finger opening -- the robot's own state."""
        return array_ops.of(s.qpos).cat([self.ee_pos(s), self.ee_yaw(s)[:, None], self.grip_width(s)[:, None]], -1)

    # -- actions -------------------------------------------------------------------------------------
    def action_to_ctrl(self, s: SimState, action: Any) -> Any:
        """Actuator targets (N, nu) from normalized actions (N, len(action_axes)) in [-1, 1]."""
        raise NotImplementedError

    def hold_ctrl(self, s: SimState) -> Any:
        """Targets of what the action does not drive: keep the current ones."""
        return array_ops.of(s.ctrl).copy(s.ctrl)

    def finger_ctrl(self, ctrl: Any, a: Any, col: int) -> None:
        """Both finger targets from the grip column of the action (-1 open, +1 closed)."""
        opening = (self.grip_open / 2) * (1 - a[:, col])
        ctrl[:, self.a_fl] = opening
        ctrl[:, self.a_fr] = opening

    # -- state vectors (torch) --------------------------------------------------------------------
    def place(self, task: Any, states: torch.Tensor, pos: torch.Tensor, yaw: torch.Tensor | None = None,
              opening: float | None = None) -> None:
        """Put the end effector at pos (N, 3) with yaw (N,), at rest, targets matching."""
        raise NotImplementedError

    def set_fingers(self, task: Any, states: torch.Tensor, opening: float) -> None:
        op = torch.full((states.shape[0],), opening, dtype=states.dtype)
        for q in (self.q_fl, self.q_fr):
            task.set_in_state(states, "qpos", q, op)
        for a in (self.a_fl, self.a_fr):
            task.set_in_state(states, "ctrl", a, op)

    def open_gripper(self, task: Any, states: torch.Tensor) -> torch.Tensor:
        """Snap the fingers open (qpos and targets): whatever was held falls."""
        self.set_fingers(task, states, self.grip_open)
        for v in (self.v_fl, self.v_fr):
            task.set_in_state(states, "qvel", v, torch.zeros(states.shape[0]))
        return states


def clip_to_ctrlrange(layout: ModelLayout, ctrl: Any, cache: dict) -> Any:
    """ctrl clipped to the actuators' ranges (constants cached per namespace)."""
    xp = array_ops.of(ctrl)
    if isinstance(ctrl, np.ndarray):
        if "np" not in cache:
            cache["np"] = (layout.ctrlrange[:, 0].numpy().copy(), layout.ctrlrange[:, 1].numpy().copy())
        lo, hi = cache["np"]
    else:
        lo, hi = xp.const(layout.ctrlrange[:, 0], ctrl), xp.const(layout.ctrlrange[:, 1], ctrl)
    return xp.minimum(xp.maximum(ctrl, lo), hi)
