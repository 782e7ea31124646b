"""MuJoCo Warp backend: N worlds of one task in one `mjw.Data`, state shared with torch.

Implements the `Backend` protocol of `robolearn.tasks.backend` (drop-in for `MujocoCBackend`):

- `mjw.put_model` / `mjw.make_data(nworld=N, nconmax, njmax)`, buffer sizes from
  `buffer_sizes(model)` (scaled with the number of free bodies of the task scene);
- qpos/qvel/ctrl/sensordata are `wp.to_torch` views (zero copy, float32, on the Warp device);
  `set_ctrl` writes into the ctrl array in place;
- one control step (frame_skip substeps) is captured once in a Warp graph (a CUDA graph on GPU;
  Warp also records graphs on its CPU device, so the same path is tested without a GPU);
- resets go through `mjw.reset_data` with a world mask (clears warm start, contacts, applied
  forces, ...) followed by `mjw.set_state` of the full STATE_SPEC vector on the masked worlds,
  so a reset world carries no stale solver data; `reset_where` replays the masked-reset graph
  unconditionally (worlds outside the mask are left untouched), so it never needs the host. A
  conditional graph node (`wp.capture_if`) would skip it when no world is done, but CUDA refuses
  it: reset_data/set_state allocate inside the body ("Conditional body graph contains an
  unsupported operation (memory allocation)", H100, CUDA 13, 2026-11-26);
- contact / constraint overflow (`d.overflow` bits: nefc > njmax, nacon > naconmax, ...) and
  non-finite states are accumulated on the device and raised as `SimulationError` at the next
  check (every step on the CPU device, every `check_every` steps and at every host read on CUDA).

Sensor semantics match the C backend (sensors of the post-step state): when the model has no
acceleration-stage sensors a control step runs `step2, (frame_skip-1) x step, step1`, which is
the same trajectory as `frame_skip x step + forward` without the extra forward.

warp / mujoco_warp are imported lazily (extra `gpu`); importing this module does not import them.
"""

from __future__ import annotations

import os
from typing import Any

import mujoco
import numpy as np
import torch

from robolearn.tasks.base import STATE_SPEC, ModelLayout, SimState, SimulationError

GPU_EXTRA_HINT = 'pip install -e ".[gpu]"  (mujoco-warp==4.0.0, warp-lang==1.19.0)'


class WarpUnavailableError(RuntimeError):
    """MuJoCo Warp is not installed, or the requested Warp device does not exist."""


_WARP: tuple[Any, Any] | None = None


def import_warp() -> tuple[Any, Any]:
    """(warp, mujoco_warp), initialised once; a clear error when the gpu extra is missing."""
    global _WARP
    if _WARP is None:
        try:
            import warp as wp

            # Before mujoco_warp: importing it initialises Warp, and the banner and per-module
            # load lines would flood every run's output.
            if os.environ.get("ROBOLEARN_WARP_VERBOSE", "") == "":
                wp.config.log_level = wp.LOG_WARNING
            import mujoco_warp as mjw
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise WarpUnavailableError(f"the MuJoCo Warp backend needs the gpu extra: {GPU_EXTRA_HINT} ({e})") from e
        wp.init()
        _WARP = (wp, mjw)
    return _WARP


def warp_available() -> bool:
    try:
        import_warp()
    except WarpUnavailableError:
        return False
    return True


def cuda_available() -> bool:
    """Whether Warp sees a CUDA device (False without the gpu extra)."""
    if not warp_available():
        return False
    wp, _ = import_warp()
    return wp.get_cuda_device_count() > 0


def resolve_device(device: str | None) -> str:
    """Warp device name: "cuda"/"cuda:K"/"cpu"; None means CUDA, with a clear error if absent."""
    wp, _ = import_warp()
    name = "cuda" if device in (None, "gpu") else str(device)
    if name.startswith("cuda"):
        if wp.get_cuda_device_count() == 0:
            raise WarpUnavailableError(
                "--backend gpu needs a CUDA device visible to Warp, and none was found "
                f"(warp {wp.__version__}: CUDA driver not available). Use --backend cpu, or --backend warp-cpu "
                "to run MuJoCo Warp on its CPU device (slow; for testing)")
        return str(wp.get_device(name))
    if name != "cpu":
        raise ValueError(f"unknown Warp device {device!r} (expected cpu, cuda or cuda:K)")
    return "cpu"


