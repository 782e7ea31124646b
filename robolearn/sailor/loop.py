"""The SAILOR training loop (official `SAILORTrainer.train_dp_with_mppi`, scaled by config).

1. Warm start: roll out the base policy (its own chunked execution) with Gaussian action noise
   (`data_collect_noise_std`) for `warmstart_fraction * env_steps` env steps, then train world
   model + reward model + critic for `warmstart_train_ratio` updates per collected step.
2. Rounds until the env-step budget is spent: collect `min_env_steps_per_round` steps with the
   agent; trim the replay to the newest `num_buffer_transitions` transitions; train
   `rounds_train_ratio` updates per collected step; test the world model against the
   constant-state predictor on held-out demo windows (the planner acts only once it beats it,
   `require_ready`); every `eval_every_round` rounds evaluate the agent and the base on the same
   seeds and checkpoint; every `update_dp_every` rounds, once an evaluation has shown the planner
   above the base (`dp_after_win`), expert iteration: re-plan the decisions of the newest replay
   trajectories and fine-tune the diffusion policy on the corrected chunks that passed the
   planner's acceptance test, mixed with the demos.

Execution is chunked everywhere, as the base policy is evaluated: one decision per
`n_action_steps`; each replay step stores the chunk of its decision (`base_action`), its offset
in it (`chunk_offset`) and the executed residual. The critic imagines the base policy from every
state by following the rest of that chunk; the demos are labelled with the base policy's chunks
at the same decision steps. Each model update uses a batch of sequences, half demos (minus the
held-out ones) and half replay.

Collection runs on MuJoCo C (`--backend cpu`) or on MuJoCo Warp (`--backend gpu|warp-cpu`): there
the training envs are a DeviceVectorEnv on the same rollout engine, observations, actions and the
agent's chunk / offset / residual stay device tensors, and `DeviceReplayRecorder` moves the steps
to the host in chunks (every `max_episode_steps` steps and at the end of each collection phase),
where they become the same replay episodes and store records as on the host. A checkpoint taken
while device envs run keeps their unfinished episodes' steps; `--resume` commits those as cut
episodes (done, not successful) and starts fresh envs (MuJoCo Warp's solver state is not
checkpointed), so only host runs resume bit-exactly.

Run directory: config.yaml, run.json, metrics.jsonl (+ wandb), diagnostics.json (the latest
world-model / reward-model / planner diagnostics), replay.zarr (source=policy; mask `replay` =
the trimmed buffer), checkpoints/last (everything `robolearn sailor --resume RUN` needs: models,
optimizers, critic target, replay position, the training envs' physics and episode buffers,
counters and every RNG), checkpoints/round_N (agents at evaluations), policy/ (the final
planner-augmented agent, `robolearn eval --checkpoint RUN`), base_policy/ (the distilled
diffusion policy).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from robolearn.config import ConfigError, to_dict
from robolearn.sailor.agent import SailorPolicy
from robolearn.sailor.configuration import SailorRunConfig, load_sailor_config
from robolearn.sailor.critic import CriticTrainer
from robolearn.sailor.world_model import flatten_state
from robolearn.tasks.rollout import Hook

# per-step arrays of a training episode as the collector records them
STEP_KEYS = ("action", "base_action", "chunk_offset", "residual", "reward", "done", "stage", "failure_event")


# ----------------------------------------------------------------------------------- buffers
def obs_windows(states: np.ndarray, n_obs_steps: int) -> np.ndarray:
    """(T, D) -> (T, To, D): the To states ending at each step, edge-padded at the start."""
    idx = np.arange(len(states))[:, None] + np.arange(-n_obs_steps + 1, 1)[None, :]
    return states[np.clip(idx, 0, None)]


def chunk_offsets(length: int, n_action_steps: int) -> np.ndarray:
    """Offsets within the executed chunk of each step of an episode: decisions at multiples of n."""
    return (np.arange(length) % n_action_steps).astype(np.int64)


@dataclasses.dataclass
class Episode:
    state: np.ndarray  # (T, Ds) raw observations (concatenated state keys)
    action: np.ndarray  # (T, A) executed
    success: bool
    base_chunk: np.ndarray | None = None  # (T, Tb, A) the base chunk of each step's decision
    offset: np.ndarray | None = None  # (T,) each step's index within that chunk's executed part
    store_index: int = -1
    accepted: np.ndarray | None = None  # (T,) the planner's residual ran at this step


class SequenceBuffer:
    """Episodes as flat arrays for fast random sequence windows (Dreamer-style: windows may cross
    episode boundaries, where `is_first` restarts the latent state)."""

    def __init__(self, plan_start: int, plan_len: int) -> None:
        self.episodes: list[Episode] = []
        self.pending: list[Episode] = []  # episodes still running in the training envs (trained on, not stored yet)
        self.plan_start, self.plan_len = plan_start, plan_len
        self._flat: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_steps(self) -> int:
        return int(sum(len(e.action) for e in self.episodes))

    def add(self, episode: Episode) -> None:
        self.episodes.append(episode)
        self._flat = None

    def trim(self, max_steps: int) -> int:
        """Drop the oldest episodes until at most `max_steps` transitions remain; returns how many were dropped."""
        dropped = 0
        while len(self.episodes) > 1 and self.num_steps > max_steps:
            self.episodes.pop(0)
            dropped += 1
        if dropped:
            self._flat = None
        return dropped

    def invalidate(self) -> None:
        self._flat = None

    def set_pending(self, episodes: list[Episode]) -> None:
        self.pending = [e for e in episodes if len(e.action)]
        self._flat = None

    def base_plans(self, e: Episode) -> np.ndarray:
        """(T, plan_len, A): what the base policy runs from each step on (the rest of its chunk)."""
        idx = self.plan_start + e.offset[:, None] + np.arange(self.plan_len)[None, :]
        return np.take_along_axis(e.base_chunk, idx[:, :, None], axis=1)

    def flat(self) -> dict[str, np.ndarray]:
        if self._flat is None:
            eps = self.episodes + self.pending
            state = np.concatenate([e.state for e in eps]).astype(np.float32)
            action = np.concatenate([e.action for e in eps]).astype(np.float32)
            prev = np.concatenate([np.concatenate([np.zeros_like(e.action[:1]), e.action[:-1]]) for e in eps]).astype(np.float32)
            first = np.concatenate([np.arange(len(e.action)) == 0 for e in eps])
            # terminal: the last step of a successful episode (episodes end on success)
            term = np.concatenate([(np.arange(len(e.action)) == len(e.action) - 1) & e.success for e in eps]).astype(np.float32)
            plan = np.concatenate([self.base_plans(e) for e in eps]).astype(np.float32)
            self._flat = {"state": state, "action": action, "prev_action": prev, "is_first": first,
                          "is_terminal": term, "base_plan": plan}
        return self._flat

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        flat = self.flat()
        n = len(flat["state"])
        if n < length:
            raise ValueError(f"buffer holds {n} steps, fewer than one sequence of {length}")
        starts = rng.integers(0, n - length + 1, size=batch)
        idx = starts[:, None] + np.arange(length)[None, :]
        out = {k: v[idx] for k, v in flat.items()}
        out["is_first"] = out["is_first"].copy()
        out["is_first"][:, 0] = True
        return out


def _concat(arrays: list[np.ndarray], like: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros((0, *like), dtype)


# ----------------------------------------------------------------------------------- updates
class ModelUpdater:
    """The optimizers of the world model, reward model and critic, and one model update:
    world model every step, reward model every `reward.update_every` world-model updates (expert
    rows = the first `half` sequences of the batch), critic on imagined rollouts of the base
    policy's plans from every posterior state."""

    def __init__(self, agent: SailorPolicy) -> None:
        self.agent = agent
        acfg = agent.config
        wcfg = acfg.world_model
        self.wm_opt = torch.optim.Adam(agent.world_model.parameters(), lr=wcfg.lr, eps=wcfg.eps)
        self.rm_opt = torch.optim.Adam(agent.reward_model.parameters(), lr=acfg.reward.lr, eps=wcfg.eps)
        self.critic_trainer = CriticTrainer(agent.critic)
        self.updates = 0

    def step(self, batch: dict[str, torch.Tensor], half: int) -> dict[str, float]:
        """batch: state (B, L, Ds) normalized, prev_action, is_first, is_terminal, base_plan (B, L, Hc, A)."""
        acfg = self.agent.config
        wm, rm = self.agent.world_model, self.agent.reward_model
        loss, post, metrics = wm.loss(batch)
        self.wm_opt.zero_grad(set_to_none=True)
        loss.backward()
        metrics["wm_grad_norm"] = float(nn.utils.clip_grad_norm_(wm.parameters(), acfg.world_model.grad_clip))
        self.wm_opt.step()
        self.updates += 1
        feat = wm.dynamics.feat(post)  # (B, L, F), detached
        if self.updates % acfg.reward.update_every == 0:
            rm_loss, rm_metrics = rm.loss(feat[half:].reshape(-1, feat.shape[-1]), feat[:half].reshape(-1, feat.shape[-1]))
            self.rm_opt.zero_grad(set_to_none=True)
            rm_loss.backward()
            self.rm_opt.step()
            metrics.update(rm_metrics)
        start = flatten_state(post)
        actions = batch["base_plan"].reshape(-1, *batch["base_plan"].shape[2:])
        with torch.no_grad():
            feats = wm.imagine(start, actions)
            reward = rm(feats)
            cont = wm.cont_prob(feats)
        metrics.update(self.critic_trainer.train_step(feats, reward, cont))
        return metrics


