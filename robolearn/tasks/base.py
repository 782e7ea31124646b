"""Backend-neutral task definition.

A task is an MJCF scene plus pure array functions over batched simulator arrays (`SimState`:
qpos, qvel, ctrl, sensordata, each (N, ...)): torch tensors on any device, or numpy arrays (the
per-step functions are written once against `array_ops`, see there). Object, site and mocap poses are exposed as MJCF
sensors, so any backend (MuJoCo C here, MuJoCo Warp on a GPU later) only has to provide these four
arrays. Model indices (joint addresses, sensor slices, state-vector layout) are resolved once from
the `MjModel` on the host in `ModelLayout`; the task methods then never call mujoco.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, ClassVar, NamedTuple

import mujoco
import numpy as np
import torch

from robolearn.tasks import array_ops

# Full simulator state stored per step in `sim_state`. FULLPHYSICS (time, qpos, qvel, act,
# plugin state) is extended with ctrl, applied forces, mocap poses (goals / bins live on mocap
# bodies) and the solver warmstart: with fewer components an episode cannot be replayed bit-exactly
# from a mid-episode state.
STATE_SPEC = int(mujoco.mjtState.mjSTATE_INTEGRATION)

# Per-step `primitive` labels written by the scripted experts (-1 = unknown, e.g. policy steps).
PRIMITIVES: tuple[str, ...] = ("reach", "grasp", "transport", "release", "push")
PRIM = {name: i for i, name in enumerate(PRIMITIVES)}

# Per-step `failure_event` codes (0 = none). 1-3 are injected perturbations, 4-5 are detected.
FAILURE_EVENTS: tuple[str, ...] = ("none", "nudge_object", "open_gripper", "shift_target",
                                   "object_dropped", "object_out_of_reach")
EVENT = {name: i for i, name in enumerate(FAILURE_EVENTS)}
PERTURBATIONS: tuple[str, ...] = ("nudge_object", "open_gripper", "shift_target")


class SimulationError(RuntimeError):
    """The physics became unstable (MuJoCo warning or non-finite state)."""


@dataclass
class TaskConfig:
    """The fields every task shares. A task that needs more subclasses it (a dataclass) and names
    the subclass in `Task.config_class`; values come from the task's YAML, if it has one, and
    `key=value` overrides (unknown keys are errors)."""

    # Fields that define the task's structure: data and checkpoints record them and evaluation
    # reproduces them (perturbations are left to each evaluation). Subclasses extend the tuple.
    structural_fields: ClassVar[tuple[str, ...]] = ("frame_skip", "horizon", "image_size", "wrist_camera",
                                                    "reward_type", "obs_relative", "action_mode", "robot")

    task: str = ""
    robot: str = ""  # one of the task's `robots` ("" = its first, e.g. the floating gripper)
    horizon: int = 100
    frame_skip: int = 25  # physics steps per control step (timestep 4 ms -> 10 Hz control)
    obs_mode: str = "state"  # "state" or "state+image"
    image_size: int = 84
    wrist_camera: bool = False
    reward_type: str = "dense"  # "dense" or "sparse"
    terminate_on_success: bool = True
    perturb_rate: float = 0.0  # probability per control step of one perturbation event
    perturb_kinds: list[str] = field(default_factory=list)  # empty = every kind the task supports
    # Append object-relative positions to the state observation (object - gripper, target - object):
    # what a reach, grasp or push is about, so a policy need not learn differences of absolute
    # positions (see relative_obs).
    obs_relative: bool = False
    # What the position axes of an action mean: "delta", a displacement from the measured pose (at
    # most pos_scale per step), or "absolute", the target position itself (push_t: the pusher's
    # target xy, as in Diffusion Policy's PushT). Tasks list the modes they support (action_modes).
    action_mode: str = "delta"

    def resolve(self, given: dict[str, Any]) -> None:
        """Derive values after loading; `given` holds the overrides passed (e.g. sort scales its
        horizon with the number of cubes unless `horizon` was given)."""

    def validate(self, supported_perturbations: tuple[str, ...]) -> None:
        """Reject values that are well-typed but meaningless, with a one-line reason."""
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if self.frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {self.frame_skip}")
        if self.obs_mode not in ("state", "state+image"):
            raise ValueError(f"obs_mode must be 'state' or 'state+image', got {self.obs_mode!r}")
        if self.reward_type not in ("dense", "sparse"):
            raise ValueError(f"reward_type must be 'dense' or 'sparse', got {self.reward_type!r}")
        if not 0.0 <= self.perturb_rate <= 1.0:
            raise ValueError(f"perturb_rate must be in [0, 1], got {self.perturb_rate}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.action_mode not in ("delta", "absolute"):
            raise ValueError(f"action_mode must be 'delta' or 'absolute', got {self.action_mode!r}")
        for kind in self.perturb_kinds:
            if kind not in supported_perturbations:
                raise ValueError(f"task {self.task!r} does not support perturbation {kind!r} "
                                 f"(supported: {', '.join(supported_perturbations)})")

    @property
    def image(self) -> bool:
        return self.obs_mode == "state+image"


class SimState(NamedTuple):
    """Batched simulator arrays every backend exposes (N rows, one per env): torch tensors, or
    numpy arrays for the host fast path of the MuJoCo C backend (`MujocoCBackend.read_numpy`)."""

    qpos: torch.Tensor
    qvel: torch.Tensor
    ctrl: torch.Tensor
    sensordata: torch.Tensor

    def select(self, idx: torch.Tensor) -> "SimState":
        return SimState(self.qpos[idx], self.qvel[idx], self.ctrl[idx], self.sensordata[idx])


class ModelLayout:
    """Name -> index maps of one compiled model, resolved once on the host."""

    def __init__(self, model: mujoco.MjModel):
        self.nq, self.nv, self.nu = model.nq, model.nv, model.nu
        self.nsensordata, self.nmocap = model.nsensordata, model.nmocap
        self.timestep = float(model.opt.timestep)
        self.qpos_adr: dict[str, int] = {}
        self.dof_adr: dict[str, int] = {}
        for j in range(model.njnt):
            name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j)
            self.qpos_adr[name] = int(model.jnt_qposadr[j])
            self.dof_adr[name] = int(model.jnt_dofadr[j])
        self.sensor: dict[str, slice] = {}
        for s in range(model.nsensor):
            name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_SENSOR, s)
            adr, dim = int(model.sensor_adr[s]), int(model.sensor_dim[s])
            self.sensor[name] = slice(adr, adr + dim)
        self.actuator = {mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, a): a for a in range(model.nu)}
        self.ctrlrange = torch.tensor(model.actuator_ctrlrange, dtype=torch.float64)
        self.mocap: dict[str, int] = {}
        for b in range(model.nbody):
            if model.body_mocapid[b] >= 0:
                self.mocap[mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, b)] = int(model.body_mocapid[b])
        # Offsets of each state component inside the STATE_SPEC vector (components are laid out
        # in increasing bit order), so state vectors can be built/edited in pure torch.
        self.state_size = mujoco.mj_stateSize(model, STATE_SPEC)
        self.state_slices: dict[str, slice] = {}
        off = 0
        for bit in range(int(mujoco.mjtState.mjNSTATE)):
            comp = 1 << bit
            if STATE_SPEC & comp:
                size = mujoco.mj_stateSize(model, comp)
                name = mujoco.mjtState(comp).name.removeprefix("mjSTATE_").lower()
                self.state_slices[name] = slice(off, off + size)
                off += size
        assert off == self.state_size
        d = mujoco.MjData(model)
        mujoco.mj_resetData(model, d)
        default = np.zeros(self.state_size)
        mujoco.mj_getState(model, d, default, STATE_SPEC)
        self.default_state = torch.from_numpy(default)

    def qpos_slice(self, joint: str, size: int = 1) -> slice:
        a = self.qpos_adr[joint]
        return slice(a, a + size)

    def dof_slice(self, joint: str, size: int = 1) -> slice:
        a = self.dof_adr[joint]
        return slice(a, a + size)


# ----------------------------------------------------------------------------- torch helpers

def quat_to_yaw(q: torch.Tensor) -> torch.Tensor:
    """Yaw (rotation about world z) of (..., 4) wxyz quaternions."""
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return array_ops.of(q).atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def yaw_to_quat(yaw: torch.Tensor) -> torch.Tensor:
    """(..., 4) wxyz quaternions of pure rotations about z."""
    z = torch.zeros_like(yaw)
    return torch.stack([torch.cos(yaw / 2), z, z, torch.sin(yaw / 2)], -1)


def relative_obs(grip: torch.Tensor, obj: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Object-relative observation block (..., d): object - gripper, then target - object (in as
    many coordinates as `target` has). Positions only: a relative-yaw encoding (sin, cos of twice
    the cube-gripper yaw difference) was tried on sort and lowered K = 1 success from 0.99 to 0.76
    (docs/results/hierarchical_sort.md)."""
    return array_ops.of(obj).cat([obj - grip, target - obj[..., :target.shape[-1]]], -1)


