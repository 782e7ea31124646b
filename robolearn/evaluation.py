"""`robolearn eval`: seeded closed-loop evaluation of any policy on a task.

Episodes use a fixed list of seeds (`seed, seed+1, ...`) recorded in the report. Environments run
batched; when one finishes, it is reset with the next seed, so the same seed and `--num-envs`
give bit-identical results on CPU. The report gives n, the success rate with its 95% Wilson
interval, mean return and length, failure events and recoveries per episode (a recovery is a
failure event in an episode that still succeeded), and per-episode records. For a hierarchical
policy it also counts retries: the high level going back to an earlier primitive while the task's
stage has not advanced (e.g. re-grasping a dropped cube).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

import numpy as np
import torch


class ClosedLoopPolicy(Protocol):
    """What evaluation needs: an observation history in, one action per env out."""

    def select_action(self, obs: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def reset(self, env_mask: torch.Tensor | None = None) -> None: ...


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (well-behaved at 0 and n)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def pool_evaluations(results: Iterable[Mapping[str, Any]]) -> tuple[int, int, tuple[float, float]]:
    """(successes k, episodes n, Wilson interval of k/n) summed over several evaluations, e.g. one
    per training seed: how every results table pools seeds (episodes, not per-seed rates)."""
    results = list(results)
    k, n = sum(int(r["successes"]) for r in results), sum(int(r["n"]) for r in results)
    return k, n, wilson_interval(k, n)


def _policy_obs_spec(policy: Any) -> tuple[int, list[str]]:
    cfg = getattr(policy, "config", None)
    n_obs = int(getattr(cfg, "n_obs_steps", 1))
    keys = list(getattr(cfg, "obs_keys", ["state"]))
    return n_obs, keys


def task_config_for_policy(task: str, policy: Any, perturb: float | None = None, task_overrides: list[str] | None = None) -> Any:
    """The task's config with the observations this policy reads switched on (images, wrist camera)
    and an optional perturbation rate, so any policy runs on the task it was trained for."""
    from robolearn.tasks.registry import load_task_config

    _, keys = _policy_obs_spec(policy)
    overrides = list(task_overrides or [])
    if perturb is not None:
        overrides.append(f"perturb_rate={perturb}")
    if any(k != "state" for k in keys):
        overrides.append("obs_mode=state+image")
        if "wrist_image" in keys:
            overrides.append("wrist_camera=true")
    return load_task_config(task, overrides)


class _History:
    """Per-env rolling window of the last To observations (edge-padded after a reset)."""

    def __init__(self, n_obs_steps: int, keys: list[str]) -> None:
        self.n = n_obs_steps
        self.keys = keys
        self.buf: dict[str, np.ndarray] = {}

    def reset(self, obs: dict[str, np.ndarray], rows: np.ndarray | None = None) -> None:
        for k in self.keys:
            if k not in obs:
                raise KeyError(f"the policy needs observation {k!r}, the task gives {', '.join(obs)}")
            if rows is None or k not in self.buf:
                self.buf[k] = np.repeat(obs[k][:, None], self.n, axis=1)
            else:
                self.buf[k][rows] = obs[k][rows][:, None]

    def push(self, obs: dict[str, np.ndarray]) -> None:
        for k in self.keys:
            self.buf[k] = np.concatenate([self.buf[k][:, 1:], obs[k][:, None]], axis=1)

    def torch(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v).to(device) for k, v in self.buf.items()}


def evaluate_policy(
    policy: Any,
    task: str,
    episodes: int,
    seed: int = 0,
    num_envs: int = 1,
    perturb: float | None = None,
    video: int = 0,
    video_dir: str | Path | None = None,
    save: str | Path | None = None,
    collector: str | None = None,
    task_overrides: list[str] | None = None,
    progress: bool = True,
    backend: str = "cpu",
) -> dict[str, Any]:
    """Run `episodes` seeded episodes and return the report (see module docstring).

    backend: "cpu" (MuJoCo C), "gpu" (MuJoCo Warp on CUDA) or "warp-cpu" (MuJoCo Warp on Warp's
    CPU device, for tests); the Warp backends run `robolearn.tasks.device_env` (state obs only).
    """
    if backend != "cpu":
        from robolearn.tasks.device_env import evaluate_policy_device

        if video or save or perturb:
            raise ValueError(f"--backend {backend} does not record videos/rollouts or inject perturbations; use --backend cpu")
        return evaluate_policy_device(policy, task, episodes, seed=seed, num_envs=num_envs, backend=backend,
                                      task_overrides=task_overrides, progress=progress)

    from robolearn.tasks.sim import TaskSim

    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    num_envs = max(1, min(num_envs, episodes))
    n_obs, keys = _policy_obs_spec(policy)
    from robolearn.tasks.registry import get_spec

    if get_spec(task).is_gym:  # gymnasium envs: no perturbations, videos or saving; --set goes to gym.make
        from robolearn.tasks.gym_adapter import GymTaskBatch, overrides_to_kwargs

        if perturb or video or save:
            raise ValueError(f"gymnasium task {task!r} supports no --perturb, --video or --save")
        sim: Any = GymTaskBatch(task, num_envs, **overrides_to_kwargs(task_overrides))
        perturb_rate = 0.0
    else:
        cfg = task_config_for_policy(task, policy, perturb, task_overrides)
        sim = TaskSim(task, cfg=cfg, num_envs=num_envs)
        perturb_rate = cfg.perturb_rate
    device = next(iter(policy.parameters())).device if hasattr(policy, "parameters") else torch.device("cpu")
    seeds = [seed + i for i in range(episodes)]
    writer = _RolloutWriter(save, sim, task, collector or getattr(policy, "name", "policy")) if save else None
    videos = _VideoRecorder(sim, video, video_dir) if video > 0 else None

    # Stochastic policies (diffusion noise, GMM sampling) draw from torch's global RNG: seed it from
    # the evaluation seed so results are reproducible, and restore the caller's RNG afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        records = _rollout(policy, sim, episodes, seeds, num_envs, n_obs, keys, device, writer, videos, progress, task)
    sim.close()
    if writer:
        writer.close()
    return summarize([r for r in records if r is not None], score_name=getattr(getattr(sim, "task", None), "score_name", None),
                     task=task, seed=seed, num_envs=num_envs, perturb=perturb_rate, videos=videos.paths if videos else [])


class _RetryCounter:
    """Counts, per env, the hierarchical policy's retries: the high level switching to an earlier
    primitive (lower index in PRIMITIVES' reach -> grasp -> transport -> release order) while the
    task's stage has not advanced since the primitive it leaves was chosen. Moving on to the next
    object (stage up, back to reach) is progress, not a retry."""

    def __init__(self, num_envs: int, stage: np.ndarray) -> None:
        self.count = np.zeros(num_envs, int)
        self.active = np.full(num_envs, -1)
        self.stage = np.asarray(stage, int).copy()
        self.stage_at_choice = self.stage.copy()

    def update(self, active_primitive: torch.Tensor | None) -> None:
        if active_primitive is None:
            return
        new = active_primitive.detach().cpu().numpy().astype(int)
        chosen = new != self.active
        back = (self.active >= 0) & (new < self.active)  # implies chosen
        self.count += back & (self.stage <= self.stage_at_choice)
        self.stage_at_choice[chosen] = self.stage[chosen]
        self.active = new

    def restart(self, rows: np.ndarray, stage: np.ndarray) -> None:
        self.count[rows] = 0
        self.active[rows] = -1
        self.stage[rows] = stage[rows]
        self.stage_at_choice[rows] = stage[rows]


def _rollout(policy, sim, episodes, seeds, num_envs, n_obs, keys, device, writer, videos, progress, task):
    """The batched episode loop: step every env, restart finished ones with the next seed."""
    from tqdm import tqdm

    slot_episode = np.full(num_envs, -1)
    next_ep = 0
    records: list[dict[str, Any] | None] = [None] * episodes
    acc = {"return": np.zeros(num_envs), "length": np.zeros(num_envs, int), "events": np.zeros(num_envs, int), "max_stage": np.zeros(num_envs, int),
           "score": np.zeros(num_envs)}
    step_score = _step_scorer(sim)

    def start(rows: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal next_ep
        mask = torch.zeros(num_envs, dtype=torch.bool)
        mask[torch.as_tensor(rows)] = True
        ep_ids = list(range(next_ep, next_ep + len(rows)))
        next_ep += len(rows)
        slot_episode[rows] = ep_ids
        obs = sim.reset(mask=mask, seeds=[seeds[e] for e in ep_ids])
        for name in acc:
            acc[name][rows] = 0
        return obs

    policy.reset()
    obs = start(np.arange(num_envs))
    retries = _RetryCounter(num_envs, sim.status()["stage"]) if hasattr(policy, "active_primitive") else None
    hist = _History(n_obs, keys)
    hist.reset(obs)
    if writer:
        writer.begin(np.arange(num_envs), obs)
    if videos:
        videos.capture(slot_episode)
    bar = tqdm(total=episodes, desc=f"eval {task}", disable=not progress, dynamic_ncols=True)
    finished = 0
    with torch.no_grad():
        while finished < episodes:
            action = policy.select_action(hist.torch(device))
            if retries is not None:
                retries.update(policy.active_primitive)
            action = action.detach().to("cpu", torch.float64).numpy()
            if not np.all(np.isfinite(action)):
                bad = np.flatnonzero(~np.isfinite(action).all(1)).tolist()
                raise RuntimeError(f"the policy produced a NaN/inf action for env(s) {bad}")
            pre_state = sim.get_state() if writer else None
            obs, reward, terminated, truncated, info = sim.step(action)
            active = slot_episode >= 0
            acc["return"][active] += reward[active]
            acc["length"][active] += 1
            acc["events"][active] += (info["failure_event"][active] > 0)
            acc["max_stage"][active] = np.maximum(acc["max_stage"][active], info["stage"][active])
            if step_score is not None:
                acc["score"][active] = np.maximum(acc["score"][active], step_score()[active])
            if retries is not None:
                retries.stage[:] = info["stage"]
            if writer:
                writer.record(active, pre_state, action, reward, terminated | truncated, info)
                writer.observe(np.flatnonzero(active), obs)
            hist.push(obs)
            if videos:
                videos.capture(slot_episode)
            done = (terminated | truncated) & active
            if done.any():
                rows = np.flatnonzero(done)
                for r in rows:
                    ep = int(slot_episode[r])
                    success = bool(info["success"][r])
                    events = int(acc["events"][r])
                    records[ep] = {
                        "episode": ep,
                        "seed": seeds[ep],
                        "success": success,
                        "return": float(acc["return"][r]),
                        "length": int(acc["length"][r]),
                        "failure_events": events,
                        "recoveries": events if success else 0,
                        "max_stage": int(acc["max_stage"][r]),
                        "score": float(acc["score"][r]) if step_score is not None else float(success),
                    }
                    if retries is not None:
                        records[ep]["retries"] = int(retries.count[r])
                    if writer:
                        writer.commit(r, success, seeds[ep])
                    if videos:
                        videos.finish(ep)
                finished += len(rows)
                bar.update(len(rows))
                remaining = episodes - next_ep
                restart = rows[: max(0, remaining)]
                idle = rows[max(0, remaining):]
                slot_episode[idle] = -1
                if len(restart):
                    obs = start(restart)
                    if retries is not None:
                        retries.restart(restart, sim.status()["stage"])
                    hist.reset(obs, restart)
                    policy.reset(torch.as_tensor(np.isin(np.arange(num_envs), restart)))
                    if writer:
                        writer.begin(restart, obs)
    bar.close()
    return records


def _step_scorer(sim: Any) -> Any:
    """A function giving every env's per-step score now, for tasks with a `score_name` (push_t:
    clipped coverage); None: an episode's score is its success."""
    task = getattr(sim, "task", None)
    if getattr(task, "score_name", None) is None:
        return None
    return lambda: np.asarray(task.step_score(sim.read()), dtype=np.float64).reshape(-1)