class _SailorActor:
    """The SAILOR agent as a rollout-engine actor: planner or noisy base actions, and the base
    chunk / offset / residual of each decision for the replay (copies: the agent updates them in
    place at its next decision)."""

    def __init__(self, trainer: Any) -> None:
        from robolearn.tasks.rollout import ObsHistory

        self.trainer = trainer
        self.history = ObsHistory(trainer.acfg.n_obs_steps, list(trainer.acfg.base.state_keys))
        self.mode = "planner"

    def reset(self, obs: dict[str, np.ndarray], rows: Any = None) -> None:
        self.history.reset(obs, rows)
        self.trainer.agent.reset() if rows is None else self.trainer.agent.reset(torch.as_tensor(rows))

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        self.history.push(obs)

    def act(self, obs: dict[str, Any]) -> Any:
        t, agent = self.trainer, self.trainer.agent
        action = agent.select_action(self.history.torch(t.device), generator=t.gen)
        if self.mode == "noisy_base":
            noise = t.loop.data_collect_noise_std * torch.randn(action.shape, generator=t.gen, device=t.gen.device).to(action)
            action = (action + noise).clamp(-1, 1)
            agent.set_executed(action)
        if any(torch.is_tensor(v) for v in obs.values()):  # device env: everything stays on the device
            self.chunk, self.offset = agent.current_chunk.clone(), agent.current_offset.clone()
            self.residual = agent.current_residual.clone()
            return action
        self.chunk = agent.current_chunk.cpu().numpy().copy()
        self.offset = agent.current_offset.cpu().numpy().copy()
        self.residual = agent.current_residual.cpu().numpy().copy()
        return action.cpu().numpy().astype(np.float64)


class DeviceReplayRecorder(Hook):
    """The device counterpart of SailorTrainer._record_step / _finish_episode (a rollout hook):
    per step the same columns as the host collector, kept as device tensors, moved to the host as
    one chunk per column by `flush()` and handed to the trainer step by step, env by env (the host
    collector's order), so the replay episodes and store records are the host path's."""

    device_ok = True

    def __init__(self, trainer: Any, flush_every: int) -> None:
        self.trainer, self.flush_every = trainer, max(1, int(flush_every))
        self.chunk: dict[str, list[torch.Tensor]] = {}
        self.env_steps: list[int] = []  # the trainer's env-step count after each buffered step

    def on_step(self, engine: Any, step: Any, pre: dict[str, torch.Tensor], act: torch.Tensor, pre_state: Any) -> None:
        t, actor, info = self.trainer, self.trainer._actor, step.info
        cols = {f"obs/{k}": pre[k].to(torch.float32) for k in t.acfg.base.state_keys}
        cols.update({"action": act.to(torch.float32), "base_action": actor.chunk.to(torch.float32),
                     "chunk_offset": actor.offset.to(torch.int64), "residual": actor.residual.to(torch.float32),
                     "reward": step.reward.to(torch.float32), "done": step.terminated | step.truncated,
                     "stage": info["stage"].to(torch.int32), "failure_event": info["failure_event"].to(torch.int32),
                     "_episode": step.episode, "_ended": step.done, "_success": info["success"]})
        for k, v in cols.items():
            self.chunk.setdefault(k, []).append(v)
        n = t.loop.num_envs
        t.env_step += n
        t._round["steps"] += n
        self.env_steps.append(t.env_step)
        if t._round["bar"] is not None:
            t._round["bar"].update(n)

    def on_restart(self, engine: Any, step: Any, obs: Any) -> None:
        if len(self.env_steps) >= self.flush_every:
            self.flush()

    def on_close(self, engine: Any) -> None:
        self.flush()

    def flush(self) -> None:
        """Buffered steps -> the trainer's per-env step lists; finished episodes are committed."""
        if not self.env_steps:
            return
        t = self.trainer
        host = {k: torch.stack(v).cpu().numpy() for k, v in self.chunk.items()}
        env_steps, self.chunk, self.env_steps = self.env_steps, {}, []
        seeds = t._sim.episode_seeds
        keys = [k for k in host if not k.startswith("_")]
        now, T = t.env_step, len(env_steps)
        taken = np.zeros(t.loop.num_envs, np.int64)  # per env: rows of this chunk already in its buffer

        def take(i: int, end: int) -> None:  # env i's rows taken[i]..end-1 into its step lists
            b = t._bufs[i]
            for k in keys:
                b.setdefault(k, []).extend(host[k][taken[i]:end, i])
            taken[i] = end

        try:
            for j, i in np.argwhere(host["_ended"]):  # by step, then env: the host collector's commit order
                take(int(i), int(j) + 1)
                t.env_step = env_steps[j]  # as the host collector sees it when this step's episodes end
                t._finish_episode(int(i), int(seeds[int(host["_episode"][j, i])]), bool(host["_success"][j, i]))
            for i in range(t.loop.num_envs):
                take(i, T)
        finally:
            t.env_step = now


