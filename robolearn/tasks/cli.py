"""`robolearn tasks` and `robolearn collect` (registered by robolearn/cli.py)."""

from __future__ import annotations

import argparse


def register_tasks(parser: argparse.ArgumentParser) -> None:
    """`robolearn tasks`: list tasks with obs/action shapes, horizon and control rate."""
    parser.set_defaults(func=run_tasks)


def run_tasks(args: argparse.Namespace) -> int:
    from robolearn.tasks import TASKS, load_task_config
    from robolearn.tasks.base import ModelLayout
    from robolearn.tasks.gym_adapter import GYM_TASKS
    from robolearn.tasks.registry import build_model

    rows = [("task", "obs/state", "obs/proprio", "action", "horizon", "control_hz", "expert", "description")]
    for name, (cls, _, gym_id) in TASKS.items():
        cfg = load_task_config(name)
        _, model = build_model(name, cfg)
        task = cls(cfg, ModelLayout(model))
        hz = 1.0 / (model.opt.timestep * cfg.frame_skip)
        rows.append((name, f"({task.obs_dim},)", f"({task.proprio_dim},)", f"({task.action_dim},)", str(cfg.horizon), f"{hz:g}", "yes",
                     f"{task.description} [{gym_id}]"))
    import gymnasium as gym

    for name, env_id in GYM_TASKS.items():
        spec = gym.spec(env_id)
        env = gym.make(env_id)
        hz = 1.0 / env.unwrapped.dt
        rows.append((name, str(env.observation_space.shape), "-", str(env.action_space.shape),
                     str(spec.max_episode_steps), f"{hz:g}", "no", f"gymnasium {env_id} (adapter)"))
        env.close()
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
    return 0


def register_collect(parser: argparse.ArgumentParser) -> None:
    """`robolearn collect`: scripted-expert episodes appended to an episode store."""
    parser.add_argument("--task", required=True, help="task name (see `robolearn tasks`)")
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes to collect")
    parser.add_argument("--out", required=True, help="episode store path (created, or appended to)")
    parser.add_argument("--num-envs", type=int, default=1, help="envs stepped as one batch")
    parser.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise on expert actions")
    parser.add_argument("--expert-mode", type=int, default=None,
                        help="always use this expert mode (e.g. one grasp face / push side: unimodal demos)")
    parser.add_argument("--perturb", type=float, default=None,
                        help="perturbation events per step (overrides the task config's perturb_rate)")
    parser.add_argument("--image", action="store_true", help="also record 84x84 camera images")
    parser.add_argument("--seed", type=int, default=0, help="episode k uses reset seed SEED+k")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="task config override, e.g. --set horizon=50 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_collect)


def run_collect(args: argparse.Namespace) -> int:
    from robolearn.tasks.collect import collect

    summary = collect(args.task, args.episodes, args.out, num_envs=args.num_envs, noise=args.noise,
                      perturb=args.perturb, image=args.image, seed=args.seed, overrides=args.overrides or None,
                      progress=not args.no_progress, expert_mode=args.expert_mode)
    print(f"collected {summary['episodes']} episodes ({summary['steps']} steps) of {args.task} into {args.out}: "
          f"success rate {summary['success_rate']:.3f}, {summary['failure_events']} failure events")
    return 0
