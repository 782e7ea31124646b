"""push_t's exact coverage (robolearn.tasks.t_coverage: the area of T ∩ T by clipping) against
closed-form overlaps and against the 2 mm grid coverage it replaces, within the grid's own
discretization error, pose by pose."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robolearn.tasks.push_t import (BAR, GOAL_POINTS, STEM, SUCCESS_COVERAGE, _grid, coverage, inside_t, to_local,
                                    to_world)
from robolearn.tasks.t_coverage import T_AREA, exact_coverage

GOAL = (0.0, 0.0, math.pi / 4)
H = 0.002  # the grid's spacing (GOAL_POINTS: one point at the centre of each 2 mm cell of the T)


def _poses(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _all_paths(pose: torch.Tensor, goal: torch.Tensor) -> np.ndarray:
    """exact_coverage through torch, batched numpy and the single-env host path (must agree)."""
    t = exact_coverage(pose, goal).numpy()
    n = exact_coverage(pose.numpy(), goal.numpy())
    one = np.concatenate([exact_coverage(pose[i:i + 1].numpy(), goal[i:i + 1].numpy()) for i in range(len(pose))])
    np.testing.assert_allclose(n, t, atol=1e-12)
    np.testing.assert_allclose(one, t, atol=1e-12)
    return t


def _shift(goal, dx, dy, dyaw):
    return [goal[0] + dx, goal[1] + dy, goal[2] + dyaw]


def _rigid(goal, dyaw):
    """The goal T turned by dyaw about its own origin (the bar's top-edge centre)."""
    return [goal[0], goal[1], goal[2] + dyaw]


def test_geometry_is_push_ts():
    from robolearn.tasks import push_t, t_coverage

    assert (t_coverage.BAR, t_coverage.STEM) == (push_t.BAR, push_t.STEM)


@pytest.mark.parametrize("goal", [(0.0, 0.0, 0.0), GOAL, (0.03, -0.05, 2.0)])
def test_closed_form_overlaps(goal):
    """Overlaps worked out by hand (in the T's own frame), including exactly collinear and
    touching edges: identical pose 1; turned by 180 degrees the two Ts only touch (0); by 90
    degrees bar∩bar' 0.03x0.03 + bar'∩stem 0.015x0.03 + stem'∩bar 0.03x0.015 = 0.0018; shifted
    along the bar by 1 cm (0.11x0.03 + 0.02x0.09 = 0.0051); far away 0."""
    c, s = math.cos(goal[2]), math.sin(goal[2])
    along = lambda d: _shift(goal, c * d, s * d, 0.0)  # noqa: E731  (along the bar's axis)
    rows = [list(goal), _rigid(goal, math.pi), _rigid(goal, math.pi / 2), along(0.01), along(0.3)]
    want = np.array([1.0, 0.0, 0.0018 / T_AREA, 0.0051 / T_AREA, 0.0])
    got = _all_paths(_poses(rows), _poses([list(goal)] * len(rows)))
    np.testing.assert_allclose(got, want, atol=1e-6)  # SHRINK (1e-9 m) moves areas by < 1e-7
    f32 = exact_coverage(_poses(rows).float(), _poses([list(goal)] * len(rows)).float()).double().numpy()
    np.testing.assert_allclose(f32, want, atol=5e-4)  # float32 (device) with its 1e-6 m SHRINK


def _grid_coverage_and_bound(pose: torch.Tensor, goal: torch.Tensor, points: torch.Tensor, h: float
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled coverage on cell centres `points` (cells of side h tiling the goal T) and, per pose,
    a rigorous bound on its error: the fraction of cells the block T's boundary may cross. A cell
    lies within the circle of radius h/sqrt(2) around its centre, so within the axis-aligned
    square of that half-size in the block frame; it can be crossed only if that square meets the T
    (the T dilated by the square) and is not inside it (for an axis-aligned square: inside the bar,
    or inside the stem's column through the bar). Only such cells are counted differently by the
    samples (centre inside) and the exact area (area inside)."""
    r = h / math.sqrt(2)
    q = to_local(to_world(points, goal), pose)
    x, y = q[..., 0], q[..., 1]

    def within(rect, m):
        return (x >= rect[0] + m) & (x <= rect[1] - m) & (y >= rect[2] + m) & (y <= rect[3] - m)

    column = (STEM[0], STEM[1], STEM[2], BAR[3])
    crossed = inside_t(q, margin=r) & ~(within(BAR, r) | within(column, r))
    return inside_t(q).double().mean(-1), crossed.double().mean(-1)


def _random_poses(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n poses anywhere in sample_init's range and n near the goal (where coverage crosses 0.95)."""
    gen = torch.Generator().manual_seed(seed)
    goal = _poses([list(GOAL)]).repeat(2 * n, 1)
    anywhere = torch.cat([(torch.rand(n, 2, generator=gen, dtype=torch.float64) - 0.5) * 0.3,
                          (torch.rand(n, 1, generator=gen, dtype=torch.float64) - 0.5) * 2 * math.pi], -1)
    near = goal[:n] + (torch.rand(n, 3, generator=gen, dtype=torch.float64) - 0.5) * torch.tensor([0.01, 0.01, 0.1])
    return torch.cat([anywhere, near]), goal


def test_exact_coverage_within_the_grids_discretization_error():
    """8k poses: |exact - grid| never exceeds the pose's own grid error bound, and the success
    decision (coverage >= 0.95) is the same wherever 0.95 is not within that bound of the grid
    value. (Near the goal the bound is loose and the grid is coarse: edges nearly parallel to the
    grid flip a whole row of cells at once; there the two decisions differ on ~2% of poses.)"""
    n = 4_000
    pose, goal = _random_poses(n, 0)
    exact = exact_coverage(pose, goal)
    grid = coverage(pose, goal)
    sampled, bound = _grid_coverage_and_bound(pose, goal, GOAL_POINTS, H)
    assert torch.equal(sampled, grid)
    err = (exact - grid).abs()
    assert bool((err <= bound + 1e-12).all()), f"worst excess {float((err - bound).max()):.2e}"
    assert float(err.max()) > 1e-3  # the two really differ (the grid is not what is computed)
    decided = (grid - SUCCESS_COVERAGE).abs() > bound
    assert int(decided.sum()) > n
    both = (exact >= SUCCESS_COVERAGE) == (grid >= SUCCESS_COVERAGE)
    assert bool(both[decided].all())
    assert int((grid[n:] >= SUCCESS_COVERAGE).sum()) > 100 and int((exact[n:] >= SUCCESS_COVERAGE).sum()) > 100
    # the same numbers through numpy and in float32 (MuJoCo Warp's dtype)
    np.testing.assert_allclose(exact_coverage(pose.numpy(), goal.numpy()), exact.numpy(), atol=1e-12)
    np.testing.assert_allclose(exact_coverage(pose.float(), goal.float()).double().numpy(), exact.numpy(), atol=5e-4)


def test_exact_coverage_against_a_fine_grid_near_the_goal():
    """300 poses near the goal against 64 samples per 2 mm cell (0.25 mm grid): within that grid's
    own bound everywhere, under 3e-3 apart, and the same success decision wherever the fine grid's
    bound does not straddle 0.95 (a tight, independent check of the exact area)."""
    pose, goal = _random_poses(300, 1)
    pose, goal = pose[300:], goal[300:]
    h = H / 8
    fine_points = torch.cat([_grid(BAR, h), _grid(STEM, h)])
    assert len(fine_points) == 64 * len(GOAL_POINTS)
    parts = [_grid_coverage_and_bound(pose[i:i + 25], goal[i:i + 25], fine_points, h) for i in range(0, 300, 25)]
    fine, bound = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    exact = exact_coverage(pose, goal)
    err = (exact - fine).abs()
    assert bool((err <= bound + 1e-12).all())
    assert float(err.max()) < 3e-3
    decided = (fine - SUCCESS_COVERAGE).abs() > bound
    assert int(decided.sum()) > 200
    assert bool(((exact >= SUCCESS_COVERAGE) == (fine >= SUCCESS_COVERAGE))[decided].all())
    assert int((fine[decided] >= SUCCESS_COVERAGE).sum()) > 10


def test_push_t_task_uses_the_exact_coverage():
    """The task's coverage (success, reward, stage) is the exact one, on blocks placed near the
    goal where it differs from the grid's."""
    from robolearn.tasks.sim import TaskSim

    n = 8
    sim = TaskSim("push_t", num_envs=n)
    sim.reset(seeds=list(range(n)))
    task, L = sim.task, sim.backend.layout
    st = sim.get_state()
    near, _ = _random_poses(n, 2)
    q = L.state_slices["qpos"].start
    for j, name in enumerate(("tx", "ty", "tyaw")):
        st[:, q + L.qpos_adr[name]] = near[n:, j].numpy()
    sim.set_state(st)
    s = sim.backend.read()
    b, g = task.block_pose(s), task.goal_pose(s)
    exact, grid = exact_coverage(b, g), coverage(b, g)
    assert float((exact - grid).abs().max()) > 1e-4
    np.testing.assert_allclose(task.coverage(s).numpy(), exact.numpy(), atol=1e-9)
    np.testing.assert_allclose(sim.status()["success"], exact.numpy() >= SUCCESS_COVERAGE)
    sim.close()
