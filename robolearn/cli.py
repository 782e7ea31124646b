"""The `robolearn` console command.

Subcommands are listed in one explicit dictionary (name -> "module:register function"), imported
only when used so `robolearn --help` stays fast and heavy modules load lazily.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, function that adds the subcommand's parser, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "data": ("robolearn.data.cli", "register", "inspect, merge, filter, split, import/export episode stores"),
    "tasks": ("robolearn.tasks.cli", "register_tasks", "list tasks with observation/action shapes and horizon"),
    "collect": ("robolearn.tasks.cli", "register_collect", "collect scripted-expert episodes into a store"),
    "train": ("robolearn.training", "register", "train a policy on an episode store"),
    "offline": ("robolearn.rl.cli", "register_offline", "offline RL (IQL, CQL, Cal-QL, TD3+BC) with trajectory reweighting"),
    "finetune": ("robolearn.rl.cli", "register_finetune", "online RL fine-tuning of an offline checkpoint (WSRL, SAC)"),
    "eval": ("robolearn.evaluation", "register", "evaluate a checkpoint on a task with fixed seeds"),
    "intervene": ("robolearn.teleop.recorder", "register", "deploy a policy with an operator (keyboard/SpaceMouse/gamepad/scripted) and record recoveries/corrections"),
    "demo": ("robolearn.demo", "register", "collect demos, train a diffusion policy, evaluate, write a report"),
    "sailor": ("robolearn.sailor.cli", "register", "SAILOR: world model + reward + critic + residual planner around a diffusion policy"),
}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robolearn",
        description="robolearn: demonstrations, interventions, policies, search and RL in one loop.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, func, help_text) in SUBCOMMANDS.items():
        if name != only:  # listed for --help without importing its module
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        sp = sub.add_parser(name, help=help_text, description=help_text)
        getattr(importlib.import_module(module), func)(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only import the module of the subcommand being run.
    only = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("robolearn: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, FileNotFoundError, FileExistsError, KeyError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"robolearn {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
