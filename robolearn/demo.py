"""`robolearn demo`: the whole loop on a CPU in minutes.

Collect scripted demonstrations, train a (small) diffusion policy on them, evaluate it with fixed
seeds, and write a report under runs/: a markdown summary, a learning-curve PNG and one video.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

# A diffusion policy small enough to train in a few minutes on 2 CPU cores.
DEMO_TRAIN_OVERRIDES = [
    "policy.down_dims=[64,128,256]",
    "policy.diffusion_step_embed_dim=64",
    "policy.n_action_steps=2",  # re-plan every 2 steps: push_cube needs it (docs/results/imitation.md)
    "train.batch_size=64",
    "train.lr=0.001",
    "train.lr_warmup_steps=100",
    "train.log_every=50",
    "train.eval_every=500",
    "train.save_every=1000",
    "train.val_ratio=0.05",
    "train.ema_power=0.75",
]


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


def run_demo(
    task: str = "push_cube",
    episodes: int = 200,
    steps: int = 4000,
    eval_episodes: int = 50,
    num_envs: int = 10,
    seed: int = 0,
    out: str | Path | None = None,
    wandb_mode: str = "off",
    extra_overrides: list[str] | None = None,
) -> Path:
    from robolearn.evaluation import evaluate_policy, load_any_policy
    from robolearn.tasks.collect import collect
    from robolearn.training import read_metrics, train

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(out) if out else Path("runs") / f"demo-{task}-{stamp}"
    root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    data = root / "demos.zarr"
    if data.exists():
        shutil.rmtree(data)
    print(f"[1/3] collecting {episodes} scripted demos of {task} -> {data}")
    collect(task, episodes=episodes, out=data, num_envs=num_envs, seed=seed)
    timings["collect_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    print(f"[2/3] training a diffusion policy for {steps} steps")
    overrides = [*DEMO_TRAIN_OVERRIDES, f"train.steps={steps}", f"train.seed={seed}", *(extra_overrides or [])]
    run_dir = train("diffusion", data, task=task, out=root / "train", overrides=overrides, wandb_mode=wandb_mode)
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    print(f"[3/3] evaluating on {eval_episodes} seeded episodes")
    policy, _ = load_any_policy(run_dir / "policy")
    report = evaluate_policy(
        policy, task, eval_episodes, seed=100_000 + seed, num_envs=num_envs, video=1, video_dir=root / "videos"
    )
    timings["eval_s"] = time.perf_counter() - t0

    metrics = read_metrics(run_dir)
    plot_learning_curve(metrics, root / "learning_curve.png", f"diffusion policy on {task}")
    (root / "eval.json").write_text(json.dumps(report, indent=1))
    lo, hi = report["ci95"]
    video = Path(report["videos"][0]).name if report["videos"] else None
    summary = [
        f"# robolearn demo: {task}",
        "",
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}",
        f"- seed: {seed}; evaluation seeds {report['seeds'][0]}..{report['seeds'][-1]}",
        f"- data: {episodes} scripted demos ({data.name})",
        f"- policy: diffusion, {steps} steps, overrides `{' '.join(overrides)}`",
        "",
        "| n | success rate | 95% CI (Wilson) | mean return | mean length |",
        "|---|---|---|---|---|",
        f"| {report['n']} | {report['success_rate']:.3f} | [{lo:.3f}, {hi:.3f}] | {report['mean_return']:.2f} | {report['mean_length']:.1f} |",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k[:-2]} | {v:.1f} |" for k, v in timings.items()],
        "",
        "![learning curve](learning_curve.png)",
        "",
        f"Video of episode 0: [{video}](videos/{video})" if video else "",
        "",
    ]
    (root / "README.md").write_text("\n".join(summary))
    print("\n".join(summary[7:11]))
    print(f"report: {root / 'README.md'}")
    return root


def _run(args: argparse.Namespace) -> int:
    run_demo(
        task=args.task, episodes=args.episodes, steps=args.steps, eval_episodes=args.eval_episodes,
        num_envs=args.num_envs, seed=args.seed, out=args.out, wandb_mode=args.wandb, extra_overrides=args.overrides,
    )
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="push_cube")
    parser.add_argument("--episodes", type=int, default=200, help="scripted demos to collect")
    parser.add_argument("--steps", type=int, default=4000, help="diffusion training steps")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="report directory (default runs/demo-<task>-<time>)")
    parser.add_argument("--wandb", default="off", choices=["off", "offline", "online"])
    parser.add_argument("overrides", nargs="*", help="extra key=value training overrides")
    parser.set_defaults(func=_run)