def summarize(records: list[dict[str, Any]], score_name: str | None = None, **extra: Any) -> dict[str, Any]:
    """The report: success with its Wilson interval, means, and the task's score (the mean over
    episodes of each episode's score: its success unless the task defines a step score)."""
    n = len(records)
    k = sum(r["success"] for r in records)
    lo, hi = wilson_interval(k, n)
    scores = [r.get("score", float(r["success"])) for r in records]
    return {
        "n": n,
        "successes": k,
        "success_rate": k / n if n else 0.0,
        "ci95": [lo, hi],
        "score": float(np.mean(scores)) if n else 0.0,
        "score_std": float(np.std(scores)) if n else 0.0,
        "score_name": score_name or "success",
        "mean_return": float(np.mean([r["return"] for r in records])) if n else 0.0,
        "mean_length": float(np.mean([r["length"] for r in records])) if n else 0.0,
        "failure_events_per_episode": float(np.mean([r["failure_events"] for r in records])) if n else 0.0,
        "recoveries_per_episode": float(np.mean([r["recoveries"] for r in records])) if n else 0.0,
        **({"retries_per_episode": float(np.mean([r["retries"] for r in records]))} if n and "retries" in records[0] else {}),
        "seeds": [r["seed"] for r in records],
        **extra,
        "episodes": records,
    }


