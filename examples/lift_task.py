"""lift: grasp a cube and raise it above 10 cm -- a complete robolearn task in one file.

Written in plain torch against the public API only (docs/tasks.md walks through it). Run it
without registering anything:

    robolearn tasks examples.lift_task:Lift
    robolearn collect --task examples.lift_task:Lift --episodes 20 --out data/lift.zarr
    robolearn collect --task examples.lift_task:Lift --set robot=arm --episodes 20 --out data/lift_arm.zarr

or register a short name from your own code (`register("lift", Lift)`) or a package's entry points:

    [project.entry-points."robolearn.tasks"]
    lift = "examples.lift_task:Lift"
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from robolearn.tasks import Expert, SimState, Task, TaskConfig, canonical_quat, uniform, wrap_angle

CUBE_HALF = 0.02  # the cube is 4 cm wide


@dataclass
class LiftConfig(TaskConfig):
    """The shared task fields plus this task's own: how high counts as lifted."""

    horizon: int = 80
    lift_height: float = 0.10  # success: cube centre above this (m)

    def validate(self, supported_perturbations: tuple[str, ...]) -> None:
        super().validate(supported_perturbations)
        if not 0.03 < self.lift_height < 0.3:
            raise ValueError(f"lift_height must be in (0.03, 0.3) m, got {self.lift_height}")


# The scene: a table, a free cube, and the robot (robolearn attaches the configured robot's MJCF
# under the names robot_body.xml / robot_control.xml). A task may also keep its MJCF in a file
# beside its module (`xml = "lift.xml"`).
SCENE = """
<mujoco model="lift">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.004" integrator="implicitfast" cone="elliptic" impratio="4"/>
  <visual><global offwidth="640" offheight="640"/><quality shadowsize="0"/></visual>
  <include file="robot_control.xml"/>
  <worldbody>
    <light pos="0 0 1.5" dir="0 0 -1" directional="true" castshadow="false"/>
    <camera name="front" pos="0 -0.62 0.62" xyaxes="1 0 0 0 0.72 0.69" fovy="50"/>
    <geom name="table" type="plane" size="0.5 0.5 0.01" rgba="0.8 0.78 0.74 1" friction="0.5 0.005 0.0001"/>
    <include file="robot_body.xml"/>
    <body name="cube" pos="0 0 0.02">
      <freejoint name="cube"/>
      <geom name="cube" type="box" size="0.02 0.02 0.02" mass="0.05" rgba="0.2 0.45 0.85 1" friction="1 0.005 0.0001"/>
      <site name="cube" size="0.004" group="4"/>
    </body>
  </worldbody>
  <sensor>
    <framepos name="cube_pos" objtype="site" objname="cube"/>
    <framequat name="cube_quat" objtype="site" objname="cube"/>
  </sensor>
</mujoco>
"""


