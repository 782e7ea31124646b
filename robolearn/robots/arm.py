"""A 5-joint arm with a parallel gripper and an end-effector controller (robots/assets/arm_*.xml).

Joints: base yaw, shoulder, elbow and wrist pitch, wrist roll, two fingers. The controller keeps
the tool vertical (pointing down), so the end effector has four degrees of freedom -- xyz and yaw,
the same as the floating gripper -- and solves them in closed form every control step: base yaw
from the target's bearing, shoulder and elbow from the two-link triangle to the wrist (elbow up),
wrist pitch so the tool points down, wrist roll for the yaw. Targets are deltas from the measured
end-effector pose, like the gripper's, so scripted experts and teleoperation devices written
against `ee_pos` / `ee_yaw` drive either robot.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from robolearn.robots.base import Robot, clip_to_ctrlrange
from robolearn.tasks import array_ops
from robolearn.tasks.base import ModelLayout, SimState

# Geometry of arm_body.xml.
BASE_XY = (0.0, -0.42)
SHOULDER_Z = 0.12
UPPER, FORE, TOOL = 0.35, 0.35, 0.10
REACH_MARGIN = 0.995  # keep the wrist inside the two-link reach (no singular straight arm)
MIN_Z = 0.0  # targets below the table top are raised to it


class Arm(Robot):
    name = "arm"
    body_xml = "arm_body.xml"
    control_xml = "arm_control.xml"
    required_axes = ("x", "y", "z")
    description = "5-joint arm (yaw, 3 pitch, roll) + parallel gripper; end-effector control by analytic IK"

    JOINTS = ("arm_yaw", "arm_shoulder", "arm_elbow", "arm_wrist_pitch", "arm_roll")
    ACTUATORS = ("a_yaw", "a_shoulder", "a_elbow", "a_wrist_pitch", "a_roll")

    def __init__(self, layout: ModelLayout, action_axes: tuple[str, ...]):
        super().__init__(layout, action_axes)
        self.q_arm = [layout.qpos_adr[j] for j in self.JOINTS]
        self.a_arm = [layout.actuator[a] for a in self.ACTUATORS]
        self.s_ee = layout.sensor["grip_pos"]
        self.cols = {axis: i for i, axis in enumerate(action_axes)}
        self._consts: dict = {}

    # -- kinematics (pure array functions) -----------------------------------------------------------
    def ee_pos(self, s: SimState) -> Any:
        return s.sensordata[:, self.s_ee]

    def ee_yaw(self, s: SimState) -> Any:
        return self._yaw_of(s.qpos[:, self.q_arm[0]], s.qpos[:, self.q_arm[4]])

    def _yaw_of(self, base_yaw: Any, roll: Any) -> Any:
        """Hand yaw of joint angles: the angle of the hand's x axis in the table plane, wrapped to
        [-pi, pi) (0: fingers close along world y, as the floating gripper's)."""
        xp = array_ops.of(base_yaw)
        return xp.remainder(base_yaw + roll + math.pi / 2 + math.pi, 2 * math.pi) - math.pi

    def inverse_kinematics(self, pos: Any, yaw: Any) -> list[Any]:
        """Joint angles [yaw, shoulder, elbow, wrist pitch, roll] putting the grasp point at pos
        (N, 3) with the tool vertical and the hand at `yaw` (N,)."""
        xp = array_ops.of(pos)
        dx, dy = pos[:, 0] - BASE_XY[0], pos[:, 1] - BASE_XY[1]
        base = xp.atan2(dy, dx) - math.pi / 2
        base = xp.remainder(base + math.pi, 2 * math.pi) - math.pi
        r = xp.norm(xp.stack([dx, dy], -1))
        u, v = r, xp.clip(pos[:, 2], MIN_Z, None) + TOOL - SHOULDER_Z
        dist = xp.norm(xp.stack([u, v], -1))
        scale = xp.clip((UPPER + FORE) * REACH_MARGIN / xp.clip(dist, 1e-9, None), None, 1.0)
        u, v = u * scale, v * scale  # out of reach: the nearest point on the reach sphere
        cos_elbow = xp.clip((u * u + v * v - UPPER ** 2 - FORE ** 2) / (2 * UPPER * FORE), -1.0, 1.0)
        elbow = -_acos(xp, cos_elbow)  # elbow up
        shoulder = xp.atan2(v, u) - xp.atan2(FORE * xp.sin(elbow), UPPER + FORE * xp.cos(elbow))
        wrist = -math.pi / 2 - shoulder - elbow
        roll = xp.remainder(yaw - base - math.pi / 2 + math.pi, 2 * math.pi) - math.pi
        return [base, shoulder, elbow, wrist, roll]

    # -- actions --------------------------------------------------------------------------------------
    def action_to_ctrl(self, s: SimState, action: Any, hold: Any = None) -> Any:
        """Joint targets for the end-effector command: position deltas (x, y, z) and yaw deltas
        from the measured pose (yaw held at the current target when the action has no yaw), finger
        opening from grip."""
        ctrl = self.hold_ctrl(s) if hold is None else hold
        xp = array_ops.of(ctrl)
        a = xp.astype(action, ctrl.dtype)
        c = self.cols
        target = self.ee_pos(s) + a[:, [c["x"], c["y"], c["z"]]] * self.pos_scale
        if "yaw" in c:
            yaw = self.ee_yaw(s) + a[:, c["yaw"]] * self.yaw_scale
        else:  # keep the commanded yaw (of the current joint targets)
            yaw = self._yaw_of(ctrl[:, self.a_arm[0]], ctrl[:, self.a_arm[4]])
        for act, q in zip(self.a_arm, self.inverse_kinematics(target, yaw)):
            ctrl[:, act] = q
        if "grip" in c:
            self.finger_ctrl(ctrl, a, c["grip"])
        return clip_to_ctrlrange(self.layout, ctrl, self._consts)

    # -- state vectors ----------------------------------------------------------------------------------
    def place(self, task: Any, states: torch.Tensor, pos: torch.Tensor, yaw: torch.Tensor | None = None,
              opening: float | None = None) -> None:
        n = states.shape[0]
        yaw = torch.zeros(n, dtype=states.dtype) if yaw is None else yaw.to(states.dtype)
        joints = self.inverse_kinematics(pos.to(states.dtype), yaw)
        for q, a, value in zip(self.q_arm, self.a_arm, joints):
            task.set_in_state(states, "qpos", q, value)
            task.set_in_state(states, "ctrl", a, value)
        self.set_fingers(task, states, self.grip_open if opening is None else opening)


def _acos(xp: Any, x: Any) -> Any:
    """arccos through atan2 (the array namespaces share atan2, not arccos)."""
    return xp.atan2(xp.clip(1 - x * x, 0.0, None) ** 0.5, x)
