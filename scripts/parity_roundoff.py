"""How far MuJoCo C drifts from itself under round-off-sized changes: the yardstick for the Warp
parity bounds (tests/test_warp_backend.py, MIN_WORLDS_WITHIN_1MM).

Runs robolearn.tasks.parity.compare_with_mujoco_c (noisy scripted expert, identical actions, 16
worlds, 50 control steps) with MuJoCo C on both sides, the second one changed by:
  - tol=X: solver tolerance X instead of the model's,
  - f32-start: the start state rounded to float32 (MJWarp keeps its state in float32), physics in float64.
Prints a markdown table: worlds within 1 mm, the largest deviations, success/reward agreement.

    python scripts/parity_roundoff.py --tasks push_cube pick_place push_t sort
"""

from __future__ import annotations

import argparse

import torch

from robolearn.tasks.backend import MujocoCBackend
from robolearn.tasks.parity import compare_with_mujoco_c
from robolearn.tasks.registry import build_model, load_task_config

# The parity test's task settings (sort with two cubes keeps the CPU-device test short).
OVERRIDES = {"sort": ["num_cubes=2"]}


def changed_backend(name: str, overrides: list[str], change: str, num_envs: int) -> MujocoCBackend:
    """A MuJoCo C backend on the task's model with one round-off-sized change applied."""
    _, model = build_model(name, load_task_config(name, overrides))
    if change.startswith("tol="):
        model.opt.tolerance = float(change[4:])
        return MujocoCBackend(model, num_envs)
    if change == "f32-start":
        backend = MujocoCBackend(model, num_envs)
        reset = backend.reset
        backend.reset = lambda mask, states: reset(mask, states.float().double())
        return backend
    raise ValueError(f"unknown change {change!r} (expected tol=<float> or f32-start)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["push_cube", "pick_place", "push_t", "sort"])
    ap.add_argument("--changes", nargs="+", default=["tol=1e-10", "f32-start"])
    ap.add_argument("--num-envs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| task | MuJoCo C vs MuJoCo C with | worlds within 1 mm | largest deviations (m) | success agree | reward agree |")
    print("|---|---|---|---|---|---|")
    for name in args.tasks:
        overrides = OVERRIDES.get(name, [])
        for change in args.changes:
            other = changed_backend(name, overrides, change, args.num_envs)
            res = compare_with_mujoco_c(name, other, num_envs=args.num_envs, steps=args.steps, overrides=overrides)
            worst = ", ".join(f"w{i}: {d:.1e}" for d, i in zip(*res["max_dev"].topk(2)))
            print(f"| {name}{' ' + ' '.join(overrides) if overrides else ''} | {change} | {res['within_1mm']} / {args.num_envs} "
                  f"| {worst} | {res['success_agree']:.3f} | {res['reward_agree']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