def buffer_sizes(model: mujoco.MjModel) -> tuple[int, int]:
    """(nconmax, njmax) per world for a task scene.

    Contacts come from the free bodies (cubes, T block) against the table, each other and the
    fingers; measured maxima under scripted experts with MuJoCo C are 8-14 contacts for one object
    and 28 for five cubes (sort), with nefc <= 3.5 x ncon. We allow 32 contacts per free body
    (pooled over worlds: naconmax = nconmax x nworld) and 4 constraint rows per contact plus the
    joint limits, so an overflow means a broken scene, never normal operation; it is raised.
    """
    nfree = int(np.sum(model.jnt_type == mujoco.mjtJoint.mjJNT_FREE))
    nconmax = 16 + 32 * max(1, nfree)
    njmax = 4 * nconmax + 2 * model.njnt + 2 * model.neq
    return nconmax, njmax


# Overflow bits that mean lost contacts/constraints (mjw.OverflowType); ITERATIONS and
# LS_ITERATIONS (solver iteration caps) are normal and not errors.
_OVERFLOW_NAMES = {
    "NEFC": "constraints exceeded njmax", "NJMAX_NNZ": "constraint Jacobian non-zeros exceeded njmax_nnz",
    "BROADPHASE": "broadphase pairs exceeded naconmax", "NARROWPHASE": "contacts exceeded naconmax",
    "CCD": "CCD contacts exceeded naccdmax", "HFIELD": "height-field contacts overflowed",
    "CONTACT_MATCH": "contact-match sensor overflow", "NVMAX": "awake dofs exceeded nvmax",
    "EPA_HORIZON": "EPA horizon buffer overflow", "TACTILE": "tactile sensor pairs overflowed",
}


