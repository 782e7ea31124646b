"""The minimal env protocol RL code runs on, over our tasks and gymnasium MuJoCo tasks.

    env.reset(seed) -> obs (D,) float32
    env.step(action in [-1, 1]^A) -> (obs, reward, terminated, truncated, info with "success")

`make_env(task)` builds it from the tasks package: robolearn tasks (TASKS, e.g. push_cube) via
`robolearn.tasks.env.TaskEnv`, gymnasium MuJoCo v5 tasks via `robolearn.tasks.gym_adapter`
(names such as `hopper` or ids such as `Hopper-v5`). Actions are always [-1, 1] for the agent and
rescaled to the env's Box bounds here, so tanh actors fit every task.

`evaluate(act, task_or_env, seeds)` runs one deterministic episode per seed (sequentially, on one
env) and returns per-episode return/success/length. `evaluate_actor(policy, env, seeds)` is the one
call RL training makes to evaluate its actor: on our own tasks it goes through the project's rollout
engine (robolearn.evaluation.evaluate_policy, batched over `num_envs`, the same code as `robolearn
eval`), with the env's task overrides; on gymnasium tasks and other envs through `evaluate`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np


class RLEnv:
    """Flat-state, [-1, 1]-action view of a gymnasium env with dict observations {"state": ...}."""

    def __init__(self, env: Any, task: str, overrides: dict[str, Any] | None = None) -> None:
        self.env = env
        self.task = task
        self.overrides = dict(overrides or {})  # task config overrides the env was built with
        space = env.action_space
        self.low = np.asarray(space.low, np.float64)
        self.high = np.asarray(space.high, np.float64)
        self.action_dim = int(np.prod(space.shape))
        self.obs_dim = int(env.observation_space["state"].shape[0])
        spec = getattr(env, "spec", None) or getattr(getattr(env, "env", None), "spec", None)
        horizon = getattr(getattr(env, "cfg", None), "horizon", None)
        self.max_episode_steps = int(horizon or (spec.max_episode_steps if spec and spec.max_episode_steps else 1000))

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, _ = self.env.reset(seed=seed)
        return np.asarray(obs["state"], np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, np.float64).reshape(-1), -1.0, 1.0)
        a = self.low + (a + 1.0) * 0.5 * (self.high - self.low)
        obs, reward, term, trunc, info = self.env.step(a)
        return np.asarray(obs["state"], np.float32), float(np.asarray(reward).reshape(-1)[0]), bool(term), bool(trunc), info

    def close(self) -> None:
        self.env.close()


def is_own_task(task: str) -> bool:
    """A robolearn task (not a gymnasium env)."""
    from robolearn.tasks.registry import get_spec

    return not get_spec(task).is_gym


def expert_class(task: str) -> type:
    """The scripted expert class of one of our tasks (RL code asks the task registry only here and above)."""
    from robolearn.tasks.registry import get_spec

    cls = get_spec(task).expert_class()
    if cls is None:
        raise ValueError(f"task {task!r} has no scripted expert (use random or a checkpoint)")
    return cls


def make_env(task: str, **overrides: Any) -> RLEnv:
    """An RLEnv of a robolearn task or a gymnasium env (a task name, `gym:<id>`, or a bare
    gymnasium id such as Hopper-v5)."""
    from robolearn.tasks.gym_adapter import make_gym_task
    from robolearn.tasks.registry import UnknownTaskError, get_spec

    try:
        spec = get_spec(task)
    except UnknownTaskError:
        import gymnasium as gym

        if task not in gym.registry:
            raise
        spec = get_spec(f"gym:{task}")
    if not spec.is_gym:
        from robolearn.tasks.env import TaskEnv

        return RLEnv(TaskEnv(task, **overrides), task, overrides)
    return RLEnv(make_gym_task(spec.name, **overrides), spec.name)


def evaluate(act: Callable[[np.ndarray], np.ndarray], env: RLEnv | str, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """One episode per seed with `act(obs (D,)) -> action (A,)`, on one env through the rollout
    engine (robolearn.tasks.rollout); per-episode records (success: at any step, the same definition
    as robolearn.evaluation's reports)."""
    from robolearn.tasks.rollout import EpisodeStats, FixedSeeds, FunctionActor, HostBatch, RolloutEngine, SingleEnv

    own = isinstance(env, str)
    env = make_env(env) if isinstance(env, str) else env
    seeds = [int(s) for s in seeds]
    if not seeds:
        return []
    stats = EpisodeStats(len(seeds), seeds)
    engine = RolloutEngine(HostBatch(SingleEnv(env), FixedSeeds(seeds)), FunctionActor(lambda s: act(s[0])[None]),
                           stats=stats)
    try:
        records = engine.run()
    finally:
        if own:
            env.close()
    return [{"seed": r["seed"], "return": r["return"], "success": r["success"], "length": r["length"]}
            for r in records]


def evaluate_actor(policy: Any, env: RLEnv, seeds: Sequence[int], num_envs: int = 1, backend: str = "cpu") -> list[dict[str, Any]]:
    """Deterministic episodes of an RLActorPolicy, one per seed: per-episode {seed, return, success, length}.

    Our tasks with consecutive seeds run through robolearn.evaluation.evaluate_policy (batched, on
    `backend`: cpu, or gpu / warp-cpu for MuJoCo Warp with the policy on that device); everything
    else (gymnasium tasks, test doubles, scattered seeds) runs `evaluate` on `env` itself."""
    import json

    import torch

    seeds = [int(s) for s in seeds]
    if not seeds:
        return []
    if is_own_task(env.task) and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        from robolearn.evaluation import evaluate_policy

        overrides = [f"{k}={json.dumps(v)}" for k, v in env.overrides.items() if k != "task"]
        was = policy.training
        policy.eval()
        try:
            report = evaluate_policy(policy, env.task, len(seeds), seed=seeds[0], num_envs=num_envs,
                                     task_overrides=overrides, progress=False, backend=backend)
        finally:
            policy.train(was)
        return [{"seed": int(r["seed"]), "return": float(r["return"]), "success": bool(r["success"]),
                 "length": int(r["length"])} for r in report["episodes"]]

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = policy.normalize_state(torch.as_tensor(obs[None], dtype=torch.float32))
            return policy.actor.mode(x)[0].cpu().numpy()

    return evaluate(act, env, seeds)
