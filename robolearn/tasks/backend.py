"""Simulator backends: the small interface a batched task simulation needs.

`Backend` is what `TaskSim` (and through it the gym envs) calls; `MujocoCBackend` implements it
with one `MjData` per env on the CPU. A MuJoCo Warp backend (one `mjw.Data` with nworld envs,
arrays exposed with `wp.to_torch`) implements the same methods and is a drop-in.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import mujoco
import numpy as np
import torch

from robolearn.tasks.base import STATE_SPEC, ModelLayout, SimState, SimulationError


@runtime_checkable
class Backend(Protocol):
    """Batched simulator: N envs of one model; every tensor is (N, ...)."""

    num_envs: int
    layout: ModelLayout
    device: torch.device

    def set_ctrl(self, ctrl: torch.Tensor) -> None:
        """Set actuator targets of all envs, (N, nu)."""

    def step(self, frame_skip: int) -> None:
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
        """Advance every env by frame_skip physics steps, then refresh sensors so `read()` is
        consistent with the state; raise SimulationError if the physics became unstable."""

    def reset(self, mask: torch.Tensor, states: torch.Tensor) -> None:
        """Set the envs where mask (N,) bool is True to states (mask.sum(), state_size)."""

    def get_state(self) -> torch.Tensor:
        """Full state (N, state_size) float64 in STATE_SPEC layout."""

    def read(self) -> SimState:
        """Current qpos/qvel/ctrl/sensordata tensors."""


_UNSTABLE = (mujoco.mjtWarning.mjWARN_BADQACC, mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL)


class MujocoCBackend:
    """CPU backend over `num_envs` MjData; optional thread pool (mj_step releases the GIL)."""

    def __init__(self, model: mujoco.MjModel, num_envs: int, num_threads: int = 1):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.model = model
        self.num_envs = num_envs
        self.layout = ModelLayout(model)
        self.device = torch.device("cpu")
        self.datas = [mujoco.MjData(model) for _ in range(num_envs)]
        L = self.layout
        # qpos | qvel | ctrl | sensordata side by side in one host buffer: the SimState arrays are
        # column views of it, so a copy of the whole state (TaskSim's previous step) is one memcpy.
        self._widths = (L.nq, L.nv, L.nu, L.nsensordata)
        self._buf = np.zeros((num_envs, sum(self._widths)))
        self._host = self.host_views(self._buf)
        self._qpos, self._qvel, self._ctrl, self._sens = self._host
        self._state = np.zeros((num_envs, L.state_size))
        # Views of each MjData's warning counters (instability check without per-step lookups) and
        # (source, destination) pairs of the arrays copied into the host buffer after each step
        # (MjData arrays are fixed views of its buffer, so they are looked up once).
        self._warn = [d.warning.number for d in self.datas]
        self._ctrl_in = [d.ctrl for d in self.datas]
        self._pulls = [tuple(zip((d.qpos, d.qvel, d.ctrl, d.sensordata),
                                 (self._qpos[i], self._qvel[i], self._ctrl[i], self._sens[i])))
                       for i, d in enumerate(self.datas)]
        self._unstable = tuple(int(w) for w in _UNSTABLE)
        self._pool = ThreadPoolExecutor(num_threads) if num_threads > 1 else None
        self._chunks = np.array_split(np.arange(num_envs), max(1, num_threads))
        for i, d in enumerate(self.datas):
            mujoco.mj_forward(model, d)
            self._pull(i)

    # -- interface ------------------------------------------------------------------------
    def set_ctrl(self, ctrl: torch.Tensor | np.ndarray) -> None:
        c = ctrl if isinstance(ctrl, np.ndarray) else ctrl.detach().cpu().numpy()
        for i, dst in enumerate(self._ctrl_in):
            dst[:] = c[i]
        self._ctrl[:] = c

    def step(self, frame_skip: int) -> None:
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
        if self._pool is None:
            self._step_range(range(self.num_envs), frame_skip)
        else:
            list(self._pool.map(lambda idx: self._step_range(idx, frame_skip), self._chunks))

    def reset(self, mask: torch.Tensor, states: torch.Tensor) -> None:
        idx = np.flatnonzero(mask.detach().cpu().numpy())
        st = states.detach().cpu().numpy().astype(np.float64)
        if st.shape != (len(idx), self.layout.state_size):
            raise ValueError(f"reset: expected states of shape {(len(idx), self.layout.state_size)}, got {st.shape}")
        for row, i in enumerate(idx):
            d = self.datas[i]
            mujoco.mj_setState(self.model, d, st[row], STATE_SPEC)
            mujoco.mj_forward(self.model, d)
            self._check(i, "reset", finite=True)
            self._pull(i)

    def set_state(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Alias of reset (all envs when mask is None)."""
        if mask is None:
            mask = torch.ones(self.num_envs, dtype=torch.bool)
        self.reset(mask, states)

    def get_state(self) -> torch.Tensor:
        return torch.from_numpy(self.get_state_numpy())

    def get_state_numpy(self, i: int | None = None) -> np.ndarray:
        """Full state as a new float64 array: (N, state_size), or (state_size,) of env i (one
        mj_getState into a preallocated buffer, copied once)."""
        m, st = self.model, self._state
        if i is not None:
            mujoco.mj_getState(m, self.datas[i], st[i], STATE_SPEC)
            return st[i].copy()
        for j, d in enumerate(self.datas):
            mujoco.mj_getState(m, d, st[j], STATE_SPEC)
        return st.copy()

    def read(self) -> SimState:
        return SimState(torch.from_numpy(self._qpos), torch.from_numpy(self._qvel),
                        torch.from_numpy(self._ctrl), torch.from_numpy(self._sens))

    def read_numpy(self) -> SimState:
        """The same arrays as numpy (no copy): TaskSim's host fast path runs the task functions on
        these (see array_ops). They are overwritten by the next step/reset: copy to keep them
        (`host_buffer` / `host_views` copy all four at once)."""
        return self._host

    @property
    def host_buffer(self) -> np.ndarray:
        """(N, nq + nv + nu + nsensordata) buffer behind `read_numpy`'s arrays."""
        return self._buf

    def host_views(self, buf: np.ndarray) -> SimState:
        """SimState of column views of a buffer shaped like `host_buffer`."""
        a, out = 0, []
        for w in self._widths:
            out.append(buf[:, a:a + w])
            a += w
        return SimState(*out)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    # -- internals ----------------------------------------------------------------------------
    def _step_range(self, idx, frame_skip: int) -> None:
        # Split-step control pattern (mj_step = mj_step1 + mj_step2, same bits when nothing runs in
        # between but setting ctrl, which only mj_step2 reads). Every MjData is kept with its
        # position and velocity stages (incl. sensors; all task sensors are position-stage) computed
        # for its current state: by mj_forward after init/reset, by mj_step1 after a step. A step
        # then finishes the pending substep with the new ctrl (mj_step2), runs frame_skip - 1 full
        # mj_step, and ends with mj_step1 of the next substep, so the observation's sensors are
        # computed once per substep boundary instead of by an extra mj_forward.
        m = self.model
        for i in idx:
            d = self.datas[i]
            mujoco.mj_step2(m, d)
            if frame_skip > 1:
                mujoco.mj_step(m, d, nstep=frame_skip - 1)
            mujoco.mj_step1(m, d)
            self._check(i, "step")
            self._pull(i)

    def _pull(self, i: int) -> None:
        for src, dst in self._pulls[i]:
            dst[:] = src

    def _check(self, i: int, where: str, finite: bool = False) -> None:
        # Fast path: no instability warning. Within a step MuJoCo itself tests every qpos/qvel
        # (mj_checkPos/Vel, at the start of each mj_step/mj_step1) and qacc (mj_checkAcc) for NaN
        # and |x| > mjMAXVAL and raises BADQPOS/BADQVEL/BADQACC, so a non-finite state always
        # leaves a warning. mj_forward (reset) runs no such check: finite=True tests the arrays.
        w = self._warn[i]
        a, b, c = self._unstable
        d = self.datas[i]
        if not (w[a] or w[b] or w[c]) and (not finite or math.isfinite(d.qpos.sum() + d.qvel.sum() + d.qacc.sum())):
            return
        bad = [w for w in _UNSTABLE if d.warning[w].number > 0]
        if bad or not (np.isfinite(d.qpos).all() and np.isfinite(d.qvel).all() and np.isfinite(d.qacc).all()):
            names = ", ".join(mujoco.mjtWarning(w).name for w in bad) or "non-finite state"
            for w in _UNSTABLE:
                d.warning[w].number = 0
            raise SimulationError(f"simulation unstable in env {i} during {where} ({names}) at t={d.time:.3f}s")