def canonical_quat(q: torch.Tensor) -> torch.Tensor:
    """Resolve the q/-q ambiguity (w >= 0) so observations are continuous for learning."""
    return array_ops.of(q).where(q[..., :1] < 0, -q, q)


def wrap_angle(a: torch.Tensor, period: float = 2 * math.pi) -> torch.Tensor:
    """Wrap to [-period/2, period/2)."""
    return array_ops.of(a).remainder(a + period / 2, period) - period / 2


def uniform(gen: torch.Generator, n: int, low: Any, high: Any, dtype=torch.float64) -> torch.Tensor:
    """n samples uniform in a box, drawn from `gen` (reproducible per seed)."""
    low_t = torch.as_tensor(low, dtype=dtype)
    high_t = torch.as_tensor(high, dtype=dtype)
    u = torch.rand((n, *low_t.shape), generator=gen, dtype=dtype)
    return low_t + (high_t - low_t) * u


# ----------------------------------------------------------------------------- task base

class Task:
    """Base class of a task bound to one compiled model layout.

    Subclasses define the MJCF (`xml`), the action interface (`action_axes`), and the pure array
    functions `observe`, `dense_reward`, `success`, `stage`, `sample_init`, plus optional
    `detect_failure` and perturbation hooks. None of them may call mujoco. The per-step functions
    (action_to_ctrl, hold_ctrl, observe, success, reward, stage, detect_failure, evaluate) take
    torch tensors or numpy arrays alike: write them with `xp = array_ops.of(x)` (one copy of the
    logic; the numpy path is the single CPU env's fast path). sample_init / perturb are torch.
    """

    name: str = ""
    xml: str = ""  # MJCF file: beside the task's module, else one of robolearn's assets
    # The config dataclass (TaskConfig or a subclass adding the task's own fields) and its YAML of
    # defaults, a file name beside the task's module (None: the dataclass defaults alone).
    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    config_yaml: ClassVar[str | None] = None
    # Scripted expert (an Expert subclass or "module:Class"), or None.
    expert: ClassVar[Any] = None
    # True when the per-step functions are written with `array_ops` so they also run on numpy
    # arrays (the MuJoCo C backend's host fast path, a performance convention of the built-in
    # tasks). False (the default): every backend hands the task torch tensors, so plain torch works.
    numpy_host_path: ClassVar[bool] = False
    action_axes: tuple[str, ...] = ("x", "y", "z", "grip")
    action_modes: tuple[str, ...] = ("delta",)  # TaskConfig.action_mode values the task implements
    # The per-episode score of evaluations: None, the success (0/1); else the name of the
    # per-step `step_score` whose maximum over an episode is its score (push_t: the DP paper's).
    score_name: str | None = None
    perturbations: tuple[str, ...] = ()
    num_stages: int = 1
    description: str = ""
    # Robots the task runs with (robolearn.robots); the config's `robot` picks one, default the first.
    robots: ClassVar[tuple[str, ...]] = ("gripper",)

    def __init__(self, cfg: TaskConfig, layout: ModelLayout):
        self.cfg = cfg
        self.layout = layout
        if cfg.action_mode not in self.action_modes:
            raise ValueError(f"task {self.name!r} supports action_mode {' or '.join(self.action_modes)}, "
                             f"got {cfg.action_mode!r}")
        self.robot = robot_class(type(self), cfg)(layout, self.action_axes)

    def __getattr__(self, name: str) -> Any:
        """The robot's joint / actuator indices and scales (q_grip, a_fl, pos_scale, ...) read as
        the task's, so task code written for one robot keeps its names."""
        robot = self.__dict__.get("robot")
        if robot is None or name.startswith("__"):
            raise AttributeError(name)
        try:
            return getattr(robot, name)
        except AttributeError:
            raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r} (nor has its robot "
                                 f"{robot.name!r})") from None

    # -- properties used by envs ------------------------------------------------------------
    @property
    def action_dim(self) -> int:
        return len(self.action_axes)

    @property
    def obs_dim(self) -> int:
        """Length of the `state` observation: the poses, plus `relative_dim` with obs_relative."""
        return self.pose_obs_dim + (self.relative_dim if self.cfg.obs_relative else 0)

    @property
    def pose_obs_dim(self) -> int:
        """Length of the absolute-pose part of the observation (robot, objects, targets)."""
        raise NotImplementedError

    # Leading entries of `state` that describe the robot alone (its proprioception). With images on,
    # the env also emits them as `proprio`, so a policy can read camera + proprioception without the
    # object pose (Diffusion Policy's image setting: agent_pos + image).
    proprio_dim: int = 0

    @property
    def relative_dim(self) -> int:
        """Length of the object-relative part appended with `obs_relative` (see relative_obs)."""
        raise NotImplementedError

    # -- model construction -------------------------------------------------------------------
    @classmethod
    def build_xml(cls, cfg: TaskConfig) -> str:
        """MJCF text of the scene; subclasses may edit the tree (e.g. K cubes for sort) or return
        their own text."""
        if not cls.xml:
            raise NotImplementedError(f"task {cls.__name__}: set `xml` (an MJCF file) or override build_xml")
        beside = Path(inspect.getfile(cls)).resolve().parent / cls.xml
        return beside.read_text() if beside.is_file() else read_asset(cls.xml)

    # -- actions --------------------------------------------------------------------------------
    def action_to_ctrl(self, s: SimState, action: torch.Tensor) -> torch.Tensor:
        """Actuator targets from normalized actions: the robot's end-effector controller (position
        and yaw deltas from the measured pose, absolute finger opening -1 open .. +1 closed).
        Axes not in `action_axes` hold their `hold_ctrl` value."""
        return self.robot.action_to_ctrl(s, action, self.hold_ctrl(s))

    def step_score(self, s: SimState) -> torch.Tensor:
        """Per-step score (tasks with a `score_name`); an episode's score is its maximum."""
        raise NotImplementedError(f"task {self.name!r} has no step score (score_name is None)")

    def hold_ctrl(self, s: SimState) -> torch.Tensor:
        """Control of axes the action does not drive: keep the current target."""
        return array_ops.of(s.ctrl).copy(s.ctrl)

    # -- shared state readers -------------------------------------------------------------------
    def grip_pos(self, s: SimState) -> torch.Tensor:
        """(N, 3) the robot's grasp point (end effector)."""
        return self.robot.ee_pos(s)

    def grip_yaw(self, s: SimState) -> torch.Tensor:
        return self.robot.ee_yaw(s)

    def grip_width(self, s: SimState) -> torch.Tensor:
        """Distance between the finger pads."""
        return self.robot.grip_width(s)

    def sensor(self, s: SimState, name: str) -> torch.Tensor:
        return s.sensordata[:, self.layout.sensor[name]]

    # -- task functions (pure array functions, torch or numpy) -----------------------------------
    def observe(self, s: SimState) -> torch.Tensor:
        raise NotImplementedError

    def dense_reward(self, s: SimState, success: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def success(self, s: SimState) -> torch.Tensor:
        raise NotImplementedError

    def stage(self, s: SimState) -> torch.Tensor:
        xp = array_ops.of(s.qpos)
        return xp.zeros(s.qpos.shape[0], xp.int32, s.qpos)

    def reward(self, s: SimState, success: torch.Tensor | None = None) -> torch.Tensor:
        """Sparse (success) or dense reward; pass `success` if already computed."""
        xp = array_ops.of(s.qpos)
        if self.cfg.reward_type == "sparse":
            return xp.astype(self.success(s) if success is None else success, xp.float32)
        return xp.astype(self.dense_reward(s, success), xp.float32)

    def evaluate(self, prev: SimState, s: SimState, carry: dict | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(success, reward, stage, detected failure) of a transition prev -> s, in one call so
        tasks can share intermediate results (e.g. push_t's coverage). carry: see transition."""
        success = self.success(s)
        return success, self.reward(s, success), self.stage(s), self.detect_failure(prev, s)

    def transition(self, prev: SimState, s: SimState, carry: dict | None = None) -> tuple[torch.Tensor, ...]:
        """(obs, success, reward, stage, detected failure) of prev -> s: everything an env step
        computes, in one call so tasks can share work between observe and evaluate (push_t).

        carry (optional, owned by the caller): a dict the task may read values of `prev` from
        (those it stored there on the step that produced `prev`) and must leave holding the values
        of `s`, so consecutive steps compute them once (e.g. which cubes the gripper holds). The
        caller clears it whenever `prev` is not the state of the previous call (reset, set_state)."""
        return (self.observe(s), *self.evaluate(prev, s, carry))

    def stage_obs_columns(self, others: bool = False) -> list[list[int]] | None:
        """Per stage, the columns of the `state` observation that stage is about (the robot plus
        the stage's object and target), all of one length; None when stages share one object.
        others=True appends the remaining objects' columns (a reordering of the whole observation
        that puts the stage's object first). Object-centric hierarchical policies feed their low
        level these columns."""
        return None

    def detect_failure(self, prev: SimState, s: SimState) -> torch.Tensor:
        """Failure events that happened without injection (codes in FAILURE_EVENTS, 0 = none)."""
        xp = array_ops.of(s.qpos)
        return xp.zeros(s.qpos.shape[0], xp.int32, s.qpos)

    def sample_init(self, gen: torch.Generator, n: int) -> torch.Tensor:
        """n initial full states (n, state_size) float64 drawn from `gen`."""
        raise NotImplementedError

    # -- perturbations (edit full state vectors in torch; see perturb.py) -------------------------
    def perturb(self, kind: str, states: torch.Tensor, s: SimState, gen: torch.Generator) -> torch.Tensor:
        raise ValueError(f"task {self.name!r} does not support perturbation {kind!r}")

    # -- state-vector helpers -------------------------------------------------------------------
    def base_states(self, n: int) -> torch.Tensor:
        return self.layout.default_state.unsqueeze(0).repeat(n, 1)

    def set_in_state(self, states: torch.Tensor, component: str, index: slice | int | list[int],
                     values: torch.Tensor) -> None:
        """Write `values` into component (qpos, qvel, ctrl, mocap_pos, ...) at `index`."""
        sl = self.layout.state_slices[component]
        view = states[:, sl]
        view[:, index] = values.to(states.dtype)

    def get_from_state(self, states: torch.Tensor, component: str) -> torch.Tensor:
        return states[:, self.layout.state_slices[component]]

    def init_gripper(self, states: torch.Tensor, pos: torch.Tensor, yaw: torch.Tensor | None = None,
                     opening: float | None = None) -> None:
        """Place the robot's end effector (qpos and matching targets, so it starts at rest)."""
        self.robot.place(self, states, pos, yaw, opening)

    def set_free_body(self, states: torch.Tensor, joint: str, pos: torch.Tensor, yaw: torch.Tensor) -> None:
        """Place a free-joint body at pos with a yaw rotation, at rest."""
        a = self.layout.qpos_adr[joint]
        self.set_in_state(states, "qpos", slice(a, a + 3), pos)
        self.set_in_state(states, "qpos", slice(a + 3, a + 7), yaw_to_quat(yaw))
        d = self.layout.dof_adr[joint]
        self.set_in_state(states, "qvel", slice(d, d + 6), torch.zeros(states.shape[0], 6))

    def set_mocap(self, states: torch.Tensor, body: str, pos: torch.Tensor, yaw: torch.Tensor | None = None) -> None:
        i = self.layout.mocap[body]
        self.set_in_state(states, "mocap_pos", slice(3 * i, 3 * i + 3), pos)
        if yaw is not None:
            self.set_in_state(states, "mocap_quat", slice(4 * i, 4 * i + 4), yaw_to_quat(yaw))

    def get_mocap(self, states: torch.Tensor, body: str) -> torch.Tensor:
        i = self.layout.mocap[body]
        return self.get_from_state(states, "mocap_pos")[:, 3 * i:3 * i + 3]

    def nudge_free_body(self, states: torch.Tensor, joint: str, gen: torch.Generator,
                        speed: tuple[float, float] = (0.5, 0.8), spin: float = 0.0) -> torch.Tensor:
        """A horizontal velocity kick (a shove) on a free body; slides it a few centimetres."""
        n = states.shape[0]
        ang = uniform(gen, n, 0.0, 2 * math.pi)
        mag = uniform(gen, n, speed[0], speed[1])
        d = self.layout.dof_adr[joint]
        v = self.get_from_state(states, "qvel")[:, d:d + 6].clone()
        v[:, 0] += mag * torch.cos(ang)
        v[:, 1] += mag * torch.sin(ang)
        if spin:
            v[:, 5] += uniform(gen, n, -spin, spin)
        self.set_in_state(states, "qvel", slice(d, d + 6), v)
        return states

    def open_gripper(self, states: torch.Tensor) -> torch.Tensor:
        """Snap the fingers open (qpos and targets): whatever was held falls."""
        return self.robot.open_gripper(self, states)


def out_of_reach_events(pos: torch.Tensor, prev_pos: Callable[[], torch.Tensor], limit: float) -> torch.Tensor:
    """`object_out_of_reach` where an object's xy left the +-limit square this step, else 0.
    pos (N, 3) or (N, K, 3); prev_pos gives the previous step's positions, read only when some
    object is outside now (host short cut: usually none is, and then nothing else is computed)."""
    xp = array_ops.of(pos)
    outside = abs(pos[..., :2]) > limit
    if xp.none(outside):  # host short cut before the per-object reduction (one whole-array test)
        return xp.zeros(pos.shape[:-1], xp.int32, pos)
    now = outside.any(-1)
    before = (abs(prev_pos()[..., :2]) > limit).any(-1)
    return xp.astype(xp.where(now & ~before, EVENT["object_out_of_reach"], 0), xp.int32)


def column_index(cols: list[int]) -> slice | torch.Tensor:
    """Index of array columns: a slice where contiguous (a view, cheaper than a gather), else an
    int64 tensor (use `xp.index(...)` to index numpy arrays with it)."""
    if cols == list(range(cols[0], cols[0] + len(cols))):
        return slice(cols[0], cols[0] + len(cols))
    return torch.tensor(cols, dtype=torch.int64)


def read_asset(name: str) -> str:
    return resources.files("robolearn.tasks").joinpath("assets").joinpath(name).read_text()


def asset_bytes() -> dict[str, bytes]:
    """Every task and robot asset file, passed to the MJCF compiler so <include> works on edited
    XML strings (e.g. <include file="gripper_body.xml"/>)."""
    out = {}
    for pkg in ("robolearn.robots", "robolearn.tasks"):
        root = resources.files(pkg).joinpath("assets")
        out.update({p.name: p.read_bytes() for p in root.iterdir() if p.name.endswith(".xml")})
    return out


def compile_model(xml: str, assets: dict[str, bytes] | None = None) -> mujoco.MjModel:
    """Compile MJCF text; robolearn's asset files (and `assets`) can be <include>d by name."""
    files = asset_bytes()
    if assets:
        files.update(assets)
    return mujoco.MjModel.from_xml_string(xml, assets=files)


def robot_class(cls: type[Task], cfg: TaskConfig) -> type:
    """The Robot subclass a task config selects (one of the task's `robots`)."""
    from robolearn.robots import get_robot

    name = cfg.robot or cls.robots[0]
    if name not in cls.robots:
        raise ValueError(f"task {cfg.task or cls.name!r} runs with robot(s) {', '.join(cls.robots)}, not {name!r}")
    return get_robot(name)


def compile_task_model(cls: type[Task], cfg: TaskConfig) -> mujoco.MjModel:
    """The task's scene with the configured robot's MJCF (robot_body.xml / robot_control.xml);
    includes are resolved beside the task's module first."""
    beside = Path(inspect.getfile(cls)).resolve().parent
    files = {p.name: p.read_bytes() for p in beside.glob("*.xml")}
    files.update(robot_class(cls, cfg).assets())
    return compile_model(cls.build_xml(cfg), files)


def replicate(xml: str, stems: tuple[str, ...], count: int, edit: Callable[[ET.Element, int], None]) -> str:
    """Copy every body/sensor whose name (or sensed object) is `<stem>0...` to indices 1..count-1.

    Used by tasks whose object count is configurable: the asset holds object 0 as a template,
    copies get index i in each name attribute, and `edit(element, i)` sets colours/positions.
    """
    root = ET.fromstring(xml)
    prefixes = tuple(stem + "0" for stem in stems)

    def is_template(e: ET.Element) -> bool:
        return any(e.get(k, "").startswith(prefixes) for k in ("name", "objname"))

    for parent in (root.find("worldbody"), root.find("sensor")):
        assert parent is not None
        templates = [e for e in parent if is_template(e)]
        for i in range(1, count):
            for e in templates:
                c = ET.fromstring(ET.tostring(e))
                for node in c.iter():
                    for k, v in list(node.attrib.items()):
                        for stem in stems:
                            if k in ("name", "objname") and v.startswith(stem + "0"):
                                node.set(k, f"{stem}{i}{v[len(stem) + 1:]}")
                edit(c, i)
                parent.append(c)
    return ET.tostring(root, encoding="unicode")


def config_fields(cls: type[TaskConfig] = TaskConfig) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]
