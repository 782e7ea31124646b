"""TaskSim: the batched episode logic shared by the single env and the vector env.

Holds a backend, a task and its config; turns normalized actions into position targets, steps
physics, injects perturbations, and computes obs/reward/success/stage/failure events with the
task's array functions. Everything per env is a row of an array.

With the MuJoCo C backend the per-step task functions run on numpy views of the backend's host
buffers (`read_numpy`, see array_ops: same code, the same results as torch up to rounding, a
fraction of torch's per-op cost on (1, d) arrays); other backends get torch tensors. `read()`
(experts, scripted operators) always returns torch tensors.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from robolearn.tasks.backend import Backend, MujocoCBackend
from robolearn.tasks.base import EVENT, SimState, Task, TaskConfig
from robolearn.tasks.perturb import Perturber


class TaskSim:
    """N envs of one task on one backend (MuJoCo C unless a backend is passed)."""

    def __init__(self, task_name: str, cfg: TaskConfig | None = None, num_envs: int = 1,
                 num_threads: int = 1, backend: Backend | None = None, **overrides):
        from robolearn.tasks.registry import build_model, load_task_config

        self.cfg = cfg if cfg is not None else load_task_config(task_name, overrides)
        if cfg is not None and overrides:
            raise ValueError("pass either cfg or keyword overrides, not both")
        task_cls, model = build_model(task_name, self.cfg)
        self.model = model
        self.backend: Backend = backend if backend is not None else MujocoCBackend(model, num_envs, num_threads)
        self.num_envs = self.backend.num_envs
        self.task_name = self.cfg.task
        self.task: Task = task_cls(self.cfg, self.backend.layout)
        self.cfg.validate(self.task.perturbations)
        self.perturber = Perturber(self.task, self.cfg.perturb_rate, self.cfg.perturb_kinds)
        self.gens = [torch.Generator().manual_seed(i) for i in range(self.num_envs)]
        self.seeds: list[int | None] = [None] * self.num_envs
        self.t = torch.zeros(self.num_envs, dtype=torch.int64)
        self._renderer = None
        self._prev: SimState | None = None
        # Host fast path: task functions on numpy views of the backend's buffers; the previous
        # step's arrays live in a second buffer of the same layout (one memcpy per step).
        # Only for tasks written with array_ops (Task.numpy_host_path); a plain-torch task gets
        # torch views of the same buffers (no copy) on every backend.
        self._host = task_cls.numpy_host_path and all(callable(getattr(self.backend, f, None))
                                                      for f in ("read_numpy", "get_state_numpy", "host_views"))
        if self._host:
            self._prev_buf = np.zeros_like(self.backend.host_buffer)
            self._prev_host = self.backend.host_views(self._prev_buf)
        self._t = self.t.numpy()  # shares memory with self.t
        self._ones = np.ones(self.num_envs, np.int64)  # t += 1 without numpy's Python-int casting (~0.3 us)
        # Values the task computed for the state now held in _prev (e.g. which cubes were held),
        # handed back to it on the next step instead of being recomputed; see Task.transition.
        self._carry: dict = {}
        self._action_shape = (self.num_envs, self.task.action_dim)

    # -- properties --------------------------------------------------------------------------
    @property
    def obs_dim(self) -> int:
        return self.task.obs_dim

    @property
    def action_dim(self) -> int:
        return self.task.action_dim

    @property
    def control_period(self) -> float:
        return self.backend.layout.timestep * self.cfg.frame_skip

    @property
    def proprio_dim(self) -> int:
        return self.task.proprio_dim

    @property
    def image_keys(self) -> tuple[str, ...]:
        if not self.cfg.image:
            return ()
        return ("image", "wrist_image") if self.cfg.wrist_camera else ("image",)

    def read(self) -> SimState:
        """Privileged simulator arrays (for experts and scripted operators)."""
        return self.backend.read()

    # -- episode control ------------------------------------------------------------------------
    def reset(self, mask: torch.Tensor | None = None, seeds: list[int | None] | None = None,
              states: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """Reset envs in mask: to given full states, else to initial states sampled per seed."""
        n = self.num_envs
        mask = torch.ones(n, dtype=torch.bool) if mask is None else mask.to(torch.bool)
        idx = torch.nonzero(mask).flatten().tolist()
        if seeds is not None and len(seeds) != len(idx):
            raise ValueError(f"reset: got {len(seeds)} seeds for {len(idx)} envs")
        for j, i in enumerate(idx):
            seed = seeds[j] if seeds is not None else None
            if seed is None:
                seed = int(torch.randint(0, 2**31 - 1, (), generator=self.gens[i]).item())
            self.seeds[i] = int(seed)
            self.gens[i] = torch.Generator().manual_seed(int(seed))
        if states is None:
            states = torch.cat([self.task.sample_init(self.gens[i], 1) for i in idx]) if idx else None
        if idx:
            self.backend.reset(mask, states)
        self.t[mask] = 0
        self._keep_prev()
        return self.observe()

    def step(self, action: np.ndarray | torch.Tensor) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray,
                                                             np.ndarray, dict[str, np.ndarray]]:
        """One control step for every env. Non-finite actions are refused before anything runs."""
        if self._host:  # numpy all the way (torch only runs a few kernels on views, no autograd state)
            return self._step(action)
        with torch.inference_mode():
            return self._step(action)

    def _step(self, action):
        a_np = self._check_action(action)
        task, backend = self.task, self.backend
        s = self._read_fast()
        backend.set_ctrl(task.action_to_ctrl(s, a_np if self._host else torch.from_numpy(a_np)))
        backend.step(self.cfg.frame_skip)
        t = self._t
        t += self._ones
        events = self._perturb()
        s = self._read_fast()
        out = task.transition(self._prev, s, self._carry)
        state_obs, success, reward, stage, detected = out if self._host else (_host(x) for x in out)
        self._keep_prev(carry=True)
        detected = detected.astype(np.int32, copy=False)
        events = detected if events is None else np.where(events > 0, events, detected).astype(np.int32)
        cfg = self.cfg
        if cfg.terminate_on_success:  # a copy: `success` is also returned in info
            terminated = success.astype(bool)
            truncated = (t >= cfg.horizon) & ~terminated
        else:
            terminated, truncated = np.zeros(len(t), bool), t >= cfg.horizon
        # Fresh arrays every step, so no copy where the dtype already matches (copy=False).
        info = {"success": success.astype(bool, copy=False), "stage": stage.astype(np.int32, copy=False),
                "failure_event": events, "t": t.copy()}
        obs = {"state": state_obs.astype(np.float32)}
        if cfg.image:
            self._add_image_obs(obs)
        return obs, reward.astype(np.float32, copy=False), terminated, truncated, info

    def _check_action(self, action) -> np.ndarray:
        """(N, action_dim) float64 in [-1, 1]; refuses wrong shapes and non-finite entries before
        anything is stepped."""
        # float64 without a copy when it already is (never written to: the clip makes a new array)
        a_np = np.asarray(action.detach().cpu().numpy() if torch.is_tensor(action) else action, dtype=np.float64)
        if a_np.ndim == 1 and self.num_envs == 1:
            a_np = a_np[None]
        if a_np.shape != self._action_shape:
            raise ValueError(f"action must have shape {self._action_shape}, got {tuple(a_np.shape)}")
        flat = a_np.ravel()
        if not math.isfinite(flat @ flat):  # NaN/inf propagate (huge finite entries go to the exact test)
            bad = np.flatnonzero(~np.isfinite(a_np).all(1)).tolist()
            if bad:
                raise ValueError(f"action contains NaN or inf (env(s) {bad}); refused, simulation not stepped")
        return np.minimum(np.maximum(a_np, -1.0), 1.0)  # = np.clip (finite), without its wrapper cost

    def observe(self) -> dict[str, np.ndarray]:
        if self._host:
            return self._observe()
        with torch.inference_mode():
            return self._observe()

    def _observe(self) -> dict[str, np.ndarray]:
        obs = {"state": _host(self.task.observe(self._read_fast())).astype(np.float32)}
        if self.cfg.image:
            self._add_image_obs(obs)
        return obs

    def _add_image_obs(self, obs: dict[str, np.ndarray]) -> None:
        """Camera frames plus `proprio`, the robot's own leading `state` entries, so that an image
        policy need not read the object pose from `state`."""
        obs["proprio"] = obs["state"][:, :self.task.proprio_dim].copy()
        obs.update(self.render_images())

    def status(self) -> dict[str, np.ndarray]:
        """success / stage of the current state (e.g. right after reset)."""
        s = self._read_fast()
        return {"success": _host(self.task.success(s)).astype(bool),
                "stage": _host(self.task.stage(s)).astype(np.int32),
                "failure_event": np.zeros(self.num_envs, np.int32), "t": self.t.numpy().copy()}

    def get_state(self, i: int | None = None) -> np.ndarray:
        """Full physics state (N, state_size) float64, see base.STATE_SPEC; (state_size,) of env i."""
        if self._host:  # MuJoCo C backend: mj_getState into its buffer, one copy
            return self.backend.get_state_numpy(i)
        st = self.backend.get_state().numpy()
        return st if i is None else st[i]

    def set_state(self, states: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Restore full states (episode time counters are left unchanged)."""
        m = torch.ones(self.num_envs, dtype=torch.bool) if mask is None else torch.as_tensor(mask, dtype=torch.bool)
        st = torch.as_tensor(np.asarray(states, np.float64).reshape(int(m.sum()), -1))
        if st.shape[1] != self.backend.layout.state_size:
            raise ValueError(f"state vectors must have {self.backend.layout.state_size} entries, got {st.shape[1]}")
        if not torch.isfinite(st).all():
            raise ValueError("state contains NaN or inf; refused")
        self.backend.reset(m, st)
        self._keep_prev()

    def render_images(self, size: int | None = None) -> dict[str, np.ndarray]:
        from robolearn.tasks.base import STATE_SPEC
        from robolearn.tasks.render import ImageRenderer

        size = size or self.cfg.image_size
        if self._renderer is None or self._renderer.size != size:
            cams = ("front", "wrist") if self.cfg.wrist_camera else ("front",)
            if self._renderer is not None:
                self._renderer.close()
            self._renderer = ImageRenderer(self.model, size, cams)
        datas = getattr(self.backend, "datas", None)
        imgs = (self._renderer.render(datas) if datas is not None
                else self._renderer.render_states(self.backend.get_state().cpu().numpy(), STATE_SPEC))
        return {("image" if cam == "front" else "wrist_image"): v for cam, v in imgs.items()}

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        close = getattr(self.backend, "close", None)
        if close:
            close()

    # -- internals ------------------------------------------------------------------------------
    def _read_fast(self) -> SimState:
        """The arrays the per-step task functions run on: numpy views on the host fast path."""
        return self.backend.read_numpy() if self._host else self.backend.read()

    def _keep_prev(self, carry: bool = False) -> None:
        """Remember the current arrays as the previous step's (failure detection compares them).
        carry=True: the task's carry was just filled for these arrays (a step); otherwise (reset,
        set_state) it describes an older state and is dropped."""
        if not carry:
            self._carry.clear()
        if self._host:
            np.copyto(self._prev_buf, self.backend.host_buffer)
            self._prev = self._prev_host
        else:
            self._prev = self._clone(self.backend.read())

    def _perturb(self) -> np.ndarray | None:
        """Injected failure-event codes (N,) of this step; None when perturbations are off."""
        if self.perturber.rate <= 0:
            return None
        events = np.zeros(self.num_envs, dtype=np.int64)
        kinds = self.perturber.draw(self.gens)
        fired = [i for i, k in enumerate(kinds) if k is not None]
        if not fired:
            return events
        states = self.backend.get_state()
        s = self.backend.read()
        mask = torch.zeros(self.num_envs, dtype=torch.bool)
        new = []
        for i in fired:
            new.append(self.perturber.apply(kinds[i], states[i:i + 1], s.select(torch.tensor([i])), self.gens[i]))
            mask[i] = True
            events[i] = EVENT[kinds[i]]
        self.backend.reset(mask, torch.cat(new))
        return events

    @staticmethod
    def _clone(s: SimState) -> SimState:
        return SimState(*(x.copy() if isinstance(x, np.ndarray) else x.clone() for x in s))


def _host(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.detach().cpu().numpy()
