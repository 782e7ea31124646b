"""A scripted operator that plays the human of RaC-style intervention collection.

With privileged simulator state it
1. watches the policy and takes over when failure looks imminent: a detected failure event
   (object dropped / out of reach), a perturbation that undid progress, drift of the observation
   away from the demonstrations (nearest-neighbour distance above what demos show), or a stall
   (no progress in the dense reward for a while);
2. recovers: moves the gripper back to a familiar state -- above the current object with the
   fingers open, or, when holding it, up to carrying height -- lifting first when it is low, so the
   recovery segment is a motion the policy can learn, not a state reset;
3. corrects: runs the task's closed-loop scripted expert until the current sub-task is done (the
   task's stage advances, or success), then hands back.

With `recover=False` it skips step 2 (HG-DAgger / IWR / Sirius style corrections).
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


@dataclass
class OperatorConfig:
    recover: bool = True  # RaC: recover before correcting; False: correct right away
    reward_drop: float = 0.05  # a perturbation that lowers the dense reward this much triggers a takeover
    drift_patience: int = 4  # consecutive unfamiliar steps before taking over
    stall_steps: int = 20  # steps without dense-reward progress before taking over
    stall_eps: float = 0.01
    cooldown: int = 5  # steps after a hand-back without a new takeover
    max_interventions: int = 5  # per episode
    recovery_tolerance: float = 0.015  # metres from the recovery target that count as recovered
    max_recovery_steps: int = 25
    max_correction_steps: int = 80
    hover: float = 0.07  # above the object (the experts' pre-grasp height)
    carry_z: float = 0.13  # the experts' carrying height

    def __post_init__(self) -> None:
        for name in ("drift_patience", "stall_steps", "max_recovery_steps", "max_correction_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"operator {name} must be >= 1, got {getattr(self, name)}")
        if self.max_interventions < 0 or self.cooldown < 0:
            raise ValueError("operator max_interventions and cooldown must be >= 0")


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
        self._unfamiliar = 0
        self._best = -np.inf
        self._since_progress = 0
        self._prev_reward: float | None = None
        self._phase_steps = 0
        self._start_stage = 0
        self.last_reason = ""

    def engage(self, pose: Pose) -> None:
        self.expert.reset()
        self._phase_steps = 0

    def poll(self, ctx: DeviceContext) -> list[TeleopEvent]:
        s, task = ctx.state, self.task
        reward = float(task.dense_reward(s)[0])
        stage = int(task.stage(s)[0])
        events: list[TeleopEvent] = []
        if ctx.mode is Mode.AUTONOMOUS:
            reason = self._watch(ctx, reward)
            if reason:
                self.interventions += 1
                self.last_reason = reason
                self._phase_steps = 0
                self._start_stage = stage
                events.append(TeleopEvent.TAKEOVER)  # without recovery the session goes straight to correction
        elif ctx.mode is Mode.RECOVERY:
            target, _ = self._recovery_target(s)
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
                self._best, self._since_progress, self._unfamiliar = reward, 0, 0
        self._prev_reward = reward
        return events

    def action(self, ctx: DeviceContext) -> np.ndarray:
        self._phase_steps += 1
        if ctx.mode is Mode.RECOVERY:
            target, waypoint = self._recovery_target(ctx.state)
            self.last_primitive = PRIM["reach"]
            return pose_action(self.task, Pose(waypoint, ctx.pose.yaw, target.grip), ctx.pose)
        action, prim = self.expert.act(ctx.state)
        self.last_primitive = int(prim[0])
        return action[0].numpy().astype(np.float32)

    def close(self) -> None:
        pass

    # -- decisions -----------------------------------------------------------------------------
    def _watch(self, ctx: DeviceContext, reward: float) -> str:
        """Why to take over now ('' = keep watching)."""
        if reward > self._best + self.cfg.stall_eps:
            self._best, self._since_progress = reward, 0
        else:
            self._since_progress += 1
        familiar = True
        if self.familiarity is not None and ctx.obs is not None:
            familiar = self.familiarity.familiar(ctx.obs["state"][0])
        self._unfamiliar = 0 if familiar else self._unfamiliar + 1
        if self._cooldown > 0:
            self._cooldown -= 1
            return ""
        if self.interventions >= self.cfg.max_interventions:
            return ""
        event = int(ctx.info.get("failure_event", 0))
        if event:
            name = FAILURE_EVENTS[event]
            if name in DETECTED_FAILURES:
                return name
            if self._prev_reward is not None and reward < self._prev_reward - self.cfg.reward_drop:
                return name
        if self._unfamiliar >= self.cfg.drift_patience:
            return "drift"
        if self._since_progress >= self.cfg.stall_steps:
            return "stall"
        return ""

    def _recovery_target(self, s: Any) -> tuple[Pose, np.ndarray]:
        """(familiar target pose, next waypoint) of a recovery from the current state."""
        task = self.task
        p = task.grip_pos(s)[0].numpy().astype(np.float64)
        obj = grasp_object(task, s)
        if obj is None:  # pushing tasks: back off upwards, fingers as they are
            grip = float(np.clip(1 - 2 * float(s.ctrl[0, task.a_fl]) / task.grip_open, -1, 1))
            target = Pose(np.array([p[0], p[1], min(p[2] + 0.05, 0.15)]), 0.0, grip)
            return target, target.pos
        cube, held = obj[0][0].numpy().astype(np.float64), bool(obj[1][0])
        if held:
            target = Pose(np.array([p[0], p[1], self.cfg.carry_z]), 0.0, 1.0)
            return target, target.pos
        safe_z = max(cube[2] + self.cfg.hover, 0.09)
        target = Pose(np.array([cube[0], cube[1], safe_z]), 0.0, -1.0)
        far = np.linalg.norm(p[:2] - cube[:2]) > 0.02
        waypoint = np.array([p[0], p[1], safe_z]) if (far and p[2] < safe_z - 0.02) else target.pos
        return target, waypoint
