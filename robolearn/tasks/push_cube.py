"""push_cube: push a cube into a circular goal region on the table."""

from __future__ import annotations

import math

import torch

from robolearn.tasks import array_ops
from robolearn.tasks.base import PRIM, SimState, Task, canonical_quat, out_of_reach_events, relative_obs, uniform
from robolearn.tasks.expert import Expert, navigate_around

GOAL_RADIUS = 0.03
REACH = 0.30  # |x|, |y| beyond which the gripper can no longer get behind an object


class PushCube(Task):
    numpy_host_path = True  # per-step functions written with array_ops
    name = "push_cube"
    xml = "push_cube.xml"
    action_axes = ("x", "y", "z", "grip")
    perturbations = ("nudge_object", "shift_target")
    robots = ("gripper", "arm")  # --set robot=arm: the 5-joint arm (robolearn/robots/arm.py)
    num_stages = 2  # 0 reach, 1 push
    description = "push a cube into a goal region (dense/sparse reward)"

    pose_obs_dim = 13
    proprio_dim = 4  # gripper xyz, finger opening
    relative_dim = 5  # cube - gripper (3), goal - cube (2)

    def cube_pos(self, s: SimState) -> torch.Tensor:
        return self.sensor(s, "cube_pos")

    def goal_xy(self, s: SimState) -> torch.Tensor:
        return self.sensor(s, "goal_pos")[:, :2]

    def observe(self, s: SimState) -> torch.Tensor:
        """[gripper xyz, finger opening, cube xyz, cube quat (wxyz, w>=0), goal xy], then with
        obs_relative [cube - gripper, goal - cube xy]."""
        xp = array_ops.of(s.qpos)
        grip, cube, goal = self.grip_pos(s), self.cube_pos(s), self.goal_xy(s)
        parts = [grip, self.grip_width(s)[:, None], cube, canonical_quat(self.sensor(s, "cube_quat")), goal]
        if self.cfg.obs_relative:
            parts.append(relative_obs(grip, cube, goal))
        return xp.cat(parts, -1)

    def goal_dist(self, s: SimState, cube: torch.Tensor | None = None) -> torch.Tensor:
        cube = self.cube_pos(s) if cube is None else cube
        return array_ops.of(cube).norm(cube[:, :2] - self.goal_xy(s))

    def success(self, s: SimState, cube: torch.Tensor | None = None, dist: torch.Tensor | None = None) -> torch.Tensor:
        cube = self.cube_pos(s) if cube is None else cube
        return ((self.goal_dist(s, cube) if dist is None else dist) < GOAL_RADIUS) & (cube[:, 2] < 0.03)

    def dense_reward(self, s: SimState, success: torch.Tensor | None = None, cube: torch.Tensor | None = None,
                     dist: torch.Tensor | None = None) -> torch.Tensor:
        """0.25 for reaching the cube + 0.75 for cube-goal progress; 1 on success."""
        cube = self.cube_pos(s) if cube is None else cube
        dist = self.goal_dist(s, cube) if dist is None else dist
        xp = array_ops.of(cube)
        reach = xp.norm(self.grip_pos(s) - cube)
        r = 0.25 * (1 - xp.tanh(10 * reach)) + 0.75 * (1 - xp.tanh(10 * dist))
        return xp.where(self.success(s, cube, dist) if success is None else success, 1.0, r)

    def stage(self, s: SimState, cube: torch.Tensor | None = None) -> torch.Tensor:
        cube = self.cube_pos(s) if cube is None else cube
        xp = array_ops.of(cube)
        near = xp.norm(self.grip_pos(s)[:, :2] - cube[:, :2]) < 0.06
        return xp.astype(near, xp.int32)

    def detect_failure(self, prev: SimState, s: SimState, cube: torch.Tensor | None = None) -> torch.Tensor:
        cube = self.cube_pos(s) if cube is None else cube
        return out_of_reach_events(cube, lambda: self.cube_pos(prev), REACH)

    def evaluate(self, prev: SimState, s: SimState, carry: dict | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cube = self.cube_pos(s)  # sensor slices and the goal distance shared by all four
        dist = self.goal_dist(s, cube)
        success = self.success(s, cube, dist)
        xp = array_ops.of(cube)
        reward = (xp.astype(success, xp.float32) if self.cfg.reward_type == "sparse"
                  else xp.astype(self.dense_reward(s, success, cube, dist), xp.float32))
        return success, reward, self.stage(s, cube), self.detect_failure(prev, s, cube)

    def sample_init(self, gen: torch.Generator, n: int) -> torch.Tensor:
        st = self.base_states(n)
        cube = uniform(gen, n, [-0.15, -0.15], [0.15, 0.15])
        goal = uniform(gen, n, [-0.15, -0.15], [0.15, 0.15])
        for _ in range(100):  # goal at least 10 cm from the cube
            bad = (goal - cube).norm(dim=-1) < 0.1
            if not bad.any():
                break
            goal = torch.where(bad[:, None], uniform(gen, n, [-0.15, -0.15], [0.15, 0.15]), goal)
        yaw = uniform(gen, n, -math.pi, math.pi)
        self.set_free_body(st, "cube", torch.cat([cube, torch.full((n, 1), 0.02)], -1), yaw)
        self.set_mocap(st, "goal", torch.cat([goal, torch.zeros(n, 1)], -1))
        grip = uniform(gen, n, [-0.2, -0.2, 0.07], [0.2, 0.2, 0.15])
        self.init_gripper(st, grip, opening=0.0)
        return st

    def perturb(self, kind: str, states: torch.Tensor, s: SimState, gen: torch.Generator) -> torch.Tensor:
        if kind == "nudge_object":
            return self.nudge_free_body(states, "cube", gen, spin=3.0)
        if kind == "shift_target":
            return shift_mocap(self, states, "goal", gen, lim=0.18)
        return super().perturb(kind, states, s, gen)


def shift_mocap(task: Task, states: torch.Tensor, body: str, gen: torch.Generator, lim: float,
                dist: tuple[float, float] = (0.05, 0.1)) -> torch.Tensor:
    """Move a mocap target 5-10 cm in a random direction, kept inside +-lim."""
    n = states.shape[0]
    ang = uniform(gen, n, 0.0, 2 * math.pi)
    mag = uniform(gen, n, *dist)
    pos = task.get_mocap(states, body).clone()
    pos[:, 0] = (pos[:, 0] + mag * torch.cos(ang)).clamp(-lim, lim)
    pos[:, 1] = (pos[:, 1] + mag * torch.sin(ang)).clamp(-lim, lim)
    task.set_mocap(states, body, pos)
    return states


class PushCubeExpert(Expert):
    """Gets behind the cube on the cube->goal line, then pushes along it.

    Modes (multimodal approach): 0 = lift over the cube, 1/2 = go round it counter-/clockwise.
    """

    num_modes = 3
    PUSH_Z = 0.02
    HIGH_Z = 0.085
    BEHIND = 0.05

    def policy(self, s: SimState) -> tuple[torch.Tensor, torch.Tensor]:
        task: PushCube = self.task  # type: ignore[assignment]
        p = task.grip_pos(s)
        c = task.cube_pos(s)[:, :2]
        g = task.goal_xy(s)
        d = g - c
        dist = d.norm(dim=-1)
        dh = d / dist.clamp_min(1e-6)[:, None]
        perp = torch.stack([-dh[:, 1], dh[:, 0]], -1)
        rel = p[:, :2] - c
        proj = (rel * dh).sum(-1)
        lat = (rel * perp).sum(-1)
        low = p[:, 2] < 0.045
        aligned = (proj < -0.018) & (proj > -0.075) & (lat.abs() < 0.025) & low
        # Push through the cube centre (no spin; the cube moves where the pusher heads) and steer
        # back onto the cube->goal line with a lateral correction.
        to_c = -rel / rel.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        gap = (-proj - 0.034).clamp_min(0)
        adv = torch.clamp(dist + gap, max=0.025)
        push_xy = p[:, :2] + to_c * adv[:, None] - perp * (0.5 * lat)[:, None]
        push_t = torch.cat([push_xy, torch.full_like(p[:, :1], self.PUSH_Z)], -1)
        # Reach the pre-push point.
        pre = c - dh * self.BEHIND
        side = torch.where(self.mode == 1, 1.0, -1.0).to(p.dtype)
        around_xy = navigate_around(p[:, :2], pre, c, 0.055, side)
        near_cube = rel.norm(dim=-1) < 0.05
        around_z = torch.where(near_cube, self.HIGH_Z, self.PUSH_Z)
        at_pre = (p[:, :2] - pre).norm(dim=-1) < 0.012
        blocked = navigate_around(p[:, :2], pre, c, 0.055, side).sub(pre).norm(dim=-1) > 1e-9
        over_xy = torch.where((low & blocked)[:, None], p[:, :2], pre)
        over_z = torch.where(at_pre, self.PUSH_Z, self.HIGH_Z)
        over = self.mode == 0
        reach_xy = torch.where(over[:, None], over_xy, around_xy)
        reach_z = torch.where(over, over_z, around_z)
        reach_t = torch.cat([reach_xy, reach_z[:, None]], -1)
        target = torch.where(aligned[:, None], push_t, reach_t)
        move = self.move_action(s, target)
        grip = torch.ones_like(p[:, :1])  # fingers closed: a compact pusher
        action = torch.cat([move, grip], -1)
        done = dist < 0.008
        action = torch.where((done & aligned)[:, None], torch.cat([torch.zeros_like(move), grip], -1), action)
        prim = torch.where(aligned, PRIM["push"], PRIM["reach"])
        return action, prim
