"""`robolearn finetune`: online SAC fine-tuning of an offline checkpoint, WSRL-style.

WSRL (Zhou et al., "Efficient Online RL Fine-Tuning Need Not Retain Offline Data"):
  1. initialise SAC's actor, critic ensemble (and temperature, if the checkpoint has one) from the
     offline agent; the replay buffer starts **empty**;
  2. warm-up: `warmup` env steps (default 5000) acting with the pre-trained policy, **no gradient
     updates**, filling the buffer with online transitions only;
  3. high-UTD SAC (critic ensemble, LayerNorm) on online data only.
Baselines through the same loop: `--warmup 0` (no warm-up, no retention), `--retain-offline 0.5`
(each batch half offline data), `--algo sac` (= no warm-up by default), `finetune.init=scratch`
(SAC from random weights with a random-action warm-up).

The deterministic policy is evaluated every `eval_every` env steps on fixed seeds (step 0 = the
pre-trained policy); the curve and its continual-evaluation metrics (robolearn.rl.metrics) are
written to `continual.json` and `continual.png` in the run directory. Env steps count from the
start of fine-tuning and include the warm-up, so every method gets the same number of samples.
(Online buffers are not checkpointed: a fine-tuning run restarts rather than resumes.)
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

from robolearn.config import to_dict


def _init_from(agent: Any, src: Any) -> None:
    """Copy actor + normaliser, critics (tiling members when ensemble sizes differ), temperature."""
    agent.policy.load_state_dict(src.policy.state_dict())
    if hasattr(src, "critic"):
        n_src, n = src.critic.num_qs, agent.critic.num_qs
        pick = [i % n_src for i in range(n)]
        for name in ("critic", "critic_target"):
            s, d = getattr(src, name), getattr(agent, name)
            with torch.no_grad():
                for k, v in s.params.items():
                    d.params[k].copy_(v[pick])
    if hasattr(src, "log_alpha"):
        with torch.no_grad():
            agent.log_alpha.copy_(src.log_alpha)


def finetune(
    checkpoint: str | Path | None,
    task: str | None = None,
    algo: str = "wsrl",
    warmup: int | None = None,
    retain_offline: float | None = None,
    steps: int | None = None,
    data: str | Path | None = None,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    wandb_mode: str = "offline",
    config_path: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Fine-tune online; returns the run directory."""
    from tqdm import tqdm

    from robolearn.data.store import EpisodeStore
    from robolearn.rl.agent import state_stats
    from robolearn.rl.algos import build_agent, load_agent, load_run_config, save_agent
    from robolearn.rl.envs import is_own_task, make_env
    from robolearn.rl.metrics import continual_metrics, plot_curves
    from robolearn.rl.replay import ReplayBuffer, concat_batches, transitions_from_store
    from robolearn.training import MetricLogger, resolve_device

    if algo not in ("wsrl", "sac"):
        raise ValueError(f"--algo must be wsrl or sac, got {algo!r}")
    overrides = list(overrides or [])
    for key, value in (("warmup", warmup), ("retain_offline", retain_offline), ("steps", steps)):
        if value is not None:
            overrides.append(f"finetune.{key}={value}")
    cfg = load_run_config(algo, "finetune", config_path, overrides)
    fcfg = cfg.finetune
    torch.set_num_threads(fcfg.threads)
    device = resolve_device(fcfg.device)
    torch.manual_seed(fcfg.seed)
    np.random.seed(fcfg.seed)

    src, meta = (None, {})
    if checkpoint is not None:
        src, meta = load_agent(checkpoint)
    elif fcfg.init == "checkpoint":
        raise ValueError("finetune needs --checkpoint (or finetune.init=scratch with --task)")
    task = task or meta.get("task")
    if not task:
        raise ValueError("no task: pass --task (the checkpoint records none)")
    env_kwargs = dict(meta.get("env_kwargs") or {}) if task == meta.get("task") else {}
    env = make_env(task, **env_kwargs)
    eval_env = make_env(task, **env_kwargs)
    acfg = cfg.agent
    if src is not None:  # the network shapes and reward transform are the pre-trained agent's
        s = src.cfg
        acfg = dataclasses.replace(acfg, hidden_dims=list(s.hidden_dims), activation=s.activation,
                                   critic_layer_norm=s.critic_layer_norm, actor_layer_norm=s.actor_layer_norm,
                                   obs_norm=s.obs_norm, reward_scale=s.reward_scale, reward_bias=s.reward_bias)
        if (src.obs_dim, src.action_dim) != (env.obs_dim, env.action_dim):
            raise ValueError(f"checkpoint dims (obs {src.obs_dim}, action {src.action_dim}) do not fit task {task!r} "
                             f"(obs {env.obs_dim}, action {env.action_dim})")
        stats = src.policy.normalizer.stats
    else:
        stats = state_stats(None, env.obs_dim)
    agent = build_agent("sac", acfg, env.obs_dim, env.action_dim, stats).to(device)
    if src is not None and fcfg.init == "checkpoint":
        _init_from(agent, src)
    acfg = agent.cfg

    offline = None
    if fcfg.retain_offline > 0:
        data = data or meta.get("data")
        if not data:
            raise ValueError("--retain-offline needs the offline data: pass --data (the checkpoint records none)")
        offline = transitions_from_store(EpisodeStore.open(data, mode="r"), gamma=acfg.discount,
                                         reward_scale=acfg.reward_scale, reward_bias=acfg.reward_bias)
        if offline.obs_dim != env.obs_dim or offline.action_dim != env.action_dim:
            raise ValueError(f"{data} does not fit task {task!r} (obs/action dims differ)")
    n_off = int(round(fcfg.batch_size * fcfg.retain_offline))
    n_on = fcfg.batch_size - n_off
    off_rng = np.random.default_rng(fcfg.seed + 7)
    buffer = ReplayBuffer(env.obs_dim, env.action_dim, fcfg.buffer_capacity, seed=fcfg.seed)
    act_gen = torch.Generator().manual_seed(fcfg.seed)
    act_rng = np.random.default_rng(fcfg.seed)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out) if out else Path("runs") / f"finetune-{algo}-{task}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (run_dir / "run.json").write_text(json.dumps({
        "checkpoint": str(checkpoint) if checkpoint else None, "task": task, "algo": algo, "data": str(data) if data else None,
        "source_algo": src.name if src is not None else None, "command": " ".join(sys.argv),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
    }, indent=1))
    logger = MetricLogger(run_dir, wandb_mode, to_dict(cfg), run_dir.name, True, None)
    own = is_own_task(task)
    eval_seeds = list(range(fcfg.eval_seed, fcfg.eval_seed + fcfg.eval_episodes))
    history: list[dict[str, Any]] = []

    def evaluate_now(step: int) -> dict[str, float]:
        from robolearn.rl.envs import evaluate

        recs = evaluate(lambda o: agent.act(o, deterministic=True), eval_env, eval_seeds)
        rec = {"step": step, "success": float(np.mean([r["success"] for r in recs])),
               "return": float(np.mean([r["return"] for r in recs])),
               "per_seed_success": [bool(r["success"]) for r in recs], "per_seed_return": [r["return"] for r in recs]}
        rec["score"] = rec["success"] if own else rec["return"]
        history.append(rec)
        return {"eval_success": rec["success"], "eval_return": rec["return"], "eval_score": rec["score"]}

    stats_log = {"grad_updates": 0, "warmup_grad_updates": 0, "offline_samples": 0}
    episode = 0
    obs = env.reset(seed=fcfg.seed * 1_000_003 + episode)
    ep_ret, ep_returns = 0.0, []
    running: dict[str, list[float]] = {}
    if fcfg.eval_episodes > 0:
        logger.log(0, evaluate_now(0))
    bar = tqdm(range(fcfg.steps), disable=not progress, desc=f"finetune {algo} {task}", dynamic_ncols=True)
    for t in bar:
        in_warmup = t < fcfg.warmup
        if in_warmup and (fcfg.init == "scratch" or src is None):
            action = act_rng.uniform(-1.0, 1.0, env.action_dim).astype(np.float32)
        else:
            action = agent.act(obs, deterministic=False, generator=act_gen)
        next_obs, reward, term, trunc, _ = env.step(action)
        buffer.add(obs, action, reward * acfg.reward_scale + acfg.reward_bias, next_obs, term)
        ep_ret += reward
        obs = next_obs
        if term or trunc:
            ep_returns.append(ep_ret)
            episode += 1
            obs, ep_ret = env.reset(seed=fcfg.seed * 1_000_003 + episode), 0.0
        if not in_warmup and len(buffer) >= n_on:
            batches = []
            for _ in range(acfg.utd):
                b = buffer.sample(n_on, device)
                if offline is not None and n_off > 0:
                    b = concat_batches(b, offline.batch(off_rng.integers(0, len(offline), n_off), device))
                    stats_log["offline_samples"] += n_off
                batches.append(b)
            info = agent.update(batches)
            stats_log["grad_updates"] += len(batches)
            for k, v in info.items():
                running.setdefault(k, []).append(v)
        done = t + 1
        record: dict[str, Any] = {}
        if done % fcfg.log_every == 0 or done == fcfg.steps:
            record.update({k: float(np.mean(v)) for k, v in running.items()})
            running = {}
            if ep_returns:
                record["train_episode_return"] = float(np.mean(ep_returns[-10:]))
            record.update(grad_updates=stats_log["grad_updates"], buffer_size=len(buffer), warmup=int(in_warmup))
        if fcfg.eval_episodes > 0 and (done % fcfg.eval_every == 0 or done == fcfg.steps):
            record.update(evaluate_now(done))
            bar.set_postfix(score=f"{history[-1]['score']:.3g}")
        if record:
            logger.log(done, record)
        if done == fcfg.warmup:
            stats_log["warmup_grad_updates"] = stats_log["grad_updates"]
        if done % fcfg.save_every == 0 and done < fcfg.steps:
            save_agent(agent, run_dir / "checkpoints" / "last", step=done, task=task, train_state=True,
                       extra_meta={"data": str(data) if data else None})
    extra = {"data": str(data) if data else meta.get("data"), "env_kwargs": env_kwargs, "finetune": {"algo": algo, **stats_log}}
    save_agent(agent, run_dir / "policy", step=fcfg.steps, task=task, extra_meta=extra)
    summary: dict[str, Any] = {"task": task, "algo": algo, "warmup": fcfg.warmup, "retain_offline": fcfg.retain_offline,
                               "score": "success rate" if own else "mean return", **stats_log,
                               "online_transitions": buffer.added, "history": history}
    if history:
        steps_h = [h["step"] for h in history]
        window = max(fcfg.eval_every * 3, 1)
        summary["metrics"] = continual_metrics(steps_h, [h["score"] for h in history], window)
        plot_curves({algo: (steps_h, [h["score"] for h in history], None)}, run_dir / "continual.png",
                    "success rate" if own else "mean return", f"{algo} fine-tuning on {task}", warmup=fcfg.warmup or None)
    (run_dir / "continual.json").write_text(json.dumps(summary, indent=1))
    logger.close()
    env.close()
    eval_env.close()
    return run_dir
