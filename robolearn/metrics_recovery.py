"""Recoveries that mean recovery: a failure event that set the task back, undone by the policy.

RaC's test-time-scaling claim is that success grows with the number of recoveries a policy
performs. Counting every failure event in a successful episode (what `robolearn eval` reported as
"recoveries" before) counts *exposure*: a harmless nudge of an object nobody had touched yet
needs no correction at all. Here an episode's recoveries are the failure events after which

1. the task fell back: within `setback_window` steps of the event the task's milestone level
   (below) dropped under the level it had reached just before the event (a dropped cube, a
   gripper forced open on a held cube, a cube knocked out of the fingers), and
2. the policy itself brought it back: later in the episode the level returned to what it had
   reached (or beyond, e.g. success), and -- when it is known who acted -- every step from the
   event to that return was the policy's own (an operator's correction is not the policy's
   recovery).

Events that pile up on one setback (a forced opening, then the drop it causes) count once.

Milestone level: a monotone, discrete measure of task progress from the simulator state. For
grasp tasks (pick_place, sort) it is 2 x (index of the current sub-task) + 1 if its object is
held (or released over its bin, falling in: a release is progress, not a setback), so the levels
of sort K=3 run reach0=0, hold0=1, reach1=2, ...; success is above every level. Other tasks use
their `stage`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SUCCESS_LEVEL = 1_000_000  # above any task's milestone level
OVER_TARGET = 0.049  # metres: a cube this close (x and y) to its bin's centre is over it (the bin's inner half size)


@dataclass(frozen=True)
class RecoveryCount:
    """Per-episode counts: every failure event, those that set the task back, and those setbacks
    the policy recovered from."""

    failure_events: int
    setbacks: int
    recoveries: int


def count_recoveries(levels: Any, events: Any, autonomous: Any = None, setback_window: int = 10) -> RecoveryCount:
    """Recoveries of one episode from per-step arrays (length T, step t = the state after action t).

    levels: milestone level of each state (SUCCESS_LEVEL for a successful state).
    events: failure-event code of each step (0 = none; see robolearn.tasks.base.FAILURE_EVENTS).
    autonomous: optional bool per step, True where the policy acted (from the store's `source`);
        a return to the reached level through operator steps is not the policy's recovery.
    setback_window: steps after an event in which the level must drop for it to count as a setback.
    """
    levels = np.asarray(levels, dtype=np.int64).reshape(-1)
    events = np.asarray(events).reshape(-1)
    if len(levels) != len(events):
        raise ValueError(f"levels ({len(levels)}) and events ({len(events)}) need one entry per step")
    if setback_window < 1:
        raise ValueError(f"setback_window must be >= 1, got {setback_window}")
    auto = None if autonomous is None else np.asarray(autonomous, dtype=bool).reshape(-1)
    if auto is not None and len(auto) != len(levels):
        raise ValueError(f"autonomous ({len(auto)}) needs one entry per step ({len(levels)})")
    T = len(levels)
    event_steps = np.flatnonzero(events > 0)
    setbacks = recoveries = 0
    covered_until = -1  # events up to this step belong to a setback already counted
    for t in event_steps:
        if t <= covered_until:
            continue
        reached = int(levels[t - 1]) if t > 0 else 0
        window = levels[t : min(T, t + setback_window)]
        below = np.flatnonzero(window < reached)
        if len(below) == 0:
            continue  # the event did not undo any progress: exposure, not a setback
        setbacks += 1
        drop = t + int(below[0])
        back = np.flatnonzero(levels[drop:] >= reached)
        if len(back) == 0:
            covered_until = T
            continue
        returned = drop + int(back[0])
        covered_until = returned
        if auto is None or auto[t : returned + 1].all():
            recoveries += 1
    return RecoveryCount(int(len(event_steps)), setbacks, recoveries)


def milestone_levels(task: Any, s: Any, success: Any = None) -> np.ndarray:
    """(N,) milestone level of every env's state `s` (see the module doc)."""
    stage = np.asarray(task.stage(s)).astype(np.int64).reshape(-1)
    if hasattr(task, "grasped"):
        cube = target = None
        if hasattr(task, "current") and hasattr(task, "cubes") and hasattr(task, "bins"):  # sort: first unsorted cube
            current = task.current(s)
            cube, target = task._pick(task.cubes(s), current), task._pick(task.bins(s), current)
            index = np.asarray(current).astype(np.int64).reshape(-1)
        elif hasattr(task, "cube_pos") and hasattr(task, "bin_pos"):  # pick_place: its stage is whether it is held
            cube, target, index = task.cube_pos(s), task.bin_pos(s), np.zeros_like(stage)
        if cube is not None:
            held = np.asarray(task.grasped(s, cube)).astype(bool).reshape(-1)
            # released over its bin (falling in) keeps the level of holding it: a release is no setback
            over = (np.abs(np.asarray(cube)[:, :2] - np.asarray(target)[:, :2]) < OVER_TARGET).all(-1)
            stage = 2 * index + (held | over).astype(np.int64)
    if success is not None:
        stage = np.where(np.asarray(success, dtype=bool).reshape(-1), SUCCESS_LEVEL, stage)
    return stage


def _rollout_hook_base() -> type:
    from robolearn.tasks.rollout import Hook

    return Hook


class RecoveryHook(_rollout_hook_base()):
    """Rollout hook (host simulators): milestone levels and failure events of every step, and per
    finished episode its RecoveryCount in `per_episode` (episode index -> count)."""

    def __init__(self, sim: Any, setback_window: int = 10) -> None:
        self.sim = sim
        self.setback_window = setback_window
        self.per_episode: dict[int, RecoveryCount] = {}

    def on_start(self, engine: Any, obs: Any) -> None:
        self.levels: list[list[int]] = [[] for _ in range(engine.num_envs)]
        self.events: list[list[int]] = [[] for _ in range(engine.num_envs)]

    def on_step(self, engine: Any, step: Any, pre_obs: Any, action: Any, pre_state: Any) -> None:
        s = self.sim.read()
        level = milestone_levels(self.sim.task, s, step.info["success"])
        event = np.asarray(step.info["failure_event"]).reshape(-1)
        for r in np.flatnonzero(np.asarray(step.episode) >= 0):
            self.levels[r].append(int(level[r]))
            self.events[r].append(int(event[r]))

    def on_episode_end(self, engine: Any, row: int, episode: int, seed: int, step: Any) -> None:
        self.per_episode[episode] = count_recoveries(self.levels[row], self.events[row], setback_window=self.setback_window)
        self.levels[row], self.events[row] = [], []
