"""Offline datasets for RL: random / noisy-policy collection and good+bad mixing.

- `collect(task, policy, episodes, out)`: rollouts into an EpisodeStore with the task's own
  rewards (`reward` per step), `done`, `success`, and episode metadata `{"terminated": bool,
  "policy": ..., "noise": ...}` (robolearn.rl.replay needs to tell termination from time-outs).
  `policy` is `random` (uniform in [-1, 1]), `expert` (our tasks' scripted expert, Gaussian
  `noise` added by the expert) or a checkpoint directory (any robolearn policy; Gaussian `noise`
  added to its action). Works for our tasks and gymnasium MuJoCo tasks (robolearn.rl.envs).
- `mix_stores(good, bad, ratio, out)`: the harness paper's mixed datasets: draw good trajectories
  (with replacement) until they hold `ratio` of `size` transitions, then bad trajectories until
  the rest is filled (`size` defaults to the bad store's number of steps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def _policy_fn(policy: str, env: Any, noise: float, seed: int) -> tuple[Any, Any]:
    """(act(obs, env) -> action, on_reset()) for a policy spec."""
    rng = np.random.default_rng(seed)
    if policy == "random":
        return (lambda obs: rng.uniform(-1, 1, env.action_dim).astype(np.float32)), (lambda: None)
    if policy == "expert":
        from robolearn.tasks.registry import get_spec

        expert_cls = get_spec(env.task).expert_class()
        if expert_cls is None:
            raise ValueError(f"task {env.task!r} has no scripted expert (use random or a checkpoint)")
        sim = env.env.sim
        expert = expert_cls(sim.task, 1, noise=noise, seed=seed)

        def act_expert(obs: np.ndarray) -> np.ndarray:
            action, _ = expert.act(sim.read())
            return action[0].numpy().astype(np.float32)

        return act_expert, (lambda: expert.reset())
    from robolearn.evaluation import load_any_policy

    pol, _ = load_any_policy(policy)

    def act_ckpt(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            a = pol.predict_action({"state": torch.as_tensor(obs[None, None], dtype=torch.float32)})
        a = a[0, pol.config.n_obs_steps - 1].cpu().numpy().astype(np.float64)
        if noise > 0:
            a = a + noise * rng.standard_normal(a.shape)
        return np.clip(a, -1, 1).astype(np.float32)

    return act_ckpt, (lambda: pol.reset())


def collect(task: str, policy: str, episodes: int, out: str | Path, noise: float = 0.0, seed: int = 0,
            max_steps: int | None = None, overwrite: bool = False, progress: bool = True,
            env_kwargs: dict[str, Any] | None = None) -> Any:
    """Roll `policy` for `episodes` episodes (or until `max_steps` steps) into a new store at `out`.

    `env_kwargs` (task config overrides, e.g. {"terminate_on_success": False}) are recorded as the
    store's `env_kwargs`, so offline training evaluates on the same task variant."""
    from tqdm import tqdm

    from robolearn.data.store import EpisodeStore, Feature
    from robolearn.rl.envs import make_env

    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if noise < 0:
        raise ValueError(f"--noise must be >= 0, got {noise}")
    if policy not in ("random", "expert") and not Path(policy).exists():
        raise FileNotFoundError(f"policy {policy!r} is neither random, expert nor an existing checkpoint")
    env = make_env(task, **(env_kwargs or {}))
    features = {"obs/state": Feature("float32", (env.obs_dim,), "obs"), "action": Feature("float32", (env.action_dim,), "action")}
    control_period = getattr(getattr(env.env, "sim", None), "control_period", None)
    store = EpisodeStore.create(out, features, task=env.task, env_kwargs=env_kwargs or {},
                                control_period=control_period, overwrite=overwrite)
    act, on_reset = _policy_fn(policy, env, noise, seed)
    total = 0
    try:
        for ep in tqdm(range(episodes), disable=not progress, desc=f"collect {policy} {task}", dynamic_ncols=True):
            obs = env.reset(seed=seed * 1_000_003 + ep)
            on_reset()
            rows: dict[str, list[Any]] = {"obs/state": [], "action": [], "reward": [], "done": []}
            success = False
            while True:
                action = act(obs)
                next_obs, reward, term, trunc, info = env.step(action)
                success = success or bool(np.asarray(info.get("success", False)).reshape(-1)[0])
                for k, v in (("obs/state", obs), ("action", action), ("reward", reward), ("done", term or trunc)):
                    rows[k].append(v)
                obs = next_obs
                if term or trunc:
                    break
            steps = {k: np.asarray(v) for k, v in rows.items()}
            steps["reward"] = steps["reward"].astype(np.float32)
            steps["source"] = "policy" if policy != "expert" else "demo"
            store.append_episode(steps, success=success, collector=f"rl-collect:{Path(policy).name}", seed=seed * 1_000_003 + ep,
                                 metadata={"terminated": bool(term), "policy": policy, "noise": noise})
            total += len(steps["reward"])
            if max_steps is not None and total >= max_steps:
                break
    finally:
        env.close()
    return store


def mix_stores(good: str | Path, bad: str | Path, ratio: float, out: str | Path, size: int | None = None,
               seed: int = 0, overwrite: bool = False) -> Any:
    """Mixed dataset with `ratio` of its transitions from `good` trajectories (harness paper)."""
    from robolearn.data.store import EpisodeStore, StoreError, copy_store

    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"--ratio must be in [0, 1], got {ratio}")
    g, b = EpisodeStore.open(good, mode="r"), EpisodeStore.open(bad, mode="r")
    if g.features != b.features:
        raise StoreError(f"cannot mix {good} and {bad}: features differ")
    if g.num_episodes == 0 or b.num_episodes == 0:
        raise ValueError("both stores need at least one episode")
    size = int(size if size is not None else b.num_steps)
    if size < 1:
        raise ValueError(f"--size must be >= 1, got {size}")
    rng = np.random.default_rng(seed)
    picks: list[tuple[Any, int]] = []
    for src, target in ((g, int(size * ratio)), (b, size - int(size * ratio))):
        lengths = src.episode_lengths
        n = 0
        while n < target:
            i = int(rng.integers(src.num_episodes))
            picks.append((src, i))
            n += int(lengths[i])
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already exists (pass --overwrite)")
    dst = EpisodeStore.create(out, {k: f for k, f in g.features.items()}, task=g.task or b.task,
                              env_kwargs=g.env_kwargs, control_period=g.control_period, overwrite=overwrite)
    for src in (g, b):
        for key in src.features:  # cache low-dim arrays: copy_store then reads episodes from memory
            src.read(key)
        copy_store(src, out, [i for s, i in picks if s is src], dst=dst)
    dst.set_attr("mix", {"good": str(good), "bad": str(bad), "ratio": ratio, "size": size, "seed": seed,
                         "good_episodes": sum(1 for s, _ in picks if s is g), "bad_episodes": sum(1 for s, _ in picks if s is b)})
    return dst