class MujocoWarpBackend:
    """`num_envs` worlds of one MjModel on a Warp device (CUDA, or Warp's CPU device for tests)."""

    def __init__(self, model: mujoco.MjModel, num_envs: int, device: str | None = None,
                 nconmax: int | None = None, njmax: int | None = None, use_graph: bool = True,
                 check_every: int | None = None, match_c_collisions: bool = True):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        wp, mjw = import_warp()
        self.wp, self.mjw = wp, mjw
        self.wp_device = resolve_device(device)
        self.is_cuda = self.wp_device.startswith("cuda")
        self.model = model
        self.num_envs = num_envs
        self.layout = ModelLayout(model)
        default_con, default_j = buffer_sizes(model)
        self.nconmax = int(nconmax if nconmax is not None else default_con)
        self.njmax = int(njmax if njmax is not None else default_j)
        self.use_graph = use_graph
        self.check_every = int(check_every if check_every is not None else (32 if self.is_cuda else 1))
        # Without acceleration-stage sensors, step1 of the last substep provides the sensors and
        # the next control step starts with step2 (no extra forward per control step).
        self.split_step = bool(np.all(model.sensor_needstage < int(mujoco.mjtStage.mjSTAGE_ACC))) and \
            model.opt.integrator != mujoco.mjtIntegrator.mjINT_RK4
        self._error_bits = 0
        for name in _OVERFLOW_NAMES:
            self._error_bits |= int(getattr(mjw.OverflowType, name, 0))
        with wp.ScopedDevice(self.wp_device):
            self.m = mjw.put_model(model)
            self.m.opt.warn_overflow = 0  # no device printf spam; overflow is raised by check()
            if match_c_collisions:
                # MJWarp sends box-box pairs through general CCD unless NATIVECCD is disabled; MuJoCo C
                # uses its dedicated box-box collider, which MJWarp ports as the "primitive" box_box.
                # Every task touches box-box (fingers, cubes), and the CCD contacts differ enough
                # (one vs two contacts on a tilting face) to make pushing diverge within a few steps.
                self.m.opt.disableflags |= int(mjw.DisableBit.NATIVECCD)
            self.d = mjw.make_data(model, nworld=num_envs, nconmax=self.nconmax, njmax=self.njmax)
            S = self.layout.state_size
            self._state_wp = wp.zeros((num_envs, S), dtype=float)
            self._mask_wp = wp.zeros(num_envs, dtype=bool)
            mjw.reset_data(self.m, self.d)
            mjw.forward(self.m, self.d)
        self.device = torch.device(wp.device_to_torch(self.wp_device))
        t = wp.to_torch
        self._qpos, self._qvel = t(self.d.qpos), t(self.d.qvel)
        self._ctrl, self._sens = t(self.d.ctrl), t(self.d.sensordata)
        self._overflow = t(self.d.overflow)
        self._state_t = t(self._state_wp)
        self._mask_t = t(self._mask_wp)
        # Sticky per-world error accumulators (survive resets until checked).
        self._err_overflow = torch.zeros(num_envs, dtype=self._overflow.dtype, device=self.device)
        self._err_nan = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        self._steps_since_check = 0
        self._graphs: dict[tuple[str, int], Any] = {}
        self._sync_after_reset()
        wp.synchronize_device(self.wp_device)

    # -- interface ------------------------------------------------------------------------
    def set_ctrl(self, ctrl: torch.Tensor) -> None:
        self._ctrl.copy_(ctrl.detach().to(self.device, self._ctrl.dtype))

    def step(self, frame_skip: int) -> None:
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
        self._run(("step", frame_skip), lambda: self._step_body(frame_skip))
        self._accumulate_errors()
        self._steps_since_check += 1
        if self._steps_since_check >= self.check_every:
            self.check("step")

    def reset(self, mask: torch.Tensor, states: torch.Tensor) -> None:
        """Protocol reset: states (mask.sum(), state_size) for the masked worlds."""
        mask = torch.as_tensor(mask, dtype=torch.bool).to(self.device)
        n = int(mask.sum())
        if tuple(states.shape) != (n, self.layout.state_size):
            raise ValueError(f"reset: expected states of shape {(n, self.layout.state_size)}, got {tuple(states.shape)}")
        if n == 0:
            return
        full = self._state_t.clone()
        full[mask] = states.to(self.device, full.dtype)
        self.reset_where(mask, full)
        self.check("reset")

    def reset_where(self, mask: torch.Tensor, states: torch.Tensor) -> None:
        """Device-side reset: worlds where mask (N,) is True take their row of states (N, S).

        No host synchronisation: the masked-reset graph runs every call, whatever the mask.
        """
        self._mask_t.copy_(mask.to(self._mask_t.dtype))
        self._state_t.copy_(states.to(self._state_t.dtype))
        self._run(("reset", 0), self._reset_body)
        self._err_nan |= mask & ~torch.isfinite(self._qpos).all(1)

    def set_state(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        if mask is None:
            mask = torch.ones(self.num_envs, dtype=torch.bool)
        self.reset(mask, states)

    def get_state(self) -> torch.Tensor:
        """Full state (N, state_size) float64 (host tensor, like the C backend)."""
        self.check("get_state")
        with self.wp.ScopedDevice(self.wp_device):
            self._after_torch()
            self.mjw.get_state(self.m, self.d, self._state_wp, STATE_SPEC)
            self._before_torch()
        return self._state_t.to("cpu", torch.float64)

    def read(self) -> SimState:
        """Zero-copy float32 views on the Warp device (overwritten by the next step)."""
        return SimState(self._qpos, self._qvel, self._ctrl, self._sens)

    def check(self, where: str = "step") -> None:
        """Raise SimulationError for any overflow or non-finite state since the last check (syncs)."""
        self._steps_since_check = 0
        bad_over = self._err_overflow & self._error_bits
        bad = (bad_over != 0) | self._err_nan
        if not bool(bad.any()):
            return
        worlds = torch.nonzero(bad).flatten().tolist()
        bits = int(np.bitwise_or.reduce(bad_over.cpu().numpy())) if bool((bad_over != 0).any()) else 0
        self._err_overflow.zero_()
        self._err_nan.zero_()
        what = [desc for name, desc in _OVERFLOW_NAMES.items() if bits & int(getattr(self.mjw.OverflowType, name, 0))]
        if what:
            raise SimulationError(
                f"MuJoCo Warp buffer overflow during {where} in world(s) {worlds[:8]}{'...' if len(worlds) > 8 else ''}: "
                f"{'; '.join(what)} (nconmax={self.nconmax}, njmax={self.njmax} per world); contacts would be "
                "dropped silently - raise nconmax/njmax")
        raise SimulationError(f"simulation unstable (non-finite state) during {where} in world(s) {worlds[:8]}")

    def contact_stats(self) -> dict[str, int]:
        """Current contact / constraint counts against their buffers (syncs)."""
        nefc = self.wp.to_torch(self.d.nefc)
        return {"nacon": int(self.d.nacon.numpy()[0]), "naconmax": int(self.d.naconmax),
                "max_nefc": int(nefc.max()), "njmax": self.njmax, "nconmax": self.nconmax}

    def close(self) -> None:
        self._graphs.clear()

    # -- internals ------------------------------------------------------------------------------
    def _run(self, key: tuple[str, int], body) -> None:
        wp = self.wp
        with wp.ScopedDevice(self.wp_device):
            self._after_torch()
            if not self.use_graph:
                body()
            else:
                graph = self._graphs.get(key)
                if graph is None:
                    with wp.ScopedCapture(device=self.wp_device) as cap:
                        body()
                    graph = self._graphs[key] = cap.graph
                wp.capture_launch(graph)
            self._before_torch()

    # Warp launches on its own CUDA stream, torch on its current stream: order them with
    # device-side stream waits (no host sync) so torch's ctrl/state writes precede the graph and
    # torch reads see its results. No-ops on the CPU device.
    def _after_torch(self) -> None:
        if self.is_cuda:
            self.wp.get_stream(self.wp_device).wait_stream(self.wp.stream_from_torch(torch.cuda.current_stream(self.device)))

    def _before_torch(self) -> None:
        if self.is_cuda:
            self.wp.stream_from_torch(torch.cuda.current_stream(self.device)).wait_stream(self.wp.get_stream(self.wp_device))

    def _step_body(self, frame_skip: int) -> None:
        m, d, mjw = self.m, self.d, self.mjw
        if self.split_step:  # state is post-step1: finish this substep, then full substeps, then step1
            mjw.step2(m, d)
            for _ in range(frame_skip - 1):
                mjw.step(m, d)
            mjw.step1(m, d)
        else:
            for _ in range(frame_skip):
                mjw.step(m, d)
            mjw.forward(m, d)

    def _reset_body(self) -> None:
        """Masked reset: only worlds in the mask change (reset_data and set_state are masked; the
        closing step1/forward is idempotent for the others)."""
        m, d, mjw = self.m, self.d, self.mjw
        mjw.reset_data(m, d, self._mask_wp)
        mjw.set_state(m, d, self._state_wp, STATE_SPEC, active=self._mask_wp)
        if self.split_step:
            mjw.step1(m, d)
        else:
            mjw.forward(m, d)

    def _sync_after_reset(self) -> None:
        """Bring the initial data (after reset_data) into the post-step1/forward convention."""
        with self.wp.ScopedDevice(self.wp_device):
            if self.split_step:
                self.mjw.step1(self.m, self.d)
            else:
                self.mjw.forward(self.m, self.d)

    def _accumulate_errors(self) -> None:
        self._err_overflow |= self._overflow
        self._err_nan |= ~torch.isfinite(self._qpos).all(1) | ~torch.isfinite(self._qvel).all(1)


def make_backend(kind: str, model: mujoco.MjModel, num_envs: int, **kwargs: Any):
    """Backend by name: "cpu" (MuJoCo C), "gpu" (MuJoCo Warp on CUDA), "warp-cpu" (MuJoCo Warp on CPU)."""
    if kind == "cpu":
        from robolearn.tasks.backend import MujocoCBackend

        return MujocoCBackend(model, num_envs, num_threads=kwargs.get("num_threads", 1))
    kwargs.pop("num_threads", None)
    if kind == "gpu":
        return MujocoWarpBackend(model, num_envs, device=kwargs.pop("device", None) or "cuda", **kwargs)
    if kind == "warp-cpu":
        return MujocoWarpBackend(model, num_envs, device="cpu", **kwargs)
    raise ValueError(f"unknown backend {kind!r} (expected cpu, gpu or warp-cpu)")
