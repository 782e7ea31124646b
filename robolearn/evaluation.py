"""`robolearn eval`: seeded closed-loop evaluation of any policy on a task.

Episodes use a fixed list of seeds (`seed, seed+1, ...`) recorded in the report. Environments run
batched through the one rollout engine (robolearn.tasks.rollout); when one finishes, it is reset
with the next seed, so the same seed and `--num-envs` give bit-identical results on CPU. The
report gives n, the success rate with its 95% Wilson interval, mean return and length, failure
events, failure exposures (failure events in episodes that still succeeded: the old
"recoveries") and true recoveries per episode (a failure event that set the task back, after which
the policy itself brought it back: robolearn.metrics_recovery), the task's score, and per-episode
records. For a hierarchical policy it also counts
retries: the high level going back to an earlier primitive while the task's stage has not
advanced (e.g. re-grasping a dropped cube).

This module imports neither torch nor numpy at import time (the command checks its arguments
first); evaluation hooks (retries, videos, `--save`) are `robolearn.tasks.rollout.Hook`s.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

from robolearn.tasks.rollout import Hook  # light: imports torch only when a rollout runs


class ClosedLoopPolicy(Protocol):
    """What evaluation needs: an observation history in, one action per env out."""

    def select_action(self, obs: dict[str, Any]) -> Any: ...

    def reset(self, env_mask: Any = None) -> None: ...


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


def paired_outcomes(rows: Iterable[Mapping[str, Any]], reference: Iterable[Mapping[str, Any]]) -> tuple[int, int, float] | None:
    """Two policies evaluated on the same episodes (same seeds), each row one training seed with
    `seed` and per-episode `successes_per_episode`: (episodes only `rows` solved, episodes only
    `reference` solved, exact two-sided McNemar p). A paired comparison, sharper than two overlapping
    intervals. None where no seed has per-episode outcomes on both sides."""
    ref = {r["seed"]: r["successes_per_episode"] for r in reference if "successes_per_episode" in r}
    pairs = [(a, b) for r in rows if r["seed"] in ref and "successes_per_episode" in r
             for a, b in zip(r["successes_per_episode"], ref[r["seed"]], strict=True)]
    if not pairs:
        return None
    wins, losses = sum(bool(a) and not b for a, b in pairs), sum(bool(b) and not a for a, b in pairs)
    n = wins + losses
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n) if n else 1.0
    return wins, losses, p


def pool_evaluations(results: Iterable[Mapping[str, Any]]) -> tuple[int, int, tuple[float, float]]:
    """(successes k, episodes n, Wilson interval of k/n) summed over several evaluations, e.g. one
    per training seed: how every results table pools seeds (episodes, not per-seed rates)."""
    results = list(results)
    k, n = sum(int(r["successes"]) for r in results), sum(int(r["n"]) for r in results)
    return k, n, wilson_interval(k, n)


def _policy_obs_spec(policy: Any) -> tuple[int, list[str]]:
    from robolearn.tasks.rollout import policy_obs_spec

    return policy_obs_spec(policy)


def __getattr__(name: str) -> Any:
    if name == "_History":  # the observation history, now robolearn.tasks.rollout.ObsHistory
        from robolearn.tasks.rollout import ObsHistory

        return ObsHistory
    raise AttributeError(f"module 'robolearn.evaluation' has no attribute {name!r}")


def task_config_for_policy(task: str, policy: Any, perturb: float | None = None, task_overrides: list[str] | None = None) -> Any:
    """The task's config with the observations this policy reads switched on (images, wrist camera)
    and an optional perturbation rate, so any policy runs on the task it was trained for."""
    from robolearn.tasks.registry import load_task_config

    _, keys = _policy_obs_spec(policy)
    overrides = list(task_overrides or [])
    if perturb is not None:
        overrides.append(f"perturb_rate={perturb}")
    if any(k not in ("state", "proprio") for k in keys):
        overrides.append("obs_mode=state+image")
        if "wrist_image" in keys:
            overrides.append("wrist_camera=true")
    return load_task_config(task, overrides)


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
    hooks: list[Hook] | None = None,
    sync_every: int | None = None,
    **backend_kwargs: Any,
) -> dict[str, Any]:
    """Run `episodes` seeded episodes and return the report (see module docstring).

    backend: "cpu" (MuJoCo C), "gpu" (MuJoCo Warp on CUDA) or "warp-cpu" (MuJoCo Warp on Warp's
    CPU device, for tests); the Warp backends keep every per-step tensor on the device (state
    observations only). hooks: extra rollout hooks (robolearn.tasks.rollout.Hook).
    """
    import torch

    from robolearn.tasks.registry import get_spec
    from robolearn.tasks.rollout import DeviceBatch, EpisodeStats, FixedSeeds, HostBatch, PolicyActor, RolloutEngine

    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    num_envs = max(1, min(num_envs, episodes))
    spec = get_spec(task)
    seeds = [seed + i for i in range(episodes)]
    schedule = FixedSeeds(seeds)
    extra_hooks: list[Hook] = list(hooks or [])
    perturb_rate = 0.0
    if backend != "cpu":
        from robolearn.tasks.device_env import DeviceVectorEnv

        if video or save or perturb:
            raise ValueError(f"--backend {backend} does not record videos/rollouts or inject perturbations; use --backend cpu")
        if spec.is_gym:
            raise ValueError(f"--backend {backend} runs robolearn tasks; {task!r} is a gymnasium env (use --backend cpu)")
        _, keys = _policy_obs_spec(policy)
        if keys != ["state"]:
            raise ValueError(f"--backend {backend} evaluates state-observation policies only (this one needs {keys})")
        env = DeviceVectorEnv(task, num_envs, backend=backend, overrides=list(task_overrides or []), **backend_kwargs)
        batch: Any = DeviceBatch(env, schedule)
        scorer = (lambda: env.task.step_score(env.backend.read())) if env.task.score_name is not None else None
        score_name, rng_devices = env.task.score_name, ([env.device] if env.device.type == "cuda" else [])
        param = next(iter(policy.parameters()), None) if hasattr(policy, "parameters") else None
        pdev = param.device if param is not None else env.device
        actor = PolicyActor(policy, device=pdev)
        desc = f"eval {task} [{backend}]"
    else:
        if spec.is_gym:  # gymnasium envs: no perturbations, videos or saving; --set goes to gym.make
            from robolearn.tasks.gym_adapter import GymTaskBatch, overrides_to_kwargs

            if perturb or video or save:
                raise ValueError(f"gymnasium task {task!r} supports no --perturb, --video or --save")
            sim: Any = GymTaskBatch(task, num_envs, **overrides_to_kwargs(task_overrides))
        else:
            from robolearn.tasks.sim import TaskSim

            cfg = task_config_for_policy(task, policy, perturb, task_overrides)
            sim = TaskSim(task, cfg=cfg, num_envs=num_envs)
            perturb_rate = cfg.perturb_rate
        batch = HostBatch(sim, schedule)
        scorer = _step_scorer(sim)
        score_name, rng_devices = getattr(getattr(sim, "task", None), "score_name", None), []
        actor = PolicyActor(policy)
        if not spec.is_gym:  # true recoveries need the task's milestone levels
            from robolearn.metrics_recovery import RecoveryHook

            extra_hooks.append(RecoveryHook(sim))
        if hasattr(policy, "active_primitive"):
            extra_hooks.insert(0, RetryHook(policy))
        if save:
            extra_hooks.append(rollout_writer(save, sim, task, collector or getattr(policy, "name", "policy")))
        if video > 0:
            extra_hooks.append(VideoHook(sim, video, video_dir))
        desc = f"eval {task}"
    stats = EpisodeStats(episodes, seeds, scorer)
    engine = RolloutEngine(batch, actor, extra_hooks, stats=stats, sync_every=sync_every, progress=progress, desc=desc)
    # Stochastic policies (diffusion noise, GMM sampling) draw from torch's global RNG: seed it from
    # the evaluation seed so results are reproducible, and restore the caller's RNG afterwards.
    try:
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            records = engine.run()
    finally:
        engine.close()
    retries = next((h for h in extra_hooks if isinstance(h, RetryHook)), None)
    if retries is not None:
        for r in records:
            r["retries"] = retries.per_episode[r["episode"]]
    attach_recoveries(records, next((h for h in extra_hooks if type(h).__name__ == "RecoveryHook"), None))
    videos = next((h.recorder.paths for h in extra_hooks if isinstance(h, VideoHook)), [])
    extra = {"backend": backend} if backend != "cpu" else {}
    return summarize(records, score_name=score_name, task=task, seed=seed, num_envs=num_envs, perturb=perturb_rate,
                     videos=videos, **extra)


def evaluate_policy_device(policy: Any, task: str, episodes: int, seed: int = 0, num_envs: int = 1,
                           backend: str = "gpu", task_overrides: list[str] | None = None, progress: bool = True,
                           sync_every: int | None = None, **backend_kwargs: Any) -> dict[str, Any]:
    """`evaluate_policy` on a device backend (kept for callers of the old name)."""
    return evaluate_policy(policy, task, episodes, seed=seed, num_envs=num_envs, backend=backend,
                           task_overrides=task_overrides, progress=progress, sync_every=sync_every, **backend_kwargs)


class _RetryCounter:
    """Counts, per env, the hierarchical policy's retries: the high level switching to an earlier
    primitive (lower index in PRIMITIVES' reach -> grasp -> transport -> release order) while the
    task's stage has not advanced since the primitive it leaves was chosen. Moving on to the next
    object (stage up, back to reach) is progress, not a retry."""

    def __init__(self, num_envs: int, stage: Any) -> None:
        import numpy as np

        self.count = np.zeros(num_envs, int)
        self.active = np.full(num_envs, -1)
        self.stage = np.asarray(stage, int).copy()
        self.stage_at_choice = self.stage.copy()

    def update(self, active_primitive: Any) -> None:
        if active_primitive is None:
            return
        new = active_primitive.detach().cpu().numpy().astype(int)
        chosen = new != self.active
        back = (self.active >= 0) & (new < self.active)  # implies chosen
        self.count += back & (self.stage <= self.stage_at_choice)
        self.stage_at_choice[chosen] = self.stage[chosen]
        self.active = new

    def restart(self, rows: Any, stage: Any) -> None:
        self.count[rows] = 0
        self.active[rows] = -1
        self.stage[rows] = stage[rows]
        self.stage_at_choice[rows] = stage[rows]


class RetryHook(Hook):
    """_RetryCounter as a rollout hook (host): reads the policy's `active_primitive` after each
    action and the task's stage after each step; per-episode counts in `per_episode`."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.per_episode: dict[int, int] = {}

    def on_start(self, engine: Any, obs: Any) -> None:
        self.counter = _RetryCounter(engine.num_envs, engine.env.status["stage"])

    def on_step(self, engine: Any, step: Any, pre_obs: Any, action: Any, pre_state: Any) -> None:
        self.counter.update(self.policy.active_primitive)
        self.counter.stage[:] = step.info["stage"]

    def on_episode_end(self, engine: Any, row: int, episode: int, seed: int, step: Any) -> None:
        self.per_episode[episode] = int(self.counter.count[row])

    def on_restart(self, engine: Any, step: Any, obs: Any) -> None:
        import numpy as np

        rows = np.flatnonzero(step.restarted)
        if len(rows):
            self.counter.restart(rows, engine.env.status["stage"])


def attach_recoveries(records: list[dict[str, Any]], hook: Any) -> None:
    """Per record: `failure_exposures` (failure events of a successful episode, what was called
    recoveries before), and from the RecoveryHook `setbacks` and true `recoveries` (None without it)."""
    for r in records:
        r["failure_exposures"] = r.pop("recoveries")
        count = hook.per_episode.get(r["episode"]) if hook is not None else None
        r["setbacks"] = None if count is None else count.setbacks
        r["recoveries"] = None if count is None else count.recoveries


def _step_scorer(sim: Any) -> Any:
    """A function giving every env's per-step score now, for tasks with a `score_name` (push_t:
    clipped coverage); None: an episode's score is its success."""
    import numpy as np

    task = getattr(sim, "task", None)
    if getattr(task, "score_name", None) is None:
        return None
    return lambda: np.asarray(task.step_score(sim.read()), dtype=np.float64).reshape(-1)


def summarize(records: list[dict[str, Any]], score_name: str | None = None, **extra: Any) -> dict[str, Any]:
    """The report: success with its Wilson interval, means, and the task's score (the mean over
    episodes of each episode's score: its success unless the task defines a step score)."""
    import numpy as np

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
        "failure_exposures_per_episode": float(np.mean([r.get("failure_exposures", 0) for r in records])) if n else 0.0,
        "setbacks_per_episode": _mean_or_none([r.get("setbacks") for r in records]),
        "recoveries_per_episode": _mean_or_none([r.get("recoveries") for r in records]),
        **({"retries_per_episode": float(np.mean([r["retries"] for r in records]))} if n and "retries" in records[0] else {}),
        "seeds": [r["seed"] for r in records],
        **extra,
        "episodes": records,
    }


