"""Any registered gymnasium env as a robolearn task: `--task gym:<id>` (e.g. gym:Hopper-v5,
gym:Pendulum-v1), plus the short names of the MuJoCo v5 envs (`hopper`, ...).

The adapter gives the env robolearn's conventions: a dict observation {"state": float32 vector}
(Box observations as they are; Dict / Tuple / Discrete ones flattened by gymnasium), `info` with
`success` (the env's own `is_success` / `success` when it reports one, else False), `stage` (0)
and `failure_event` (0), and refusal of non-finite actions.

MuJoCo envs (those whose `unwrapped` holds a mujoco `model` and `data`) also get the full
simulator state: `info["sim_state"]` (mj_getState, base.STATE_SPEC) and `get_sim_state()` /
`set_sim_state()` for exact restores. Other envs are state-only; for them the following does not
apply (each refuses with a one-line reason):

    sim_state / get_sim_state / set_sim_state, `eval --save` and `--video`, perturbations
    (`--perturb`), scripted experts (`collect`, `data rollout --policy expert`), the MuJoCo Warp
    backends (`--backend gpu|warp-cpu`), `intervene` and SAILOR (which need a robolearn task).

For every gymnasium env the same commands also refuse: `collect` (no scripted expert), `--perturb`,
`--backend gpu|warp-cpu`, `--video` and `--save`; task overrides `--set KEY=VALUE` are passed to
`gymnasium.make` as keyword arguments. Envs with a non-Box (e.g. Discrete) action space cannot be
driven by robolearn's continuous policies and are refused when made.
"""

from __future__ import annotations

import difflib
from typing import Any

import numpy as np

NOT_APPLICABLE_STATE_ONLY = ("sim_state", "eval --save", "eval --video", "--perturb", "collect (no scripted expert)",
                             "--backend gpu|warp-cpu", "intervene", "sailor")


class GymTaskError(ValueError):
    """Something a gymnasium env cannot do in robolearn (one-line reason)."""


def gym_spec(name: str):
    """TaskSpec of `gym:<id>`, registered on first use; a clear error for unknown ids."""
    import gymnasium as gym

    from robolearn.tasks.registry import TaskSpec, UnknownTaskError, register

    env_id = name.removeprefix("gym:")
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=5)
        hint = f" (did you mean: {', '.join('gym:' + c for c in close)})" if close else ""
        raise UnknownTaskError(f"unknown gymnasium env id {env_id!r}{hint}")
    return register(TaskSpec(name, gym_env=env_id), replace=True)


def _flatten_space(space: Any) -> Any:
    import gymnasium as gym

    if isinstance(space, gym.spaces.Box):
        return space
    try:
        return gym.spaces.flatten_space(space)
    except NotImplementedError:
        raise GymTaskError(f"observation space {space} cannot be flattened into a state vector") from None


