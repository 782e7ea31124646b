"""The `robolearn` console command (also `python -m robolearn`, and `torchrun ... -m robolearn train`).

Subcommands are listed in one explicit dictionary (name -> "module:function that adds its
arguments"). Only the module of the command being run is imported, and those argument modules are
light (no torch, no mujoco), so `--help` and bad input answer in a fraction of a second: the
command's implementation is named as a "module:function" string (`set_defaults(func=...)`) and
imported only after the arguments, and the task name, have been checked.

Conventions every command follows: `--task NAME` (a registered name, `package.module:Class` or
`gym:<id>`; an unknown name fails before anything loads), `--set KEY=VALUE` for task-config
overrides, defaults shown in `--help`, and bad input as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Callable

# argparse number types (shared by every command; robolearn.validation imports nothing heavy),
# re-exported for the command modules that import them from here
from robolearn.validation import non_negative_float, non_negative_int, num_envs, positive_int, seed

# name -> (module:function adding the subcommand's arguments, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("robolearn.data.cli:register", "inspect, merge, filter, split, import/export episode stores"),
    "tasks": ("robolearn.tasks.cli:register_tasks", "list tasks with observation/action shapes and horizon"),
    "collect": ("robolearn.tasks.cli:register_collect", "collect scripted-expert episodes into a store"),
    "train": ("robolearn.cli:register_train", "train a policy on an episode store"),
    "offline": ("robolearn.rl.cli:register_offline", "offline RL (IQL, CQL, Cal-QL, TD3+BC) with trajectory reweighting"),
    "finetune": ("robolearn.rl.cli:register_finetune", "online RL fine-tuning of an offline checkpoint (WSRL, SAC)"),
    "eval": ("robolearn.cli:register_eval", "evaluate a checkpoint on a task with fixed seeds"),
    "intervene": ("robolearn.teleop.recorder:register", "deploy a policy with an operator (keyboard/SpaceMouse/gamepad/scripted) and record recoveries/corrections"),
    "demo": ("robolearn.demo:register", "collect demos, train a diffusion policy, evaluate, write a report"),
    "sailor": ("robolearn.sailor.cli:register", "SAILOR: world model + reward + critic + residual planner around a diffusion policy"),
}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to options that have a meaningful default (not None / False / [])."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default is None or default is False or default == argparse.SUPPRESS
                or default == [] or action.option_strings == [] and action.nargs in ("*", "?")):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with the project's error convention: one line on stderr, exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


# ----------------------------------------------------------------------------------- shared options
def add_task_options(parser: argparse.ArgumentParser, required: bool = False, task_help: str | None = None,
                     deprecated_set: tuple[str, ...] = ()) -> None:
    """`--task` and `--set KEY=VALUE` (task-config overrides, repeatable; dest `task_overrides`).
    `deprecated_set`: older flag names kept as hidden aliases of --set."""
    parser.add_argument("--task", required=required,
                        help=task_help or "task: a name from `robolearn tasks`, package.module:Class, or gym:<id>")
    parser.add_argument("--set", dest="task_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="task config override, e.g. --set horizon=50 (repeatable; gym:<id> tasks: "
                             "keyword arguments of gymnasium.make)")
    for flag in deprecated_set:
        parser.add_argument(flag, dest="task_overrides", action="append", help=argparse.SUPPRESS)
    parser.set_defaults(runs_task=True)


def policy_presets() -> dict[str, str]:
    """Presets in policies/: file stem -> the registered policy its YAML names."""
    import yaml

    from robolearn.config import project_root
    from robolearn.policies import POLICIES

    presets = {}
    for path in sorted((project_root() / "policies").glob("*.yaml")):
        if path.stem in POLICIES:
            continue
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        if isinstance(data, dict) and data.get("name") in POLICIES:
            presets[path.stem] = data["name"]
    return presets


def policy_choices() -> list[str]:
    """What `train --policy` accepts: registered policies, then the presets in policies/, except
    those trained by their own command (robolearn.policies.TRAINED_ELSEWHERE)."""
    from robolearn.policies import POLICIES, TRAINED_ELSEWHERE

    return [*(p for p in POLICIES if p not in TRAINED_ELSEWHERE),
            *(stem for stem, name in policy_presets().items() if name not in TRAINED_ELSEWHERE)]


def policy_name(text: str) -> str:
    """argparse type: a registered policy or preset (the error lists them, or names the command
    that trains a policy `robolearn train` does not)."""
    from robolearn.policies import TRAINED_ELSEWHERE

    name = policy_presets().get(text, text)
    if name in TRAINED_ELSEWHERE:
        raise argparse.ArgumentTypeError(f"policy {text!r} is trained by `{TRAINED_ELSEWHERE[name]}`, not `robolearn train`")
    choices = policy_choices()
    if text not in choices:
        raise argparse.ArgumentTypeError(f"unknown policy {text!r} (choose from {', '.join(choices)})")
    return text


# ----------------------------------------------------------------------------------- train / eval
def register_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", type=policy_name, help="policy name (config from policies/NAME.yaml)")
    parser.add_argument("--data", help="episode store to train on")
    add_task_options(parser, task_help="task for periodic evaluation rollouts (and recorded in checkpoints): a name, "
                                       "package.module:Class or gym:<id>")
    parser.add_argument("--out", help="run directory (default runs/<policy>-<task>-<time>)")
    parser.add_argument("--config", help="YAML config instead of policies/NAME.yaml")
    parser.add_argument("--wandb", default="offline", choices=["off", "offline", "online"], help="wandb mode")
    parser.add_argument("--resume", help="continue the run in this directory exactly where it stopped")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run at --out")
    parser.add_argument("--skip-damaged", action="store_true", help="train on the healthy episodes of a damaged store")
    parser.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                        help="fine-tune: start from this checkpoint's weights and normalizer (same policy and config shapes)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=1000 policy.horizon=8")
    parser.set_defaults(func="robolearn.training:run_cli")


def register_eval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    add_task_options(parser, task_help="task (default: the one recorded in the checkpoint)")
    parser.add_argument("--episodes", type=positive_int, default=50, help="episodes to run")
    parser.add_argument("--num-envs", type=num_envs, default=1, help="envs stepped as one batch")
    parser.add_argument("--seed", type=seed, default=0, help="episode i uses seed SEED+i")
    parser.add_argument("--perturb", type=non_negative_float, default=None,
                        help="perturbation events per step (overrides the task config)")
    parser.add_argument("--video", type=non_negative_int, default=0, help="record mp4s of the first K episodes")
    parser.add_argument("--video-dir", default=None, help="where videos go (default: CHECKPOINT/videos)")
    parser.add_argument("--save", default=None, help="append rollouts to this episode store (source=policy)")
    parser.add_argument("--action-steps", type=positive_int, default=None,
                        help="actions executed per predicted chunk before re-planning (default: the policy's n_action_steps)")
    parser.add_argument("--backend", choices=["cpu", "gpu", "warp-cpu"], default="cpu",
                        help="cpu: MuJoCo C; gpu: MuJoCo Warp on CUDA (extra 'gpu'); warp-cpu: MuJoCo Warp on its CPU device (tests)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func="robolearn.evaluation:run_cli")


# ----------------------------------------------------------------------------------- main
def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(prog="robolearn",
                    description="robolearn: demonstrations, interventions, policies, search and RL in one loop.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (target, help_text) in SUBCOMMANDS.items():
        if name != only:  # listed for --help without importing its module
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        sp = sub.add_parser(name, help=help_text, description=help_text)
        resolve(target)(sp)
    return parser


# Commands whose --task names a task to run (`data filter --task` only selects stored episodes).
TASK_COMMANDS = ("train", "collect", "eval", "intervene", "sailor", "offline", "finetune", "demo")


def _check_task_at_start(args: argparse.Namespace) -> None:
    """An unknown --task fails before the command loads anything heavy (or runs for an hour)."""
    task = getattr(args, "task", None)
    if task and (args.command in TASK_COMMANDS or getattr(args, "runs_task", False)):
        from robolearn.tasks.registry import check_task

        check_task(task)


def _task_in_argv(argv: list[str]) -> str | None:
    """The value of --task in a command line, read before the command's module is imported."""
    for i, arg in enumerate(argv):
        if arg == "--task" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--task="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only import the module of the subcommand being run.
    only = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    task = _task_in_argv(argv[1:]) if only in TASK_COMMANDS and "-h" not in argv and "--help" not in argv else None
    if task:  # before the command's module loads (some import torch): an unknown task fails at once
        from robolearn.tasks.registry import UnknownTaskError, check_task

        try:
            check_task(task)
        except UnknownTaskError as exc:
            print(f"robolearn {only}: error: {exc}", file=sys.stderr)
            return 2
    parser = build_parser(only)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | str | None = getattr(args, "func", None)
    if not func:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        _check_task_at_start(args)
        if isinstance(func, str):
            func = resolve(func)
        rc = func(args)
    except KeyboardInterrupt:
        print("robolearn: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError, KeyError, RuntimeError, MemoryError) as exc:
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        msg = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        print(f"robolearn {args.command}: error: {msg}{' (out of memory)' if isinstance(exc, MemoryError) else ''}", file=sys.stderr)
        return 2
    except Exception as exc:  # the simulator's fatal errors (mujoco.FatalError) are bad input too
        if type(exc).__name__ != "FatalError" or not type(exc).__module__.startswith("mujoco"):
            raise
        print(f"robolearn {args.command}: error: simulator: {(str(exc).strip().splitlines() or ['fatal error'])[0]}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