def _mean_or_none(values: list[Any]) -> float | None:
    """Mean of per-episode counts; None when any episode lacks it (e.g. device backends)."""
    import numpy as np

    return None if not values or any(v is None for v in values) else float(np.mean(values))


def rollout_writer(path: str | Path, sim: Any, task: str, collector: str) -> Hook:
    """`eval --save`: a StoreWriter appending the rollouts (source=policy) to a store of the same
    task (created with collect's schema when missing)."""
    from robolearn.tasks.collect import open_task_store, store_features
    from robolearn.tasks.rollout import StoreWriter

    store = open_task_store(path, store_features(sim), sim, task)

    class _Writer(StoreWriter):
        def on_close(self, engine: Any) -> None:
            self.store.close()

    return _Writer(store, "policy", collector)


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
        self.frames: dict[int, list[Any]] = {}
        self.paths: list[str] = []

    def capture(self, slot_episode: Any) -> None:
        states = None
        for slot, ep in enumerate(slot_episode):
            if 0 <= ep < self.count:
                if states is None:
                    states = self.sim.get_state()
                img = self.renderer.render_states(states[slot : slot + 1], self.spec)["front"][0]
                self.frames.setdefault(int(ep), []).append(img)

    def finish(self, ep: int) -> None:
        import numpy as np

        frames = self.frames.pop(ep, None)
        if not frames:
            return
        import imageio.v3 as iio

        path = self.dir / f"episode_{ep:04d}.mp4"
        fps = max(1, int(round(1.0 / self.sim.control_period)))
        iio.imwrite(path, np.stack(frames), fps=fps, codec="libx264", macro_block_size=1)
        self.paths.append(str(path))


