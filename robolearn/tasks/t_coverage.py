"""push_t coverage as an exact area: |T(block) ∩ T(goal)| / |T|, at a fixed cost per world.

Each T is the union of two interior-disjoint rectangles (bar, stem), so the overlap is the sum of
four rectangle-rectangle overlaps. The area of a convex intersection P ∩ Q follows from Green's
theorem, A = 1/2 ∮ (x dy - y dx) along its boundary, which consists of the parts of P's edges
inside Q and of Q's edges inside P. A segment a + t d (t in [0, 1]) contributes
1/2 (t1 - t0) cross(a, d) over the part [t0, t1] inside the other rectangle, found by clipping it
against that rectangle's axis-aligned slabs in the rectangle's own frame (Liang-Barsky); the
clip parameters do not depend on the frame, so every contribution is evaluated in the block frame.
That is 32 segment clips per world (2 x 2 rectangle pairs x 8 edges), a few dozen array ops on
(N, 2, 32) arrays for any N, against 1575 grid points per world for the sampled coverage.

Degenerate contacts (collinear edges, e.g. the block exactly on the goal, or a bar edge on the
other T's stem top) would make the boundary ambiguous; the goal rectangles are shrunk by SHRINK
(1e-9 m in float64, 1e-6 m in float32: far above round-off, a relative area change below
1e-7 / 1e-4) so that edges of the two shapes never coincide except at that exact offset.

Written with array_ops (torch on any device, numpy on the host) and a scalar-transform host path
for one env, as the grid coverage in push_t.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from robolearn.tasks import array_ops

# T geometry in the block frame (as robolearn.tasks.push_t): xmin, xmax, ymin, ymax
BAR = (-0.06, 0.06, -0.03, 0.0)
STEM = (-0.015, 0.015, -0.12, -0.03)
T_AREA = (BAR[1] - BAR[0]) * (BAR[3] - BAR[2]) + (STEM[1] - STEM[0]) * (STEM[3] - STEM[2])
SHRINK = {8: 1e-9, 4: 1e-6}  # by float size in bytes
_TINY = 1e-30  # stands in for an exactly zero direction component (parallel to a slab)


def _edges(rect: tuple[float, float, float, float]) -> list[tuple[float, float, float, float]]:
    """Counter-clockwise edges (x, y, dx, dy) of an axis-aligned rectangle."""
    x0, x1, y0, y1 = rect
    return [(x0, y0, x1 - x0, 0.0), (x1, y0, 0.0, y1 - y0), (x1, y1, x0 - x1, 0.0), (x0, y1, 0.0, y0 - y1)]


def _shrunk(rect: tuple[float, float, float, float], e: float) -> tuple[float, float, float, float]:
    return rect[0] + e, rect[1] - e, rect[2] + e, rect[3] - e


def _tables(shrink: float) -> dict[str, np.ndarray]:
    """Constant tables of the 32 segment clips. Columns 0-15: block edges clipped against the
    (shrunk) goal rectangles, mapped block -> goal frame; 16-31: (shrunk) goal edges clipped against
    the block rectangles, mapped goal -> block frame. `pts` are homogeneous (x, y, 1) starts and
    (dx, dy, 0) directions, lo/hi the clipping rectangle's bounds in the frame the clip runs in."""
    block = [BAR, STEM]
    goal = [_shrunk(BAR, shrink), _shrunk(STEM, shrink)]
    starts, dirs, lo, hi = ([], []), ([], []), [], []
    for side, (own, other) in enumerate(((block, goal), (goal, block))):
        for rect in own:
            for box in other:
                for x, y, dx, dy in _edges(rect):
                    starts[side].append((x, y, 1.0))
                    dirs[side].append((dx, dy, 0.0))
                    lo.append((box[0], box[2]))
                    hi.append((box[1], box[3]))
    pts = [np.array(starts[k] + dirs[k], dtype=np.float64).T for k in (0, 1)]  # (3, 32) each
    p0 = pts[0]
    block_cross = p0[0, :16] * p0[1, 16:] - p0[1, :16] * p0[0, 16:]  # cross(start, dir), block frame
    return {"to_goal": pts[0], "to_block": pts[1], "lo": np.array(lo).T, "hi": np.array(hi).T,
            "block_cross": block_cross}


