"""A scripted operator that plays the human of RaC-style intervention collection.

With privileged simulator state it
1. watches the policy and takes over only when a failure predictor fires -- the object leaving the
   gripper (a detected drop / out-of-reach event, or the gripper being forced open on a held
   object), a grasp about to close on nothing (the finger command switches to closing while the
   object is not between the fingers), or a stall (no dense-reward progress for `stall_steps`) --
   not as soon as the policy is imperfect;
2. recovers (RaC): rewinds the robot to a configuration THIS rollout visited before the mistake --
   the latest autonomous pose at least `rewind_steps` steps before the trigger with the same
   holding state (fingers open when not holding), preferring poses the demonstrations make
   familiar -- moving up, across and down through safe waypoints; the recovery segment is a
   motion back into the policy's own distribution, not a state reset;
3. corrects: runs the task's closed-loop scripted expert until the current sub-task is done (the
   task's stage advances, or success), then hands back (RaC's rule: control returns to the
   policy) -- or the episode ends, when the session terminates after an intervention.

With `recover=False` it takes over at the same triggers and corrects at once, without the rewind
(the HG-DAgger / IWR / Sirius operator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robolearn.tasks.base import FAILURE_EVENTS, PRIM
from robolearn.teleop.devices import DeviceContext, Pose, pose_action
from robolearn.teleop.session import Mode, TeleopEvent

DETECTED_FAILURES = ("object_dropped", "object_out_of_reach")
TRIGGERS = ("object_dropped", "object_out_of_reach", "gripper_opened_on_object", "grasp_on_nothing", "stall")


@dataclass
class OperatorConfig:
    recover: bool = True  # RaC: rewind, then correct; False: correct right away (HG-DAgger)
    stall_steps: int = 25  # steps without dense-reward progress that predict a failure
    stall_eps: float = 0.01
    grasp_radius: float = 0.03  # metres: fingers closing farther than this from the object close on nothing
    cooldown: int = 5  # steps after a hand-back without a new takeover
    max_interventions: int = 5  # per episode
    rewind_steps: int = 5  # the rewind target lies at least this many steps before the trigger
    recovery_tolerance: float = 0.015  # metres from the rewind target that count as recovered
    max_recovery_steps: int = 25
    max_correction_steps: int = 80
    safe_z: float = 0.09  # height to travel at when the rewind moves across (above any cube)

    def __post_init__(self) -> None:
        for name in ("stall_steps", "max_recovery_steps", "max_correction_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"operator {name} must be >= 1, got {getattr(self, name)}")
        if self.max_interventions < 0 or self.cooldown < 0 or self.rewind_steps < 0:
            raise ValueError("operator max_interventions, cooldown and rewind_steps must be >= 0")


@dataclass
class VisitedPose:
    """One autonomous step of the current rollout, kept as a rewind candidate."""

    pose: Pose
    held: bool
    familiar: bool


class FamiliarityModel:
    """Is an observation close to the demonstrations? Nearest-neighbour distance in range-scaled units.

    The threshold is the `quantile` of held-out demo states' distances to the other demo
    episodes' states, times `margin`: a state further than nearly any demo state is unfamiliar.
    """

    def __init__(self, states: np.ndarray, episode_ids: np.ndarray | None = None, quantile: float = 0.99,
                 margin: float = 1.5, max_states: int = 4000, seed: int = 0) -> None:
        states = np.asarray(states, dtype=np.float32)
        if states.ndim != 2 or len(states) < 10:
            raise ValueError(f"familiarity needs at least 10 demo states of shape (N, D), got {states.shape}")
        rng = np.random.default_rng(seed)
        lo, hi = np.quantile(states, 0.01, axis=0), np.quantile(states, 0.99, axis=0)
        self.offset = lo.astype(np.float32)
        self.scale = np.maximum(hi - lo, 1e-3).astype(np.float32)
        z = self._scale(states)
        ids = np.arange(len(states)) // 50 if episode_ids is None else np.asarray(episode_ids)
        uniq = np.unique(ids)
        held = np.isin(ids, rng.choice(uniq, size=max(1, len(uniq) // 5), replace=False))
        if held.all() or not held.any():
            held = rng.random(len(z)) < 0.2
        ref = self._subsample(z[~held], max_states, rng)
        probe = self._subsample(z[held], 1000, rng)
        d = torch.cdist(torch.from_numpy(probe), torch.from_numpy(ref)).min(1).values.numpy()
        self.threshold = float(np.quantile(d, quantile) * margin)
        self.reference = torch.from_numpy(self._subsample(z, max_states, rng))

    @staticmethod
    def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        return x if len(x) <= n else x[np.sort(rng.choice(len(x), n, replace=False))]

    def _scale(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float32) - self.offset) / self.scale).astype(np.float32)

    @classmethod
    def from_store(cls, store: Any, sources: tuple[str, ...] = ("demo",), key: str = "obs/state", **kw: Any) -> "FamiliarityModel":
        from robolearn.data.store import SOURCE_CODES

        states = store.read(key, cache=False)
        codes = store.read("source", cache=False)
        keep = np.isin(codes, [SOURCE_CODES[s] for s in sources])
        if not keep.any():
            raise ValueError(f"{store.path} has no {'/'.join(sources)} steps to learn familiar states from")
        ep = np.repeat(np.arange(store.num_episodes), store.episode_lengths)
        return cls(states[keep], ep[keep], **kw)

    def distance(self, x: np.ndarray) -> float:
        z = torch.from_numpy(self._scale(np.asarray(x).reshape(1, -1)))
        return float(torch.cdist(z, self.reference).min())

    def familiar(self, x: np.ndarray) -> bool:
        return self.distance(x) <= self.threshold


def grasp_object(task: Any, s: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(position (N, 3), held (N,)) of the object the current sub-task is about, for grasp tasks."""
    if not hasattr(task, "grasped"):
        return None
    if hasattr(task, "current") and hasattr(task, "cubes"):  # sort: the first unsorted cube
        cube = task._pick(task.cubes(s), task.current(s))
    elif hasattr(task, "cube_pos"):
        cube = task.cube_pos(s)
    else:
        return None
    return cube, task.grasped(s, cube)



