"""push_t: push a T block to a target pose (the diffusion-policy PushT benchmark, in MuJoCo).

As in the original: 1 px = 1 mm, workspace 0.5 m, block starts at a random pose in +-0.15 m,
the goal pose is fixed ((0, 0), 45 degrees), action is the planar pusher motion, reward is
coverage / 0.95 clipped to 1, and success is coverage of the goal T >= 0.95. Coverage is the
exact fraction of the goal T's area inside the current T (robolearn.tasks.t_coverage: polygon
clipping, a fixed cost per world); `coverage` below, the fraction of a 2 mm grid over the goal T
inside the current T, is kept as its sampled reference.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from robolearn.tasks import array_ops
from robolearn.tasks.base import (PRIM, ModelLayout, SimState, Task, TaskConfig, column_index, out_of_reach_events,
                                  quat_to_yaw, relative_obs, uniform, wrap_angle)
from robolearn.tasks.expert import Expert
from robolearn.tasks.t_coverage import exact_coverage

# T geometry in the block frame (origin = centre of the bar's top edge, stem along -y).
BAR = (-0.06, 0.06, -0.03, 0.0)  # xmin, xmax, ymin, ymax
STEM = (-0.015, 0.015, -0.12, -0.03)
COM = (0.0, -0.0408)
GOAL_POSE = (0.0, 0.0, math.pi / 4)
SUCCESS_COVERAGE = 0.95
PUSH_Z = 0.02
LIMIT = 0.24
# action_mode absolute: an action of +-1 on x or y is a pusher target of +-ABS_SCALE metres, the
# pusher's whole range (joint and ctrl range; detours around a block near the edge go beyond the
# block's 0.24 m limit). The original's actions are absolute target positions in its 512 px window.
ABS_SCALE = 0.32


def _grid(rect: tuple[float, float, float, float], h: float = 0.002) -> torch.Tensor:
    x0, x1, y0, y1 = rect
    xs = torch.arange(x0 + h / 2, x1, h, dtype=torch.float64)
    ys = torch.arange(y0 + h / 2, y1, h, dtype=torch.float64)
    return torch.cartesian_prod(xs, ys)


GOAL_POINTS = torch.cat([_grid(BAR), _grid(STEM)])  # (P, 2) area-uniform samples of the T


def inside_t(local: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Points (..., 2) in the block frame inside the T (inflated by margin)."""
    x, y = local[..., 0], local[..., 1]

    def rect(r):
        return (x >= r[0] - margin) & (x <= r[1] + margin) & (y >= r[2] - margin) & (y <= r[3] + margin)

    return rect(BAR) | rect(STEM)


def to_local(points: torch.Tensor, pose: torch.Tensor, cs: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> torch.Tensor:
    """World points (N, P, 2) into block frames given poses (N, 3); cs = (cos, sin) of pose[:, 2:]
    if already computed."""
    xp = array_ops.of(points)
    d = points - pose[:, None, :2]
    c, s = (xp.cos(pose[:, 2:]), xp.sin(pose[:, 2:])) if cs is None else cs
    return xp.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)