_TABLES = {k: _tables(v) for k, v in SHRINK.items()}
_TORCH = {k: {n: torch.from_numpy(a) for n, a in t.items()} for k, t in _TABLES.items()}


def _clip_area(a, d, lo, hi, block_cross, xp):
    """Sum of 1/2 (t1 - t0)+ cross(a, d) (block frame) over the 32 clipped segments; a, d (..., 2, 32)
    in each clip's own frame (columns 16-31 are in the block frame, 0-15 use block_cross)."""
    d = xp.where(d == 0, _TINY, d)
    inv = 1.0 / d
    t_lo = (lo - a) * inv
    t_hi = (hi - a) * inv
    enter = xp.minimum(t_lo, t_hi)
    leave = xp.maximum(t_lo, t_hi)
    t0 = xp.clip(xp.maximum(enter[..., 0, :], enter[..., 1, :]), 0.0)
    t1 = xp.clip(xp.minimum(leave[..., 0, :], leave[..., 1, :]), None, 1.0)
    length = xp.clip(t1 - t0, 0.0)
    a2, d2 = a[..., 16:], d[..., 16:]
    goal_cross = a2[..., 0, :] * d2[..., 1, :] - a2[..., 1, :] * d2[..., 0, :]
    return 0.5 * ((length[..., :16] * block_cross).sum(-1) + (length[..., 16:] * goal_cross).sum(-1))


def _host_map(tab: dict[str, np.ndarray]) -> np.ndarray:
    """(3, 96, 11) map for one env: everything the clip needs is affine in
    v = (c, s, tx1, ty1, tx2, ty2, tx2 s, tx2 c, ty2 c, ty2 s, 1) (c, s: cos / sin of block yaw -
    goal yaw; t1 / t2: translations of the block -> goal / goal -> block maps). Rows: lo - a, hi - a,
    d of every clip (x of the 32, y of the 32, then a pseudo-slab t in [0, 1]); the weights
    cross(a, d) of the 32 clips in the last slice of the first axis's spare rows ([2, 64:96])."""
    out = np.zeros((3, 96, 11))
    for k in range(32):
        src = tab["to_goal"] if k < 16 else tab["to_block"]
        col = k % 16
        ux, uy, ex, ey = src[0, col], src[1, col], src[0, 16 + col], src[1, 16 + col]
        if k < 16:  # block -> goal frame: R(phi) = [[c, -s], [s, c]], translation t1
            ax, ay = (ux, -uy, 1, 0, 0, 0), (uy, ux, 0, 1, 0, 0)
            dx, dy = (ex, -ey, 0, 0, 0, 0), (ey, ex, 0, 0, 0, 0)
        else:  # goal -> block frame: R(-phi) = [[c, s], [-s, c]], translation t2
            ax, ay = (ux, uy, 0, 0, 1, 0), (uy, -ux, 0, 0, 0, 1)
            dx, dy = (ex, ey, 0, 0, 0, 0), (ey, -ex, 0, 0, 0, 0)
        for j, (a, d) in enumerate(((ax, dx), (ay, dy))):
            r = 32 * j + k
            out[0, r, :6] = -np.array(a, dtype=float)
            out[0, r, 10] = tab["lo"][j, k]
            out[1, r, :6] = -np.array(a, dtype=float)
            out[1, r, 10] = tab["hi"][j, k]
            out[2, r, :6] = d
    out[1, 64:, 10] = 1.0  # pseudo-slab: lo - a = 0, hi - a = 1, d = 1 gives t in [0, 1]
    out[2, 64:, 10] = 1.0
    # cross(a, d) in the block frame: constant for block edges, cross(u, e) + cross(t2, R(-phi) e)
    # for goal edges (bilinear in t2 and (c, s): the products in v[6:10]).
    w = np.zeros((32, 11))
    w[:16, 10] = tab["block_cross"]
    for col in range(16):
        src = tab["to_block"]
        ux, uy, ex, ey = src[0, col], src[1, col], src[0, 16 + col], src[1, 16 + col]
        w[16 + col, 6:10] = (-ex, ey, -ex, -ey)
        w[16 + col, 10] = ux * ey - uy * ex
    return out, w


