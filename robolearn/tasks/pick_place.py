"""pick_place: grasp a cube and carry it into a bin. Grasps can slip (finite grip force)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from robolearn.tasks import array_ops
from robolearn.tasks.base import (EVENT, PRIM, SimState, Task, canonical_quat, out_of_reach_events, quat_to_yaw,
                                  relative_obs, uniform, wrap_angle)
from robolearn.tasks.expert import Expert
from robolearn.tasks.push_cube import REACH

CUBE_HALF = 0.02
BIN_REACH = 0.14  # expert: a bin centre closer than this to the cube puts its wall in the open fingers' way
BIN_INNER = 0.049  # half size of the bin's inside
BIN_OUTER = 0.055
# |offset| of a held cube from the grasp point, in the gripper frame (across, along the fingers, up).
GRASP_BOX = torch.tensor([0.015, 0.02, 0.025], dtype=torch.float64)


class GraspTask(Task):
    """Shared geometry of tasks that grasp cubes and drop them into bins."""

    numpy_host_path = True  # per-step functions written with array_ops
    action_axes = ("x", "y", "z", "yaw", "grip")
    perturbations = ("nudge_object", "open_gripper", "shift_target")
    proprio_dim = 5  # gripper xyz, yaw, finger opening (pick_place and sort observations start with them)

    def grasped(self, s: SimState, cube_pos: torch.Tensor) -> torch.Tensor:
        """Cube centred between the finger pads and the fingers squeezing it; cube_pos (N, 3) -> (N,)
        or (N, K, 3) -> (N, K). (Per step, the tasks read the in-gripper position from the
        `*_in_grip` sensors instead: `holds`.)"""
        xp = array_ops.of(cube_pos)
        grip, yaw = self.grip_pos(s), self.grip_yaw(s)
        if cube_pos.ndim == 3:
            grip, yaw = grip[:, None], yaw[:, None]
        rel = cube_pos - grip
        c, sn = xp.cos(yaw), xp.sin(yaw)
        local = xp.stack([c * rel[..., 0] + sn * rel[..., 1], -sn * rel[..., 0] + c * rel[..., 1], rel[..., 2]], -1)
        return self.holds(s, local)

    def holds(self, s: SimState, local: torch.Tensor) -> torch.Tensor:
        """`grasped` from cube positions in the gripper frame (N, 3) or (N, K, 3), e.g. the
        `cube_in_grip` sensor (MuJoCo computes the rotation, no trigonometry per step here)."""
        xp = array_ops.of(local)
        w = self.grip_width(s)
        if local.ndim == 3:
            w = w[:, None]
        return (abs(local) < xp.const(GRASP_BOX, local)).all(-1) & (w > 0.03) & (w < 0.05)

    @staticmethod
    def in_bin(cube_pos: torch.Tensor, bin_pos: torch.Tensor) -> torch.Tensor:
        """Cube inside the bin's walls and below their rim ((..., 3) -> (...))."""
        d = abs(cube_pos[..., :2] - bin_pos[..., :2])
        return (d < BIN_INNER - 0.005).all(-1) & (cube_pos[..., 2] < 0.045)


