"""`robolearn offline`: train IQL / CQL / Cal-QL / TD3+BC on an episode store.

Transitions come from the store (robolearn.rl.replay), batches from a trajectory-reweighting
sampler (robolearn.rl.weighting: uniform, rw, aw, topk) on the shared WeightedWindowSampler.
Logs JSON lines + wandb (robolearn.training.MetricLogger), evaluates the deterministic actor on
fixed seeds, and checkpoints like `robolearn train`:

    <run>/config.yaml, run.json, metrics.jsonl
    <run>/checkpoints/last/    full state for `--resume` (agent, optimizers, sampler, RNG)
    <run>/policy/              final actor + critics: `robolearn eval` and `robolearn finetune` load it
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from robolearn.config import ConfigError, to_dict


def _eval_record(agent: Any, env: Any, episodes: int, seed: int) -> dict[str, float]:
    from robolearn.rl.envs import evaluate

    was = agent.training
    agent.eval()
    recs = evaluate(lambda o: agent.act(o, deterministic=True), env, range(seed, seed + episodes))
    agent.train(was)
    return {"eval_return": float(np.mean([r["return"] for r in recs])),
            "eval_success": float(np.mean([r["success"] for r in recs])),
            "eval_length": float(np.mean([r["length"] for r in recs]))}


def train_offline(
    algo: str,
    data: str | Path | None,
    task: str | None = None,
    sampler: str | None = None,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    wandb_mode: str = "offline",
    resume: str | Path | None = None,
    config_path: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Train an offline RL agent; returns the run directory."""
    from tqdm import tqdm

    from robolearn.data.normalizer import compute_stats
    from robolearn.data.store import EpisodeStore
    from robolearn.rl.agent import MIN_STATE_STD, STATE_KEY
    from robolearn.rl.algos import OFFLINE_ALGOS, build_agent, load_resume, load_run_config, open_run, save_agent
    from robolearn.rl.envs import make_env
    from robolearn.rl.replay import transitions_from_store
    from robolearn.rl.weighting import DEFAULT_ALPHA, make_sampler, transition_probs
    from robolearn.training import MetricLogger, resolve_device

    overrides = list(overrides or [])
    if resume is not None:
        run_dir, run_json = open_run(resume, "offline")
        algo, data, task = run_json["algo"], run_json["data"], run_json["task"]
        cfg = load_run_config(algo, "offline", run_dir / "config.yaml", overrides)
    else:
        if algo not in OFFLINE_ALGOS:
            raise ValueError(f"--algo must be one of {', '.join(OFFLINE_ALGOS)}, got {algo!r}")
        if data is None:
            raise ConfigError("offline needs --data (or --resume DIR)")
        if sampler is not None:
            overrides.append(f"sampler.kind={sampler}")
        cfg = load_run_config(algo, "offline", config_path, overrides)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(out) if out else Path("runs") / f"{algo}-{cfg.sampler.kind}-{task or Path(str(data)).stem}-{stamp}"
    tcfg, scfg = cfg.train, cfg.sampler
    torch.set_num_threads(tcfg.threads)
    device = resolve_device(tcfg.device)

    store = EpisodeStore.open(data, mode="r")
    if store.num_episodes == 0:
        raise ValueError(f"{data} holds no episodes")
    trans = transitions_from_store(store, gamma=cfg.agent.discount, reward_scale=cfg.agent.reward_scale,
                                   reward_bias=cfg.agent.reward_bias)
    task = task or (store.task or None)
    stats = compute_stats(store, [STATE_KEY])
    stats[STATE_KEY]["std"] = np.maximum(stats[STATE_KEY]["std"], MIN_STATE_STD)
    torch.manual_seed(tcfg.seed)
    np.random.seed(tcfg.seed)
    agent = build_agent(algo, cfg.agent, trans.obs_dim, trans.action_dim, stats).to(device)
    alpha = scfg.alpha if scfg.alpha is not None else DEFAULT_ALPHA[algo]
    probs = transition_probs(scfg.kind, trans.episode, trans.episode_return, trans.initial_obs, alpha, scfg.topk)
    batch_sampler = make_sampler(probs, seed=tcfg.seed)
    start = 0
    if resume is not None:
        agent, meta, rng, start = load_resume(run_dir, tcfg.steps, device)
        batch_sampler.load_state_dict(meta["sampler"])
        torch.set_rng_state(rng["torch"])

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if resume is None:
        (run_dir / "run.json").write_text(json.dumps({
            "data": str(Path(str(data)).resolve()), "task": task, "algo": algo, "command": " ".join(sys.argv),
            "started": dt.datetime.now().isoformat(timespec="seconds"), "transitions": len(trans),
            "episodes": int(len(trans.episode_return)), "sampler_alpha": alpha,
        }, indent=1))
    logger = MetricLogger(run_dir, wandb_mode, to_dict(cfg), run_dir.name, True, start if resume else None)
    env_kwargs = store.env_kwargs if task == store.task else {}
    env = make_env(task, **env_kwargs) if (task and tcfg.eval_episodes > 0) else None
    # what the sampler puts weight on: share of probability mass of the top-10% return trajectories
    top = np.argsort(-trans.episode_return)[: max(1, len(trans.episode_return) // 10)]
    top_mass = float(probs[np.isin(trans.episode, top)].sum())

    def save(step: int, directory: Path, final: bool) -> None:
        extra = {"data": str(data), "env_kwargs": env_kwargs, "sampler": batch_sampler.state_dict(), "sampler_kind": scfg.kind, "sampler_alpha": alpha}
        save_agent(agent, directory, step=step, task=task, extra_meta=extra, train_state=not final)

    agent.train()
    bar = tqdm(range(start, tcfg.steps), initial=start, total=tcfg.steps, disable=not progress,
               desc=f"offline {algo}/{scfg.kind}", dynamic_ncols=True)
    running: dict[str, list[float]] = {}
    for step in bar:
        idx = batch_sampler.next_batch(tcfg.batch_size)
        info = agent.update(trans.batch(idx, device))
        if not all(np.isfinite(v) for v in info.values()):
            raise RuntimeError(f"offline training diverged at step {step + 1}: {info}")
        for k, v in info.items():
            running.setdefault(k, []).append(v)
        done = step + 1
        if done % tcfg.log_every == 0 or done == tcfg.steps:
            record: dict[str, Any] = {k: float(np.mean(v)) for k, v in running.items()}
            record["sampler_top10_mass"] = top_mass
            running = {}
            if env is not None and (done % tcfg.eval_every == 0 or done == tcfg.steps):
                record.update(_eval_record(agent, env, tcfg.eval_episodes, tcfg.eval_seed))
            logger.log(done, record)
            bar.set_postfix({k: f"{record[k]:.3g}" for k in ("eval_return", "q_mean") if k in record})
        if done % tcfg.save_every == 0 or done == tcfg.steps:
            save(done, run_dir / "checkpoints" / "last", final=False)
    save(tcfg.steps, run_dir / "policy", final=True)
    logger.close()
    if env is not None:
        env.close()
    return run_dir
