"""`robolearn sailor`: train SAILOR around a trained diffusion policy, or `--resume RUN` one."""

from __future__ import annotations

import argparse

from robolearn.config import ConfigError


def _run(args: argparse.Namespace) -> int:
    from robolearn.sailor.loop import resume_sailor, run_sailor

    if args.resume is not None:
        extra = [name for name, value in (("--base", args.base), ("--demos", args.demos), ("--task", args.task),
                                          ("--out", args.out), ("--config", args.config), ("--perturb", args.perturb),
                                          ("--backend", args.backend))
                 if value is not None] + (["--set"] if args.task_set else []) + (["overrides"] if args.overrides else [])
        if extra:
            raise ConfigError(f"--resume continues a run with its recorded settings; drop {', '.join(extra)}")
        run_dir = resume_sailor(args.resume, env_steps=args.env_steps, wandb_mode=args.wandb, progress=not args.no_progress)
    else:
        missing = [name for name, value in (("--base", args.base), ("--demos", args.demos), ("--task", args.task),
                                            ("--env-steps", args.env_steps)) if value is None]
        if missing:
            raise ConfigError(f"sailor needs {', '.join(missing)} (or --resume RUN)")
        run_dir = run_sailor(
            args.base, args.demos, args.task, args.env_steps, out=args.out, overrides=args.overrides,
            config_path=args.config, perturb=args.perturb, task_overrides=args.task_set, wandb_mode=args.wandb,
            progress=not args.no_progress, backend=args.backend or "cpu",
        )
    print(f"run directory: {run_dir}")
    print(f"planner-augmented policy: {run_dir / 'policy'}  (robolearn eval --checkpoint {run_dir / 'policy'})")
    print(f"distilled base policy: {run_dir / 'base_policy'}")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", help="diffusion policy checkpoint or `robolearn train` run directory")
    parser.add_argument("--demos", help="episode store of the demonstrations the base was trained on")
    parser.add_argument("--task", help="task to collect on (see `robolearn tasks`)")
    from robolearn import validation

    parser.add_argument("--env-steps", type=validation.step_count, help="environment-step budget (warm start included); with --resume: a new total")
    parser.add_argument("--out", help="run directory (default runs/sailor-<task>-<time>)")
    parser.add_argument("--resume", metavar="RUN", help="continue this run exactly from its last checkpoint")
    parser.add_argument("--config", help="YAML config instead of policies/sailor.yaml")
    parser.add_argument("--perturb", type=validation.probability, default=None, help="perturbation events per step during collection and eval")
    parser.add_argument("--set", dest="task_set", action="append", default=[], metavar="KEY=VALUE",
                        help="task config override, e.g. --set horizon=50 (repeatable)")
    parser.add_argument("--task-set", dest="task_set", action="append", help=argparse.SUPPRESS)  # deprecated name of --set
    parser.add_argument("--backend", choices=["cpu", "gpu", "warp-cpu"], default=None,
                        help="where the training envs run: cpu: MuJoCo C (default); gpu: MuJoCo Warp on CUDA, steps kept on the "
                             "device (extra 'gpu'); warp-cpu: MuJoCo Warp on its CPU device (tests); --resume keeps the run's")
    parser.add_argument("--wandb", default="offline", choices=["off", "offline", "online"])
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. agent.planner.num_samples=64 loop.num_envs=4")
    parser.set_defaults(func=_run)
