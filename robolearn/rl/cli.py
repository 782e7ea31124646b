"""CLI of the RL commands: `robolearn offline`, `robolearn finetune`, and the `data mix` /
`data rollout` actions (registered from robolearn.data.cli)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _print_run(run_dir: Path, as_json: bool) -> None:
    """The run's locations, or with --json its continual-evaluation summary (continual.json) as one JSON document."""
    summary = json.loads((run_dir / "continual.json").read_text()) if (run_dir / "continual.json").is_file() else {}
    if as_json:
        print(json.dumps({"run_dir": str(run_dir), "policy": str(run_dir / "policy"), **summary}))
        return
    print(f"run directory: {run_dir}")
    print(f"policy checkpoint: {run_dir / 'policy'}")
    m = summary.get("metrics")
    if m:
        ttr = m["time_to_recover"]
        print(f"continual evaluation ({summary['score']}, {run_dir / 'continual.json'}, continual.png): initial {m['initial']:.3g}, "
              f"final {m['final']:.3g}, min-ACC {m['min_acc']:.3g} (step {m['min_acc_step']}), WC-ACC {m['wc_acc']:.3g}, "
              f"stability gap {m['gap_depth']:.3g} below step 0, recovered "
              + ("never" if ttr is None else f"after {ttr} steps"))


def _offline(args: argparse.Namespace) -> int:
    from robolearn.config import ConfigError
    from robolearn.rl.offline import train_offline

    if args.resume is None and (args.algo is None or args.data is None):
        raise ConfigError("offline needs --algo and --data (or --resume DIR)")
    run_dir = train_offline(args.algo, args.data, task=args.task, sampler=args.sampler, overrides=args.overrides,
                            out=args.out, wandb_mode=args.wandb, resume=args.resume, config_path=args.config)
    _print_run(run_dir, args.json)
    return 0


