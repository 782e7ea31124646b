"""`robolearn demo`: the whole loop on a CPU in minutes.

Collect scripted demonstrations, train a diffusion policy with the CPU-sized preset
(`policies/diffusion_small.yaml`: object-relative state, re-planning every step, 8000 steps) at half
its U-Net width on 1000 demos, evaluate it on seeds disjoint from the collection seeds, and write a
report under runs/: success with its 95% Wilson interval, the time and load average of each stage,
a learning curve and one video. Why 1000 demos of a 32-64-128 U-Net: on 2 CPU cores, data is the
cheap ingredient (1000 scripted demos take about a minute) and U-Net width the expensive one; the
choice was made on selection seeds (docs/results/demo.md, "Choosing the recipe").

Each finished stage is recorded in `demo.json` (written atomically), and training checkpoints
every 500 steps, so `robolearn demo --resume [DIR]` continues an interrupted demo where it stopped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from robolearn.config import ConfigError, project_root

DEMO_PRESET = "diffusion_small"
# The task option the recipe needs (object - gripper, target - object in the state); stored with
# the demos, so evaluation reproduces it from the checkpoint.
DEMO_TASK_OVERRIDES = ["obs_relative=true"]
# On top of the preset: a U-Net of half its width (~4x fewer parameters and FLOPs, ~2.5x faster per CPU
# step measured: docs/results/demo/unet_widths.json); see the module docstring.
DEMO_TRAIN_OVERRIDES = ["policy.down_dims=[32,64,128]", "policy.diffusion_step_embed_dim=32"]
DEFAULTS: dict[str, Any] = {"task": "push_cube", "episodes": 1000, "steps": 8000, "eval_episodes": 50,
                            "num_envs": 10, "seed": 0}
STAGES = ("collect", "train", "evaluate")


def load_average() -> list[float]:
    """1-, 5- and 15-minute load averages (empty where the OS does not report them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def plot_learning_curve(metrics: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [m["step"] for m in metrics if "train_loss" in m]
    ax.plot(steps, [m["train_loss"] for m in metrics if "train_loss" in m], label="train loss")
    val = [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss (EMA)")
    ax.set_yscale("log")
    ax.set_xlabel("gradient step")
    ax.set_ylabel("denoising loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def latest_demo_dir(task: str | None) -> Path:
    """The most recently started demo under runs/ (for `--resume` without a directory)."""
    found = sorted((p for p in Path("runs").glob(f"demo-{task or '*'}-*") if (p / "demo.json").is_file()),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError("--resume: no demo under runs/ to resume (runs/demo-<task>-*/demo.json); pass its directory")
    return found[-1]


def _interrupt_on_sigterm() -> None:
    """SIGTERM (a scheduler, `kill`) stops the demo like Ctrl-C: the current stage is recorded as
    unfinished in demo.json, so `--resume` knows where to continue (SIGINT is ignored in
    background jobs, so Ctrl-C is not the only way a long demo gets stopped)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)


class _Stage:
    """Times one stage and records its wall seconds and the load average at its start and end."""

    def __init__(self, state: dict[str, Any], name: str, save: Any) -> None:
        self.state, self.name, self.save = state, name, save

    def __enter__(self) -> "_Stage":
        self.t0 = time.perf_counter()
        self.load_start = load_average()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        seconds = time.perf_counter() - self.t0
        rec = self.state["stages"].setdefault(self.name, {"seconds": 0.0, "sessions": []})
        rec["sessions"].append({"seconds": round(seconds, 2), "loadavg_start": self.load_start,
                                "loadavg_end": load_average(), "completed": exc_type is None,
                                "ended": dt.datetime.now().isoformat(timespec="seconds")})
        rec["seconds"] = round(rec["seconds"] + seconds, 2)
        rec["done"] = exc_type is None
        self.save()


def run_demo(
    task: str = DEFAULTS["task"],
    episodes: int = DEFAULTS["episodes"],
    steps: int = DEFAULTS["steps"],
    eval_episodes: int = DEFAULTS["eval_episodes"],
    num_envs: int = DEFAULTS["num_envs"],
    seed: int = DEFAULTS["seed"],
    out: str | Path | None = None,
    wandb_mode: str = "off",
    extra_overrides: list[str] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Run (or, with resume, continue) the demo in `out`; returns the report directory."""
    import torch

    from robolearn.evaluation import evaluate_policy, load_any_policy, task_overrides_from_meta
    from robolearn.tasks.collect import collect
    from robolearn.training import read_metrics, train

    started = time.perf_counter()
    _interrupt_on_sigterm()
    if resume:
        root = Path(out) if out else latest_demo_dir(None)
        if not (root / "demo.json").is_file():
            raise FileNotFoundError(f"--resume {root}: no demo.json (not a robolearn demo directory)")
        state = json.loads((root / "demo.json").read_text())
        settings = state["settings"]
        print(f"resuming the demo in {root} (finished stages: "
              f"{', '.join(s for s in STAGES if state['stages'].get(s, {}).get('done')) or 'none'})")
    else:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        root = Path(out) if out else Path("runs") / f"demo-{task}-{stamp}"
        if root.exists() and any(root.iterdir()):
            raise FileExistsError(f"{root} exists and is not empty: pass --resume to continue it, or another --out")
        if episodes < 1 or steps < 1 or eval_episodes < 1 or num_envs < 1:
            raise ValueError("--episodes, --steps, --eval-episodes and --num-envs must be >= 1")
        root.mkdir(parents=True, exist_ok=True)
        settings = {"task": task, "episodes": episodes, "steps": steps, "eval_episodes": eval_episodes,
                    "num_envs": num_envs, "seed": seed, "preset": DEMO_PRESET, "task_overrides": DEMO_TASK_OVERRIDES,
                    "train_overrides": [*DEMO_TRAIN_OVERRIDES, f"train.steps={steps}", f"train.seed={seed}",
                                        *(extra_overrides or [])]}
        state = {"settings": settings, "stages": {}, "started": dt.datetime.now().isoformat(timespec="seconds"),
                 "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                             "python": platform.python_version(), "torch": torch.__version__,
                             "torch_threads": torch.get_num_threads(),
                             "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}}
    task, seed = settings["task"], settings["seed"]

    def save() -> None:
        write_json_atomic(root / "demo.json", state)

    save()
    stages = state["stages"]
    data = root / "demos.zarr"
    if not stages.get("collect", {}).get("done"):
        if data.exists():  # an interrupted collection: its committed episodes hold arbitrary seeds, start over
            shutil.rmtree(data)
        print(f"[1/3] collecting {settings['episodes']} scripted demos of {task} -> {data}")
        with _Stage(state, "collect", save):
            summary = collect(task, episodes=settings["episodes"], out=data, num_envs=settings["num_envs"], seed=seed,
                              overrides=settings["task_overrides"], progress=progress)
        stages["collect"]["expert_success_rate"] = summary["success_rate"]
        save()

    run_dir = root / "train"
    if not stages.get("train", {}).get("done") and (run_dir / "policy" / "checkpoint.json").is_file():
        stages.setdefault("train", {"seconds": 0.0, "sessions": []})["done"] = True  # stopped right after it finished
        save()
    if not stages.get("train", {}).get("done"):
        partial = (run_dir / "checkpoints" / "last" / "checkpoint.json").is_file()
        if run_dir.exists() and not partial:
            shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to continue
        print(f"[2/3] training a diffusion policy ({settings['preset']}) for {settings['steps']} steps"
              + (" (resuming from its last checkpoint)" if partial else ""))
        with _Stage(state, "train", save):
            if partial:
                train(None, None, resume=run_dir, wandb_mode=wandb_mode, progress=progress)
            else:
                train("diffusion", data, task=task, out=run_dir, overrides=settings["train_overrides"],
                      config_path=project_root() / "policies" / f"{settings['preset']}.yaml", wandb_mode=wandb_mode,
                      progress=progress)

    print(f"[3/3] evaluating on {settings['eval_episodes']} seeded episodes")
    with _Stage(state, "evaluate", save):
        policy, meta = load_any_policy(run_dir / "policy")
        videos = root / "videos"
        if videos.exists():
            shutil.rmtree(videos)
        report = evaluate_policy(policy, task, settings["eval_episodes"], seed=100_000 + seed, num_envs=settings["num_envs"],
                                 video=1, video_dir=videos, task_overrides=task_overrides_from_meta(meta, task),
                                 progress=progress)
    state["result"] = {k: report[k] for k in ("n", "successes", "success_rate", "ci95", "mean_return", "mean_length")}
    state["result"]["eval_seeds"] = [report["seeds"][0], report["seeds"][-1]]
    state["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    state.setdefault("sessions_wall_s", []).append(round(time.perf_counter() - started, 2))
    save()
    write_json_atomic(root / "eval.json", report)
    plot_learning_curve(read_metrics(run_dir), root / "learning_curve.png", f"diffusion policy on {task}")
    (root / "README.md").write_text(report_markdown(state, report))
    lo, hi = report["ci95"]
    print(f"success {report['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] over {report['n']} episodes; "
          + ", ".join(f"{s} {stages[s]['seconds']:.0f} s" for s in STAGES))
    print(f"report: {root / 'README.md'}")
    return root


def report_markdown(state: dict[str, Any], report: dict[str, Any]) -> str:
    s, st, m = state["settings"], state["stages"], state["machine"]
    lo, hi = report["ci95"]
    video = Path(report["videos"][0]).name if report["videos"] else None

    def loads(stage: str) -> str:
        return "; ".join(f"{x['loadavg_start']} -> {x['loadavg_end']}" for x in st[stage]["sessions"])

    total = sum(st[k]["seconds"] for k in STAGES)
    return "\n".join([
        f"# robolearn demo: {s['task']}",
        "",
        f"- date: {state['started']} .. {state.get('finished')}",
        f"- machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']} "
        f"({m['torch_threads']} threads, OMP_NUM_THREADS={m['OMP_NUM_THREADS']})",
        f"- demos: {s['episodes']} scripted ({st['collect'].get('expert_success_rate', float('nan')):.2f} expert success), "
        f"collection seeds {s['seed']}..{s['seed'] + s['episodes'] - 1}, task overrides {s['task_overrides']}",
        f"- policy: `policies/{s['preset']}.yaml`, overrides `{' '.join(s['train_overrides'])}`",
        f"- evaluation seeds {report['seeds'][0]}..{report['seeds'][-1]} (disjoint from the collection seeds)",
        "",
        "| n | success rate | 95% CI (Wilson) | mean return | mean length |",
        "|---|---|---|---|---|",
        f"| {report['n']} | {report['success_rate']:.3f} | [{lo:.3f}, {hi:.3f}] | {report['mean_return']:.2f} | "
        f"{report['mean_length']:.1f} |",
        "",
        "| stage | seconds | sessions | load average (1/5/15 min) at start -> end of each session |",
        "|---|---|---|---|",
        *[f"| {k} | {st[k]['seconds']:.1f} | {len(st[k]['sessions'])} | {loads(k)} |" for k in STAGES],
        f"| **total** | **{total:.1f}** | | |",
        "",
        "![learning curve](learning_curve.png)",
        "",
        f"Video of episode 0: [{video}](videos/{video})" if video else "",
        "",
    ])


def _run(args: argparse.Namespace) -> int:
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
    if args.resume is not None:
        if given or args.overrides:
            raise ConfigError(f"--resume continues with the demo's recorded settings; drop "
                              f"{', '.join('--' + k.replace('_', '-') for k in given) or 'the overrides'}")
        if args.out and args.resume:
            raise ConfigError("pass the directory either as --resume DIR or --out DIR, not both")
        run_demo(out=args.resume or args.out, wandb_mode=args.wandb, resume=True)
        return 0
    run_demo(**{**DEFAULTS, **given}, out=args.out, wandb_mode=args.wandb, extra_overrides=args.overrides)
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default=None, help=f"default {DEFAULTS['task']}")
    from robolearn import validation

    parser.add_argument("--episodes", type=validation.episode_count, default=None, help=f"scripted demos to collect (default {DEFAULTS['episodes']})")
    parser.add_argument("--steps", type=validation.step_count, default=None, help=f"diffusion training steps (default {DEFAULTS['steps']})")
    parser.add_argument("--eval-episodes", type=validation.episode_count, default=None, help=f"default {DEFAULTS['eval_episodes']}")
    parser.add_argument("--num-envs", type=validation.num_envs, default=None, help=f"default {DEFAULTS['num_envs']}")
    parser.add_argument("--seed", type=validation.seed, default=None, help=f"default {DEFAULTS['seed']}")
    parser.add_argument("--out", default=None, help="report directory (default runs/demo-<task>-<time>)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="DIR",
                        help="continue an interrupted demo (default: the latest under runs/)")
    parser.add_argument("--wandb", default="off", choices=["off", "offline", "online"])
    parser.add_argument("overrides", nargs="*", help="extra key=value training overrides")
    parser.set_defaults(func=_run)