class VideoHook(Hook):
    """`eval --video K`: frames of the first K episodes after every step, one mp4 per episode."""

    def __init__(self, sim: Any, count: int, directory: str | Path | None) -> None:
        self.recorder = _VideoRecorder(sim, count, directory)

    def on_start(self, engine: Any, obs: Any) -> None:
        self.recorder.capture(engine.env.slot_episode)

    def on_step(self, engine: Any, step: Any, pre_obs: Any, action: Any, pre_state: Any) -> None:
        self.recorder.capture(step.episode)

    def on_episode_end(self, engine: Any, row: int, episode: int, seed: int, step: Any) -> None:
        self.recorder.finish(episode)


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
    resolve_checkpoint(args.checkpoint)  # a wrong path fails before torch loads
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
    print("| n | success rate | 95% CI (Wilson) | mean return | mean length | failure events/ep | failure exposures/ep | "
          "setbacks/ep | recoveries/ep | seeds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    na = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    print(
        f"| {report['n']} | {report['success_rate']:.3f} | [{lo:.3f}, {hi:.3f}] | {report['mean_return']:.2f} | "
        f"{report['mean_length']:.1f} | {report['failure_events_per_episode']:.2f} | {report['failure_exposures_per_episode']:.2f} | "
        f"{na(report['setbacks_per_episode'])} | {na(report['recoveries_per_episode'])} | "
        f"{args.seed}..{args.seed + args.episodes - 1} |"
    )
    if report.get("score_name", "success") != "success":
        print(f"score {report['score']:.3f} (std {report['score_std']:.3f} over episodes): {report['score_name']}")
    if "retries_per_episode" in report:
        print(f"retries per episode (the high level went back to an earlier primitive): {report['retries_per_episode']:.2f}")
    for path in report["videos"]:
        print(f"video: {path}")
    return 0