def register_offline(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", choices=["iql", "cql", "calql", "td3bc"])
    parser.add_argument("--data", help="episode store with obs/state, action, reward")
    parser.add_argument("--task", help="task for evaluation rollouts (default: the store's task)")
    parser.add_argument("--sampler", choices=["uniform", "rw", "aw", "topk"], help="trajectory reweighting (default: the config's)")
    parser.add_argument("--out", help="run directory (default runs/<algo>-<sampler>-<task>-<time>)")
    parser.add_argument("--config", help="YAML config instead of policies/ALGO.yaml")
    parser.add_argument("--wandb", default="offline", choices=["off", "offline", "online"])
    parser.add_argument("--resume", help="continue the run in this directory exactly where it stopped")
    parser.add_argument("--json", action="store_true", help="print the evaluation curve and its continual metrics as JSON")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=5000 sampler.alpha=0.2")
    parser.set_defaults(func=_offline)


def _finetune(args: argparse.Namespace) -> int:
    from robolearn.rl.wsrl import finetune

    run_dir = finetune(args.checkpoint, task=args.task, algo=args.algo, warmup=args.warmup, retain_offline=args.retain_offline,
                       steps=args.steps, data=args.data, overrides=args.overrides, out=args.out, wandb_mode=args.wandb,
                       config_path=args.config, resume=args.resume, backend=args.backend, num_envs=args.num_envs)
    _print_run(run_dir, args.json)
    return 0


def register_finetune(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="offline checkpoint or run directory to start from")
    parser.add_argument("--task", help="task (default: the checkpoint's)")
    parser.add_argument("--algo", default="wsrl", choices=["wsrl", "sac", "cql", "calql"],
                        help="wsrl: warm-up then online-only SAC; sac: same SAC, no warm-up by default; "
                             "cql / calql: the pre-trained CQL / Cal-QL learner continues online, penalty included")
    from robolearn import validation

    parser.add_argument("--warmup", type=validation.non_negative_int, help="env steps with the pre-trained policy and no updates")
    parser.add_argument("--retain-offline", type=validation.probability, help="fraction of each batch from the offline data (0 = none)")
    parser.add_argument("--steps", type=validation.step_count, help="online env steps, warm-up included")
    parser.add_argument("--data", help="offline store for --retain-offline (default: the checkpoint's)")
    parser.add_argument("--backend", choices=["cpu", "gpu", "warp-cpu"], default=None,
                        help="cpu: MuJoCo C (default); gpu: MuJoCo Warp on CUDA, agent + replay on the device (extra 'gpu'); "
                             "warp-cpu: MuJoCo Warp on its CPU device (tests) [finetune.backend]")
    parser.add_argument("--num-envs", type=validation.num_envs, default=None,
                        help="envs stepped together, each loop step adds one transition per env (default 1) [finetune.num_envs]")
    parser.add_argument("--out", help="run directory")
    parser.add_argument("--config", help="YAML config instead of policies/ALGO.yaml")
    parser.add_argument("--wandb", default="offline", choices=["off", "offline", "online"])
    parser.add_argument("--resume", help="continue the fine-tuning run in this directory exactly where it stopped "
                        "(agent, optimizers, replay buffer, counters, RNG, evaluation history)")
    parser.add_argument("--json", action="store_true", help="print the evaluation curve and its continual metrics as JSON")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. agent.utd=8 finetune.eval_every=500")
    parser.set_defaults(func=_finetune)


def _mix(args: argparse.Namespace) -> int:
    from robolearn.rl.datasets import mix_stores

    dst = mix_stores(args.good, args.bad, args.ratio, args.out, size=args.size, seed=args.seed, overwrite=args.overwrite)
    mix = dst.attrs["mix"]
    print(f"wrote {dst.path}: {dst.num_episodes} episodes ({mix['good_episodes']} good of which {mix['good_distinct']} distinct, "
          f"{mix['bad_episodes']} bad of which {mix['bad_distinct']} distinct), {dst.num_steps} steps")
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from robolearn.rl.datasets import collect

    from robolearn.config import parse_overrides

    store = collect(args.task, args.policy, args.episodes, args.out, noise=args.noise, seed=args.seed,
                    max_steps=args.max_steps, overwrite=args.overwrite, env_kwargs=parse_overrides(args.task_overrides or []),
                    num_envs=args.num_envs, keep=args.keep)
    ret = store.column("return")
    print(f"wrote {store.path}: {store.num_episodes} episodes, {store.num_steps} steps, "
          f"return mean {ret.mean():.2f} (min {ret.min():.2f}, max {ret.max():.2f}), success {store.column('success').mean():.3f}")
    return 0


def register_data_actions(sub: argparse._SubParsersAction) -> None:
    """Adds `mix` and `rollout` to `robolearn data`."""
    p = sub.add_parser("mix", help="good+bad mixed dataset with a given fraction of good transitions (harness paper)")
    p.add_argument("--good", required=True)
    p.add_argument("--bad", required=True, nargs="+", help="one or more stores; bad episodes are drawn from all of them")
    from robolearn import validation

    p.add_argument("--ratio", type=validation.probability, required=True, help="fraction of transitions from good trajectories")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=validation.step_count, help="total transitions (default: the bad store's steps)")
    p.add_argument("--seed", type=validation.seed, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_mix)
    p = sub.add_parser("rollout", help="collect random / noisy-expert / noisy-checkpoint episodes with task rewards")
    from robolearn.cli import add_task_options

    add_task_options(p, required=True, deprecated_set=("--task-override",))
    p.add_argument("--policy", default="random", help="random, expert (our tasks) or a checkpoint directory")
    p.add_argument("--episodes", type=validation.episode_count, required=True)
    p.add_argument("--noise", type=validation.non_negative_float, default=0.0, help="Gaussian action noise std")
    p.add_argument("--max-steps", type=validation.step_count, help="stop once this many steps are stored")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=validation.seed, default=0)
    p.add_argument("--num-envs", type=validation.num_envs, default=16, help="envs stepped as one batch (our tasks; gymnasium tasks run one)")
    p.add_argument("--keep", default="all", choices=["all", "success", "failure"],
                   help="store only episodes that end in success / failure (e.g. failing-policy data); --episodes counts stored ones")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_rollout)
