"""`robolearn finetune`: online SAC fine-tuning of an offline checkpoint, WSRL-style.

WSRL (Zhou et al., "Efficient Online RL Fine-Tuning Need Not Retain Offline Data"):
  1. initialise SAC's actor, critic ensemble (and temperature, if the checkpoint has one) from the
     offline agent; the replay buffer starts **empty**;
  2. warm-up: `warmup` env steps (default 5000) acting with the pre-trained policy, **no gradient
     updates**, filling the buffer with online transitions only;
  3. high-UTD SAC (critic ensemble, LayerNorm) on online data only.
Baselines through the same loop: `--warmup 0` (no warm-up, no retention), `--retain-offline 0.5`
(each batch half offline data), `--algo sac` (= no warm-up by default), `finetune.init=scratch`
(SAC from random weights with a random-action warm-up), and `--algo cql|calql`: the offline learner
itself continues online, conservative penalty included (as CQL's and Cal-QL's own fine-tuning do; Cal-QL's
Monte-Carlo bound applies to offline samples and to online ones whose episode has ended, whose
return-to-go the replay buffer fills in then, as the reference computes it per finished trajectory).

The deterministic policy is evaluated every `eval_every` env steps on fixed seeds (step 0 = the
pre-trained policy); the curve and its continual-evaluation metrics (robolearn.rl.metrics) are
written to `continual.json` and `continual.png` in the run directory. Env steps count from the
start of fine-tuning and include the warm-up, so every method gets the same number of samples.

`finetune.critic_only=N` trains only the critics for the first N env steps after the warm-up (the
policy and temperature held), so the critics adapt to online data before the policy follows them.
`finetune.optimizer_state=checkpoint` continues the pre-trained agent's Adam moments (from a
`checkpoints/last` directory) rather than starting fresh ones.

Many envs (`--num-envs K` / `finetune.num_envs`, our tasks) and MuJoCo Warp (`--backend gpu|warp-cpu`
/ `finetune.backend`): every env steps once per loop step through the project's rollout engine
(robolearn.rl.vector), adding K transitions, so env-step counts (steps, warm-up, log/eval/save
intervals) advance by K and the run ends at the first multiple of K >= steps; each loop step then
does K x `utd` critic updates (the same updates per transition as one env). On MuJoCo Warp the
agent, the replay buffer and the action draws live on the backend's device and evaluation runs
there too. A resumed many-env run restores the agent, replay, counters and generators exactly;
host envs (MuJoCo C) continue their running episodes exactly, so the run resumes bit-identically
as with one env; device envs start fresh episodes (the ones running at the checkpoint are cut;
their transitions are in the replay), so a device run is not bit-identical to an uninterrupted one.

Checkpoints like `robolearn offline` (robolearn.rl.algos.save_agent / load_resume):
`<run>/checkpoints/last` every `save_every` env steps holds the agent, its optimizers, the online
replay buffer (safetensors arrays, nothing pickled), the env-step / episode / warm-up counters, the
torch and numpy generator states and the continual-evaluation history; `--resume DIR` continues
exactly there. The env itself is restored by resetting it with the episode's seed and replaying
the episode's actions so far (stored with the checkpoint), so a resumed run reproduces the
uninterrupted one on CPU. `<run>/policy` is the final actor + critics (`robolearn eval`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from robolearn.config import ConfigError, to_dict


def _members(src: Any, agent: Any) -> list[int]:
    """Which source critic each fine-tuned critic starts from: the members, tiled when ensemble sizes differ."""
    n_src, n = src.critic.num_qs, agent.critic.num_qs
    return [i % n_src for i in range(n)]


def _init_from(agent: Any, src: Any) -> None:
    """Copy actor + normaliser, critics (tiling members when ensemble sizes differ), temperature."""
    agent.policy.load_state_dict(src.policy.state_dict())
    if hasattr(src, "critic"):
        pick = _members(src, agent)
        for name in ("critic", "critic_target"):
            s, d = getattr(src, name), getattr(agent, name)
            with torch.no_grad():
                for k, v in s.params.items():
                    d.params[k].copy_(v[pick])
    if hasattr(src, "log_alpha"):
        with torch.no_grad():
            agent.log_alpha.copy_(src.log_alpha)


def _carry_optimizers(agent: Any, src: Any) -> list[str]:
    """Continue the pre-trained agent's Adam moments and step counts (its optimizers loaded from a
    checkpoints/last directory) instead of fresh ones: a fresh Adam moves every weight by about the
    learning rate on its first steps, whatever the gradient's size. Critic moments follow the critics'
    member tiling; the learning rates stay the fine-tuning config's. Returns the optimizers carried."""
    pick = _members(src, agent) if hasattr(src, "critic") else None
    mine, theirs = agent.optimizers(), src.optimizers()
    carried = []
    for name, opt in mine.items():
        if name not in theirs:
            continue
        dst_params = [p for g in opt.param_groups for p in g["params"]]
        src_params = [p for g in theirs[name].param_groups for p in g["params"]]
        if len(dst_params) != len(src_params):
            raise ValueError(f"optimizer {name!r}: {len(src_params)} pre-trained parameters, {len(dst_params)} to fine-tune")
        for d, p in zip(dst_params, src_params):
            st = theirs[name].state.get(p)
            if not st:
                continue
            new = {}
            for k, v in st.items():
                if name == "critic" and pick is not None and v.dim() > 0:  # stacked (members, ...) moments
                    v = v[pick]
                if v.dim() > 0 and v.shape != d.shape:
                    raise ValueError(f"optimizer {name!r}: state {k} of shape {tuple(v.shape)} does not fit a parameter of {tuple(d.shape)}")
                new[k] = v.detach().clone().to(d.device)
            opt.state[d] = new
        carried.append(name)
    return carried