class ScriptedOperator:
    """Device protocol implementation that decides and acts from privileged state (env 0)."""

    name = "scripted"

    def __init__(self, task: Any, expert: Any = None, familiarity: FamiliarityModel | None = None,
                 config: OperatorConfig | None = None, seed: int = 0) -> None:
        from robolearn.tasks.registry import get_spec

        self.task = task
        self.cfg = config or OperatorConfig()
        if expert is None:
            name = getattr(getattr(task, "cfg", None), "task", "") or task.name
            expert_cls = get_spec(name).expert_class()
            if expert_cls is None:
                raise ValueError(f"no scripted expert for task {name!r}")
            expert = expert_cls(task, 1, seed=seed)
        self.expert = expert
        self.familiarity = familiarity
        self.last_primitive = -1
        self.last_reason = ""
        self.reset_episode()

    # -- Device protocol -----------------------------------------------------------------------
    def reset_episode(self) -> None:
        self.expert.reset()
        self.interventions = 0
        self._cooldown = 0
        self._best = -np.inf
        self._since_progress = 0
        self._phase_steps = 0
        self._start_stage = 0
        self._prev_grip: float | None = None
        self._prev_held = False
        self.visited: list[VisitedPose] = []  # this rollout's autonomous poses, in order
        self.rewind_target: Pose | None = None
        self.rewind_steps_back = -1  # how far back the last rewind target lies (steps; -1: none)
        self.last_reason = ""

    def engage(self, pose: Pose) -> None:
        self.expert.reset()
        self._phase_steps = 0

    def poll(self, ctx: DeviceContext) -> list[TeleopEvent]:
        s, task = ctx.state, self.task
        reward = float(task.dense_reward(s)[0])
        stage = int(task.stage(s)[0])
        obj = _object_now(task, s)
        held = bool(obj[1]) if obj is not None else False
        events: list[TeleopEvent] = []
        if ctx.mode is Mode.AUTONOMOUS:
            reason = self._predict_failure(ctx, reward, obj)
            self._remember(ctx, held)
            if reason:
                self.interventions += 1
                self.last_reason = reason
                self._phase_steps = 0
                self._start_stage = stage
                self.rewind_target = self._choose_rewind(held) if self.cfg.recover else None
                events.append(TeleopEvent.TAKEOVER)  # without recovery the session goes straight to correction
        elif ctx.mode is Mode.RECOVERY:
            target = self.rewind_target or self._choose_rewind(held)
            reached = np.linalg.norm(ctx.pose.pos - target.pos) < self.cfg.recovery_tolerance
            if reached or self._phase_steps >= self.cfg.max_recovery_steps:
                events.append(TeleopEvent.CORRECT)
                self._phase_steps = 0
                self._start_stage = stage
        else:  # correction: finish the current sub-task
            done = stage > self._start_stage or bool(task.success(s)[0])
            if done or self._phase_steps >= self.cfg.max_correction_steps:
                events.append(TeleopEvent.HAND_BACK)
                self._cooldown = self.cfg.cooldown
                self._best, self._since_progress = reward, 0
                self._prev_grip = None
        self._prev_held = held
        return events

    def action(self, ctx: DeviceContext) -> np.ndarray:
        self._phase_steps += 1
        if ctx.mode is Mode.RECOVERY:
            held = bool(getattr(self, "_prev_held", False))
            if self.rewind_target is None:
                self.rewind_target = self._choose_rewind(held)
            # carrying the object back is the transport skill (closed fingers), not reach (open)
            self.last_primitive = PRIM["transport"] if held else PRIM["reach"]
            target = self.rewind_target
            return pose_action(self.task, Pose(rewind_waypoint(ctx.pose.pos, target.pos, self.cfg.safe_z),
                                               target.yaw, target.grip), ctx.pose)
        action, prim = self.expert.act(ctx.state)
        self.last_primitive = int(prim[0])
        return action[0].numpy().astype(np.float32)

    def close(self) -> None:
        pass

    # -- decisions -----------------------------------------------------------------------------
    def _predict_failure(self, ctx: DeviceContext, reward: float, obj: tuple[np.ndarray, bool] | None) -> str:
        """Which failure is imminent now ('' = none: keep watching). A perturbation or an
        imperfect motion alone is no reason; only these predictors are."""
        if reward > self._best + self.cfg.stall_eps:
            self._best, self._since_progress = reward, 0
        else:
            self._since_progress += 1
        grip, prev_grip = float(ctx.pose.grip), self._prev_grip
        self._prev_grip = grip
        if self._cooldown > 0:
            self._cooldown -= 1
            return ""
        if self.interventions >= self.cfg.max_interventions:
            return ""
        name = FAILURE_EVENTS[int(ctx.info.get("failure_event", 0))]
        if name in DETECTED_FAILURES:  # the object left the gripper's reach
            return name
        if name == "open_gripper" and self._prev_held:  # fingers forced open on the held object
            return "gripper_opened_on_object"
        if obj is not None and prev_grip is not None and prev_grip <= 0.0 < grip and not obj[1]:
            fingers = self.task.grip_pos(ctx.state)[0]
            if float(np.linalg.norm(np.asarray(fingers, np.float64) - obj[0])) > self.cfg.grasp_radius:
                return "grasp_on_nothing"  # the finger command switched to closing away from the object
        if self._since_progress >= self.cfg.stall_steps:
            return "stall"
        return ""

    def _remember(self, ctx: DeviceContext, held: bool) -> None:
        familiar = True
        if self.familiarity is not None and ctx.obs is not None:
            familiar = self.familiarity.familiar(ctx.obs["state"][0])
        self.visited.append(VisitedPose(ctx.pose.copy(), held, familiar))

    def _choose_rewind(self, held: bool) -> Pose:
        """The rewind target: the latest pose of this rollout at least `rewind_steps` before now
        with the current holding state (fingers open when not holding), familiar ones first; else
        the latest pose at least `rewind_steps` back."""
        upto = max(0, len(self.visited) - 1 - self.cfg.rewind_steps)
        candidates = [i for i in range(upto + 1) if i < len(self.visited) and self.visited[i].held == held
                      and (held or self.visited[i].pose.grip <= 0.0)]
        familiar = [i for i in candidates if self.visited[i].familiar]
        if not self.visited:
            raise RuntimeError("the scripted operator rewinds before it has seen any state of the rollout")
        pick = (familiar or candidates or list(range(min(upto + 1, len(self.visited)))))[-1]
        self.rewind_steps_back = len(self.visited) - 1 - pick
        pose = self.visited[pick].pose.copy()
        pose.grip = 1.0 if held else -1.0
        return pose


def _object_now(task: Any, s: Any) -> tuple[np.ndarray, bool] | None:
    """(position (3,), held) of the current sub-task's object in env 0, or None (no grasp object)."""
    obj = grasp_object(task, s)
    if obj is None:
        return None
    return np.asarray(obj[0][0], np.float64), bool(obj[1][0])


def rewind_waypoint(pos: np.ndarray, target: np.ndarray, safe_z: float) -> np.ndarray:
    """Next point on the way from `pos` to `target`: up to a safe height first when the target is
    across (more than 2 cm away in the plane) and the gripper is low, then across, then down."""
    pos, target = np.asarray(pos, np.float64), np.asarray(target, np.float64)
    travel_z = max(safe_z, target[2])
    if np.linalg.norm(pos[:2] - target[:2]) > 0.02:
        if pos[2] < travel_z - 0.02:
            return np.array([pos[0], pos[1], travel_z])
        return np.array([target[0], target[1], max(pos[2], target[2])])
    return target
