"""`robolearn tasks` and `robolearn collect` (registered by robolearn/cli.py).

This module is imported to build the command's arguments, so it imports nothing heavy.
"""

from __future__ import annotations

import argparse


def register_tasks(parser: argparse.ArgumentParser) -> None:
    """`robolearn tasks`: list tasks with obs/action shapes, horizon and control rate."""
    parser.add_argument("names", nargs="*", help="only these tasks (names, package.module:Class or gym:<id>)")
    parser.set_defaults(func="robolearn.tasks.cli:run_tasks")


def task_row(name: str) -> tuple[str, ...]:
    """(task, obs/state, obs/proprio, action, horizon, control_hz, robot, expert, description) of one task."""
    from robolearn.tasks.registry import get_spec

    spec = get_spec(name)
    if spec.is_gym:
        from robolearn.tasks.gym_adapter import make_gym_task

        env = make_gym_task(name)
        try:
            steps = env.spec.max_episode_steps if env.spec else None
            kind = "mujoco" if env.mujoco else "state-only"
            return (name, str(env.observation_space["state"].shape), "-", str(env.action_space.shape), str(steps or "-"),
                    f"{1.0 / env.dt:g}", "-", "no", f"gymnasium {spec.gym_env} ({kind})")
        finally:
            env.close()
    from robolearn.tasks.registry import build_task

    task = build_task(name)
    cfg = task.cfg
    hz = 1.0 / (task.layout.timestep * cfg.frame_skip)
    expert = "yes" if spec.expert_class() is not None else "no"
    desc = spec.description or task.description
    return (name, f"({task.obs_dim},)", f"({task.proprio_dim},)", f"({task.action_dim},)", str(cfg.horizon), f"{hz:g}",
            getattr(getattr(task, "robot", None), "name", "-"), expert, desc + (f" [{spec.gym_id}]" if spec.gym_id else ""))


def run_tasks(args: argparse.Namespace) -> int:
    import sys

    from robolearn.tasks.registry import get_spec, task_names

    names = args.names or task_names()
    for n in names:
        get_spec(n)  # unknown names fail before any row is printed
    rows = [("task", "obs/state", "obs/proprio", "action", "horizon", "control_hz", "robot", "expert", "description")]
    for name in names:
        try:
            rows.append(task_row(name))
        except Exception as exc:  # a broken plugin task must not hide the others
            if args.names:
                raise
            print(f"robolearn tasks: {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
    return 0


def register_collect(parser: argparse.ArgumentParser) -> None:
    """`robolearn collect`: scripted-expert episodes appended to an episode store."""
    from robolearn import validation
    from robolearn.cli import add_task_options, non_negative_float, positive_int

    add_task_options(parser, required=True)
    parser.add_argument("--episodes", type=positive_int, required=True, help="number of episodes to collect")
    parser.add_argument("--out", required=True, help="episode store path (created, or appended to)")
    parser.add_argument("--num-envs", type=validation.num_envs, default=1, help="envs stepped as one batch")
    parser.add_argument("--noise", type=non_negative_float, default=0.0, help="std of Gaussian noise on expert actions")
    parser.add_argument("--expert-mode", type=validation.non_negative_int, default=None,
                        help="always use this expert mode (e.g. one grasp face / push side: unimodal demos)")
    parser.add_argument("--perturb", type=non_negative_float, default=None,
                        help="perturbation events per step (overrides the task config's perturb_rate)")
    parser.add_argument("--image", action="store_true", help="also record 84x84 camera images")
    parser.add_argument("--seed", type=validation.seed, default=0, help="episode k uses reset seed SEED+k")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--backend", choices=["cpu", "gpu", "warp-cpu"], default="cpu",
                        help="cpu: MuJoCo C; gpu: MuJoCo Warp on CUDA, the expert batched on the device (extra 'gpu'); "
                             "warp-cpu: MuJoCo Warp on its CPU device (tests)")
    parser.set_defaults(func="robolearn.tasks.cli:run_collect")


def run_collect(args: argparse.Namespace) -> int:
    from robolearn.tasks.collect import collect

    summary = collect(args.task, args.episodes, args.out, num_envs=args.num_envs, noise=args.noise,
                      perturb=args.perturb, image=args.image, seed=args.seed, overrides=args.task_overrides or None,
                      progress=not args.no_progress, expert_mode=args.expert_mode, backend=args.backend)
    print(f"collected {summary['episodes']} episodes ({summary['steps']} steps) of {args.task} into {args.out}: "
          f"success rate {summary['success_rate']:.3f}, {summary['failure_events']} failure events")
    return 0