def _host_case(out: np.ndarray, w: np.ndarray, sc: float, ss: float) -> np.ndarray:
    """(320, 11) map for relative-yaw cos / sin of signs (sc, ss): rows 0-95 the numerators of the
    entering t of each slab (lo - a where d > 0, else hi - a), 96-191 minus those of the leaving t,
    192-287 d, 288-319 minus the weights. Every direction component is a single term in c or s, so
    its sign, and which bound is entered first, is fixed by (sc, ss)."""
    d_sign = np.sign(out[2] @ np.array([sc, ss, 0, 0, 0, 0, 0, 0, 0, 0, 0.0]))[:, None]
    d_sign[64:] = 1.0  # pseudo-slab
    enter = np.where(d_sign > 0, out[0], out[1])
    leave = np.where(d_sign > 0, out[1], out[0])
    return np.concatenate([enter, -leave, out[2], -w])


_HOST_CASES = {(sc, ss): _host_case(*_host_map(_TABLES[8]), sc, ss) for sc in (-1.0, 1.0) for ss in (-1.0, 1.0)}


def _coverage_one_host(pose: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """One env on the host (the single gym env's per-step cost, 9 numpy calls): one (320, 11)
    matrix-vector product gives every clip's entering / leaving numerators, directions and weights
    (the map for the signs of the relative yaw's cos / sin); an exactly zero cos / sin is nudged to
    1e-300, so no direction component is 0."""
    (bx, by, bth), (gx, gy, gth) = pose[0].tolist(), goal[0].tolist()
    cb, sb, cg, sg = math.cos(bth), math.sin(bth), math.cos(gth), math.sin(gth)
    c, s = cb * cg + sb * sg, sb * cg - cb * sg  # cos / sin of (block yaw - goal yaw)
    c, s = c or 1e-300, s or 1e-300
    dx, dy = bx - gx, by - gy
    t2x, t2y = -(cb * dx + sb * dy), sb * dx - cb * dy
    v = np.array([c, s, cg * dx + sg * dy, cg * dy - sg * dx, t2x, t2y, t2x * s, t2x * c, t2y * c, t2y * s, 1.0])
    out = _HOST_CASES[(1.0 if c > 0 else -1.0, 1.0 if s > 0 else -1.0)] @ v
    t = (out[:192].reshape(2, 96) / out[192:288]).reshape(2, 3, 32).max(1)  # rows: t0, -t1 of each clip
    return np.array([(0.5 / T_AREA) * (np.minimum(t[0] + t[1], 0.0) @ out[288:])])


def exact_coverage(pose, goal, pose_cs=None, goal_cs=None):
    """Fraction of the goal T's area covered by the T at `pose`, both (N, 3) x, y, yaw (torch or
    numpy); optional (cos, sin) of the yaws as (N, 1) arrays, if already computed."""
    xp = array_ops.of(pose)
    if xp is array_ops.NumpyOps and len(pose) == 1 and pose.dtype == np.float64:
        return _coverage_one_host(pose, goal)
    size = pose.dtype.itemsize
    tab = _TABLES[8 if size >= 8 else 4] if xp is array_ops.NumpyOps else _TORCH[8 if size >= 8 else 4]
    const = (lambda name: xp.const(tab[name], pose)) if xp is array_ops.TorchOps else (
        lambda name: tab[name].astype(pose.dtype, copy=False))
    cb, sb = (xp.cos(pose[:, 2:]), xp.sin(pose[:, 2:])) if pose_cs is None else pose_cs
    cg, sg = (xp.cos(goal[:, 2:]), xp.sin(goal[:, 2:])) if goal_cs is None else goal_cs
    c, s = cb * cg + sb * sg, sb * cg - cb * sg  # (N, 1)
    dx, dy = pose[:, 0:1] - goal[:, 0:1], pose[:, 1:2] - goal[:, 1:2]
    to_goal = xp.cat([c, -s, cg * dx + sg * dy, s, c, cg * dy - sg * dx], -1).reshape(-1, 2, 3) @ const("to_goal")
    to_block = xp.cat([c, s, -(cb * dx + sb * dy), -s, c, sb * dx - cb * dy], -1).reshape(-1, 2, 3) @ const("to_block")
    a = xp.cat([to_goal[..., :16], to_block[..., :16]], -1)
    d = xp.cat([to_goal[..., 16:], to_block[..., 16:]], -1)
    return _clip_area(a, d, const("lo"), const("hi"), const("block_cross"), xp) / T_AREA
