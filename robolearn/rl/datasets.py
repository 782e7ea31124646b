"""Offline datasets for RL: random / noisy-policy collection and good+bad mixing.

- `collect(task, policy, episodes, out)`: rollouts into an EpisodeStore with the task's own
  rewards (`reward` per step), `done`, `success`, and episode metadata `{"terminated": bool,
  "policy": ..., "noise": ...}` (robolearn.rl.replay needs to tell termination from time-outs).
  `policy` is `random` (uniform in [-1, 1]), `expert` (our tasks' scripted expert, Gaussian
  `noise` added by the expert) or a checkpoint directory (any robolearn policy; Gaussian `noise`
  added to its action). Our tasks are stepped as one batch of `num_envs` envs (TaskSim, the
  vectorized simulator); gymnasium MuJoCo tasks (robolearn.rl.envs) one episode at a time.
  `keep="failure"` (or `"success"`) stores only the episodes that end failed (succeeded), e.g. the
  failing-policy part of a mixed dataset; `episodes` counts stored episodes. Episode k launched is
  reset with seed `seed * 1_000_003 + k`, stored or not, so a store reproduces from its seeds.
  An episode's `success` is the task's success at its last step (what `robolearn eval` counts).
- `mix_stores(good, bad, ratio, out)`: the harness paper's mixed datasets: draw good trajectories
  (with replacement) until they hold `ratio` of `size` transitions, then bad trajectories until
  the rest is filled (`size` defaults to the bad store's number of steps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch


def _policy_fn(policy: str, env: Any, noise: float, seed: int) -> tuple[Any, Any]:
    """(act(obs) -> action, on_reset()) for a policy spec on one gymnasium env (random or a checkpoint)."""
    rng = np.random.default_rng(seed)
    if policy == "random":
        return (lambda obs: rng.uniform(-1, 1, env.action_dim).astype(np.float32)), (lambda: None)
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


KEEP = ("all", "success", "failure")


def _episode_seed(seed: int, k: int) -> int:
    return seed * 1_000_003 + k


def _batched_policy(policy: str, sim: Any, task: str, noise: float, seed: int, n: int) -> tuple[Any, Any]:
    """(act(obs dict) -> (n, A) actions in [-1, 1], on_reset(mask)) of a policy spec on a batch of n envs."""
    rng = np.random.default_rng(seed)
    if policy == "random":
        return (lambda obs: rng.uniform(-1, 1, (n, sim.action_dim)).astype(np.float32)), (lambda mask: None)
    if policy == "expert":
        from robolearn.rl.envs import expert_class

        expert = expert_class(task)(sim.task, n, noise=noise, seed=seed)
        return (lambda obs: expert.act(sim.read())[0].numpy().astype(np.float32)), \
            (lambda mask: expert.reset(torch.as_tensor(mask)))
    from robolearn.evaluation import load_any_policy

    pol, _ = load_any_policy(policy)
    n_obs = int(getattr(pol.config, "n_obs_steps", 1))
    if n_obs != 1 or list(getattr(pol.config, "obs_keys", ["state"])) != ["state"]:
        raise ValueError(f"{policy}: data rollout drives state-only policies with one observation step "
                         f"(this one reads {n_obs} steps of {getattr(pol.config, 'obs_keys', '?')})")

    def act_ckpt(obs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            a = pol.predict_action({"state": torch.as_tensor(obs["state"][:, None], dtype=torch.float32)})
        a = a[:, 0].cpu().numpy().astype(np.float64)
        if noise > 0:
            a = a + noise * rng.standard_normal(a.shape)
        return np.clip(a, -1, 1).astype(np.float32)

    return act_ckpt, (lambda mask: pol.reset())


def _collect_batched(task: str, policy: str, episodes: int, store: Any, noise: float, seed: int, max_steps: int | None,
                     progress: bool, env_kwargs: dict[str, Any], num_envs: int, keep: str, max_launches: int) -> None:
    """Our tasks: `num_envs` envs stepped together; every finished env starts the next seed."""
    from tqdm import tqdm

    from robolearn.tasks.registry import load_task_config
    from robolearn.tasks.sim import TaskSim

    cfg = load_task_config(task, dict(env_kwargs))
    n = max(1, min(num_envs, max_launches))
    sim = TaskSim(task, cfg=cfg, num_envs=n)
    try:
        act, on_reset = _batched_policy(policy, sim, task, noise, seed, n)
        launched = n
        ep_seed = [_episode_seed(seed, k) for k in range(n)]
        obs = sim.reset(seeds=ep_seed)
        on_reset(np.ones(n, bool))
        bufs: list[dict[str, list]] = [{"obs/state": [], "action": [], "reward": [], "done": []} for _ in range(n)]
        active = np.ones(n, bool)
        stored = steps_total = 0
        bar = tqdm(total=episodes, disable=not progress, desc=f"collect {policy if policy in ('random', 'expert') else 'checkpoint'} "
                   f"{task} x{n}", dynamic_ncols=True, unit="ep")
        while active.any():
            action = act(obs)
            state = obs["state"]
            for i in np.flatnonzero(active):
                bufs[i]["obs/state"].append(state[i].astype(np.float32))
                bufs[i]["action"].append(action[i])
            obs, rew, term, trunc, info = sim.step(action)
            ended = (term | trunc) & active
            for i in np.flatnonzero(active):
                bufs[i]["reward"].append(float(rew[i]))
                bufs[i]["done"].append(bool(ended[i]))
            reset = np.zeros(n, bool)
            for i in np.flatnonzero(ended):
                success = bool(info["success"][i])
                full = stored >= episodes or (max_steps is not None and steps_total >= max_steps)
                if not full and (keep == "all" or (keep == "success") == success):
                    steps = {k: np.asarray(v) for k, v in bufs[i].items()}
                    steps["reward"] = steps["reward"].astype(np.float32)
                    steps["source"] = "demo" if policy == "expert" else "policy"
                    store.append_episode(steps, success=success, collector=f"rl-collect:{Path(policy).name}", seed=ep_seed[i],
                                         metadata={"terminated": bool(term[i]), "policy": policy, "noise": noise, "keep": keep})
                    stored += 1
                    steps_total += len(steps["reward"])
                    bar.update(1)
                bufs[i] = {k: [] for k in bufs[i]}
                full = stored >= episodes or (max_steps is not None and steps_total >= max_steps)
                if not full and launched < max_launches:
                    ep_seed[i] = _episode_seed(seed, launched)
                    launched += 1
                    reset[i] = True
                else:
                    active[i] = False
            if reset.any():
                fresh = sim.reset(torch.as_tensor(reset), seeds=[ep_seed[i] for i in np.flatnonzero(reset)])
                for k in obs:
                    obs[k][reset] = fresh[k][reset]
                on_reset(reset)
        bar.close()
        if stored < episodes and (max_steps is None or steps_total < max_steps):
            raise RuntimeError(f"data rollout: only {stored} of {episodes} episodes ended with keep={keep} after {launched} launched "
                               f"(the store at {store.path} holds them; raise --episodes or change --keep)")
    finally:
        sim.close()


def collect(task: str, policy: str, episodes: int, out: str | Path, noise: float = 0.0, seed: int = 0,
            max_steps: int | None = None, overwrite: bool = False, progress: bool = True,
            env_kwargs: dict[str, Any] | None = None, num_envs: int = 1, keep: str = "all",
            max_launches: int | None = None) -> Any:
    """Roll `policy` until `episodes` episodes (or `max_steps` steps) are stored in a new store at `out`.

    `env_kwargs` (task config overrides, e.g. {"terminate_on_success": False}) are recorded as the
    store's `env_kwargs`, so offline training evaluates on the same task variant. With a `keep` filter
    at most `max_launches` episodes are run (default 20 x episodes)."""
    from tqdm import tqdm

    from robolearn.data.store import EpisodeStore, Feature
    from robolearn.rl.envs import is_own_task, make_env

    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if noise < 0:
        raise ValueError(f"--noise must be >= 0, got {noise}")
    if num_envs < 1:
        raise ValueError(f"--num-envs must be >= 1, got {num_envs}")
    if keep not in KEEP:
        raise ValueError(f"--keep must be one of {', '.join(KEEP)}, got {keep!r}")
    if policy not in ("random", "expert") and not Path(policy).exists():
        raise FileNotFoundError(f"policy {policy!r} is neither random, expert nor an existing checkpoint")
    if policy == "expert" and not is_own_task(task):
        raise ValueError(f"task {task!r} has no scripted expert (use random or a checkpoint)")
    max_launches = int(max_launches if max_launches is not None else (episodes if keep == "all" else 20 * episodes))
    env = make_env(task, **(env_kwargs or {}))  # validates task + overrides before anything is written
    features = {"obs/state": Feature("float32", (env.obs_dim,), "obs"), "action": Feature("float32", (env.action_dim,), "action")}
    control_period = getattr(getattr(env.env, "sim", None), "control_period", None)
    store = EpisodeStore.create(out, features, task=env.task, env_kwargs=env_kwargs or {},
                                control_period=control_period, overwrite=overwrite)
    if is_own_task(env.task):
        env.close()
        try:
            _collect_batched(env.task, policy, episodes, store, noise, seed, max_steps, progress, dict(env_kwargs or {}),
                             num_envs, keep, max_launches)
        finally:
            store.close()
        return EpisodeStore.open(out, mode="r")
    act, on_reset = _policy_fn(policy, env, noise, seed)
    stored = total = 0
    try:
        for ep in tqdm(range(max_launches), disable=not progress, desc=f"collect {policy} {task}", dynamic_ncols=True):
            obs = env.reset(seed=_episode_seed(seed, ep))
            on_reset()
            rows: dict[str, list[Any]] = {"obs/state": [], "action": [], "reward": [], "done": []}
            while True:
                action = act(obs)
                next_obs, reward, term, trunc, info = env.step(action)
                for k, v in (("obs/state", obs), ("action", action), ("reward", reward), ("done", term or trunc)):
                    rows[k].append(v)
                obs = next_obs
                if term or trunc:
                    break
            success = bool(np.asarray(info.get("success", False)).reshape(-1)[0])
            if keep != "all" and (keep == "success") != success:
                continue
            steps = {k: np.asarray(v) for k, v in rows.items()}
            steps["reward"] = steps["reward"].astype(np.float32)
            steps["source"] = "policy" if policy != "expert" else "demo"
            store.append_episode(steps, success=success, collector=f"rl-collect:{Path(policy).name}", seed=_episode_seed(seed, ep),
                                 metadata={"terminated": bool(term), "policy": policy, "noise": noise, "keep": keep})
            stored += 1
            total += len(steps["reward"])
            if stored >= episodes or (max_steps is not None and total >= max_steps):
                break
    finally:
        env.close()
    return store


def mix_stores(good: str | Path, bad: str | Path | Sequence[str | Path], ratio: float, out: str | Path, size: int | None = None,
               seed: int = 0, overwrite: bool = False, progress: bool = True) -> Any:
    """Mixed dataset with `ratio` of its transitions from `good` trajectories (harness paper).

    As in the authors' code (d3rlpy_impls/datasets.py, mix_mdp_mujoco_datasets): trajectories are
    drawn uniformly *with replacement* from the good store until they hold int(size * ratio)
    transitions, then from the bad stores (their episodes pooled) until the rest is filled. `size`
    defaults to the bad stores' total steps. The store's `mix` attribute records the sources, the
    draws and how many distinct episodes each part holds."""
    from tqdm import tqdm

    from robolearn.data.store import EpisodeStore, StoreError

    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"--ratio must be in [0, 1], got {ratio}")
    bad_paths = [bad] if isinstance(bad, (str, Path)) else list(bad)
    g = EpisodeStore.open(good, mode="r")
    bads = [EpisodeStore.open(b, mode="r") for b in bad_paths]
    for path, b in zip(bad_paths, bads):
        if g.features != b.features:
            raise StoreError(f"cannot mix {good} and {path}: features differ")
        if b.task != g.task or b.env_kwargs != g.env_kwargs:
            raise StoreError(f"cannot mix {good} and {path}: task or task config differ "
                             f"({g.task} {g.env_kwargs} vs {b.task} {b.env_kwargs})")
        if b.num_episodes == 0:
            raise ValueError(f"{path} holds no episodes")
    if g.num_episodes == 0:
        raise ValueError(f"{good} holds no episodes")
    size = int(size if size is not None else sum(b.num_steps for b in bads))
    if size < 1:
        raise ValueError(f"--size must be >= 1, got {size}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite)")
    rng = np.random.default_rng(seed)
    bad_pool = [(b, i) for b in bads for i in range(b.num_episodes)]
    picks: list[tuple[Any, int]] = []
    n_good = int(size * ratio)
    n = 0
    while n < n_good:
        i = int(rng.integers(g.num_episodes))
        picks.append((g, i))
        n += int(g.episode_lengths[i])
    good_count = len(picks)
    n = 0
    while n < size - n_good:
        b, i = bad_pool[int(rng.integers(len(bad_pool)))]
        picks.append((b, i))
        n += int(b.episode_lengths[i])
    dst = EpisodeStore.create(out, dict(g.features), task=g.task or bads[0].task, env_kwargs=g.env_kwargs,
                              control_period=g.control_period, overwrite=overwrite)
    try:
        for src in (g, *bads):  # low-dim arrays in memory: episodes are then sliced, not read chunk by chunk
            for key in src.features:
                src.read(key)
        tables = {id(src): src.episode_table() for src in (g, *bads)}
        for src, i in tqdm(picks, disable=not progress, desc=f"mix {ratio:g}", unit="ep", dynamic_ncols=True):
            ep = src.get_episode(i)
            t = tables[id(src)]
            meta = src.episode_metadata(i)
            dst.append_episode(ep, success=bool(t["success"][i]), collector=str(t["collector"][i]), seed=int(t["seed"][i]),
                               metadata=meta)
        good_picks = picks[:good_count]
        bad_picks = picks[good_count:]
        dst.set_attr("mix", {"good": str(good), "bad": [str(b) for b in bad_paths], "ratio": ratio, "size": size, "seed": seed,
                             "good_episodes": good_count, "bad_episodes": len(bad_picks),
                             "good_distinct": len({i for _, i in good_picks}),
                             "bad_distinct": len({(id(s), i) for s, i in bad_picks}),
                             "good_steps": int(sum(int(g.episode_lengths[i]) for _, i in good_picks)),
                             "good_successes": int(sum(bool(tables[id(g)]["success"][i]) for _, i in good_picks)),
                             "bad_successes": int(sum(bool(tables[id(s)]["success"][i]) for s, i in bad_picks))})
    finally:
        dst.close()
    return EpisodeStore.open(out, mode="r")
