"""The floating parallel gripper: x/y/z slides, a yaw hinge and two fingers, all position
controlled (robots/assets/gripper_body.xml, gripper_control.xml). Its joint names and state
layout are those of every store recorded before robots became parts, so their `sim_state` still
replays."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robolearn.robots.base import Robot
from robolearn.tasks import array_ops
from robolearn.tasks.base import ModelLayout, SimState, column_index


class Gripper(Robot):
    name = "gripper"
    body_xml = "gripper_body.xml"
    control_xml = "gripper_control.xml"
    description = "floating parallel gripper (xyz slides + yaw hinge + 2 fingers), position controlled"

    def __init__(self, layout: ModelLayout, action_axes: tuple[str, ...]):
        super().__init__(layout, action_axes)
        L = layout
        self.q_grip = slice(L.qpos_adr["gx"], L.qpos_adr["gx"] + 3)
        self.q_yaw = L.qpos_adr["gyaw"]
        self.v_grip = slice(L.dof_adr["gx"], L.dof_adr["gx"] + 3)
        self.a_xyz = [L.actuator["ax"], L.actuator["ay"], L.actuator["az"]]
        self.a_yaw = L.actuator["ayaw"]
        self._build_action_map()

    def ee_pos(self, s: SimState) -> torch.Tensor:
        return s.qpos[:, self.q_grip]

    def ee_yaw(self, s: SimState) -> torch.Tensor:
        return s.qpos[:, self.q_yaw]

    def action_to_ctrl(self, s: SimState, action: Any, hold: Any = None) -> Any:
        """Position targets: deltas from the measured gripper pose (no integrator wind-up when
        blocked), absolute finger opening. Axes not in the action keep `hold` (default: the
        current targets)."""
        ctrl = self.hold_ctrl(s) if hold is None else hold
        host = isinstance(ctrl, np.ndarray)
        d_cols, d_act, d_qpos, d_scale, g_col, lo, hi = self._act_maps[host]
        xp = array_ops.of(ctrl)
        a = action if host and action.dtype == ctrl.dtype else xp.astype(action, ctrl.dtype)
        if d_cols is not None:
            if not host:  # constants follow the tensors' dtype and device (GPU backends)
                d_scale, lo, hi = xp.const(d_scale, ctrl), xp.const(lo, ctrl), xp.const(hi, ctrl)
            ctrl[:, d_act] = s.qpos[:, d_qpos] + a[:, d_cols] * d_scale
        elif not host:
            lo, hi = xp.const(lo, ctrl), xp.const(hi, ctrl)
        if g_col is not None:
            self.finger_ctrl(ctrl, a, g_col)
        return xp.minimum(xp.maximum(ctrl, lo), hi)

    def _build_action_map(self) -> None:
        """Index tensors for action_to_ctrl (a handful of vectorized ops per step)."""
        d_cols, d_act, d_qpos, d_scale, g_col = [], [], [], [], None
        for i, axis in enumerate(self.action_axes):
            if axis in ("x", "y", "z"):
                k = "xyz".index(axis)
                d_cols.append(i), d_act.append(self.a_xyz[k]), d_qpos.append(self.q_grip.start + k)
                d_scale.append(self.pos_scale)
            elif axis == "yaw":
                d_cols.append(i), d_act.append(self.a_yaw), d_qpos.append(self.q_yaw), d_scale.append(self.yaw_scale)
            elif axis == "grip":
                g_col = i
        t = column_index
        torch_map = (t(d_cols) if d_cols else None, t(d_act) if d_cols else None, t(d_qpos) if d_cols else None,
                     torch.tensor(d_scale, dtype=torch.float64), g_col,
                     self.layout.ctrlrange[:, 0].clone(), self.layout.ctrlrange[:, 1].clone())
        # The same map for numpy arrays (the host path): index arrays and float64 constants.
        np_map = tuple(x.numpy() if torch.is_tensor(x) else x for x in torch_map)
        self._act_maps = {False: torch_map, True: np_map}

    def place(self, task: Any, states: torch.Tensor, pos: torch.Tensor, yaw: torch.Tensor | None = None,
              opening: float | None = None) -> None:
        n = states.shape[0]
        opening = self.grip_open if opening is None else opening
        yaw = torch.zeros(n, dtype=states.dtype) if yaw is None else yaw
        task.set_in_state(states, "qpos", self.q_grip, pos)
        task.set_in_state(states, "qpos", self.q_yaw, yaw)
        op = torch.full((n,), opening, dtype=states.dtype)
        task.set_in_state(states, "qpos", self.q_fl, op)
        task.set_in_state(states, "qpos", self.q_fr, op)
        task.set_in_state(states, "ctrl", self.a_xyz, pos)
        task.set_in_state(states, "ctrl", self.a_yaw, yaw)
        task.set_in_state(states, "ctrl", self.a_fl, op)
        task.set_in_state(states, "ctrl", self.a_fr, op)
