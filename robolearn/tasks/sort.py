"""sort: K cubes, each into the bin of its colour, in a fixed order (cube 0 first).

Stage k = index of the first cube not yet in its bin (K once all are sorted), so a cube knocked
out of its bin sends the stage back. The expert labels primitives reach/grasp/transport/release
within each stage and re-grasps dropped cubes: the long-horizon task for hierarchical imitation
and recovery interventions.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import torch

from robolearn.tasks import array_ops
from robolearn.tasks.base import SimState, TaskConfig, canonical_quat, read_asset, relative_obs, replicate, uniform
from robolearn.tasks.expert import Expert
from robolearn.tasks.pick_place import (BIN_REACH, CUBE_HALF, GraspExpertMixin, GraspTask, grasp_failures, held_before,
                                        shift_bin, staged_progress)

COLORS = ["0.85 0.2 0.2 1", "0.2 0.45 0.85 1", "0.2 0.7 0.3 1", "0.9 0.75 0.15 1", "0.6 0.3 0.75 1"]
BIN_Y = 0.2
BIN_SPACING = 0.125
CUBE_REACH = 0.09  # expert: a neighbouring cube closer than this (centre to centre) is in the fingers' way
# Control steps added to the config's horizon (written for K <= 3) per cube beyond 3, unless the
# horizon is overridden. The expert needs ~40 steps per cube on average and up to ~55 (K=5: mean
# 203, max 271 steps over 16 seeds), so K=5 gets 400.
SORT_STEPS_PER_EXTRA_CUBE = 100


@dataclass
class SortConfig(TaskConfig):
    """sort's config: the shared fields plus K, the number of cubes."""

    structural_fields = TaskConfig.structural_fields + ("num_cubes",)
    num_cubes: int = 3

    def resolve(self, given: dict[str, Any]) -> None:
        if not 1 <= self.num_cubes <= 5:
            raise ValueError(f"sort: num_cubes must be between 1 and 5, got {self.num_cubes}")
        if "horizon" not in given:  # the YAML's horizon is for K <= 3 (see envs/sort.yaml)
            self.horizon += SORT_STEPS_PER_EXTRA_CUBE * max(0, self.num_cubes - 3)


