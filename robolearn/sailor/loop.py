"""The SAILOR training loop (official `SAILORTrainer.train_dp_with_mppi`, scaled by config).

1. Warm start: roll out the base policy with Gaussian action noise (`data_collect_noise_std`) for
   `warmstart_fraction * env_steps` env steps, then train world model + reward model + critic for
   `warmstart_train_ratio` updates per collected step.
2. Rounds until the env-step budget is spent: re-label the demos with the current base policy's
   chunks; collect `min_env_steps_per_round` steps with the planner; trim the replay to the newest
   `num_buffer_transitions` transitions; train `rounds_train_ratio` updates per collected step;
   every `eval_every_round` rounds evaluate and checkpoint; every `update_dp_every` rounds (expert
   iteration) re-label the newest replay trajectories with the planner's corrected chunks and
   fine-tune the diffusion policy on them mixed 50/50 with the demos.

Each model update uses a batch of sequences, half from the demos and half from the replay. Replay
episodes are committed to `RUN/replay.zarr` (source=policy, with the base policy's chunk of each
step as `base_action`); the `replay` mask marks the episodes still in the trimmed buffer.

Run directory: config.yaml, run.json, metrics.jsonl (+ wandb), replay.zarr, policy/ (the
planner-augmented agent, `robolearn eval --checkpoint RUN`), base_policy/ (the distilled
diffusion policy, a plain diffusion checkpoint), checkpoints/round_N/ (periodic agents).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
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


# ----------------------------------------------------------------------------------- buffers
def obs_windows(states: np.ndarray, n_obs_steps: int) -> np.ndarray:
    """(T, D) -> (T, To, D): the To states ending at each step, edge-padded at the start."""
    idx = np.arange(len(states))[:, None] + np.arange(-n_obs_steps + 1, 1)[None, :]
    return states[np.clip(idx, 0, None)]


@dataclasses.dataclass
class Episode:
    state: np.ndarray  # (T, Ds) raw observations (concatenated state keys)
    action: np.ndarray  # (T, A) executed
    success: bool
    base_chunk: np.ndarray | None = None  # (T, Tb, A) the base policy's full chunk at each step
    store_index: int = -1


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

    def flat(self) -> dict[str, np.ndarray]:
        if self._flat is None:
            eps = self.episodes + self.pending
            state = np.concatenate([e.state for e in eps]).astype(np.float32)
            action = np.concatenate([e.action for e in eps]).astype(np.float32)
            prev = np.concatenate([np.concatenate([np.zeros_like(e.action[:1]), e.action[:-1]]) for e in eps]).astype(np.float32)
            first = np.concatenate([np.arange(len(e.action)) == 0 for e in eps])
            # terminal: the last step of a successful episode (episodes end on success)
            term = np.concatenate([(np.arange(len(e.action)) == len(e.action) - 1) & e.success for e in eps]).astype(np.float32)
            s, n = self.plan_start, self.plan_len
            plan = np.concatenate([e.base_chunk[:, s : s + n] for e in eps]).astype(np.float32)
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


# ----------------------------------------------------------------------------------- trainer
class SailorTrainer:
    def __init__(self, run_cfg: SailorRunConfig, base_dir: str | Path, demos: str | Path, task: str,
                 env_steps: int, out: Path, perturb: float | None = None, task_overrides: list[str] | None = None,
                 wandb_mode: str = "offline", progress: bool = True) -> None:
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
        self.device = resolve_device(run_cfg.device)
        torch.manual_seed(run_cfg.seed)
        self.rng = np.random.default_rng(run_cfg.seed)
        self.gen = torch.Generator().manual_seed(run_cfg.seed)

        base_ckpt = resolve_checkpoint(base_dir)
        base = load_policy(base_ckpt)
        if getattr(base, "name", None) != "diffusion":
            raise ValueError(f"--base must be a diffusion policy checkpoint, {base_ckpt} holds {getattr(base, 'name', '?')!r}")
        if not Path(demos).exists():
            raise FileNotFoundError(f"demo store {demos} does not exist")
        self.demo_store = EpisodeStore.open(demos, mode="r")
        if self.demo_store.num_episodes == 0:
            raise ValueError(f"{demos} holds no episodes")
        agent_cfg = dataclasses.replace(run_cfg.agent, base=base.config)
        self.agent = SailorPolicy(agent_cfg, base.normalizer)
        self.agent.base.load_state_dict(base.state_dict())
        self.agent.to(self.device)
        self.acfg = agent_cfg
        overrides = list(task_overrides or [])
        if perturb is not None:
            overrides.append(f"perturb_rate={perturb}")
        self.task_overrides = overrides
        self.task_cfg = load_task_config(task, overrides)
        if self.task_cfg.image:
            raise ConfigError("SAILOR here uses state observations: run the task with obs_mode=state")
        self.max_len = self.loop.max_episode_steps or self.task_cfg.horizon

        To, P = agent_cfg.n_obs_steps, agent_cfg.planner.horizon
        self.expert = SequenceBuffer(To - 1, P)
        self.replay = SequenceBuffer(To - 1, P)
        self._load_demos()
        self.dp_buffer: list[tuple[int, np.ndarray, np.ndarray]] = []  # (store index, obs windows, target chunks)

        wm, rm = self.agent.world_model, self.agent.reward_model
        wcfg = agent_cfg.world_model
        self.wm_opt = torch.optim.Adam(wm.parameters(), lr=wcfg.lr, eps=wcfg.eps)
        self.rm_opt = torch.optim.Adam(rm.parameters(), lr=agent_cfg.reward.lr, eps=wcfg.eps)
        self.critic_trainer = CriticTrainer(self.agent.critic)

        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(yaml.safe_dump(to_dict(run_cfg), sort_keys=False))
        (self.out / "run.json").write_text(json.dumps({
            "base": str(base_ckpt.resolve()), "demos": str(Path(demos).resolve()), "task": task, "env_steps": self.env_steps,
            "task_overrides": overrides, "command": " ".join(sys.argv),
            "started": dt.datetime.now().isoformat(timespec="seconds"),
        }, indent=1))
        self.replay_store = EpisodeStore.create(self.out / "replay.zarr", self._replay_features(), task=task,
                                                env_kwargs=dataclasses.asdict(self.task_cfg), overwrite=True)
        self.logger = MetricLogger(self.out, wandb_mode, to_dict(run_cfg), self.out.name, True, None)
        self.env_step = 0
        self.updates = 0
        self.dp_updates = 0
        self.history: list[dict[str, Any]] = []

    # -- data ------------------------------------------------------------------------------------
    def _state_of(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(arrays[f"obs/{k}"], np.float32) for k in self.acfg.base.state_keys], -1)

    def _load_demos(self) -> None:
        keys = [f"obs/{k}" for k in self.acfg.base.state_keys] + ["action"]
        missing = [k for k in keys if k not in self.demo_store.features]
        if missing:
            raise ValueError(f"the demo store lacks {', '.join(missing)}")
        success = self.demo_store.column("success")
        for i in range(self.demo_store.num_episodes):
            ep = self.demo_store.get_episode(i, keys)
            self.expert.add(Episode(self._state_of(ep), np.asarray(ep["action"], np.float32), bool(success[i]), store_index=i))
        self.relabel_expert()

    def _replay_features(self) -> dict[str, Any]:
        from robolearn.data.schema import Feature

        b = self.acfg.base
        feats = {f"obs/{k}": Feature("float32", tuple(b.input_shapes[k]), "obs") for k in b.state_keys}
        feats["action"] = Feature("float32", (b.action_dim,), "action")
        feats["base_action"] = Feature("float32", (b.horizon, b.action_dim), "aux")
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
        """Label each demo step with the current base policy's chunk (official `label_expert_eps`)."""
        To = self.acfg.n_obs_steps
        windows = np.concatenate([obs_windows(e.state, To) for e in self.expert.episodes])
        chunks = self.base_chunks(windows)
        pos = 0
        for e in self.expert.episodes:
            e.base_chunk = chunks[pos : pos + len(e.action)]
            pos += len(e.action)
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

    def train_models(self, iterations: int, bar_desc: str = "train") -> dict[str, float]:
        """World model every step, reward model every `reward.update_every` steps, critic every step."""
        from tqdm import tqdm

        wcfg, ccfg = self.acfg.world_model, self.acfg.critic
        wm, rm = self.agent.world_model, self.agent.reward_model
        half, L = wcfg.batch_size // 2, wcfg.batch_length
        self.replay.set_pending(self._pending_episodes())
        if iterations <= 0 or self.replay.num_steps + sum(len(e.action) for e in self.replay.pending) < L:
            return {}
        self.agent.train()
        self.agent.base.eval()
        sums: dict[str, list[float]] = {}
        for _ in tqdm(range(iterations), desc=bar_desc, disable=not self.progress, leave=False, dynamic_ncols=True):
            e = self.expert.sample(half, L, self.rng)
            r = self.replay.sample(half, L, self.rng)
            batch = self._torch({k: np.concatenate([e[k], r[k]]) for k in e})
            loss, post, metrics = wm.loss(batch)
            self.wm_opt.zero_grad(set_to_none=True)
            loss.backward()
            metrics["wm_grad_norm"] = float(nn.utils.clip_grad_norm_(wm.parameters(), wcfg.grad_clip))
            self.wm_opt.step()
            self.updates += 1
            feat = wm.dynamics.feat(post)  # (B, L, F), detached
            if self.updates % self.acfg.reward.update_every == 0:
                rm_loss, rm_metrics = rm.loss(feat[half:].reshape(-1, feat.shape[-1]), feat[:half].reshape(-1, feat.shape[-1]))
                self.rm_opt.zero_grad(set_to_none=True)
                rm_loss.backward()
                self.rm_opt.step()
                metrics.update(rm_metrics)
            # critic: imagined rollouts of the base policy's stored chunks from every posterior state
            start = flatten_state(post)
            actions = batch["base_plan"].reshape(-1, *batch["base_plan"].shape[2:])[:, : ccfg.imag_horizon]
            with torch.no_grad():
                feats = wm.imagine(start, actions)
                reward = rm(feats)
                cont = wm.cont_prob(feats)
            metrics.update(self.critic_trainer.train_step(feats, reward, cont))
            for k, v in metrics.items():
                sums.setdefault(k, []).append(v)
        self.agent.eval()
        return {k: float(np.mean(v)) for k, v in sums.items()}

    # -- data collection ---------------------------------------------------------------------------
    def _start_collector(self) -> None:
        from robolearn.evaluation import _History
        from robolearn.tasks.sim import TaskSim

        n = self.loop.num_envs
        self._sim = TaskSim(self.task, cfg=self.task_cfg, num_envs=n)
        self._seeds = [self._next_seed() for _ in range(n)]
        self._obs = self._sim.reset(seeds=self._seeds)
        self._hist = _History(self.acfg.n_obs_steps, list(self.acfg.base.state_keys))
        self._hist.reset(self._obs)
        self._bufs: list[dict[str, list]] = [{} for _ in range(n)]
        self.agent.reset()

    def _next_seed(self) -> int:
        self._seed_counter = getattr(self, "_seed_counter", 1_000_000 + 100_000 * self.cfg.seed) + 1
        return self._seed_counter  # training episodes never reuse evaluation seeds (< 1e6)

    def collect(self, n_steps: int, mode: str) -> dict[str, float]:
        """Step the training envs (mode 'noisy_base' or 'planner') for `n_steps` env steps (rounded up
        to a multiple of num_envs). Envs persist across calls: an episode running at the end of a
        round continues in the next one, and is committed to the replay when it ends."""
        from tqdm import tqdm

        if getattr(self, "_sim", None) is None:
            self._start_collector()
        n_envs, sim, agent, hist = self.loop.num_envs, self._sim, self.agent, self._hist
        agent.eval()
        agent.use_planner = mode == "planner"
        steps = done_eps = successes = 0
        bar = tqdm(total=n_steps, desc=f"collect {mode}", disable=not self.progress, leave=False, dynamic_ncols=True)
        with torch.no_grad():
            while steps < n_steps:
                action = agent.select_action(hist.torch(self.device), generator=self.gen)
                if mode == "noisy_base":
                    noise = self.loop.data_collect_noise_std * torch.randn(action.shape, generator=self.gen).to(action)
                    action = (action + noise).clamp(-1, 1)
                    agent.set_executed(action)
                act = action.cpu().numpy().astype(np.float64)
                chunk = agent.last_base_chunk.cpu().numpy()
                residual = agent.last_residual.cpu().numpy()
                pre = self._obs
                obs, reward, term, trunc, info = sim.step(act)
                trunc = trunc | (sim.t.numpy() >= self.max_len)
                for i in range(n_envs):
                    b = self._bufs[i]
                    for k in self.acfg.base.state_keys:
                        b.setdefault(f"obs/{k}", []).append(pre[k][i].copy())
                    b.setdefault("action", []).append(act[i].astype(np.float32))
                    b.setdefault("base_action", []).append(chunk[i])
                    b.setdefault("residual", []).append(residual[i])
                    b.setdefault("reward", []).append(np.float32(reward[i]))
                    b.setdefault("done", []).append(bool(term[i] or trunc[i]))
                    b.setdefault("stage", []).append(np.int32(info["stage"][i]))
                    b.setdefault("failure_event", []).append(np.int32(info["failure_event"][i]))
                steps += n_envs
                self.env_step += n_envs
                bar.update(n_envs)
                hist.push(obs)
                finished = np.flatnonzero(term | trunc)
                for i in finished:
                    success = bool(info["success"][i])
                    self._commit(self._bufs[i], success, self._seeds[i], mode)
                    self._bufs[i] = {}
                    done_eps += 1
                    successes += int(success)
                    self._seeds[i] = self._next_seed()
                if len(finished):
                    mask = np.zeros(n_envs, bool)
                    mask[finished] = True
                    new = sim.reset(torch.as_tensor(mask), seeds=[self._seeds[i] for i in finished])
                    obs = {k: np.where(mask.reshape(-1, *[1] * (v.ndim - 1)), new[k], v) for k, v in obs.items()}
                    hist.reset(obs, finished)
                    agent.reset(torch.as_tensor(mask))
                self._obs = obs
        bar.close()
        agent.use_planner = self.acfg.use_planner
        return {"collect_steps": steps, "collect_episodes": done_eps, "collect_success_rate": successes / max(done_eps, 1)}

    def _pending_episodes(self) -> list[Episode]:
        out = []
        for b in getattr(self, "_bufs", []) if getattr(self, "_sim", None) is not None else []:
            if b:
                steps = {k: np.asarray(v) for k, v in b.items()}
                out.append(Episode(self._state_of(steps), steps["action"].astype(np.float32), False,
                                   steps["base_action"].astype(np.float32)))
        return out

    def close_collector(self) -> int:
        """Commit the episodes still running (cut short: done, not successful); returns how many."""
        if getattr(self, "_sim", None) is None:
            return 0
        cut = 0
        for i, b in enumerate(self._bufs):
            if b:
                b["done"][-1] = True
                self._commit(b, False, self._seeds[i], "planner" if self.agent.use_planner else "noisy_base")
                cut += 1
        self._sim.close()
        self._sim = None
        return cut

    def _commit(self, buf: dict[str, list], success: bool, seed: int, mode: str) -> None:
        steps = {k: np.asarray(v) for k, v in buf.items()}
        steps["source"] = "policy"
        idx = self.replay_store.append_episode(steps, success=success, collector=f"sailor-{mode}", seed=seed,
                                               metadata={"mode": mode, "env_step": self.env_step})
        self.replay.add(Episode(self._state_of(steps), steps["action"].astype(np.float32), success,
                                steps["base_action"].astype(np.float32), store_index=idx))

    def trim_replay(self) -> int:
        dropped = self.replay.trim(self.loop.num_buffer_transitions)
        self.replay_store.set_mask("replay", [e.store_index for e in self.replay.episodes])
        return dropped

    # -- expert iteration ----------------------------------------------------------------------------
    @torch.no_grad()
    def relabel_with_planner(self, episodes: list[Episode]) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Replay trajectories re-labelled with the planner's chunks (official `relabel_with_mppi_post`):
        the posterior follows the recorded states and actions; at each step the planner corrects the
        recorded base chunk, whose planned part becomes clip(base + residual)."""
        To, P = self.acfg.n_obs_steps, self.acfg.planner.horizon
        s0 = To - 1
        out = []
        agent = self.agent
        for j in range(0, len(episodes), self.loop.relabel_batch):
            group = episodes[j : j + self.loop.relabel_batch]
            lens = [len(e.action) for e in group]
            chunks = [e.base_chunk.copy() for e in group]
            latent, prev = None, torch.zeros(len(group), self.acfg.action_dim, device=self.device)
            for t in range(max(lens)):
                idx = [min(t, n - 1) for n in lens]
                state = torch.as_tensor(np.stack([e.state[i] for e, i in zip(group, idx)]), device=self.device)
                first = torch.full((len(group),), t == 0, device=self.device)
                latent = agent.posterior_step(self._normalize_multi(state), first, latent, prev)
                base_plan = torch.as_tensor(np.stack([c[i, s0 : s0 + P] for c, i in zip(chunks, idx)]), device=self.device)
                residual = agent.plan(latent, base_plan, self.gen)
                planned = (base_plan + residual).clamp(-1, 1).cpu().numpy()
                for g, (c, i) in enumerate(zip(chunks, idx)):
                    if t < lens[g]:
                        c[i, s0 : s0 + P] = planned[g]
                prev = torch.as_tensor(np.stack([e.action[i] for e, i in zip(group, idx)]), device=self.device)
            for e, c in zip(group, chunks):
                out.append((e.store_index, obs_windows(e.state, To).astype(np.float32), c))
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
        return {"dp_loss": float(np.mean(losses)), "dp_buffer_trajs": len(self.dp_buffer)}

    def expert_iteration(self) -> dict[str, float]:
        if not self.replay.episodes:
            return {"dp_skipped": 1}  # no finished replay episode to re-label yet
        newest = self.replay.episodes[-self.loop.n_traj_to_relabel_per_round :]
        relabelled = self.relabel_with_planner(newest)
        have = {i for i, _, _ in relabelled}
        self.dp_buffer = [x for x in self.dp_buffer if x[0] not in have] + relabelled
        self.dp_buffer = self.dp_buffer[-self.loop.n_dp_traj_buffer_size :]
        metrics = self.finetune_base()
        self.relabel_expert()
        return metrics

    # -- evaluation / checkpoints ------------------------------------------------------------------
    def evaluate(self, episodes: int, seed: int = 100_000) -> dict[str, float]:
        from robolearn.evaluation import evaluate_policy

        kw = dict(episodes=episodes, seed=seed, num_envs=min(episodes, self.loop.num_envs), progress=False,
                  task_overrides=self.task_overrides)
        with torch.random.fork_rng(devices=[]):
            planner = evaluate_policy(self.agent, self.task, **kw)
            base = evaluate_policy(self.agent.base, self.task, **kw)
        return {"eval_planner_success_rate": planner["success_rate"], "eval_planner_return": planner["mean_return"],
                "eval_base_success_rate": base["success_rate"], "eval_base_return": base["mean_return"]}

    def save(self, directory: Path, final: bool = False) -> None:
        from robolearn.checkpoint import save_policy

        meta = {"sailor": {"env_steps": self.env_step, "model_updates": self.updates, "dp_updates": self.dp_updates,
                           "final": final}}
        save_policy(self.agent, directory, step=self.updates, task=self.task, extra_meta=meta)

    def log(self, record: dict[str, Any]) -> None:
        record = {"env_step": self.env_step, "model_updates": self.updates, **record}
        self.history.append(record)
        self.logger.log(self.env_step, record)

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> Path:
        t0 = time.time()
        loop = self.loop
        warm = int(loop.warmstart_fraction * self.env_steps) if loop.warmstart else 0
        if warm > 0:
            m = self.collect(warm, "noisy_base")
            m.update(self.train_models(int(warm * loop.warmstart_train_ratio), "warm start"))
            self.log({"phase": "warmstart", **m})
        round_id = 0
        while self.env_step < self.env_steps:
            n = min(loop.min_env_steps_per_round, self.env_steps - self.env_step)
            m = self.collect(n, "planner")
            m["replay_dropped_episodes"] = self.trim_replay()
            m["replay_steps"] = self.replay.num_steps
            m.update(self.train_models(int(loop.rounds_train_ratio * m["collect_steps"]), f"round {round_id}"))
            if (loop.update_dp_every and round_id % loop.update_dp_every == 0 and round_id > 0
                    and self.env_step <= 0.95 * self.env_steps):
                m.update(self.expert_iteration())
            if round_id % loop.eval_every_round == 0 and loop.eval_episodes > 0:
                m.update(self.evaluate(loop.eval_episodes))
                self.save(self.out / "checkpoints" / f"round_{round_id:04d}")
            self.log({"phase": "round", "round": round_id, "wall_s": time.time() - t0, **m})
            round_id += 1
        cut = self.close_collector()
        self.trim_replay()
        self.save(self.out / "policy", final=True)
        from robolearn.checkpoint import save_policy

        save_policy(self.agent.base, self.out / "base_policy", step=self.dp_updates, task=self.task)
        final = {"phase": "final", "rounds": round_id, "cut_episodes": cut, "wall_s": time.time() - t0}
        if loop.eval_episodes > 0:
            final.update(self.evaluate(loop.eval_episodes))
        self.log(final)
        self.logger.close()
        self.replay_store.close()
        return self.out


def run_sailor(base: str | Path, demos: str | Path, task: str, env_steps: int, out: str | Path | None = None,
               overrides: list[str] | None = None, config_path: str | Path | None = None, perturb: float | None = None,
               task_overrides: list[str] | None = None, wandb_mode: str = "offline", progress: bool = True) -> Path:
    """`robolearn sailor`: returns the run directory."""
    from robolearn.tasks.registry import check_task

    check_task(task)
    cfg = load_sailor_config(config_path, overrides)
    if out is None:
        out = Path("runs") / f"sailor-{task}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out = Path(out)
    if (out / "policy" / "checkpoint.json").exists():
        raise FileExistsError(f"{out} already holds a finished SAILOR run; pass another --out")
    if out.exists() and (out / "replay.zarr").exists():
        shutil.rmtree(out / "replay.zarr")
    trainer = SailorTrainer(cfg, base, demos, task, env_steps, out, perturb=perturb, task_overrides=task_overrides,
                            wandb_mode=wandb_mode, progress=progress)
    return trainer.run()