class GymAdapter:
    """One gymnasium env with robolearn's observation / info conventions (see the module doc)."""

    def __init__(self, env_id: str, name: str | None = None, **kwargs: Any):
        import gymnasium as gym

        self.env = gym.make(env_id, **kwargs)
        self.env_id = env_id
        self.name = name or f"gym:{env_id}"
        if not isinstance(self.env.action_space, gym.spaces.Box):
            self.env.close()
            raise GymTaskError(f"{self.name}: action space {self.env.action_space} is not a Box; robolearn policies "
                               "output continuous actions")
        self._raw_space = self.env.observation_space
        box = _flatten_space(self._raw_space)
        self.observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, box.shape, np.float32)})
        self.action_space = self.env.action_space
        self.spec = self.env.spec
        self.metadata = getattr(self.env, "metadata", {})
        un = self.env.unwrapped
        model, data = getattr(un, "model", None), getattr(un, "data", None)
        self.mujoco = _is_mujoco(model, data)
        if self.mujoco:
            import mujoco

            from robolearn.tasks.base import STATE_SPEC

            self._m, self._d = model, data
            self._buf = np.zeros(mujoco.mj_stateSize(model, STATE_SPEC))

    @property
    def unwrapped(self) -> Any:
        return self.env.unwrapped

    @property
    def dt(self) -> float:
        return float(getattr(self.env.unwrapped, "dt", 0.0) or 1.0 / float(self.metadata.get("render_fps") or 1))

    def _obs(self, obs: Any) -> dict[str, np.ndarray]:
        import gymnasium as gym

        if not isinstance(self._raw_space, gym.spaces.Box):
            obs = gym.spaces.flatten(self._raw_space, obs)
        return {"state": np.asarray(obs, np.float32).reshape(-1)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._obs(obs), self._info(info)

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ValueError("action contains NaN or inf; refused, simulation not stepped")
        obs, rew, term, trunc, info = self.env.step(a.astype(self.action_space.dtype))
        return self._obs(obs), float(rew), bool(term), bool(trunc), self._info(info)

    def render(self):
        return self.env.render()

    def close(self) -> None:
        self.env.close()

    def get_sim_state(self) -> np.ndarray:
        self._require_mujoco("get_sim_state")
        import mujoco

        from robolearn.tasks.base import STATE_SPEC

        mujoco.mj_getState(self._m, self._d, self._buf, STATE_SPEC)
        return self._buf.copy()

    def set_sim_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        self._require_mujoco("set_sim_state")
        import mujoco

        from robolearn.tasks.base import STATE_SPEC

        mujoco.mj_setState(self._m, self._d, np.asarray(state, np.float64), STATE_SPEC)
        mujoco.mj_forward(self._m, self._d)
        return self._obs(self.env.unwrapped._get_obs())

    def _require_mujoco(self, what: str) -> None:
        if not self.mujoco:
            raise GymTaskError(f"{self.name} is not a MuJoCo env: {what} does not apply (state-only; not available: "
                               f"{', '.join(NOT_APPLICABLE_STATE_ONLY)})")

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        out = dict(info)
        success = info.get("is_success", info.get("success", False))
        out.update(success=bool(np.asarray(success).reshape(-1)[0]) if np.size(success) else False, stage=0,
                   failure_event=0)
        if self.mujoco:
            out["sim_state"] = self.get_sim_state()
        return out


# Kept for code that names the MuJoCo adapter.
GymMujocoAdapter = GymAdapter


def _is_mujoco(model: Any, data: Any) -> bool:
    if model is None or data is None:
        return False
    import mujoco

    return isinstance(model, mujoco.MjModel) and isinstance(data, mujoco.MjData)


def make_gym_task(name: str, **kwargs: Any) -> GymAdapter:
    """Adapter env of a gymnasium task name (`gym:<id>` or a short name; kwargs go to gymnasium.make)."""
    from robolearn.tasks.registry import get_spec

    spec = get_spec(name)
    if not spec.is_gym:
        raise ValueError(f"task {name!r} is a robolearn task, not a gymnasium env")
    return GymAdapter(spec.gym_env, name=name, **kwargs)


def overrides_to_kwargs(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """`--set KEY=VALUE` of a gymnasium task: keyword arguments of gymnasium.make."""
    from robolearn.config import parse_overrides

    if not overrides:
        return {}
    return dict(parse_overrides(overrides)) if isinstance(overrides, list) else dict(overrides)


class GymTaskBatch:
    """N adapter envs behind TaskSim's batch interface (reset(mask, seeds), step(actions), status()),
    so the rollout engine drives gymnasium envs exactly like robolearn tasks."""

    def __init__(self, name: str, num_envs: int, **kwargs: Any) -> None:
        self.envs = [make_gym_task(name, **kwargs) for _ in range(num_envs)]
        self.num_envs = num_envs
        first = self.envs[0]
        self.mujoco = first.mujoco
        self.model = getattr(first.unwrapped, "model", None) if self.mujoco else None
        self.control_period = first.dt
        self.action_dim = int(np.prod(first.action_space.shape))
        self.obs_dim = int(first.observation_space["state"].shape[0])
        self.image_keys: tuple[str, ...] = ()
        self.t = np.zeros(num_envs, np.int64)
        self._obs: list[Any] = [None] * num_envs

    def _stack(self) -> dict[str, np.ndarray]:
        return {"state": np.stack([o["state"] for o in self._obs])}

    def reset(self, mask: Any = None, seeds: list[int] | None = None) -> dict[str, np.ndarray]:
        rows = range(self.num_envs) if mask is None else [int(i) for i in np.flatnonzero(np.asarray(mask))]
        for j, i in enumerate(rows):
            self._obs[i], _ = self.envs[i].reset(seed=None if seeds is None else int(seeds[j]))
            self.t[i] = 0
        return self._stack()

    def status(self) -> dict[str, np.ndarray]:
        n = self.num_envs
        return {"success": np.zeros(n, bool), "stage": np.zeros(n, np.int32), "failure_event": np.zeros(n, np.int32),
                "t": self.t.copy()}

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        actions = np.asarray(actions, np.float64)
        if actions.shape != (self.num_envs, self.action_dim):
            raise ValueError(f"action must have shape {(self.num_envs, self.action_dim)}, got {actions.shape}")
        out = [env.step(a) for env, a in zip(self.envs, actions)]
        self._obs = [o[0] for o in out]
        self.t += 1
        info = {
            "success": np.array([o[4]["success"] for o in out], bool),
            "stage": np.zeros(self.num_envs, np.int32),
            "failure_event": np.zeros(self.num_envs, np.int32),
            "t": self.t.copy(),
        }
        return (self._stack(), np.array([o[1] for o in out], np.float32), np.array([o[2] for o in out]),
                np.array([o[3] for o in out]), info)

    def get_state(self) -> np.ndarray:
        return np.stack([env.get_sim_state() for env in self.envs])

    def close(self) -> None:
        for env in self.envs:
            env.close()