class Sort(GraspTask):
    name = "sort"
    xml = "sort.xml"
    config_class = SortConfig
    description = "K cubes into their colour's bins in a fixed order (one stage per cube)"

    def __init__(self, cfg: TaskConfig, layout):
        super().__init__(cfg, layout)
        self.k = int(cfg.num_cubes)
        self.num_stages = self.k
        # sensordata columns of all cubes' positions / quaternions / all bins' positions (one gather
        # per reader instead of K slices and a stack).
        cols = lambda fmt: torch.tensor([c for i in range(self.k)  # noqa: E731
                                         for c in range(*layout.sensor[fmt.format(i)].indices(layout.nsensordata))])
        self._cube_cols, self._quat_cols, self._bin_cols = cols("cube{}_pos"), cols("cube{}_quat"), cols("bin{}_pos")
        self._local_cols = cols("cube{}_in_grip")
        # Per cube: position | bin position | position in the gripper frame, read in one gather.
        self._step_cols = torch.cat([torch.stack([self._cube_cols.view(-1, 3)[i], self._bin_cols.view(-1, 3)[i],
                                                  self._local_cols.view(-1, 3)[i]]).flatten() for i in range(self.k)])

    @classmethod
    def build_xml(cls, cfg: TaskConfig) -> str:
        k = int(cfg.num_cubes)

        def edit(e: ET.Element, i: int) -> None:
            for node in e.iter("geom"):
                node.set("rgba", COLORS[i % len(COLORS)])

        return replicate(read_asset(cls.xml), ("cube", "bin"), k, edit)

    @property
    def pose_obs_dim(self) -> int:
        return 5 + 9 * self.k

    @property
    def relative_dim(self) -> int:
        return 5 * self.k  # per cube: cube - gripper (3), bin - cube xy (2)

    # -- readers -------------------------------------------------------------------------------
    def _gather(self, s: SimState, cols: torch.Tensor, dim: int) -> torch.Tensor:
        d = s.sensordata
        return d[:, array_ops.of(d).index(cols, d)].reshape(d.shape[0], self.k, dim)

    def cubes(self, s: SimState) -> torch.Tensor:
        """(N, K, 3) cube positions."""
        return self._gather(s, self._cube_cols, 3)

    def quats(self, s: SimState) -> torch.Tensor:
        return self._gather(s, self._quat_cols, 4)

    def bins(self, s: SimState) -> torch.Tensor:
        return self._gather(s, self._bin_cols, 3)

    def cubes_in_grip(self, s: SimState) -> torch.Tensor:
        """(N, K, 3) cube positions in the gripper frame (sensors)."""
        return self._gather(s, self._local_cols, 3)

    def sorted_mask(self, s: SimState, cubes: torch.Tensor | None = None, bins: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """(N, K) cube i is in bin i."""
        return self.in_bin(self.cubes(s) if cubes is None else cubes, self.bins(s) if bins is None else bins)

    def current(self, s: SimState, mask: torch.Tensor | None = None, all_sorted: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Index of the first cube not in its bin (K when all are sorted); mask = sorted_mask(s) and
        all_sorted = mask.all(1) if already computed."""
        m = self.sorted_mask(s) if mask is None else mask
        xp = array_ops.of(m)
        first = xp.astype(m, xp.int64).argmin(1)  # the method: numpy's np.argmin wrapper costs ~1 us more
        return xp.where(m.all(1) if all_sorted is None else all_sorted, self.k, first)

    def _pick_index(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cube) indices selecting cube idx (N,) of every env; idx = K (all sorted) -> the last."""
        xp = array_ops.of(idx)
        return xp.arange(idx.shape[0], idx), xp.clip(idx, None, self.k - 1)

    def _pick(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return x[self._pick_index(idx)]

    # -- task functions ------------------------------------------------------------------------
    def observe(self, s: SimState) -> torch.Tensor:
        """[gripper xyz, yaw, opening, K x (cube xyz, cube quat w>=0), K x bin xy], then with
        obs_relative K x [cube - gripper, bin - cube xy]."""
        xp = array_ops.of(s.qpos)
        n = s.qpos.shape[0]
        grip, pos, bin_xy = self.grip_pos(s), self.cubes(s), self.bins(s)[:, :, :2]
        cubes = xp.cat([pos, canonical_quat(self.quats(s))], -1).reshape(n, -1)
        parts = [grip, self.grip_yaw(s)[:, None], self.grip_width(s)[:, None], cubes, bin_xy.reshape(n, -1)]
        if self.cfg.obs_relative:
            parts.append(relative_obs(grip[:, None], pos, bin_xy).reshape(n, -1))
        return xp.cat(parts, -1)

    def stage_obs_columns(self, others: bool = False) -> list[list[int]]:
        """Stage k: gripper (xyz, yaw, opening), cube k (xyz, quat) and bin k (xy), and with
        obs_relative cube k's relative block, in observe's layout: the same columns for every k, as
        the whole observation at K = 1; with others, then the other cubes, bins (and relative
        blocks) in index order (every column)."""
        k = self.k
        cube = lambda i: list(range(5 + 7 * i, 12 + 7 * i))  # noqa: E731
        bin_xy = lambda i: [5 + 7 * k + 2 * i, 6 + 7 * k + 2 * i]  # noqa: E731
        rel = (lambda i: list(range(5 + 9 * k + 5 * i, 10 + 9 * k + 5 * i))) if self.cfg.obs_relative else (lambda i: [])  # noqa: E731
        own = lambda i: cube(i) + bin_xy(i) + rel(i)  # noqa: E731
        rest = lambda i: ([c for j in range(k) if j != i for c in cube(j)]  # noqa: E731
                          + [c for j in range(k) if j != i for c in bin_xy(j)]
                          + [c for j in range(k) if j != i for c in rel(j)])
        return [list(range(5)) + own(i) + (rest(i) if others else []) for i in range(k)]

    def success(self, s: SimState) -> torch.Tensor:
        return self.sorted_mask(s).all(1)

    def stage(self, s: SimState) -> torch.Tensor:
        xp = array_ops.of(s.qpos)
        return xp.astype(self.current(s), xp.int32)

    def dense_reward(self, s: SimState, success: torch.Tensor | None = None) -> torch.Tensor:
        """(sorted cubes + staged progress on the current cube) / K, in [0, 1]."""
        return self._dense(s, self.cubes(s), self.bins(s), self.sorted_mask(s))

    def _dense(self, s: SimState, cubes: torch.Tensor, bins: torch.Tensor, m: torch.Tensor,
               cur: torch.Tensor | None = None, held: torch.Tensor | None = None,
               local: torch.Tensor | None = None, all_sorted: torch.Tensor | None = None) -> torch.Tensor:
        """held: grasped(s, cubes) (N, K), local: cubes_in_grip(s), all_sorted: m.all(1), if already
        computed."""
        xp = array_ops.of(cubes)
        cur = self.current(s, m) if cur is None else cur
        all_sorted = m.all(1) if all_sorted is None else all_sorted
        # Staged progress of every cube, then the current one's (one pick instead of four): the
        # current cube is not in its bin, or all are sorted and the reward is 1.
        part = staged_progress(self, s, cubes, bins, held, local)[self._pick_index(cur)]
        done = xp.count_true(m, part.dtype)
        return xp.where(all_sorted, 1.0, (done + xp.clip(part, None, 0.99)) / self.k)

    def evaluate(self, prev: SimState, s: SimState, carry: dict | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        xp = array_ops.of(s.qpos)
        g = self._gather(s, self._step_cols, 9)  # one gather: cubes, bins, cubes in the gripper frame
        cubes, bins, local = g[..., 0:3], g[..., 3:6], g[..., 6:9]
        m = self.in_bin(cubes, bins)  # (N, K) sorted, computed once for success, reward and stage
        success = m.all(1)
        cur = self.current(s, m, success)
        held = self.holds(s, local)  # (N, K): the current cube's for the reward, all for drops
        reward = success if self.cfg.reward_type == "sparse" else self._dense(s, cubes, bins, m, cur, held, local, success)
        was = held_before(self, prev, carry, held, lambda: self.cubes_in_grip(prev))
        return (success, xp.astype(reward, xp.float32), xp.astype(cur, xp.int32),
                self._failures(prev, s, cubes, bins, held, was))

    def detect_failure(self, prev: SimState, s: SimState) -> torch.Tensor:
        return self._failures(prev, s, self.cubes(s), self.bins(s))

    def _failures(self, prev: SimState, s: SimState, cubes: torch.Tensor, bins: torch.Tensor,
                  held: torch.Tensor | None = None, was: torch.Tensor | None = None) -> torch.Tensor:
        e = grasp_failures(self, prev, s, self.cubes(prev), cubes, bins, held, was)  # (N, K), all cubes at once
        xp = array_ops.of(e)
        ev = e[:, 0]
        if xp.none(e):  # host short cut: no event on any cube
            return ev
        for i in range(1, self.k):  # the first cube (in index order) with an event wins
            ev = xp.where(ev == 0, e[:, i], ev)
        return ev

    def sample_init(self, gen: torch.Generator, n: int) -> torch.Tensor:
        st = self.base_states(n)
        k = self.k
        xs = (torch.arange(k, dtype=torch.float64) - (k - 1) / 2) * BIN_SPACING
        for r in range(n):
            order = torch.randperm(k, generator=gen)
            for i in range(k):
                self.set_mocap(st[r:r + 1], f"bin{i}", torch.tensor([[xs[order[i]], BIN_Y, 0.0]]))
            placed: list[torch.Tensor] = []
            for i in range(k):
                for _ in range(200):  # cubes >= 10 cm apart so open fingers never land on a neighbour
                    c = uniform(gen, 1, [-0.2, -0.2], [0.2, 0.06])
                    if all((c - q).norm() > 0.1 for q in placed):
                        break
                placed.append(c)
                self.set_free_body(st[r:r + 1], f"cube{i}", torch.cat([c, torch.full((1, 1), CUBE_HALF)], -1),
                                   uniform(gen, 1, -math.pi, math.pi))
            self.init_gripper(st[r:r + 1], uniform(gen, 1, [-0.2, -0.2, 0.1], [0.2, 0.2, 0.2]),
                              uniform(gen, 1, -0.5, 0.5))
        return st

    def perturb(self, kind: str, states: torch.Tensor, s: SimState, gen: torch.Generator) -> torch.Tensor:
        cur = int(self.current(s)[0].clamp(max=self.k - 1))
        if kind == "nudge_object":
            return self.nudge_free_body(states, f"cube{cur}", gen, spin=3.0)
        if kind == "open_gripper":
            return self.open_gripper(states)
        if kind == "shift_target":
            cubes = [self.sensor(s, f"cube{i}_pos") for i in range(self.k)]
            others = [self.get_mocap(states, f"bin{i}") for i in range(self.k) if i != cur]
            return shift_bin(self, states, s, f"bin{cur}", cubes, gen, lim=0.25, others=others)
        return super().perturb(kind, states, s, gen)


class SortExpert(GraspExpertMixin, Expert):
    """Pick-and-place of the current cube (first not in its bin); mode picks the grasp faces."""

    num_modes = 2

    def policy(self, s: SimState) -> tuple[torch.Tensor, torch.Tensor]:
        task: Sort = self.task  # type: ignore[assignment]
        cur = task.current(s)
        cube = task._pick(task.cubes(s), cur)
        bins = task.bins(s)[:, :, :2]
        cubes = task.cubes(s)[:, :, :2]
        others = torch.where((torch.arange(task.k)[None, :] == cur.clamp(max=task.k - 1)[:, None])[..., None],
                             torch.full_like(cubes, 10.0), cubes)  # the target cube is no obstacle
        # A bin's walls reach 14 cm from its centre; another cube is under an open finger only
        # within 9 cm (finger outer face 5.7 cm + a cube's half-diagonal 2.8 cm). Cubes start >= 10 cm
        # apart, so a neighbour no longer flips the grasp faces unless it really is in the way.
        reach = torch.cat([torch.full((task.k,), BIN_REACH), torch.full((task.k,), CUBE_REACH)]).to(bins.dtype)
        return self.pick_place_policy(s, cube, task._pick(task.quats(s), cur), task._pick(task.bins(s), cur),
                                      self.mode, obstacles=torch.cat([bins, others], 1), obstacle_reach=reach)