class Lift(Task):
    """Grasp the cube and lift it above `lift_height` (stages: 0 reach, 1 grasp, 2 lifted)."""

    name = "lift"
    config_class = LiftConfig
    robots = ("gripper", "arm")  # runs with either robot: `--set robot=arm`
    action_axes = ("x", "y", "z", "yaw", "grip")
    num_stages = 3
    description = "grasp a cube and lift it above 10 cm"
    proprio_dim = 5  # the robot's end-effector xyz, yaw and finger opening lead the observation
    pose_obs_dim = 12
    relative_dim = 3
    expert = "examples.lift_task:LiftExpert"

    @classmethod
    def build_xml(cls, cfg: LiftConfig) -> str:
        return SCENE

    def cube_pos(self, s: SimState) -> torch.Tensor:
        return self.sensor(s, "cube_pos")

    def observe(self, s: SimState) -> torch.Tensor:
        """[robot proprioception (5), cube xyz, cube quat (w >= 0)], then cube - gripper."""
        cube = self.cube_pos(s)
        parts = [self.robot.proprio(s), cube, canonical_quat(self.sensor(s, "cube_quat"))]
        if self.cfg.obs_relative:
            parts.append(cube - self.grip_pos(s))
        return torch.cat(parts, -1)

    def held(self, s: SimState) -> torch.Tensor:
        """The cube is between the finger pads and the fingers are closed on it."""
        near = (self.cube_pos(s) - self.grip_pos(s)).norm(dim=-1) < 0.025
        width = self.grip_width(s)
        return near & (width > 0.03) & (width < 0.045)

    def success(self, s: SimState) -> torch.Tensor:
        return self.cube_pos(s)[:, 2] > self.cfg.lift_height

    def stage(self, s: SimState) -> torch.Tensor:
        return torch.where(self.success(s), 2, self.held(s).to(torch.int64)).to(torch.int32)

    def dense_reward(self, s: SimState, success: torch.Tensor | None = None) -> torch.Tensor:
        """0.3 for reaching, 0.2 for holding, up to 0.5 for height; 1 on success."""
        cube = self.cube_pos(s)
        reach = 0.3 * (1 - torch.tanh(10 * (cube - self.grip_pos(s)).norm(dim=-1)))
        height = ((cube[:, 2] - CUBE_HALF) / (self.cfg.lift_height - CUBE_HALF)).clamp(0, 1)
        r = reach + 0.2 * self.held(s).to(cube.dtype) + 0.5 * height
        done = self.success(s) if success is None else success
        return torch.where(done, torch.ones_like(r), r)

    def sample_init(self, gen: torch.Generator, n: int) -> torch.Tensor:
        states = self.base_states(n)
        cube = uniform(gen, n, [-0.12, -0.12], [0.12, 0.12])
        self.set_free_body(states, "cube", torch.cat([cube, torch.full((n, 1), CUBE_HALF)], -1),
                           uniform(gen, n, -math.pi, math.pi))
        self.init_gripper(states, uniform(gen, n, [-0.15, -0.15, 0.1], [0.15, 0.15, 0.18]), uniform(gen, n, -0.5, 0.5))
        return states


class LiftExpert(Expert):
    """Above the cube with the fingers aligned to its faces, down, close, then up."""

    HOVER_Z = 0.08

    def policy(self, s: SimState) -> tuple[torch.Tensor, torch.Tensor]:
        from robolearn.tasks import PRIM, quat_to_yaw

        task: Lift = self.task  # type: ignore[assignment]
        p, cube = task.grip_pos(s), task.cube_pos(s)
        width = task.grip_width(s)
        yaw_err = wrap_angle(quat_to_yaw(task.sensor(s, "cube_quat")) - task.grip_yaw(s), math.pi / 2)
        xy_err = (cube[:, :2] - p[:, :2]).norm(dim=-1)
        aligned = (xy_err < 0.01) & (yaw_err.abs() < 0.1)
        low = p[:, 2] < cube[:, 2] + 0.01
        closed_on_cube = (width < 0.042) & ((cube - p).norm(dim=-1) < 0.025)
        # targets: hover above the cube -> descend to its centre -> close -> lift
        hover = torch.cat([cube[:, :2], torch.full_like(p[:, :1], self.HOVER_Z)], -1)
        grasp_at = cube.clone()
        lift_to = torch.cat([p[:, :2], torch.full_like(p[:, :1], task.cfg.lift_height + 0.08)], -1)
        target = torch.where(aligned[:, None], grasp_at, hover)
        target = torch.where(closed_on_cube[:, None], lift_to, target)
        move = self.move_action(s, target)
        grip = torch.where(closed_on_cube | (aligned & low), 1.0, -1.0).to(p.dtype)
        yaw = (yaw_err / task.yaw_scale).clamp(-1, 1)
        action = torch.cat([move, yaw[:, None], grip[:, None]], -1)
        prim = torch.where(closed_on_cube, PRIM["transport"], torch.where(aligned & low, PRIM["grasp"], PRIM["reach"]))
        return action, prim