def to_world(local: torch.Tensor, pose: torch.Tensor, cs: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> torch.Tensor:
    """Block-frame points (N, P, 2) or (P, 2) into the world; cs as in to_local."""
    xp = array_ops.of(pose)
    if local.ndim == 2:  # shared points: broadcast over the batch (same values as expanding)
        local = local[None]
    c, s = (xp.cos(pose[:, 2:]), xp.sin(pose[:, 2:])) if cs is None else cs
    x = c * local[..., 0] - s * local[..., 1] + pose[:, None, 0]
    y = s * local[..., 0] + c * local[..., 1] + pose[:, None, 1]
    return xp.stack([x, y], -1)


def world_points(goal: torch.Tensor, goal_cs: tuple | None = None) -> torch.Tensor:
    """The goal T's area samples in the world, (N, 2, P): a row of x and a row of y per env."""
    xp = array_ops.of(goal)
    pts = to_world(xp.const(GOAL_POINTS, goal), goal, goal_cs)
    return xp.stack([pts[..., 0], pts[..., 1]], 1)


# The inside test runs on y measured from the T's vertical centre (y' = y - MID_Y): the T spans
# |y'| <= HALF_H, the bar is y' >= BAR_Y0, and both rectangles are centred on x = 0.
MID_Y, HALF_H = (BAR[3] + STEM[2]) / 2, (BAR[3] - STEM[2]) / 2
BAR_Y0 = BAR[2] - MID_Y
# Goal-frame T points in homogeneous coordinates (rows x, y, 1): one 2x3 matmul maps them into
# a block frame (the single-env host path of coverage).
_GOAL_POINTS_H = torch.cat([GOAL_POINTS.T, torch.ones(1, len(GOAL_POINTS), dtype=torch.float64)]).numpy()


def _inside_t(local):
    """Whether block-frame points lie inside the T; local (..., 2, P): rows x and y' = y - MID_Y.
    Inside: |y'| within the T's height and |x| within the stem's half width (any row) or the bar's
    (bar rows): the union of the two rectangles in a few array ops (equal to the two-rectangle test
    up to rounding exactly on an edge)."""
    mag = abs(local)  # |x| and |y'| in one op
    ax, ay = mag[..., 0, :], mag[..., 1, :]
    return (ay <= HALF_H) & ((ax <= STEM[1]) | ((ax <= BAR[1]) & (local[..., 1, :] >= BAR_Y0)))


def _coverage_one_host(pose: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """coverage of one env on the host. The goal-to-block transform is built from Python floats
    (numpy's per-call overhead on (1, 1) arrays is ~0.5 us per op), so the points see one matmul
    and the inside test: the single gym env's per-step cost."""
    (bx, by, bth), (gx, gy, gth) = pose[0].tolist(), goal[0].tolist()
    cb, sb, dth = math.cos(bth), math.sin(bth), gth - bth
    c, s, dx, dy = math.cos(dth), math.sin(dth), gx - bx, gy - by
    m = np.array([[c, -s, cb * dx + sb * dy], [s, c, cb * dy - sb * dx - MID_Y]])
    inside = _inside_t(m @ _GOAL_POINTS_H)
    return np.array([np.count_nonzero(inside) / inside.shape[-1]])


def coverage(pose: torch.Tensor, goal: torch.Tensor, pose_cs=None, goal_cs=None, goal_points=None) -> torch.Tensor:
    """Fraction of the goal T's area covered by the T at `pose` (both (N, 3) x, y, yaw).
    Optional: (cos, sin) of the yaws and the goal T's world points as one (N, 2, P) array of x
    and y rows, if already computed."""
    xp = array_ops.of(pose)
    if xp is array_ops.NumpyOps and len(pose) == 1:
        return _coverage_one_host(pose, goal)
    if goal_points is None:
        goal_points = world_points(goal, goal_cs)
    c, s = (xp.cos(pose[:, 2:]), xp.sin(pose[:, 2:])) if pose_cs is None else pose_cs
    d = goal_points - pose[:, :2, None]  # one op for both coordinates (per-call cost dominates)
    # Goal points in the block frame (as to_local) by one batched 2x2 matmul: on ~1.6k points the
    # cost is numpy's per-call overhead, so one call beats four multiplications and two additions.
    local = xp.cat([c, s, -s, c], -1).reshape(-1, 2, 2) @ d
    local[:, 1] -= MID_Y  # a fresh array: y measured from the T's vertical centre, as _inside_t reads it
    inside = _inside_t(local)
    return xp.count_true(inside, pose.dtype) / inside.shape[-1]


class PushT(Task):
    numpy_host_path = True  # per-step functions written with array_ops
    name = "push_t"
    xml = "push_t.xml"
    action_axes = ("x", "y")
    perturbations = ("nudge_object", "shift_target")
    num_stages = 2  # 0 coarse (coverage < 0.5), 1 fine alignment
    description = "push a T block onto a target pose (coverage >= 0.95), as diffusion-policy PushT"
    pos_scale = 0.03
    action_modes = ("delta", "absolute")
    score_name = "max over the episode of clip(coverage / 0.95, 0, 1) (Diffusion Policy's PushT score)"

    def __init__(self, cfg: TaskConfig, layout: ModelLayout):
        super().__init__(cfg, layout)
        adr = [layout.qpos_adr[j] for j in ("tx", "ty", "tyaw")]
        self._q_block = column_index(adr)
        sl_p, sl_q = layout.sensor["goal_pos"], layout.sensor["goal_quat"]
        cols = list(range(sl_p.start, sl_p.stop)) + list(range(sl_q.start, sl_q.stop))
        self._goal_cols = column_index(cols)
        self._goal_key: bytes | None = None  # host cache of _goal_frame
        # hold_ctrl's fixed targets (height, yaw, closed fingers), one write per step.
        self._fixed_cols = column_index([self.a_xyz[2], self.a_yaw, self.a_fl, self.a_fr])
        self._fixed_vals = torch.tensor([PUSH_Z, 0.0, 0.0, 0.0], dtype=torch.float64)

    pose_obs_dim = 10
    proprio_dim = 2  # pusher xy
    relative_dim = 4  # block - pusher (2), goal - block (2)

    def hold_ctrl(self, s: SimState) -> torch.Tensor:
        """Planar pusher: fingers closed, height and yaw fixed."""
        xp = array_ops.of(s.ctrl)
        ctrl = xp.copy(s.ctrl)
        ctrl[:, xp.index(self._fixed_cols, ctrl)] = xp.const(self._fixed_vals, ctrl)
        return ctrl

    def action_to_ctrl(self, s: SimState, action: torch.Tensor) -> torch.Tensor:
        """delta mode: the shared displacement mapping; absolute: the pusher's target xy is
        action * ABS_SCALE (what the pusher's position actuators track)."""
        if self.cfg.action_mode == "delta":
            return super().action_to_ctrl(s, action)
        ctrl = self.hold_ctrl(s)
        xp = array_ops.of(ctrl)
        a = xp.astype(action, ctrl.dtype)
        ctrl[:, self.a_xyz[0]] = a[:, 0] * ABS_SCALE
        ctrl[:, self.a_xyz[1]] = a[:, 1] * ABS_SCALE
        return ctrl

    def absolute_action(self, s: SimState, delta_action: torch.Tensor) -> torch.Tensor:
        """The absolute-mode action commanding the target a delta-mode action would (torch)."""
        target = s.qpos[:, self.q_grip][:, :2] + delta_action * self.pos_scale
        return (target / ABS_SCALE).clamp(-1, 1)

    def step_score(self, s: SimState) -> torch.Tensor:
        """clip(coverage / 0.95, 0, 1): Diffusion Policy's PushT reward, whose maximum over an
        episode is the score its paper reports."""
        return array_ops.of(s.qpos).clip(self.coverage(s) / SUCCESS_COVERAGE, None, 1.0)

    def block_pose(self, s: SimState) -> torch.Tensor:
        xp = array_ops.of(s.sensordata)
        return xp.cat([self.sensor(s, "t_pos")[:, :2], quat_to_yaw(self.sensor(s, "t_quat"))[:, None]], -1)

    def goal_pose(self, s: SimState) -> torch.Tensor:
        xp = array_ops.of(s.sensordata)
        return xp.cat([self.sensor(s, "goal_pos")[:, :2], quat_to_yaw(self.sensor(s, "goal_quat"))[:, None]], -1)

    def frames(self, s: SimState) -> tuple:
        """(block pose, goal pose, (cos, sin) of the block yaw, of the goal yaw, the goal T's world
        points (N, 2, P) or None): what observe and coverage share, computed once per step.
        The block pose comes straight from its planar joints (x, y slides, yaw hinge; the yaw is not
        wrapped, only its cos/sin are used per step)."""
        xp = array_ops.of(s.qpos)
        b = s.qpos[:, xp.index(self._q_block, s.qpos)]
        g, cs_g, goal_points = self._goal_frame(s)
        return b, g, (xp.cos(b[:, 2:]), xp.sin(b[:, 2:])), cs_g, goal_points

    def _goal_frame(self, s: SimState) -> tuple:
        """(goal pose, (cos, sin) of its yaw, goal T's world points (N, 2, P), see world_points).
        On numpy (host) arrays all three are kept while the goal's sensors are bit-for-bit
        unchanged (the goal only moves on shift_target): the same values, computed once per goal.
        Torch: points None (coverage computes them; no host sync)."""
        xp = array_ops.of(s.qpos)
        host = xp is array_ops.NumpyOps
        if host:
            key = s.sensordata[:, xp.index(self._goal_cols, s.sensordata)].tobytes()
            if key == self._goal_key:
                return self._goal_cache
        g = self.goal_pose(s)
        cs_g = (xp.cos(g[:, 2:]), xp.sin(g[:, 2:]))
        if not host:
            return g, cs_g, None
        self._goal_key, self._goal_cache = key, (g, cs_g, world_points(g, cs_g))
        return self._goal_cache

    def observe(self, s: SimState, frames: tuple | None = None) -> torch.Tensor:
        """[pusher xy, block x, y, sin, cos of yaw, goal x, y, sin, cos of yaw], then with
        obs_relative [block - pusher, goal - block] (xy)."""
        xp = array_ops.of(s.qpos)
        b, g, (cb, sb), (cg, sg), _ = self.frames(s) if frames is None else frames
        pusher = self.grip_pos(s)[:, :2]
        parts = [pusher, b[:, :2], sb, cb, g[:, :2], sg, cg]
        if self.cfg.obs_relative:
            parts.append(relative_obs(pusher, b[:, :2], g[:, :2]))
        return xp.cat(parts, -1)

    def coverage(self, s: SimState, frames: tuple | None = None) -> torch.Tensor:
        """Exact area fraction (t_coverage), not the 2 mm grid: a few dozen ops per batch instead
        of 1575 points per world."""
        b, g, cs_b, cs_g, _ = self.frames(s) if frames is None else frames
        return exact_coverage(b, g, cs_b, cs_g)

    def success(self, s: SimState) -> torch.Tensor:
        return self.coverage(s) >= SUCCESS_COVERAGE

    def dense_reward(self, s: SimState, success: torch.Tensor | None = None) -> torch.Tensor:
        return array_ops.of(s.qpos).clip(self.coverage(s) / SUCCESS_COVERAGE, 0, 1)

    def stage(self, s: SimState) -> torch.Tensor:
        xp = array_ops.of(s.qpos)
        return xp.astype(self.coverage(s) >= 0.5, xp.int32)

    def evaluate(self, prev: SimState, s: SimState, carry: dict | None = None, frames: tuple | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        xp = array_ops.of(s.qpos)
        cov = self.coverage(s, frames)  # computed once for success, reward and stage
        success = cov >= SUCCESS_COVERAGE
        # coverage is a fraction (>= 0): clipping at 1 is all of the original's clip(cov / 0.95, 0, 1)
        reward = success if self.cfg.reward_type == "sparse" else xp.clip(cov / SUCCESS_COVERAGE, None, 1.0)
        return success, xp.astype(reward, xp.float32), xp.astype(cov >= 0.5, xp.int32), self.detect_failure(prev, s)

    def transition(self, prev: SimState, s: SimState, carry: dict | None = None) -> tuple:
        frames = self.frames(s)  # poses and yaw cos/sin shared by the observation and the coverage
        return (self.observe(s, frames), *self.evaluate(prev, s, carry, frames))

    def detect_failure(self, prev: SimState, s: SimState) -> torch.Tensor:
        # The block's xy position only: no yaw (atan2) is needed for the workspace check.
        return out_of_reach_events(self.sensor(s, "t_pos"), lambda: self.sensor(prev, "t_pos"), LIMIT)

    def sample_init(self, gen: torch.Generator, n: int) -> torch.Tensor:
        st = self.base_states(n)
        block = torch.cat([uniform(gen, n, [-0.15, -0.15], [0.15, 0.15]), uniform(gen, n, -math.pi, math.pi)[:, None]], -1)
        pusher = uniform(gen, n, [-0.2, -0.2], [0.2, 0.2])
        for _ in range(100):  # the pusher must not start inside the block
            bad = inside_t(to_local(pusher[:, None], block)[:, 0], margin=0.03)
            if not bad.any():
                break
            pusher = torch.where(bad[:, None], uniform(gen, n, [-0.2, -0.2], [0.2, 0.2]), pusher)
        L = self.layout
        for j, name in enumerate(("tx", "ty", "tyaw")):
            self.set_in_state(st, "qpos", L.qpos_adr[name], block[:, j])
        g = torch.tensor([GOAL_POSE], dtype=torch.float64).expand(n, 3)
        self.set_mocap(st, "goal", torch.cat([g[:, :2], torch.zeros(n, 1)], -1), g[:, 2])
        self.init_gripper(st, torch.cat([pusher, torch.full((n, 1), PUSH_Z)], -1), opening=0.0)
        return st

    def perturb(self, kind: str, states: torch.Tensor, s: SimState, gen: torch.Generator) -> torch.Tensor:
        L = self.layout
        if kind == "nudge_object":
            v = self.get_from_state(states, "qvel")
            ang = uniform(gen, 1, 0.0, 2 * math.pi)
            mag = uniform(gen, 1, 0.3, 0.5)
            v[:, L.dof_adr["tx"]] += mag * torch.cos(ang)
            v[:, L.dof_adr["ty"]] += mag * torch.sin(ang)
            v[:, L.dof_adr["tyaw"]] += uniform(gen, 1, -4.0, 4.0)
            return states
        if kind == "shift_target":
            i = L.mocap["goal"]
            pos = self.get_mocap(states, "goal").clone()
            pos[:, :2] = (pos[:, :2] + uniform(gen, 1, [-0.04, -0.04], [0.04, 0.04])).clamp(-0.1, 0.1)
            q = self.get_from_state(states, "mocap_quat")[:, 4 * i:4 * i + 4]
            yaw = quat_to_yaw(q) + uniform(gen, 1, -0.6, 0.6)
            self.set_mocap(states, "goal", pos, yaw)
            return states
        return super().perturb(kind, states, s, gen)


# Candidate pushing contacts on the T: (point in block frame, inward normal), away from corners.
def _contacts() -> tuple[torch.Tensor, torch.Tensor]:
    pts, nrm = [], []

    def add(points, n):
        for p in points:
            pts.append(p)
            nrm.append(n)

    add([(x, 0.0) for x in (-0.045, -0.025, 0.0, 0.025, 0.045)], (0.0, -1.0))  # top of the bar
    add([(x, -0.03) for x in (-0.05, -0.032, 0.032, 0.05)], (0.0, 1.0))  # under the bar
    add([(-0.06, -0.015)], (1.0, 0.0))
    add([(0.06, -0.015)], (-1.0, 0.0))
    add([(-0.015, y) for y in (-0.05, -0.075, -0.1)], (1.0, 0.0))  # stem sides
    add([(0.015, y) for y in (-0.05, -0.075, -0.1)], (-1.0, 0.0))
    add([(0.0, -0.12)], (0.0, 1.0))  # stem end
    return torch.tensor(pts, dtype=torch.float64), torch.tensor(nrm, dtype=torch.float64)


CONTACT_PTS, CONTACT_NRM = _contacts()


class PushTExpert(Expert):
    """Quasi-static pushing controller.

    Each step it picks the contact (of 18 on the T's edges) whose predicted motion (force along
    the inward normal; twist ~ (n, r x n / c^2)) best matches the desired twist towards the goal
    pose, walks around the block to it without touching it, and pushes. The contact the pusher
    stands at (on its line, just behind it) is kept while it stays nearly as good (hysteresis read
    from the state, not remembered: the action is a function of the state and the episode's mode,
    so nearly identical states get the same contact, which a policy can learn; earlier versions
    remembered the contact: scripts/push_t_expert.py measures both).
    Mode = which side wins near-ties and which way round a detour goes: demonstrations push from
    either side (collect --expert-mode fixes it).
    """

    num_modes = 2
    C2 = 0.0008  # I/m of the T about its centre of mass
    RHO = 0.06  # metres per radian when comparing rotation with translation
    PRE = 0.028  # stand-off of the approach point from the contact
    AROUND = 0.105  # radius of the detour circle around the centre of mass

    KEEP_MARGIN = 0.12  # a contact the pusher is at is kept while its score is within this of the best

    def policy(self, s: SimState) -> tuple[torch.Tensor, torch.Tensor]:
        action, prim, _ = self.decide(s)
        if self.task.cfg.action_mode == "absolute":
            action = self.task.absolute_action(s, action)  # type: ignore[attr-defined]
        return action, prim

    def choose_contact(self, score: torch.Tensor, best: torch.Tensor, at_k: torch.Tensor, at_any: torch.Tensor
                       ) -> torch.Tensor:
        """The contact to push at: the one the pusher is at while it scores within KEEP_MARGIN of
        the best, else the best."""
        kept = score.gather(1, at_k[:, None])[:, 0] > score.gather(1, best[:, None])[:, 0] - self.KEEP_MARGIN
        return torch.where(at_any & kept, at_k, best)

    def decide(self, s: SimState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(delta action, primitive, chosen contact index) of every env."""
        task: PushT = self.task  # type: ignore[assignment]
        n = s.qpos.shape[0]
        p = task.grip_pos(s)[:, :2]
        pose, goal = task.block_pose(s), task.goal_pose(s)
        com_l = torch.tensor(COM, dtype=p.dtype)
        com = to_world(com_l[None], pose)[:, 0]
        gcom = to_world(com_l[None], goal)[:, 0]
        e_p = gcom - com
        e_t = wrap_angle(goal[:, 2] - pose[:, 2])
        desired = torch.cat([e_p, self.RHO * e_t[:, None]], -1)  # (N, 3)
        # Predicted motion of each contact, rotated into the world.
        c, sn = torch.cos(pose[:, 2]), torch.sin(pose[:, 2])
        r = CONTACT_PTS.to(p) - com_l
        torque = r[:, 0] * CONTACT_NRM[:, 1].to(p) - r[:, 1] * CONTACT_NRM[:, 0].to(p)
        nx, ny = CONTACT_NRM[:, 0].to(p), CONTACT_NRM[:, 1].to(p)
        nw = torch.stack([c[:, None] * nx - sn[:, None] * ny, sn[:, None] * nx + c[:, None] * ny], -1)  # (N, K, 2)
        motion = torch.cat([nw, (self.RHO * torque / self.C2).expand(n, -1)[..., None]], -1)
        motion = motion / motion.norm(dim=-1, keepdim=True)
        dn = desired / desired.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        score = (motion * dn[:, None]).sum(-1)  # cosine similarity (N, K)
        side = torch.where(self.mode == 0, 1.0, -1.0).to(p)
        score = score + 0.03 * side[:, None] * torch.sign(CONTACT_PTS[:, 0]).to(p)[None]
        best = score.argmax(-1)
        # The contact the pusher is at: on that contact's inward line, at most PRE + 12 mm behind it.
        cps = to_world(CONTACT_PTS.to(p)[None].expand(n, -1, -1), pose)  # (N, K, 2)
        rel_all = p[:, None] - cps
        along_all = -(rel_all * nw).sum(-1)
        lat_all = (rel_all + along_all[..., None] * nw).norm(dim=-1)
        at = (along_all > -0.002) & (along_all < self.PRE + 0.012) & (lat_all < 0.01)
        at_k = torch.where(at, lat_all, torch.full_like(lat_all, math.inf)).argmin(-1)
        k = self.choose_contact(score, best, at_k, at.any(-1))
        cp = cps[torch.arange(n), k]  # (N, 2)
        cn = nw[torch.arange(n), k]
        pre = cp - cn * self.PRE
        # Engaged: on the contact's line, behind the contact, close enough to push.
        rel = p - cp
        along = -(rel * cn).sum(-1)  # distance behind the contact point
        lat = rel - (rel * cn).sum(-1, keepdim=True) * cn
        engaged = (along > 0.0) & (along < self.PRE + 0.006) & (lat.norm(dim=-1) < 0.006)
        mag = desired.norm(dim=-1)
        step = (0.5 * mag).clamp(0.003, 0.025)
        push_t = p + cn * (step + (along - 0.012).clamp_min(0))[:, None] - 0.8 * lat
        # Approach: straight if the segment clears the (inflated) block, else around it.
        seg = p[:, None] + torch.linspace(0, 0.9, 12, dtype=p.dtype)[None, :, None] * (pre - p)[:, None]
        hit = inside_t(to_local(seg, pose), margin=0.013).any(-1)
        rel_c = p - com
        ang = torch.atan2(rel_c[:, 1], rel_c[:, 0])
        tgt = torch.atan2(pre[:, 1] - com[:, 1], pre[:, 0] - com[:, 0])
        diff = wrap_angle(tgt - ang)
        direction = torch.where(diff.abs() > 2.8, side, torch.sign(diff))
        nxt = ang + direction * diff.abs().clamp(max=0.5)
        radius = torch.maximum(rel_c.norm(dim=-1), torch.full_like(ang, self.AROUND))
        radius = torch.minimum(radius, torch.full_like(ang, self.AROUND + 0.02))
        around = com + torch.stack([torch.cos(nxt), torch.sin(nxt)], -1) * radius[:, None]
        # If we are inside the detour circle and blocked, first move straight out.
        out = com + rel_c / rel_c.norm(dim=-1, keepdim=True).clamp_min(1e-6) * self.AROUND
        inside = rel_c.norm(dim=-1) < self.AROUND - 0.01
        detour = torch.where(inside[:, None], out, around)
        detour = torch.where((diff.abs() < 0.15)[:, None], pre, detour)  # at the contact's bearing: go in
        approach = torch.where(hit[:, None], detour, pre)
        target = torch.where(engaged[:, None], push_t, approach)
        delta = (target - p) / task.pos_scale
        norm = delta.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        action = delta * torch.clamp(1.0 / norm, max=1.0)
        prim = torch.where(engaged, PRIM["push"], PRIM["reach"])
        return action, prim, k