class PickPlace(GraspTask):
    name = "pick_place"
    xml = "pick_place.xml"
    num_stages = 2  # 0 pick, 1 place
    description = "grasp a cube and carry it into a bin (grasps can slip)"

    pose_obs_dim = 15
    relative_dim = 6  # cube - gripper (3), bin - cube (3)

    def cube_pos(self, s: SimState) -> torch.Tensor:
        return self.sensor(s, "cube_pos")

    def bin_pos(self, s: SimState) -> torch.Tensor:
        return self.sensor(s, "bin_pos")

    def observe(self, s: SimState) -> torch.Tensor:
        """[gripper xyz, gripper yaw, finger opening, cube xyz, cube quat (w>=0), bin xyz], then with
        obs_relative [cube - gripper, bin - cube]."""
        grip, cube, bin_pos = self.grip_pos(s), self.cube_pos(s), self.bin_pos(s)
        parts = [grip, self.grip_yaw(s)[:, None], self.grip_width(s)[:, None], cube,
                 canonical_quat(self.sensor(s, "cube_quat")), bin_pos]
        if self.cfg.obs_relative:
            parts.append(relative_obs(grip, cube, bin_pos))
        return array_ops.of(s.qpos).cat(parts, -1)

    def success(self, s: SimState) -> torch.Tensor:
        return self.in_bin(self.cube_pos(s), self.bin_pos(s))

    def stage(self, s: SimState) -> torch.Tensor:
        xp = array_ops.of(s.qpos)
        return xp.astype(self.grasped(s, self.cube_pos(s)), xp.int32)

    def dense_reward(self, s: SimState, success: torch.Tensor | None = None) -> torch.Tensor:
        """Staged: reach (<=0.25), grasp (0.35) + lift/carry progress (<=0.35 more), 1 in the bin."""
        return staged_reward(self, s, self.cube_pos(s), self.bin_pos(s))

    def detect_failure(self, prev: SimState, s: SimState) -> torch.Tensor:
        return grasp_failures(self, prev, s, self.cube_pos(prev), self.cube_pos(s), self.bin_pos(s))

    def evaluate(self, prev: SimState, s: SimState, carry: dict | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cube, bin_pos, local = self.cube_pos(s), self.bin_pos(s), self.sensor(s, "cube_in_grip")
        held = self.holds(s, local)  # shared by reward, stage and drop detection
        success = self.in_bin(cube, bin_pos)
        xp = array_ops.of(cube)
        reward = (xp.astype(success, xp.float32) if self.cfg.reward_type == "sparse"
                  else xp.astype(staged_reward(self, s, cube, bin_pos, held, success, local), xp.float32))
        was = held_before(self, prev, carry, held, lambda: self.sensor(prev, "cube_in_grip"))
        failure = grasp_failures(self, prev, s, self.cube_pos(prev), cube, bin_pos, held, was)
        return success, reward, xp.astype(held, xp.int32), failure

    def sample_init(self, gen: torch.Generator, n: int) -> torch.Tensor:
        st = self.base_states(n)
        cube = uniform(gen, n, [-0.15, -0.15], [0.15, 0.15])
        bin_xy = uniform(gen, n, [-0.15, -0.15], [0.15, 0.15])
        for _ in range(100):
            bad = (bin_xy - cube).norm(dim=-1) < 0.15
            if not bad.any():
                break
            bin_xy = torch.where(bad[:, None], uniform(gen, n, [-0.15, -0.15], [0.15, 0.15]), bin_xy)
        self.set_free_body(st, "cube", torch.cat([cube, torch.full((n, 1), CUBE_HALF)], -1),
                           uniform(gen, n, -math.pi, math.pi))
        self.set_mocap(st, "bin", torch.cat([bin_xy, torch.zeros(n, 1)], -1))
        self.init_gripper(st, uniform(gen, n, [-0.2, -0.2, 0.1], [0.2, 0.2, 0.2]), uniform(gen, n, -0.5, 0.5))
        return st

    def perturb(self, kind: str, states: torch.Tensor, s: SimState, gen: torch.Generator) -> torch.Tensor:
        if kind == "nudge_object":
            return self.nudge_free_body(states, "cube", gen, spin=3.0)
        if kind == "open_gripper":
            return self.open_gripper(states)
        if kind == "shift_target":
            return shift_bin(self, states, s, "bin", [self.cube_pos(s)], gen)
        return super().perturb(kind, states, s, gen)


def staged_reward(task: GraspTask, s: SimState, cube: torch.Tensor, bin_pos: torch.Tensor,
                  held: torch.Tensor | None = None, done: torch.Tensor | None = None,
                  local: torch.Tensor | None = None) -> torch.Tensor:
    """held / done (cube in the bin) / local (cube in the gripper frame: the same reach distance)
    may be passed when already computed."""
    r = staged_progress(task, s, cube, bin_pos, held, local)
    return array_ops.of(r).where(task.in_bin(cube, bin_pos) if done is None else done, 1.0, r)


def staged_progress(task: GraspTask, s: SimState, cube: torch.Tensor, bin_pos: torch.Tensor,
                    held: torch.Tensor | None = None, local: torch.Tensor | None = None) -> torch.Tensor:
    """The staged reward of a cube not yet in its bin: reach (<= 0.25), then grasp (0.35) plus
    carry progress (<= 0.35 more). Positions (N, 3), or (N, K, 3) for every cube at once."""
    xp = array_ops.of(cube)
    if local is None:
        grip = task.grip_pos(s)
        local = (grip if cube.ndim == 2 else grip[:, None]) - cube  # same norm as the gripper-frame offset
    reach = xp.norm(local)
    held = task.grasped(s, cube) if held is None else held
    carry = xp.norm(cube[..., :2] - bin_pos[..., :2])
    r = 0.25 * (1 - xp.tanh(10 * reach))
    return xp.where(held, 0.35 + 0.35 * (1 - xp.tanh(5 * carry)), r)


def held_before(task: GraspTask, prev: SimState, carry: dict | None, held: torch.Tensor,
                local_prev: Callable[[], torch.Tensor]) -> torch.Tensor:
    """What the gripper held in `prev` (from the step's carry when it has it, else recomputed from
    the cubes' gripper-frame positions) and records `held` of the new state in the carry."""
    was = None if carry is None else carry.get("held")
    if was is None:
        was = task.holds(prev, local_prev())
    if carry is not None:
        carry["held"] = held
    return was


def grasp_failures(task: GraspTask, prev: SimState, s: SimState, cube_prev: torch.Tensor, cube: torch.Tensor,
                   bin_pos: torch.Tensor, held: torch.Tensor | None = None, was: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """object_dropped: held before, not now, and not released over the bin; out of reach.
    Cube/bin positions (N, 3) or (N, K, 3) (one event per cube); `held` = grasped(s, cube) and
    `was` = grasped(prev, cube_prev) if known."""
    xp = array_ops.of(cube)
    was = task.grasped(prev, cube_prev) if was is None else was
    now = task.grasped(s, cube) if held is None else held
    lost = was & ~now
    reach = out_of_reach_events(cube, lambda: cube_prev, REACH)
    if xp.none(lost):  # host short cut: no grasp lost, no drop
        return reach
    over_bin = (abs(cube[..., :2] - bin_pos[..., :2]) < BIN_INNER).all(-1)
    w = task.grip_width(s)
    dropped = lost & ~over_bin & ((w[:, None] if cube.ndim == 3 else w) < 0.06)
    return xp.astype(xp.where(dropped, EVENT["object_dropped"], reach), xp.int32)


def shift_bin(task: Task, states: torch.Tensor, s: SimState, body: str, avoid: list[torch.Tensor],
              gen: torch.Generator, lim: float = 0.18, others: list[torch.Tensor] = ()) -> torch.Tensor:
    """Move a bin 5-10 cm, only to places clear of cubes, the gripper's fingers and other bins."""
    pos = task.get_mocap(states, body).clone()
    grip = task.grip_pos(s)
    for _ in range(20):
        ang = uniform(gen, 1, 0.0, 2 * math.pi)[0]
        mag = uniform(gen, 1, 0.05, 0.1)[0]
        cand = pos.clone()
        cand[:, 0] = (cand[:, 0] + mag * torch.cos(ang)).clamp(-lim, lim)
        cand[:, 1] = (cand[:, 1] + mag * torch.sin(ang)).clamp(-lim, lim)
        ok = all(((cand[:, :2] - c[:, :2]).abs().max(-1).values > BIN_OUTER + 0.035).all() for c in avoid)
        ok &= all(((cand[:, :2] - o[:, :2]).abs().max(-1).values > 2 * BIN_OUTER + 0.01).all() for o in others)
        ok &= bool((((cand[:, :2] - grip[:, :2]).abs().max(-1).values > BIN_OUTER + 0.07) | (grip[:, 2] > 0.1)).all())
        if ok:
            task.set_mocap(states, body, cand)
            break
    return states


class GraspExpertMixin:
    """Closed-loop pick-and-place of one cube per env into one bin per env.

    Works from any state: an open gripper above the table reaches, a gripper holding the cube
    carries, a dropped cube is re-grasped. Mode 1 grasps across the other pair of faces (the cube's
    90-degree symmetry makes both valid): a source of multimodality.
    """

    HOVER = 0.07
    CARRY_Z = 0.13
    RELEASE_Z = 0.09
    flip: torch.Tensor

    def _reset_memory(self, mask: torch.Tensor) -> None:
        if not hasattr(self, "flip"):
            self.flip = torch.zeros(self.num_envs, dtype=torch.bool)  # type: ignore[attr-defined]
        self.flip = self.flip & ~mask

    def pick_place_policy(self, s: SimState, cube: torch.Tensor, quat: torch.Tensor, bin_pos: torch.Tensor,
                          face_mode: torch.Tensor, obstacles: torch.Tensor | None = None,
                          obstacle_reach: torch.Tensor | float = BIN_REACH) -> tuple[torch.Tensor, torch.Tensor]:
        task: GraspTask = self.task  # type: ignore[attr-defined]
        p = task.grip_pos(s)
        gyaw = task.grip_yaw(s)
        w = task.grip_width(s)
        n = p.shape[0]
        dt = p.dtype
        held = task.grasped(s, cube)
        done = task.in_bin(cube, bin_pos)
        # Yaw target: the face pair whose grasp yaw is nearest to 0 (mode 0) or the other pair
        # (mode 1). Absolute targets, so the choice cannot flip-flop. Next to a bin, the pair whose
        # fingers straddle the cube parallel to the bin wall wins (fingers must not land on it).
        c0 = wrap_angle(quat_to_yaw(quat), math.pi / 2)
        c1 = c0 - torch.sign(c0 + 1e-9) * math.pi / 2
        first, second = torch.where(face_mode == 1, c1, c0), torch.where(face_mode == 1, c0, c1)
        if obstacles is not None:
            # obstacles (N, M, 2): bins / other cubes; score = worst alignment of the finger axis
            # (-sin a, cos a) with the direction to an obstacle within finger reach.
            d = obstacles - cube[:, None, :2]
            dist = d.norm(dim=-1)
            dh = d / dist.clamp_min(1e-6)[..., None]
            near = dist < torch.as_tensor(obstacle_reach, dtype=dist.dtype)

            def score(a: torch.Tensor) -> torch.Tensor:
                al = (-torch.sin(a)[:, None] * dh[..., 0] + torch.cos(a)[:, None] * dh[..., 1]).abs()
                return torch.where(near, al, torch.zeros_like(al)).max(-1).values

            swap = score(second) + 0.2 < score(first)
            first, second = torch.where(swap, second, first), torch.where(swap, first, second)
        # A blocked descent (a finger resting on something) flips to the other face pair.
        target_yaw = torch.where(self.flip, second, first)
        err = target_yaw - gyaw
        rel = cube[:, :2] - p[:, :2]
        dist_xy = rel.norm(dim=-1)
        dz = p[:, 2] - cube[:, 2]
        xy_ok = (dist_xy < 0.008) & (err.abs() < 0.08)
        at_h = dz < 0.008
        # Grasp: descend with open fingers, close when at the cube's height.
        closing = xy_ok & at_h & ~held
        descend = xy_ok & ~at_h & (w > 0.07) & ~held
        lag = p[:, 2] - s.ctrl[:, task.a_xyz[2]]  # > 0: the last downward command was not followed
        blocked = descend & (dz > 0.02) & (lag > 0.015) & (s.qvel[:, task.v_grip.start + 2].abs() < 0.01)
        self.flip = self.flip ^ blocked
        z_grasp = torch.stack([cube[:, 0], cube[:, 1], cube[:, 2]], -1)
        # Reach: hover above the cube (lift first if low and off target).
        hover_z = (cube[:, 2] + self.HOVER).clamp_min(0.09)
        lift_first = (dz < 0.045) & (dist_xy > 0.015)
        reach_t = torch.where(lift_first[:, None], torch.stack([p[:, 0], p[:, 1], hover_z], -1),
                              torch.stack([cube[:, 0], cube[:, 1], hover_z], -1))
        # Transport: lift, carry at CARRY_Z to above the bin, lower to RELEASE_Z, open.
        to_bin = bin_pos[:, :2] - p[:, :2]
        over_bin = to_bin.norm(dim=-1) < 0.012
        low = p[:, 2] < self.CARRY_Z - 0.03
        carry_t = torch.where((low & ~over_bin & (to_bin.norm(dim=-1) > 0.03))[:, None],
                              torch.stack([p[:, 0], p[:, 1], torch.full_like(p[:, 0], self.CARRY_Z)], -1),
                              torch.stack([bin_pos[:, 0], bin_pos[:, 1], torch.full_like(p[:, 0], self.CARRY_Z)], -1))
        release_t = torch.stack([bin_pos[:, 0], bin_pos[:, 1], torch.full_like(p[:, 0], self.RELEASE_Z)], -1)
        release = held & over_bin & (p[:, 2] < self.RELEASE_Z + 0.03)
        lower = held & over_bin & ~release
        # Done: back off upwards with the fingers open.
        done_t = torch.stack([p[:, 0], p[:, 1], torch.full_like(p[:, 0], self.CARRY_Z)], -1)

        target = reach_t
        grip = torch.full((n,), -1.0, dtype=dt)
        yaw_a = err / task.yaw_scale
        prim = torch.full((n,), PRIM["reach"], dtype=torch.int64)
        sel = descend | closing
        target = torch.where(sel[:, None], z_grasp, target)
        grip = torch.where(closing, 1.0, grip)
        prim = torch.where(sel, PRIM["grasp"], prim)
        target = torch.where(held[:, None], carry_t, target)
        target = torch.where(lower[:, None], release_t, target)
        grip = torch.where(held & ~release, 1.0, grip)
        yaw_a = torch.where(held, torch.zeros_like(yaw_a), yaw_a)
        prim = torch.where(held, PRIM["transport"], prim)
        target = torch.where(release[:, None], release_t, target)
        prim = torch.where(release | lower, PRIM["release"], prim)
        target = torch.where(done[:, None], done_t, target)
        grip = torch.where(done, -1.0, grip)
        yaw_a = torch.where(done, torch.zeros_like(yaw_a), yaw_a)
        prim = torch.where(done, PRIM["release"], prim)
        move = self.move_action(s, target)  # type: ignore[attr-defined]
        action = torch.cat([move, yaw_a[:, None], grip[:, None]], -1)
        return action, prim


class PickPlaceExpert(GraspExpertMixin, Expert):
    num_modes = 2

    def policy(self, s: SimState) -> tuple[torch.Tensor, torch.Tensor]:
        task: PickPlace = self.task  # type: ignore[assignment]
        return self.pick_place_policy(s, task.cube_pos(s), task.sensor(s, "cube_quat"), task.bin_pos(s), self.mode,
                                      obstacles=task.bin_pos(s)[:, None, :2])
