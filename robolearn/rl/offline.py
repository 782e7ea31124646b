"""`robolearn offline`: train IQL / CQL / Cal-QL / TD3+BC on an episode store.

Transitions come from the store (robolearn.rl.replay), batches from a trajectory-reweighting
sampler (robolearn.rl.weighting: uniform, rw, aw, topk) on the shared WeightedWindowSampler.
Logs JSON lines + wandb (robolearn.training.MetricLogger), evaluates the deterministic actor on
fixed seeds, and checkpoints like `robolearn train`:

    <run>/config.yaml, run.json, metrics.jsonl (losses every log_every, evaluations every eval_every)
    <run>/continual.json, continual.png   the evaluation curve (step 0 = the initial policy) and its
                               continual metrics (robolearn.rl.metrics: min-ACC, WC-ACC, stability gap)
    <run>/checkpoints/last/    full state for `--resume` (agent, optimizers, sampler, RNG)
    <run>/policy/              final actor + critics: `robolearn eval` and `robolearn finetune` load it
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from robolearn.config import ConfigError, to_dict


def _eval_record(agent: Any, env: Any, episodes: int, seed: int, num_envs: int, step: int, own: bool) -> dict[str, Any]:
    """One evaluation of the deterministic actor on seeds seed .. seed+episodes-1 (a history entry)."""
    from robolearn.rl.envs import evaluate_actor

    recs = evaluate_actor(agent.policy, env, range(seed, seed + episodes), num_envs=num_envs)
    rec = {"step": step, "success": float(np.mean([r["success"] for r in recs])),
           "return": float(np.mean([r["return"] for r in recs])), "length": float(np.mean([r["length"] for r in recs]))}
    rec["score"] = rec["success"] if own else rec["return"]
    return rec


def check_layout(data: str | Path, store_task: str | None, trans_dims: tuple[int, int], task: str, env: Any) -> None:
    """One clear line, before any training, when the store's observations/actions do not fit `task`."""
    obs_dim, action_dim = trans_dims
    if (env.obs_dim, env.action_dim) != (obs_dim, action_dim):
        held = f"task {store_task!r} " if store_task else ""
        raise ValueError(f"{data} holds {held}data with obs {obs_dim} / action {action_dim}, but --task {task} has "
                         f"obs {env.obs_dim} / action {env.action_dim}: evaluate on the store's own task "
                         f"(or build the data with the same task and task overrides, e.g. obs_relative)")


def return_range_scale(returns: np.ndarray, lengths: np.ndarray) -> float:
    """IQL's locomotion reward scaling, for episodes of any length: L / (max - min episode return),
    L the longest episode in the data. IQL's 1000 is the locomotion datasets' episode length; the
    point is a return span of about one reward unit per step. With 1000 on our 60-step tasks the
    rewards would be ~17x the recipe's scale and IQL's advantage weights would sit at their cap."""
    span = float(np.max(returns) - np.min(returns))
    if span <= 0:
        raise ValueError("train.reward_norm=return_range needs episodes with different returns")
    return float(np.max(lengths)) / span


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
    from robolearn.rl.envs import is_own_task, make_env
    from robolearn.rl.metrics import continual_record, write_continual
    from robolearn.rl.replay import transitions_from_store
    from robolearn.rl.weighting import DEFAULT_ALPHA, make_sampler, transition_probs
    from robolearn.training import MetricLogger, read_metrics, resolve_device

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
    if tcfg.reward_norm == "return_range" and resume is None:  # resume: config.yaml already holds the scale
        raw = transitions_from_store(store, gamma=cfg.agent.discount)
        cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, reward_scale=return_range_scale(raw.episode_return,
                                                                                                         raw.episode_length)))
    trans = transitions_from_store(store, gamma=cfg.agent.discount, reward_scale=cfg.agent.reward_scale,
                                   reward_bias=cfg.agent.reward_bias)
    named_task = task is not None
    task = task or (store.task or None)
    env_kwargs = store.env_kwargs if task == store.task else {}
    env = None  # built for evaluation, or to check a --task the user named (before any training)
    if task and (tcfg.eval_episodes > 0 or named_task):
        env = make_env(task, **env_kwargs)
        check_layout(data, store.task, (trans.obs_dim, trans.action_dim), task, env)
        if tcfg.eval_episodes == 0:
            env.close()
            env = None
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
        # a run stopped between its final checkpoint and policy/ resumes with no step left: it only writes its outputs
        agent, meta, rng, start = load_resume(run_dir, tcfg.steps, device, at_end_ok=True, extend_hint="train.steps=N extends it")
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
    own = env is not None and is_own_task(task)
    history: list[dict[str, Any]] = [
        {k: r[f"eval_{k}"] for k in ("success", "return", "length", "score") if f"eval_{k}" in r} | {"step": r["step"]}
        for r in (read_metrics(run_dir) if resume is not None else []) if "eval_score" in r]

    def evaluate_now(step: int) -> dict[str, float]:
        agent.eval()
        rec = _eval_record(agent, env, tcfg.eval_episodes, tcfg.eval_seed, tcfg.eval_num_envs, step, own)
        agent.train()
        history.append(rec)
        return {f"eval_{k}": rec[k] for k in ("return", "success", "length", "score")}

    # what the sampler puts weight on: share of probability mass of the top-10% return trajectories
    top = np.argsort(-trans.episode_return)[: max(1, len(trans.episode_return) // 10)]
    top_mass = float(probs[np.isin(trans.episode, top)].sum())

    def save(step: int, directory: Path, final: bool) -> None:
        extra = {"data": str(data), "env_kwargs": env_kwargs, "sampler": batch_sampler.state_dict(), "sampler_kind": scfg.kind, "sampler_alpha": alpha}
        save_agent(agent, directory, step=step, task=task, extra_meta=extra, train_state=not final)

    agent.train()
    if env is not None and resume is None:  # step 0: the initial policy, the curve's reference point
        logger.log(0, evaluate_now(0))
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
        record: dict[str, Any] = {}
        if done % tcfg.log_every == 0 or done == tcfg.steps:  # logging and evaluation run on their own schedules
            record.update({k: float(np.mean(v)) for k, v in running.items()})
            record["sampler_top10_mass"] = top_mass
            running = {}
        if env is not None and (done % tcfg.eval_every == 0 or done == tcfg.steps):
            record.update(evaluate_now(done))
        if record:
            logger.log(done, record)
            bar.set_postfix({k: f"{record[k]:.3g}" for k in ("eval_return", "q_mean") if k in record})
        if done % tcfg.save_every == 0 or done == tcfg.steps:
            save(done, run_dir / "checkpoints" / "last", final=False)
    save(tcfg.steps, run_dir / "policy", final=True)
    summary = continual_record(history, window=3 * tcfg.eval_every, score_name="success rate" if own else "mean return",
                               task=task, algo=algo, sampler=scfg.kind, data=str(data), steps=tcfg.steps,
                               eval_every=tcfg.eval_every, eval_episodes=tcfg.eval_episodes, reward_scale=cfg.agent.reward_scale)
    write_continual(run_dir, summary, f"{algo}/{scfg.kind}", f"{algo} ({scfg.kind} sampler) offline on {task}", "gradient steps")
    logger.close()
    if env is not None:
        env.close()
    return run_dir