class _RolloutWriter:
    """Writes evaluation rollouts to an episode store (source=policy), one commit per episode."""

    def __init__(self, path: str | Path, sim: Any, task: str, collector: str) -> None:
        from robolearn.data.store import EpisodeStore
        from robolearn.tasks.collect import store_features

        path = Path(path)
        if path.exists():
            self.store = EpisodeStore.open(path, mode="a")
            if self.store.task not in ("", task):
                raise ValueError(f"{path} holds task {self.store.task!r}, not {task!r}")
        else:
            self.store = EpisodeStore.create(path, store_features(sim), task=task, control_period=sim.control_period)
        self.collector = collector
        self.steps: dict[int, dict[str, list[Any]]] = {}
        self.last_obs: dict[int, dict[str, np.ndarray]] = {}

    def begin(self, rows: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        for r in rows:
            self.steps[int(r)] = {}
            self.last_obs[int(r)] = {k: v[r].copy() for k, v in obs.items()}

    def record(self, active, pre_state, action, reward, done, info) -> None:
        for r in np.flatnonzero(active):
            row = {f"obs/{k}": v for k, v in self.last_obs[int(r)].items() if f"obs/{k}" in self.store.features}
            row.update(
                # the simulator clamps to [-1, 1]: store what was executed, not the raw policy output
                action=np.clip(action[r], -1.0, 1.0).astype(np.float32), reward=np.float32(reward[r]), done=bool(done[r]),
                stage=np.int32(info["stage"][r]), sim_state=pre_state[r],
            )
            if "failure_event" in self.store.features:
                row["failure_event"] = np.int32(info["failure_event"][r])
            if "primitive" in self.store.features:
                row["primitive"] = np.int32(-1)
            steps = self.steps[int(r)]
            for k, v in row.items():
                steps.setdefault(k, []).append(v)

    def observe(self, rows, obs) -> None:
        for r in rows:
            self.last_obs[int(r)] = {k: v[r].copy() for k, v in obs.items()}

    def commit(self, r: int, success: bool, seed: int) -> None:
        steps = {k: np.asarray(v) for k, v in self.steps.pop(int(r)).items()}
        steps["source"] = "policy"
        self.store.append_episode(steps, success=success, collector=self.collector, seed=seed)

    def close(self) -> None:
        self.store.close()


class _VideoRecorder:
    """mp4 of the first K episodes (env slots rendered individually from their full state)."""

    def __init__(self, sim: Any, count: int, directory: str | Path | None) -> None:
        from robolearn.tasks.base import STATE_SPEC
        from robolearn.tasks.render import ImageRenderer

        self.sim = sim
        self.count = count
        self.dir = Path(directory or "videos")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.renderer = ImageRenderer(sim.model, 160, ("front",))
        self.spec = STATE_SPEC
        self.frames: dict[int, list[np.ndarray]] = {}
        self.paths: list[str] = []

    def capture(self, slot_episode: np.ndarray) -> None:
        states = None
        for slot, ep in enumerate(slot_episode):
            if 0 <= ep < self.count:
                if states is None:
                    states = self.sim.get_state()
                img = self.renderer.render_states(states[slot : slot + 1], self.spec)["front"][0]
                self.frames.setdefault(int(ep), []).append(img)

    def finish(self, ep: int) -> None:
        frames = self.frames.pop(ep, None)
        if not frames:
            return
        import imageio.v3 as iio

        path = self.dir / f"episode_{ep:04d}.mp4"
        fps = max(1, int(round(1.0 / self.sim.control_period)))
        iio.imwrite(path, np.stack(frames), fps=fps, codec="libx264", macro_block_size=1)
        self.paths.append(str(path))


# ----------------------------------------------------------------------------------- CLI
def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory or a run directory (uses its final policy, else last)."""
    path = Path(path)
    for candidate in (path, path / "policy", path / "checkpoints" / "last"):
        if (candidate / "checkpoint.json").is_file():
            return candidate
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    raise FileNotFoundError(f"{path} holds no robolearn checkpoint (no checkpoint.json)")


def load_any_policy(path: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """A policy, or a planner-augmented policy, from a checkpoint directory, with its metadata."""
    from robolearn.checkpoint import load_policy, read_meta

    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    return load_policy(ckpt, device=device), meta


def task_overrides_from_meta(meta: dict[str, Any], task: str) -> list[str]:
    """`key=value` task overrides recorded with the policy's training data (same task only): the
    structural fields of the task's config class (`structural_fields`, e.g. sort's num_cubes)."""
    from robolearn.tasks.registry import structural_overrides

    return structural_overrides(task, meta.get("task_config"))


def set_action_steps(policy: Any, n: int) -> None:
    """Execute `n` actions of each predicted chunk before re-planning (receding-horizon length)."""
    cfg = getattr(policy, "config", None)
    if cfg is None or not hasattr(cfg, "n_action_steps"):
        raise ValueError("--action-steps needs a chunking policy (its config has n_action_steps)")
    longest = cfg.horizon - cfg.n_obs_steps + 1
    if not 1 <= n <= longest:
        raise ValueError(f"--action-steps must be in [1, {longest}] for horizon {cfg.horizon} and {cfg.n_obs_steps} obs steps, got {n}")
    cfg.n_action_steps = int(n)
    policy.reset()


def run_cli(args: argparse.Namespace) -> int:
    """`robolearn eval` (arguments: robolearn.cli.register_eval)."""
    device = "cpu"
    if args.backend == "gpu":  # fail fast, before loading anything, without the gpu extra or CUDA
        from robolearn.tasks.warp_backend import resolve_device

        device = resolve_device("cuda")
    policy, meta = load_any_policy(args.checkpoint, device=device)
    if args.action_steps is not None:
        set_action_steps(policy, args.action_steps)
    task = args.task or meta.get("task")
    if not task:
        raise ValueError("the checkpoint records no task: pass --task")
    video_dir = Path(args.video_dir) if args.video_dir else resolve_checkpoint(args.checkpoint) / "videos"
    from robolearn.tasks.registry import check_task

    check_task(task)  # a task recorded in the checkpoint: fail before any rollout
    overrides = task_overrides_from_meta(meta, task) + list(args.task_overrides or [])
    report = evaluate_policy(
        policy, task, args.episodes, seed=args.seed, num_envs=args.num_envs, perturb=args.perturb,
        video=args.video, video_dir=video_dir, save=args.save, progress=not args.json, backend=args.backend,
        task_overrides=overrides,
    )
    report["checkpoint"] = str(resolve_checkpoint(args.checkpoint))
    if args.json:
        print(json.dumps(report))
        return 0
    lo, hi = report["ci95"]
    print(f"task {task}  checkpoint {report['checkpoint']}")
    print("| n | success rate | 95% CI (Wilson) | mean return | mean length | failure events/ep | recoveries/ep | seeds |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {report['n']} | {report['success_rate']:.3f} | [{lo:.3f}, {hi:.3f}] | {report['mean_return']:.2f} | "
        f"{report['mean_length']:.1f} | {report['failure_events_per_episode']:.2f} | {report['recoveries_per_episode']:.2f} | "
        f"{args.seed}..{args.seed + args.episodes - 1} |"
    )
    if report.get("score_name", "success") != "success":
        print(f"score {report['score']:.3f} (std {report['score_std']:.3f} over episodes): {report['score_name']}")
    if "retries_per_episode" in report:
        print(f"retries per episode (the high level went back to an earlier primitive): {report['retries_per_episode']:.2f}")
    for path in report["videos"]:
        print(f"video: {path}")
    return 0