def _backend_device(backend: str) -> torch.device:
    """The torch device of a MuJoCo Warp backend: the agent, its replay and its action draws live
    there (a clear error, before anything loads, when `gpu` has no CUDA device)."""
    if backend == "warp-cpu":
        return torch.device("cpu")
    from robolearn.tasks.warp_backend import resolve_device as warp_device

    return torch.device(warp_device("cuda"))


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
    resume: str | Path | None = None,
    backend: str | None = None,
    num_envs: int | None = None,
) -> Path:
    """Fine-tune online (or continue the run in `resume` exactly where it stopped); returns the run directory.
    backend / num_envs: `finetune.backend` / `finetune.num_envs` (see robolearn.rl.vector)."""
    from tqdm import tqdm

    from robolearn.checkpoint import CheckpointError, load_tensors
    from robolearn.config import parse_overrides
    from robolearn.data.store import EpisodeStore
    from robolearn.rl.agent import state_stats
    from robolearn.rl.algos import FINETUNE_ALGOS, FINETUNE_LEARNER, build_agent, load_agent, load_resume, load_run_config, open_run, save_agent
    from robolearn.rl.envs import is_own_task, make_env
    from robolearn.rl.metrics import continual_record, write_continual
    from robolearn.rl.replay import ReplayBuffer, concat_batches, transitions_from_store
    from robolearn.training import MetricLogger, resolve_device

    overrides = list(overrides or [])
    for key, value in (("backend", backend), ("num_envs", num_envs)):  # also on --resume: a run may move to another backend
        if value is not None:
            overrides.append(f"finetune.{key}={value}")
    state: dict[str, Any] | None = None  # loop state of the checkpoint being resumed
    if resume is not None:
        given = [flag for flag, v in (("--checkpoint", checkpoint), ("--task", task), ("--warmup", warmup), ("--retain-offline", retain_offline),
                                      ("--data", data), ("--out", out), ("--config", config_path)) if v is not None]
        if given:
            raise ConfigError(f"--resume continues a run with its own settings; drop {', '.join(given)} "
                              "(--steps N or finetune.steps=N extends it)")
        if steps is not None:
            overrides.append(f"finetune.steps={steps}")
        run_dir, run_json = open_run(resume, "finetune")
        algo, task, data, checkpoint = run_json["algo"], run_json["task"], run_json.get("data"), run_json.get("checkpoint")
        cfg = load_run_config(algo, "finetune", run_dir / "config.yaml", overrides)
    else:
        if algo not in FINETUNE_ALGOS:
            raise ValueError(f"--algo must be one of {', '.join(FINETUNE_ALGOS)}, got {algo!r}")
        for key, value in (("warmup", warmup), ("retain_offline", retain_offline), ("steps", steps)):
            if value is not None:
                overrides.append(f"finetune.{key}={value}")
        cfg = load_run_config(algo, "finetune", config_path, overrides)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    fcfg = cfg.finetune
    torch.set_num_threads(fcfg.threads)
    vector = fcfg.backend != "cpu" or fcfg.num_envs > 1  # the rollout engine over many envs (robolearn.rl.vector)
    device = resolve_device(fcfg.device) if fcfg.backend == "cpu" else _backend_device(fcfg.backend)
    torch.manual_seed(fcfg.seed)
    np.random.seed(fcfg.seed)

    start = 0
    if resume is not None:
        agent, meta, rng_tensors, start = load_resume(run_dir, fcfg.steps, device, extend_hint="--steps N extends it")
        state = meta.get("finetune_state")
        if not isinstance(state, dict):
            raise CheckpointError(f"{run_dir / 'checkpoints' / 'last'} holds no fine-tuning loop state (not a `robolearn finetune` checkpoint)")
        env_kwargs = dict(meta.get("env_kwargs") or {})
        random_warmup = bool(state["random_warmup"])
    else:
        src, meta = (None, {})
        if fcfg.optimizer_state == "checkpoint" and (checkpoint is None or fcfg.init == "scratch"):
            raise ValueError("finetune.optimizer_state=checkpoint continues a pre-trained agent's optimizers: it needs "
                             "--checkpoint (a checkpoints/last directory) and finetune.init=checkpoint")
        if checkpoint is not None:
            src, meta = load_agent(checkpoint, with_optimizers=fcfg.optimizer_state == "checkpoint")
        elif fcfg.init == "checkpoint":
            raise ValueError("finetune needs --checkpoint (or finetune.init=scratch with --task)")
        task = task or meta.get("task")
        if not task:
            raise ValueError("no task: pass --task (the checkpoint records none)")
        env_kwargs = dict(meta.get("env_kwargs") or {}) if task == meta.get("task") else {}
        if src is None and data is not None:  # from scratch on a store's task: its env settings (e.g. obs_relative)
            store = EpisodeStore.open(data, mode="r")
            if store.task == task:
                env_kwargs = dict(store.env_kwargs)
    if vector and not is_own_task(task):
        raise ValueError(f"finetune.num_envs > 1 and --backend gpu|warp-cpu run robolearn tasks; {task!r} is a gymnasium "
                         "env (fine-tune it with one env on --backend cpu)")
    env = make_env(task, **env_kwargs)  # the vector path uses it only for its dimensions
    eval_env = make_env(task, **env_kwargs)
    if resume is not None:
        if (agent.name, agent.obs_dim, agent.action_dim) != (FINETUNE_LEARNER[algo], env.obs_dim, env.action_dim):
            raise CheckpointError(f"{run_dir}: checkpoint agent {agent.name} (obs {agent.obs_dim}, action {agent.action_dim}) "
                                  f"does not fit {algo} fine-tuning on {task!r}")
    else:
        acfg = cfg.agent
        if src is not None:  # the network shapes and reward transform are the pre-trained agent's
            s = src.cfg
            acfg = dataclasses.replace(acfg, hidden_dims=list(s.hidden_dims), activation=s.activation,
                                       critic_layer_norm=s.critic_layer_norm, actor_layer_norm=s.actor_layer_norm,
                                       obs_norm=s.obs_norm, reward_scale=s.reward_scale, reward_bias=s.reward_bias)
            asked = parse_overrides(overrides).get("agent", {})
            for key in ("reward_scale", "reward_bias"):  # an explicit override the checkpoint contradicts is an error
                if key in asked and float(getattr(cfg.agent, key)) != float(getattr(s, key)):
                    raise ValueError(f"agent.{key}={getattr(cfg.agent, key)} differs from the pre-trained agent's "
                                     f"{getattr(s, key)}: its critics were trained on that reward; pre-train with it instead")
            if (src.obs_dim, src.action_dim) != (env.obs_dim, env.action_dim):
                raise ValueError(f"checkpoint dims (obs {src.obs_dim}, action {src.action_dim}) do not fit task {task!r} "
                                 f"(obs {env.obs_dim}, action {env.action_dim})")
            stats = src.policy.normalizer.stats
        else:
            stats = state_stats(None, env.obs_dim)
        agent = build_agent(FINETUNE_LEARNER[algo], acfg, env.obs_dim, env.action_dim, stats).to(device)
        if src is not None and fcfg.init == "checkpoint":
            _init_from(agent, src)
            if fcfg.optimizer_state == "checkpoint":
                _carry_optimizers(agent, src)
        random_warmup = fcfg.init == "scratch" or src is None
        cfg = dataclasses.replace(cfg, agent=agent.cfg)  # config.yaml records the agent actually trained
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
    on_device = fcfg.backend != "cpu"  # replay, agent and action draws on the env's device
    # Cal-QL's bound needs each online transition's return-to-go, filled in when its episode ends
    buffer = ReplayBuffer(env.obs_dim, env.action_dim, fcfg.buffer_capacity, seed=fcfg.seed, device=device if on_device else None,
                          returns_to_go=bool(getattr(acfg, "calql", False)))
    act_gen = torch.Generator(device).manual_seed(fcfg.seed) if vector else torch.Generator().manual_seed(fcfg.seed)
    act_rng = np.random.default_rng(fcfg.seed)

    if resume is None:
        run_dir = Path(out) if out else Path("runs") / f"finetune-{algo}-{task}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if resume is None:
        (run_dir / "run.json").write_text(json.dumps({
            "checkpoint": str(checkpoint) if checkpoint else None, "task": task, "algo": algo, "data": str(data) if data else None,
            "source_algo": src.name if src is not None else None, "command": " ".join(sys.argv),
            "started": dt.datetime.now().isoformat(timespec="seconds"),
        }, indent=1))
    logger = MetricLogger(run_dir, wandb_mode, to_dict(cfg), run_dir.name, True, start if resume is not None else None)
    own = is_own_task(task)
    eval_seeds = list(range(fcfg.eval_seed, fcfg.eval_seed + fcfg.eval_episodes))
    history: list[dict[str, Any]] = []

    def evaluate_now(step: int) -> dict[str, float]:
        from robolearn.rl.envs import evaluate_actor

        recs = evaluate_actor(agent.policy, eval_env, eval_seeds, num_envs=fcfg.eval_num_envs, backend=fcfg.backend)
        rec = {"step": step, "success": float(np.mean([r["success"] for r in recs])),
               "return": float(np.mean([r["return"] for r in recs])),
               "per_seed_success": [bool(r["success"]) for r in recs], "per_seed_return": [r["return"] for r in recs]}
        rec["score"] = rec["success"] if own else rec["return"]
        history.append(rec)
        return {"eval_success": rec["success"], "eval_return": rec["return"], "eval_score": rec["score"]}

    def env_seed(ep: int) -> int:
        return fcfg.seed * 1_000_003 + ep

    stats_log = {"grad_updates": 0, "warmup_grad_updates": 0, "offline_samples": 0}
    episode = 0
    ep_ret, ep_returns, ep_actions = 0.0, [], []
    running: dict[str, list[float]] = {}
    obs = np.zeros(0, np.float32)  # the one env's observation (the vector path keeps its own)
    if state is None:
        if not vector:
            obs = env.reset(seed=env_seed(episode))
        if fcfg.eval_episodes > 0:
            logger.log(0, evaluate_now(0))
    else:
        last = run_dir / "checkpoints" / "last"
        buffer.load_state_dict(load_tensors(last, "replay", meta), state["replay"])
        episode, ep_ret, ep_returns = int(state["episode"]), float(state["ep_return"]), list(state["ep_returns"])
        running = {k: list(v) for k, v in state["running"].items()}
        stats_log.update(state["stats"])
        history.extend(state["history"])
        if vector or state.get("vector"):
            # many envs: host envs continue exactly (robolearn.rl.vector restores them below); device
            # envs start fresh episodes with the seeds after the ones handed out (the running ones are
            # cut; their transitions are in the restored replay)
            ep_ret = 0.0
            if not vector:
                obs = env.reset(seed=env_seed(episode))
        else:
            # the env: reset with the episode's seed and replay its actions so far
            obs = env.reset(seed=env_seed(episode))
            for a in load_tensors(last, "episode", meta)["actions"].numpy():
                obs = env.step(a)[0]
                ep_actions.append(a)
        if not vector and not state.get("vector") and not np.array_equal(obs, np.asarray(state["obs"], np.float32)):
            warnings.warn(f"{task}: replaying the current episode did not reproduce the checkpoint's observation "
                          "(non-deterministic env); the resumed run continues but will not match an uninterrupted one")
        # generators last: nothing above may shift them
        act_rng.bit_generator.state = state["act_rng"]
        off_rng.bit_generator.state = state["off_rng"]
        name, pos, has_gauss, gauss = state["np_global"]
        np.random.set_state((name, rng_tensors["np_global"].numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
        act_gen.set_state(rng_tensors["act_gen"])
        torch.set_rng_state(rng_tensors["torch"])

    interaction = None
    if vector:
        from robolearn.rl.vector import VectorInteraction

        def next_seed() -> int:  # episodes of all envs take consecutive seeds, in the order they are handed out
            nonlocal episode
            episode += 1
            return env_seed(episode - 1)

        interaction = VectorInteraction(task, env_kwargs, fcfg.backend, fcfg.num_envs, agent, buffer, act_gen, next_seed)
        if state is not None and isinstance(state.get("envs"), dict):
            last = run_dir / "checkpoints" / "last"
            envs_tensors = load_tensors(last, "envs", meta) if state["envs"].get("exact") else {}
            interaction.load_state_dict(envs_tensors, state["envs"])

    def save_last(step: int) -> None:
        replay_tensors, replay_meta = buffer.state_dict()
        np_state = np.random.get_state()
        rng = {"torch": torch.get_rng_state(), "act_gen": act_gen.get_state(),
               "np_global": torch.from_numpy(np_state[1].astype(np.int64))}
        loop = {"episode": episode, "ep_return": ep_ret, "ep_returns": ep_returns[-10:], "obs": obs.tolist(),
                "vector": vector, "running": running, "stats": stats_log, "history": history, "random_warmup": random_warmup,
                "replay": replay_meta, "act_rng": act_rng.bit_generator.state, "off_rng": off_rng.bit_generator.state,
                "np_global": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]}
        actions = np.asarray(ep_actions, np.float32).reshape(len(ep_actions), env.action_dim)
        groups = {"replay": replay_tensors, "episode": {"actions": torch.from_numpy(actions)}}
        if interaction is not None:
            envs_tensors, loop["envs"] = interaction.state_dict()
            if envs_tensors:
                groups["envs"] = envs_tensors
        save_agent(agent, run_dir / "checkpoints" / "last", step=step, task=task, train_state=True, rng=rng,
                   extra_groups=groups,
                   extra_meta={"data": str(data) if data else None, "env_kwargs": env_kwargs, "finetune_state": loop})

    K = fcfg.num_envs if vector else 1  # transitions per loop step
    bar = tqdm(total=fcfg.steps, initial=start, disable=not progress, desc=f"finetune {algo} {task}", dynamic_ncols=True)
    t = start
    while t < fcfg.steps:
        in_warmup = t < fcfg.warmup
        if interaction is not None:  # every env steps once: K transitions into the replay
            interaction.step(random_actions=in_warmup and random_warmup)
        else:
            if in_warmup and random_warmup:
                action = act_rng.uniform(-1.0, 1.0, env.action_dim).astype(np.float32)
            else:
                action = agent.act(obs, deterministic=False, generator=act_gen)
            next_obs, reward, term, trunc, _ = env.step(action)
            buffer.add(obs, action, reward * acfg.reward_scale + acfg.reward_bias, next_obs, term)
            ep_actions.append(np.asarray(action, np.float32).reshape(-1))
            ep_ret += reward
            obs = next_obs
            if term or trunc:
                buffer.close_episodes([0], [len(ep_actions)], 1, acfg.discount)
                ep_returns.append(ep_ret)
                episode += 1
                obs, ep_ret, ep_actions = env.reset(seed=env_seed(episode)), 0.0, []
        prev, t = t, t + K
        bar.update(K)
        if not in_warmup and len(buffer) >= n_on:
            for _ in range(K):  # UTD per transition: `utd` critic updates (+ one actor update) per env step
                batches = []
                for _ in range(acfg.utd):
                    b = buffer.sample(n_on, device)
                    if offline is not None and n_off > 0:
                        b = concat_batches(b, offline.batch(off_rng.integers(0, len(offline), n_off), device))
                        stats_log["offline_samples"] += n_off
                    batches.append(b)
                info = agent.update(batches, update_actor=prev >= fcfg.warmup + fcfg.critic_only)
                stats_log["grad_updates"] += len(batches)
                for k, v in info.items():
                    running.setdefault(k, []).append(v)
        done = t

        def crossed(every: int) -> bool:  # a multiple of `every` env steps was reached in this loop step
            return done // every > prev // every

        record: dict[str, Any] = {}
        if crossed(fcfg.log_every) or done >= fcfg.steps:
            record.update({k: float(np.mean(v)) for k, v in running.items()})
            running = {}
            if interaction is not None:  # mean return of the episodes finished since the last log
                total, count = interaction.hook.take_returns()
                if count:
                    record["train_episode_return"] = total / count
            elif ep_returns:
                record["train_episode_return"] = float(np.mean(ep_returns[-10:]))
            record.update(grad_updates=stats_log["grad_updates"], buffer_size=len(buffer), warmup=int(in_warmup))
        if fcfg.eval_episodes > 0 and (crossed(fcfg.eval_every) or done >= fcfg.steps):
            record.update(evaluate_now(done))
            bar.set_postfix(score=f"{history[-1]['score']:.3g}")
        if record:
            logger.log(done, record)
        if prev < fcfg.warmup <= done:
            stats_log["warmup_grad_updates"] = stats_log["grad_updates"]
        if crossed(fcfg.save_every) and done < fcfg.steps:
            save_last(done)
    bar.close()
    if interaction is not None:
        interaction.close()
    extra = {"data": str(data) if data else meta.get("data"), "env_kwargs": env_kwargs, "finetune": {"algo": algo, **stats_log}}
    save_agent(agent, run_dir / "policy", step=max(t, fcfg.steps), task=task, extra_meta=extra)
    summary = continual_record(history, window=max(fcfg.eval_every * 3, 1), score_name="success rate" if own else "mean return",
                               task=task, algo=algo, warmup=fcfg.warmup, retain_offline=fcfg.retain_offline, **stats_log,
                               online_transitions=buffer.added)
    write_continual(run_dir, summary, algo, f"{algo} fine-tuning on {task}", "online env steps", warmup=fcfg.warmup or None)
    logger.close()
    env.close()
    eval_env.close()
    return run_dir
