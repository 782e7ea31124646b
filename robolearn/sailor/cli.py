"""`robolearn sailor`: train SAILOR around a trained diffusion policy."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from robolearn.sailor.loop import run_sailor

    run_dir = run_sailor(
        args.base, args.demos, args.task, args.env_steps, out=args.out, overrides=args.overrides,
        config_path=args.config, perturb=args.perturb, task_overrides=args.task_set, wandb_mode=args.wandb,
        progress=not args.no_progress,
    )
    print(f"run directory: {run_dir}")
    print(f"planner-augmented policy: {run_dir / 'policy'}  (robolearn eval --checkpoint {run_dir / 'policy'})")
    print(f"distilled base policy: {run_dir / 'base_policy'}")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="diffusion policy checkpoint or `robolearn train` run directory")
    parser.add_argument("--demos", required=True, help="episode store of the demonstrations the base was trained on")
    parser.add_argument("--task", required=True, help="task to collect on (see `robolearn tasks`)")
    parser.add_argument("--env-steps", type=int, required=True, help="environment-step budget (warm start included)")
    parser.add_argument("--out", help="run directory (default runs/sailor-<task>-<time>)")
    parser.add_argument("--config", help="YAML config instead of policies/sailor.yaml")
    parser.add_argument("--perturb", type=float, default=None, help="perturbation events per step during collection and eval")
    parser.add_argument("--task-set", action="append", default=[], metavar="KEY=VALUE", help="task config override (repeatable)")
    parser.add_argument("--wandb", default="offline", choices=["off", "offline", "online"])
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. agent.planner.num_samples=64 loop.num_envs=4")
    parser.set_defaults(func=_run)