# ----------------------------------------------------------------------------------- trainer
class SailorTrainer:
    """One SAILOR run; `resume=True` rebuilds it from `out/checkpoints/last`."""

    def __init__(self, run_cfg: SailorRunConfig, base_dir: str | Path, demos: str | Path, task: str,
                 env_steps: int, out: Path, perturb: float | None = None, task_overrides: list[str] | None = None,
                 wandb_mode: str = "offline", progress: bool = True, resume: bool = False, backend: str = "cpu") -> None:
        from robolearn.checkpoint import load_policy
        from robolearn.data.store import EpisodeStore
        from robolearn.evaluation import resolve_checkpoint
        from robolearn.tasks.registry import load_task_config
        from robolearn.training import MetricLogger, resolve_device

        if env_steps < 1:
            raise ValueError(f"--env-steps must be >= 1, got {env_steps}")
        self.cfg = run_cfg
        self.loop = run_cfg.loop
        self.task = task
        self.env_steps = int(env_steps)
        self.out = Path(out)
        self.progress = progress
        if backend not in ("cpu", "gpu", "warp-cpu"):
            raise ValueError(f"--backend must be cpu, gpu or warp-cpu, got {backend!r}")
        self.backend = backend
        if backend == "gpu":  # a clear error before anything loads when Warp sees no CUDA device
            from robolearn.tasks.warp_backend import resolve_device as warp_device

            warp_device("cuda")
        self.device = resolve_device(run_cfg.device)
        torch.manual_seed(run_cfg.seed)
        self.rng = np.random.default_rng(run_cfg.seed)
        # the generators live where the agent samples (a CPU generator cannot drive CUDA sampling)
        self.gen = torch.Generator(self.device).manual_seed(run_cfg.seed)

        if not Path(demos).exists():
            raise FileNotFoundError(f"demo store {demos} does not exist")
        self.demo_store = EpisodeStore.open(demos, mode="r")
        if self.demo_store.num_episodes == 0:
            raise ValueError(f"{demos} holds no episodes")
        if resume:
            agent = load_policy(self.last_checkpoint(self.out), self.device)
            if agent.name != "sailor":
                raise ValueError(f"{self.out}/checkpoints/last holds a {agent.name!r} policy, not a SAILOR agent")
            self.agent = agent
            self.base_ckpt = Path(base_dir)
        else:
            base_ckpt = resolve_checkpoint(base_dir)
            base = load_policy(base_ckpt)
            if getattr(base, "name", None) != "diffusion":
                raise ValueError(f"--base must be a diffusion policy checkpoint, {base_ckpt} holds {getattr(base, 'name', '?')!r}")
            agent_cfg = dataclasses.replace(run_cfg.agent, base=base.config)
            self.agent = SailorPolicy(agent_cfg, base.normalizer)
            self.agent.base.load_state_dict(base.state_dict())
            self.base_ckpt = base_ckpt
        self.agent.to(self.device)  # also moves the planner's generator (SailorPolicy._apply)
        self.acfg = self.agent.config
        overrides = list(task_overrides or [])
        if perturb is not None:
            overrides.append(f"perturb_rate={perturb}")
        self.task_overrides = overrides
        self.task_cfg = load_task_config(task, overrides)
        if self.task_cfg.image:
            raise ConfigError("SAILOR here uses state observations: run the task with obs_mode=state")
        if backend != "cpu" and self.task_cfg.perturb_rate > 0:
            raise ValueError(f"--backend {backend} does not inject perturbations (drawn per env on the host); use --backend cpu")
        self.max_len = self.loop.max_episode_steps or self.task_cfg.horizon

        To = self.acfg.n_obs_steps
        self.n_act = self.acfg.base.n_action_steps
        self.expert = SequenceBuffer(To - 1, self.acfg.critic.imag_horizon)
        self.replay = SequenceBuffer(To - 1, self.acfg.critic.imag_horizon)
        self.heldout: list[Episode] = []
        self._load_demos()
        self.dp_buffer: list[tuple[int, np.ndarray, np.ndarray]] = []  # (store index, obs windows, target chunks)
        self.failed_base: list[Episode] = []  # failed warm-start (noisy base) episodes: the AUROC's negatives

        self.updater = ModelUpdater(self.agent)
        self.wm_opt, self.rm_opt, self.critic_trainer = self.updater.wm_opt, self.updater.rm_opt, self.updater.critic_trainer

        self.env_step = 0
        self.updates = 0
        self.dp_updates = 0
        self.history: list[dict[str, Any]] = []
        # where the run is: the phase state machine of `run` (a checkpoint's "state")
        self.state: dict[str, Any] = {"phase": "warm_collect", "round": 0, "todo": 0, "sums": {}, "counts": {},
                                      "record": {}, "planner_won": False, "seed_counter": 1_000_000 + 100_000 * run_cfg.seed,
                                      "metrics_lines": 0, "wall_s": 0.0}
        self._sim = None
        self._collector = None
        self._recorder: DeviceReplayRecorder | None = None
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.replay_store = EpisodeStore.open(self.out / "replay.zarr", mode="a")
            self._restore(self.last_checkpoint(self.out))
        else:
            (self.out / "config.yaml").write_text(yaml.safe_dump(to_dict(run_cfg), sort_keys=False))
            (self.out / "run.json").write_text(json.dumps({
                "base": str(self.base_ckpt.resolve()), "demos": str(Path(demos).resolve()), "task": task,
                "env_steps": self.env_steps, "perturb": perturb, "task_overrides": list(task_overrides or []), "backend": backend,
                "overrides_applied": overrides, "command": " ".join(sys.argv),
                "started": dt.datetime.now().isoformat(timespec="seconds"),
            }, indent=1))
            self.replay_store = EpisodeStore.create(self.out / "replay.zarr", self._replay_features(), task=task,
                                                    env_kwargs=dataclasses.asdict(self.task_cfg))
        self.logger = MetricLogger(self.out, wandb_mode, to_dict(run_cfg), self.out.name, True, None)
        if not resume:
            self.checkpoint()  # a run can be resumed from its very start

    # -- data ------------------------------------------------------------------------------------
    def _state_of(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(arrays[f"obs/{k}"], np.float32) for k in self.acfg.base.state_keys], -1)

    def _load_demos(self) -> None:
        keys = [f"obs/{k}" for k in self.acfg.base.state_keys] + ["action"]
        missing = [k for k in keys if k not in self.demo_store.features]
        if missing:
            raise ValueError(f"the demo store lacks {', '.join(missing)}")
        success = self.demo_store.column("success")
        n = self.demo_store.num_episodes
        n_hold = int(round(self.loop.holdout_demo_fraction * n))
        if self.loop.holdout_demo_fraction > 0 and n >= 2:
            n_hold = min(max(n_hold, 1), n - 1)
        held = set(np.random.default_rng(self.cfg.seed + 7).permutation(n)[:n_hold].tolist()) if n_hold else set()
        for i in range(n):
            ep = self.demo_store.get_episode(i, keys)
            episode = Episode(self._state_of(ep), np.asarray(ep["action"], np.float32), bool(success[i]), store_index=i)
            (self.heldout.append if i in held else self.expert.add)(episode)
        self.relabel_expert()

    def _replay_features(self) -> dict[str, Any]:
        from robolearn.data.schema import Feature

        b = self.acfg.base
        feats = {f"obs/{k}": Feature("float32", tuple(b.input_shapes[k]), "obs") for k in b.state_keys}
        feats["action"] = Feature("float32", (b.action_dim,), "action")
        feats["base_action"] = Feature("float32", (b.horizon, b.action_dim), "aux")
        feats["chunk_offset"] = Feature("int64", (), "aux")
        feats["residual"] = Feature("float32", (self.acfg.planner.horizon, b.action_dim), "aux")
        feats["failure_event"] = Feature("int32", (), "aux")
        return feats

    @torch.no_grad()
    def base_chunks(self, windows: np.ndarray, batch: int = 256) -> np.ndarray:
        """The base policy's chunks (N, T, A) for observation windows (N, To, Ds)."""
        base = self.agent.base
        out = []
        keys, dims = self.acfg.base.state_keys, [self.acfg.base.input_shapes[k][0] for k in self.acfg.base.state_keys]
        for i in range(0, len(windows), batch):
            w = torch.as_tensor(windows[i : i + batch], device=self.device)
            obs = dict(zip(keys, torch.split(w, dims, dim=-1)))
            out.append(base.predict_action(obs, generator=None).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def relabel_expert(self) -> None:
        """Label the demos with the current base policy's chunks (official `label_expert_eps`) under
        chunked execution: a chunk at every `n_action_steps`-th step, used by the steps after it."""
        To, n = self.acfg.n_obs_steps, self.n_act
        eps = self.expert.episodes
        windows = np.concatenate([obs_windows(e.state, To)[::n] for e in eps])
        chunks = self.base_chunks(windows)
        pos = 0
        for e in eps:
            T = len(e.action)
            k = len(range(0, T, n))
            e.base_chunk = np.repeat(chunks[pos : pos + k], n, axis=0)[:T]
            e.offset = chunk_offsets(T, n)
            pos += k
        self.expert.invalidate()

    # -- model training ----------------------------------------------------------------------------
    def _torch(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {k: torch.as_tensor(v, device=self.device) for k, v in arrays.items()}
        out["state"] = self._normalize_multi(out["state"])
        return out

    def _normalize_multi(self, state: torch.Tensor) -> torch.Tensor:
        """Raw concatenated states (..., Ds) -> the world model's normalized input."""
        dims = [self.acfg.base.input_shapes[k][0] for k in self.acfg.base.state_keys]
        parts = torch.split(state, dims, dim=-1)
        return torch.cat([self.agent.normalizer.normalize(f"obs/{k}", p) for k, p in zip(self.acfg.base.state_keys, parts)], -1)

    def model_update(self) -> dict[str, float]:
        """One update on a batch of half demo, half replay sequences (see `ModelUpdater`)."""
        wcfg = self.acfg.world_model
        half, L = wcfg.batch_size // 2, wcfg.batch_length
        e = self.expert.sample(half, L, self.rng)
        r = self.replay.sample(half, L, self.rng)
        batch = self._torch({k: np.concatenate([e[k], r[k]]) for k in e})
        metrics = self.updater.step(batch, half)
        self.updates = self.updater.updates
        return metrics

    def _can_train(self) -> bool:
        L = self.acfg.world_model.batch_length
        self.replay.set_pending(self._pending_episodes())
        return self.replay.num_steps + sum(len(e.action) for e in self.replay.pending) >= L and self.expert.num_steps >= L

    def train_phase(self, bar_desc: str) -> None:
        """Run the phase's remaining `state['todo']` updates, checkpointing every
        `checkpoint_every_updates`; running means of the metrics live in the state."""
        from tqdm import tqdm

        st = self.state
        if st["todo"] <= 0 or not self._can_train():
            st["todo"] = 0
            return
        self.agent.train()
        self.agent.base.eval()
        bar = tqdm(total=st["todo"], desc=bar_desc, disable=not self.progress, leave=False, dynamic_ncols=True)
        since = 0
        while st["todo"] > 0:
            for k, v in self.model_update().items():
                st["sums"][k] = st["sums"].get(k, 0.0) + float(v)
                st["counts"][k] = st["counts"].get(k, 0) + 1
            st["todo"] -= 1
            since += 1
            bar.update(1)
            if since >= self.loop.checkpoint_every_updates and st["todo"] > 0:
                self.agent.eval()
                st["wall_s"] = self._wall()
                self.checkpoint()
                self.agent.train()
                self.agent.base.eval()
                since = 0
        bar.close()
        self.agent.eval()

    def _phase_means(self) -> dict[str, float]:
        st = self.state
        means = {k: st["sums"][k] / st["counts"][k] for k in st["sums"]}
        st["sums"], st["counts"] = {}, {}
        return means

    # -- diagnostics -------------------------------------------------------------------------------
    def check_windows(self, split: str | None = None) -> tuple[str, list[Any], np.ndarray, np.ndarray]:
        """The readiness check's data: (split, its demo episodes, windows of raw states, their prev
        actions) of context + horizon steps, from the held-out demos (the training demos if none are held
        out, or if `split="train"`: the same check on data the model trained on tells overfitting apart)."""
        from robolearn.sailor.diagnostics import windows_for_check

        if split is None:
            split = "heldout" if self.heldout else "train"
        if split not in ("heldout", "train"):
            raise ValueError(f"split must be 'heldout' or 'train', got {split!r}")
        eps = self.heldout if split == "heldout" else self.expert.episodes
        if split == "heldout" and not eps:
            raise ValueError("no demos are held out (loop.holdout_demo_fraction = 0): use split='train'")
        length = self.loop.ready_context + self.acfg.planner.horizon
        states, prev = windows_for_check([e.state for e in eps], [e.action for e in eps], length, stride=4, limit=256)
        return split, eps, states, prev

    def diagnostics(self) -> dict[str, Any]:
        """World-model k-step error vs the constant predictor (held-out demos; the training demos if
        none are held out) and the reward model's AUROC (held-out demo states vs failed warm-start
        states); sets the agent's `planner_ready`."""
        from robolearn.sailor.diagnostics import auroc, reward_scores, world_model_check

        split, eps, states, prev = self.check_windows()
        out: dict[str, Any] = {"wm_check_split": split}
        self.agent.eval()
        check = world_model_check(self.agent, states, prev, self.loop.ready_context, self.acfg.planner.horizon,
                                  self._normalize_multi)
        out.update(check)
        statistic = "wm_err_ratio_median" if self.loop.ready_statistic == "median" else "wm_err_ratio"
        ready = (not self.loop.require_ready) or bool(check and check[statistic] < self.loop.ready_ratio)
        self.agent.planner_ready.fill_(ready)
        out["planner_ready"] = ready
        if self.failed_base:
            pos = reward_scores(self.agent, [e.state for e in eps], [e.action for e in eps])
            neg = reward_scores(self.agent, [e.state for e in self.failed_base], [e.action for e in self.failed_base])
            out.update({"rm_auroc": auroc(pos, neg), "rm_auroc_split": split, "rm_mean_demo": float(pos.mean()),
                        "rm_mean_failed_base": float(neg.mean()), "rm_failed_episodes": len(self.failed_base)})
        return out

    # -- data collection ---------------------------------------------------------------------------
    def _start_collector(self, sim: Any = None) -> None:
        """The training envs on the shared rollout engine (robolearn.tasks.rollout.persistent_rollout):
        they persist across rounds, a finished episode restarts at once with the next training seed,
        episodes are cut at max_episode_steps. With `sim` (a restored simulator) nothing is reset:
        `_restore` resumes the engine."""
        from robolearn.tasks.rollout import CallbackHook, persistent_rollout
        from robolearn.tasks.sim import TaskSim

        n = self.loop.num_envs
        self._bufs: list[dict[str, list]] = [{} for _ in range(n)]
        self._actor = _SailorActor(self)
        if self.backend != "cpu":  # MuJoCo Warp: steps recorded on the device, flushed in chunks
            from robolearn.tasks.device_env import DeviceVectorEnv

            self._sim = DeviceVectorEnv(self.task, n, backend=self.backend, cfg=self.task_cfg, max_episode_steps=self.max_len)
            self._recorder = DeviceReplayRecorder(self, self.max_len)
            hooks: list[Any] = [self._recorder]
        else:
            self._sim = sim if sim is not None else TaskSim(self.task, cfg=self.task_cfg, num_envs=n)
            self._recorder = None
            hooks = [CallbackHook(self._record_step, self._finish_episode)]
        self._collector = persistent_rollout(self._sim, self._actor, self._next_seed, hooks, max_episode_steps=self.max_len)
        if sim is None:
            self._collector.start()  # seeds, resets, observation history and agent reset

    # the collector's state, as the checkpoint code reads it
    @property
    def _seeds(self) -> list[int]:
        if self._recorder is not None:  # device env: the seed of each slot's episode (a host read)
            return [int(self._sim.episode_seeds[int(e)]) for e in self._sim.slot_episode.cpu()]
        return [int(s) for s in self._collector.env.slot_seed]

    @property
    def _obs(self) -> dict[str, np.ndarray]:
        return self._collector.obs

    @property
    def _hist(self) -> Any:
        return self._actor.history

    def _record_step(self, step: Any, pre: dict[str, np.ndarray], act: np.ndarray) -> None:
        chunk, offset, residual = self._actor.chunk, self._actor.offset, self._actor.residual
        term, trunc, info, reward = step.terminated, step.truncated, step.info, step.reward
        for i in range(self.loop.num_envs):
            b = self._bufs[i]
            for k in self.acfg.base.state_keys:
                b.setdefault(f"obs/{k}", []).append(pre[k][i].astype(np.float32))
            b.setdefault("action", []).append(act[i].astype(np.float32))
            b.setdefault("base_action", []).append(chunk[i])
            b.setdefault("chunk_offset", []).append(np.int64(offset[i]))
            b.setdefault("residual", []).append(residual[i])
            b.setdefault("reward", []).append(np.float32(reward[i]))
            b.setdefault("done", []).append(bool(term[i] or trunc[i]))
            b.setdefault("stage", []).append(np.int32(info["stage"][i]))
            b.setdefault("failure_event", []).append(np.int32(info["failure_event"][i]))
        self.env_step += self.loop.num_envs
        self._round["steps"] += self.loop.num_envs
        if self._round["bar"] is not None:
            self._round["bar"].update(self.loop.num_envs)

    def _finish_episode(self, row: int, seed: int, success: bool) -> None:
        self._commit(self._bufs[row], success, seed, self._round["mode"])
        self._bufs[row] = {}
        self._round["episodes"] += 1
        self._round["successes"] += int(success)

    def _next_seed(self) -> int:
        self.state["seed_counter"] += 1
        return self.state["seed_counter"]  # training episodes never reuse evaluation seeds (< 1e6)

    def collect(self, n_steps: int, mode: str) -> dict[str, float]:
        """Step the training envs (mode 'noisy_base' or 'planner') for `n_steps` env steps (rounded up
        to a multiple of num_envs). Envs persist across calls: an episode running at the end of a
        round continues in the next one, and is committed to the replay when it ends."""
        from tqdm import tqdm

        if self._sim is None:
            self._start_collector()
        n_envs, agent = self.loop.num_envs, self.agent
        agent.eval()
        agent.use_planner = mode == "planner" and self.acfg.use_planner
        agent.stats.reset()
        bar = tqdm(total=n_steps, desc=f"collect {mode}", disable=not self.progress, leave=False, dynamic_ncols=True)
        self._actor.mode = mode
        self._round = {"mode": mode, "steps": 0, "episodes": 0, "successes": 0, "bar": bar}
        self._collector.run(max_steps=-(-n_steps // n_envs))  # every env steps ceil(n_steps / num_envs) times
        if self._recorder is not None:  # the round's steps reach the replay before training
            self._recorder.flush()
        bar.close()
        steps, done_eps, successes = self._round["steps"], self._round["episodes"], self._round["successes"]
        out = {"collect_steps": steps, "collect_episodes": done_eps, "collect_success_rate": successes / max(done_eps, 1)}
        if mode == "planner":
            out.update(agent.stats.summary())
        agent.use_planner = self.acfg.use_planner
        return out

    def _episode_of(self, steps: dict[str, np.ndarray], success: bool, store_index: int = -1) -> Episode:
        residual = steps["residual"]
        return Episode(self._state_of(steps), steps["action"].astype(np.float32), success,
                       steps["base_action"].astype(np.float32), steps["chunk_offset"].astype(np.int64), store_index,
                       np.abs(residual).reshape(len(residual), -1).max(1) > 0)

    def _pending_episodes(self) -> list[Episode]:
        if self._sim is None:
            return []
        return [self._episode_of({k: np.asarray(v) for k, v in b.items()}, False) for b in self._bufs if b]

    def close_collector(self) -> int:
        """Commit the episodes still running (cut short: done, not successful); returns how many."""
        if self._sim is None:
            return 0
        if self._recorder is not None:
            self._recorder.flush()
        cut = 0
        for i, b in enumerate(self._bufs):
            if b:
                b["done"][-1] = True
                self._commit(b, False, self._seeds[i], "cut")
                cut += 1
        self._sim.close()
        self._sim = None
        self._collector = None
        self._recorder = None
        return cut

    def _commit(self, buf: dict[str, list], success: bool, seed: int, mode: str) -> None:
        steps = {k: np.asarray(v) for k, v in buf.items()}
        steps["source"] = "policy"
        idx = self.replay_store.append_episode(steps, success=success, collector=f"sailor-{mode}", seed=seed,
                                               metadata={"mode": mode, "env_step": self.env_step})
        episode = self._episode_of(steps, success, idx)
        self.replay.add(episode)
        if mode == "noisy_base" and not success and len(self.failed_base) < 64:
            self.failed_base.append(episode)

    def trim_replay(self) -> int:
        dropped = self.replay.trim(self.loop.num_buffer_transitions)
        self.replay_store.set_mask("replay", [e.store_index for e in self.replay.episodes])
        return dropped

    # -- expert iteration ----------------------------------------------------------------------------
    @torch.no_grad()
    def relabel_with_planner(self, episodes: list[Episode]) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Replay trajectories re-planned at their decision steps (official `relabel_with_mppi_post`):
        the posterior follows the recorded states and actions; at each decision the planner corrects
        the recorded base chunk. Only decisions whose correction passed the acceptance test become
        distillation targets (the chunk with its planned part replaced by clip(base + residual))."""
        To, P = self.acfg.n_obs_steps, self.acfg.planner.horizon
        s0 = To - 1
        out = []
        agent = self.agent
        for j in range(0, len(episodes), self.loop.relabel_batch):
            group = episodes[j : j + self.loop.relabel_batch]
            lens = [len(e.action) for e in group]
            latent, prev = None, torch.zeros(len(group), self.acfg.action_dim, device=self.device)
            targets: list[list[tuple[int, np.ndarray]]] = [[] for _ in group]
            for t in range(max(lens)):
                idx = [min(t, n - 1) for n in lens]
                state = torch.as_tensor(np.stack([e.state[i] for e, i in zip(group, idx)]), device=self.device)
                first = torch.full((len(group),), t == 0, device=self.device)
                latent = agent.posterior_step(self._normalize_multi(state), first, latent, prev)
                rows = [g for g, e in enumerate(group) if t < lens[g] and e.offset[t] == 0]
                if rows:
                    base_plan = torch.as_tensor(np.stack([group[g].base_chunk[t, s0 : s0 + P] for g in rows]), device=self.device)
                    result = agent.plan({k: v[rows] for k, v in latent.items()}, base_plan)
                    agent.stats.add(result)
                    planned = (base_plan + result.residual).clamp(-1, 1).cpu().numpy()
                    for r, g in enumerate(rows):
                        if bool(result.accepted[r]):
                            chunk = group[g].base_chunk[t].copy()
                            chunk[s0 : s0 + P] = planned[r]
                            targets[g].append((t, chunk))
                prev = torch.as_tensor(np.stack([e.action[i] for e, i in zip(group, idx)]), device=self.device)
            for e, tg in zip(group, targets):
                if tg:
                    windows = obs_windows(e.state, To)[[t for t, _ in tg]].astype(np.float32)
                    out.append((e.store_index, windows, np.stack([c for _, c in tg]).astype(np.float32)))
        return out

    def finetune_base(self) -> dict[str, float]:
        """Distill: continue training the diffusion policy on demo windows and re-labelled replay windows."""
        from robolearn.data.sampler import SequenceDataset
        from robolearn.nn.ema import EMA

        base = self.agent.base
        bcfg = self.acfg.base
        demo_ds = SequenceDataset(self.demo_store, obs_keys=bcfg.obs_keys, n_obs_steps=bcfg.n_obs_steps, horizon=bcfg.horizon)
        windows = np.concatenate([w for _, w, _ in self.dp_buffer])
        targets = np.concatenate([c for _, _, c in self.dp_buffer])
        keys, dims = bcfg.state_keys, [bcfg.input_shapes[k][0] for k in bcfg.state_keys]
        bs = self.loop.dp_batch_size
        n_demo = int(round(bs * self.loop.dp_expert_buffer_ratio))
        base.train()
        ema = EMA(base, power=0.75)
        opt = torch.optim.AdamW(base.parameters(), lr=self.loop.dp_lr, betas=(0.95, 0.999), weight_decay=1e-6)
        losses = []
        for _ in range(self.loop.n_dp_train_itrs):
            demo = demo_ds.torch_batch(self.rng.integers(0, len(demo_ds), n_demo), self.device) if n_demo else None
            ridx = self.rng.integers(0, len(windows), bs - n_demo)
            w = torch.as_tensor(windows[ridx], device=self.device)
            obs = dict(zip(keys, torch.split(w, dims, dim=-1)))
            act = torch.as_tensor(targets[ridx], device=self.device)
            if demo is not None:
                obs = {k: torch.cat([demo["obs"][k].float(), obs[k]]) for k in keys}
                act = torch.cat([demo["action"].float(), act])
            loss = base.compute_loss({"obs": obs, "action": act}).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(base)
            losses.append(loss.item())
        base.load_state_dict(ema.state_dict())
        base.eval()
        self.dp_updates += 1
        return {"dp_loss": float(np.mean(losses)), "dp_buffer_trajs": len(self.dp_buffer),
                "dp_buffer_windows": int(len(windows))}

    def expert_iteration(self) -> dict[str, float]:
        if self.loop.dp_after_win and not self.state["planner_won"]:
            return {"dp_skipped": "the planner has not beaten the base in an evaluation yet"}
        if not self.replay.episodes:
            return {"dp_skipped": "no finished replay episode"}
        newest = self.replay.episodes[-self.loop.n_traj_to_relabel_per_round :]
        self.agent.stats.reset()
        relabelled = self.relabel_with_planner(newest)
        metrics: dict[str, Any] = self.agent.stats.summary("relabel_")
        have = {i for i, _, _ in relabelled}
        self.dp_buffer = [x for x in self.dp_buffer if x[0] not in have] + relabelled
        self.dp_buffer = self.dp_buffer[-self.loop.n_dp_traj_buffer_size :]
        if not self.dp_buffer:
            metrics["dp_skipped"] = "no accepted planner decision to distill"
            return metrics
        metrics.update(self.finetune_base())
        self.relabel_expert()
        return metrics

    # -- evaluation / checkpoints ------------------------------------------------------------------
    def evaluate(self, episodes: int, seed: int = 100_000) -> dict[str, float]:
        """The agent and its base on the same seeds (a fresh copy: the training envs' agent state and
        generator are left alone); sets `planner_won` when the agent beats the base (success rate,
        ties broken by mean return)."""
        from robolearn.evaluation import evaluate_policy

        copy = SailorPolicy(self.acfg, self.agent.normalizer).to(self.device)
        copy.load_state_dict(self.agent.state_dict())
        copy.eval()
        kw = dict(episodes=episodes, seed=seed, num_envs=min(episodes, self.loop.num_envs), progress=False,
                  task_overrides=self.task_overrides, backend=self.backend)
        with torch.random.fork_rng(devices=[]):
            planner = evaluate_policy(copy, self.task, **kw)
            base = evaluate_policy(copy.base, self.task, **kw)
        won = (planner["success_rate"], planner["mean_return"]) > (base["success_rate"], base["mean_return"])
        self.state["planner_won"] = bool(self.state["planner_won"] or (won and copy.planning))
        return {"eval_planner_success_rate": planner["success_rate"], "eval_planner_return": planner["mean_return"],
                "eval_base_success_rate": base["success_rate"], "eval_base_return": base["mean_return"],
                "eval_planner_won": bool(won and copy.planning), **copy.stats.summary("eval_planner_")}

    def save(self, directory: Path, final: bool = False) -> None:
        from robolearn.checkpoint import save_policy

        meta = {"sailor": {"env_steps": self.env_step, "model_updates": self.updates, "dp_updates": self.dp_updates,
                           "final": final, "planner_ready": bool(self.agent.planner_ready)}}
        save_policy(self.agent, directory, step=self.updates, task=self.task, extra_meta=meta)

    def log(self, record: dict[str, Any]) -> None:
        record = {"env_step": self.env_step, "model_updates": self.updates, **record}
        self.history.append(record)
        self.logger.log(self.env_step, record)
        self.state["metrics_lines"] += 1

    def write_diagnostics(self, diag: dict[str, Any]) -> None:
        path = self.out / "diagnostics.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"env_step": self.env_step, "model_updates": self.updates, **diag}, indent=1))
        os.replace(tmp, path)

    # -- exact resume --------------------------------------------------------------------------------
    @staticmethod
    def last_checkpoint(out: Path) -> Path:
        last = Path(out) / "checkpoints" / "last"
        if (last / "checkpoint.json").is_file():
            return last
        old = last.with_name("last.old")
        if (old / "checkpoint.json").is_file():  # killed while swapping in a new one
            return old
        raise FileNotFoundError(f"--resume {out}: no checkpoints/last (not a SAILOR run, or it stopped before its first checkpoint)")

    def checkpoint(self) -> Path:
        """Everything `--resume` needs, written next to checkpoints/last and swapped in."""
        from robolearn.checkpoint import save_policy
        from robolearn.training import optimizer_to_tensors

        groups: dict[str, dict[str, torch.Tensor]] = {"critic_slow": self.critic_trainer.slow.state_dict()}
        opt_meta = {}
        for name, opt in (("wm", self.wm_opt), ("rm", self.rm_opt), ("critic", self.critic_trainer.opt)):
            tensors, meta = optimizer_to_tensors(opt)
            groups[f"opt_{name}"] = tensors
            opt_meta[name] = meta
        groups["rng"] = {"torch": torch.get_rng_state(), "gen": self.gen.get_state()}
        groups["agent_loop"] = self.agent.closed_loop_state()
        groups["expert"] = {"base_chunk": torch.from_numpy(np.concatenate([e.base_chunk for e in self.expert.episodes]))}
        if self.dp_buffer:
            groups["dp_buffer"] = {"windows": torch.from_numpy(np.concatenate([w for _, w, _ in self.dp_buffer])),
                                   "targets": torch.from_numpy(np.concatenate([c for _, _, c in self.dp_buffer]))}
        collector: dict[str, Any] = {"running": self._sim is not None, "backend": self.backend}
        if self._sim is not None and self._recorder is not None:
            # device envs: their unfinished episodes' steps (resume commits them as cut episodes)
            self._recorder.flush()
            lens = [len(b.get("action", [])) for b in self._bufs]
            keys = sorted({k for b in self._bufs for k in b})
            g = {f"buf.{k}": torch.from_numpy(np.ascontiguousarray(np.concatenate([np.asarray(b[k]) for b in self._bufs if b])))
                 for k in keys}
            if g:
                groups["collector"] = g
            collector.update({"seeds": self._seeds, "buf_lens": lens, "buf_keys": keys})
        elif self._sim is not None:
            sim = self._sim
            g: dict[str, torch.Tensor] = {
                "sim_state": torch.from_numpy(np.asarray(sim.get_state(), np.float64).copy()),
                "sim_gens": torch.stack([gen.get_state() for gen in sim.gens]),
                "sim_t": sim.t.clone(),
            }
            for k, v in self._hist.buf.items():
                g[f"hist.{k}"] = torch.from_numpy(np.ascontiguousarray(v))
            for k, v in self._obs.items():
                g[f"obs.{k}"] = torch.from_numpy(np.ascontiguousarray(v))
            lens = [len(b.get("action", [])) for b in self._bufs]
            keys = sorted({k for b in self._bufs for k in b})
            for k in keys:
                arrays = [np.asarray(b[k]) for b in self._bufs if b]
                g[f"buf.{k}"] = torch.from_numpy(np.ascontiguousarray(np.concatenate(arrays)))
            groups["collector"] = g
            collector.update({"seeds": [int(s) for s in self._seeds], "sim_seeds": [int(s) for s in sim.seeds],
                              "buf_lens": lens, "buf_keys": keys})
        state = {
            **self.state, "env_step": self.env_step, "updates": self.updates, "dp_updates": self.dp_updates,
            "env_steps": self.env_steps, "np_rng": self.rng.bit_generator.state, "optimizers": opt_meta,
            "replay_indices": [e.store_index for e in self.replay.episodes],
            "replay_store_episodes": int(self.replay_store.num_episodes),
            "failed_base": [e.store_index for e in self.failed_base],
            "dp_buffer": [[int(i), int(len(w))] for i, w, _ in self.dp_buffer],
            "collector": collector,
        }
        meta = {"sailor": {"env_steps": self.env_step, "model_updates": self.updates, "final": False,
                           "planner_ready": bool(self.agent.planner_ready)}, "sailor_state": state}
        last = self.out / "checkpoints" / "last"
        tmp = last.with_name("last.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        save_policy(self.agent, tmp, step=self.updates, task=self.task, extra_meta=meta, extra_groups=groups)
        old = last.with_name("last.old")
        if last.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(last, old)
        os.replace(tmp, last)
        if old.exists():
            shutil.rmtree(old)
        return last

    def _restore(self, ckpt: Path) -> None:
        from robolearn.checkpoint import load_tensors, read_meta
        from robolearn.tasks.sim import TaskSim
        from robolearn.training import optimizer_from_tensors

        meta = read_meta(ckpt)
        st = meta["sailor_state"]
        n_store = self.replay_store.num_episodes
        if n_store < st["replay_store_episodes"]:
            raise ValueError(f"--resume {self.out}: replay.zarr holds {n_store} episodes, the checkpoint recorded "
                             f"{st['replay_store_episodes']} (the replay store was changed or lost)")
        if n_store > st["replay_store_episodes"]:  # episodes of the killed run after its last checkpoint
            self.replay_store.drop_episodes(range(st["replay_store_episodes"], n_store))
        self.env_step, self.updates, self.dp_updates = int(st["env_step"]), int(st["updates"]), int(st["dp_updates"])
        self.updater.updates = self.updates
        self.state = {k: st[k] for k in self.state}
        self.critic_trainer.slow.load_state_dict(load_tensors(ckpt, "critic_slow", meta))
        for name, opt in (("wm", self.wm_opt), ("rm", self.rm_opt), ("critic", self.critic_trainer.opt)):
            optimizer_from_tensors(opt, load_tensors(ckpt, f"opt_{name}", meta), st["optimizers"][name])
        chunks = load_tensors(ckpt, "expert", meta)["base_chunk"].numpy()
        pos = 0
        for e in self.expert.episodes:
            T = len(e.action)
            e.base_chunk, e.offset = chunks[pos : pos + T], chunk_offsets(T, self.n_act)
            pos += T
        self.expert.invalidate()
        # the replay buffer: the committed episodes it held, in order
        keys = [f"obs/{k}" for k in self.acfg.base.state_keys] + ["action", "base_action", "chunk_offset", "residual"]
        success = self.replay_store.column("success")
        cache: dict[int, Episode] = {}

        def episode(i: int) -> Episode:
            if i not in cache:
                cache[i] = self._episode_of(self.replay_store.get_episode(i, keys), bool(success[i]), i)
            return cache[i]

        self.replay.episodes = [episode(i) for i in st["replay_indices"]]
        self.replay.invalidate()
        self.failed_base = [episode(i) for i in st["failed_base"]]
        if st["dp_buffer"]:
            dp = load_tensors(ckpt, "dp_buffer", meta)
            windows, targets = dp["windows"].numpy(), dp["targets"].numpy()
            pos = 0
            for i, n in st["dp_buffer"]:
                self.dp_buffer.append((i, windows[pos : pos + n], targets[pos : pos + n]))
                pos += n
        col = st["collector"]
        if col["running"] and col.get("backend", "cpu") != "cpu":
            # device envs are not restored: their unfinished episodes go to the replay as cut episodes
            if col["buf_keys"]:
                g = load_tensors(ckpt, "collector", meta)
                arrays = {k: g[f"buf.{k}"].numpy() for k in col["buf_keys"]}
                pos = 0
                for i, length in enumerate(col["buf_lens"]):
                    if length:
                        buf = {k: list(arrays[k][pos : pos + length]) for k in col["buf_keys"]}
                        buf["done"][-1] = True
                        self._commit(buf, False, int(col["seeds"][i]), "cut")
                        pos += length
        elif col["running"]:
            g = load_tensors(ckpt, "collector", meta)
            n = self.loop.num_envs
            sim = TaskSim(self.task, cfg=self.task_cfg, num_envs=n)
            sim.reset(seeds=col["sim_seeds"])
            sim.set_state(g["sim_state"].numpy())
            sim.t[:] = g["sim_t"]
            for gen, s in zip(sim.gens, g["sim_gens"]):
                gen.set_state(s.clone())
            self._start_collector(sim)
            self._collector.resume({k[4:]: v.numpy().copy() for k, v in g.items() if k.startswith("obs.")},
                                   list(col["seeds"]), lengths=sim.t.numpy(),
                                   history={k[5:]: v.numpy() for k, v in g.items() if k.startswith("hist.")})
            arrays = {k: g[f"buf.{k}"].numpy() for k in col["buf_keys"]}
            pos = 0
            for i, length in enumerate(col["buf_lens"]):
                if length:
                    self._bufs[i] = {k: list(arrays[k][pos : pos + length]) for k in col["buf_keys"]}
                    pos += length
        self.agent.load_closed_loop_state(load_tensors(ckpt, "agent_loop", meta))
        # metrics.jsonl as it was at the checkpoint
        path = self.out / "metrics.jsonl"
        if path.exists():
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()][: st["metrics_lines"]]
            path.write_text("".join(ln + "\n" for ln in lines))
        # the RNGs last: nothing above may draw from them afterwards
        rng = load_tensors(ckpt, "rng", meta)
        torch.set_rng_state(rng["torch"])
        self.gen.set_state(rng["gen"])
        self.rng.bit_generator.state = st["np_rng"]

    # -- the loop -----------------------------------------------------------------------------------
    def run(self, stop_after_checkpoints: int | None = None) -> Path:
        """The phase machine; every phase ends with a checkpoint. `stop_after_checkpoints` stops the
        run after that many further checkpoints (tests use it to stand in for a kill)."""
        loop, st = self.loop, self.state
        t_resume = time.time()
        wall0 = st["wall_s"]
        self._wall = lambda: wall0 + time.time() - t_resume  # run time summed over invocations
        done_checkpoints = 0

        def commit_phase() -> bool:
            nonlocal done_checkpoints
            st["wall_s"] = self._wall()
            self.checkpoint()
            done_checkpoints += 1
            return stop_after_checkpoints is not None and done_checkpoints >= stop_after_checkpoints

        while st["phase"] != "done":
            phase = st["phase"]
            if phase == "warm_collect":
                warm = int(loop.warmstart_fraction * self.env_steps) if loop.warmstart else 0
                if warm > 0:
                    st["record"] = self.collect(warm, "noisy_base")
                    st["todo"] = int(warm * loop.warmstart_train_ratio)
                    st["phase"] = "warm_train"
                else:
                    st["phase"] = "round_collect"
            elif phase == "warm_train":
                self.train_phase("warm start")
                diag = self.diagnostics()
                self.write_diagnostics(diag)
                self.log({"phase": "warmstart", **st["record"], **self._phase_means(), **diag})
                st["record"], st["phase"] = {}, "round_collect"
            elif phase == "round_collect":
                if self.env_step >= self.env_steps:
                    st["phase"] = "final"
                    continue
                n = min(loop.min_env_steps_per_round, self.env_steps - self.env_step)
                m = self.collect(n, "planner")
                m["replay_dropped_episodes"] = self.trim_replay()
                m["replay_steps"] = self.replay.num_steps
                st["record"] = m
                st["todo"] = int(loop.rounds_train_ratio * m["collect_steps"])
                st["phase"] = "round_train"
            elif phase == "round_train":
                round_id = st["round"]
                self.train_phase(f"round {round_id}")
                m = {**st["record"], **self._phase_means()}
                diag = self.diagnostics()
                m.update(diag)
                if round_id % loop.eval_every_round == 0 and loop.eval_episodes > 0:
                    m.update(self.evaluate(loop.eval_episodes))
                    self.save(self.out / "checkpoints" / f"round_{round_id:04d}")
                if (loop.update_dp_every and round_id % loop.update_dp_every == 0 and round_id > 0
                        and self.env_step <= 0.95 * self.env_steps):
                    m.update(self.expert_iteration())
                self.write_diagnostics(diag)
                self.log({"phase": "round", "round": round_id, "wall_s": wall0 + time.time() - t_resume, **m})
                st["record"], st["round"], st["phase"] = {}, round_id + 1, "round_collect"
            elif phase == "final":
                cut = self.close_collector()
                self.trim_replay()
                self.save(self.out / "policy", final=True)
                from robolearn.checkpoint import save_policy

                save_policy(self.agent.base, self.out / "base_policy", step=self.dp_updates, task=self.task)
                final = {"phase": "final", "rounds": st["round"], "cut_episodes": cut, "wall_s": wall0 + time.time() - t_resume}
                if loop.eval_episodes > 0:
                    final.update(self.evaluate(loop.eval_episodes))
                self.log(final)
                st["phase"] = "done"
            if commit_phase():
                return self.out
        self.logger.close()
        self.replay_store.close()
        return self.out


def _prepare_out(out: Path) -> None:
    """Refuse a directory that already holds a SAILOR run: finished runs are kept, started ones
    continue with --resume (their replay store is never silently emptied)."""
    if (out / "policy" / "checkpoint.json").exists():
        raise FileExistsError(f"{out} already holds a finished SAILOR run; pass another --out")
    if (out / "run.json").exists() or (out / "replay.zarr").exists():
        raise FileExistsError(f"{out} holds a started SAILOR run; continue it with `robolearn sailor --resume {out}` "
                              f"or pass another --out")


def run_sailor(base: str | Path, demos: str | Path, task: str, env_steps: int, out: str | Path | None = None,
               overrides: list[str] | None = None, config_path: str | Path | None = None, perturb: float | None = None,
               task_overrides: list[str] | None = None, wandb_mode: str = "offline", progress: bool = True,
               stop_after_checkpoints: int | None = None, backend: str = "cpu") -> Path:
    """`robolearn sailor`: returns the run directory. backend: where the training envs run (cpu:
    MuJoCo C; gpu / warp-cpu: MuJoCo Warp, see the module doc)."""
    from robolearn.tasks.registry import check_task

    check_task(task)
    cfg = load_sailor_config(config_path, overrides)
    if out is None:
        out = Path("runs") / f"sailor-{task}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out = Path(out)
    _prepare_out(out)
    trainer = SailorTrainer(cfg, base, demos, task, env_steps, out, perturb=perturb, task_overrides=task_overrides,
                            wandb_mode=wandb_mode, progress=progress, backend=backend)
    return trainer.run(stop_after_checkpoints)


def resume_sailor(run_dir: str | Path, env_steps: int | None = None, wandb_mode: str = "offline", progress: bool = True,
                  stop_after_checkpoints: int | None = None) -> Path:
    """`robolearn sailor --resume RUN`: continue exactly from RUN/checkpoints/last."""
    from robolearn.config import load_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--resume {run_dir}: no such run directory")
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "run.json").is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no config.yaml / run.json (not a SAILOR run)")
    if (run_dir / "policy" / "checkpoint.json").exists():
        raise FileExistsError(f"--resume {run_dir}: the run already finished (its policy/ is written)")
    SailorTrainer.last_checkpoint(run_dir)  # a clear error before anything is built
    if not (run_dir / "replay.zarr").exists():
        raise FileNotFoundError(f"--resume {run_dir}: its replay.zarr is missing")
    info = json.loads((run_dir / "run.json").read_text())
    cfg = load_config(SailorRunConfig, run_dir / "config.yaml", [])
    trainer = SailorTrainer(cfg, info["base"], info["demos"], info["task"], env_steps or info["env_steps"], run_dir,
                            perturb=info.get("perturb"), task_overrides=info.get("task_overrides"), wandb_mode=wandb_mode,
                            progress=progress, resume=True, backend=info.get("backend", "cpu"))
    return trainer.run(stop_after_checkpoints)
