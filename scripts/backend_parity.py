#!/usr/bin/env python3
"""Parity of a MuJoCo Warp backend with MuJoCo C at scale: every task, many worlds, one table.

The CPU-device tests check 16 worlds; on a CUDA machine this runs the same comparison
(`robolearn.tasks.parity.compare_with_mujoco_c`: identical initial states, the noisy scripted
expert's actions computed from the MuJoCo C state and applied to both) with many worlds.

    python scripts/backend_parity.py --backend gpu --worlds 256 --out docs/results/gpu_parity.md
    python scripts/backend_parity.py --backend warp-cpu --worlds 16          # the same on Warp's CPU device
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_gpu import TASK_OVERRIDES  # noqa: E402  (the same task variants as the benchmark)
from robolearn.tasks.parity import compare_with_mujoco_c  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="gpu", choices=["gpu", "warp-cpu"])
    p.add_argument("--tasks", nargs="+", default=list(TASK_OVERRIDES))
    p.add_argument("--worlds", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=None, help="markdown table (default: print only)")
    args = p.parse_args()
    card = torch.cuda.get_device_name(0) if args.backend == "gpu" and torch.cuda.is_available() else "Warp CPU device"
    lines = [f"Backend parity: `{args.backend}` ({card}) against MuJoCo C, {args.worlds} worlds x {args.steps} control "
             f"steps of the noisy scripted expert (noise 0.1), initial-state seed {args.seed}, "
             f"{datetime.date.today().isoformat()}", "",
             f"command: `python scripts/backend_parity.py {' '.join(sys.argv[1:])}`", "",
             "| task | worlds within 1 mm | median / max deviation (m) | success agreement | reward agreement (<= 0.05) | time (s) |",
             "|---|---|---|---|---|---|"]
    failed = False
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for name in args.tasks:
        t0 = time.perf_counter()
        try:
            r = compare_with_mujoco_c(name, args.backend, num_envs=args.worlds, steps=args.steps, seed=args.seed,
                                      overrides=TASK_OVERRIDES.get(name, []))
        except Exception as e:  # report and go on with the other tasks
            traceback.print_exc()
            lines.append(f"| {name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:200]} | | | | |")
            failed = True
            continue
        dev = r["max_dev"]
        lines.append(f"| {name}{' (' + ' '.join(TASK_OVERRIDES[name]) + ')' if TASK_OVERRIDES.get(name) else ''} | "
                     f"{r['within_1mm']} / {r['num_envs']} | {dev.median():.1e} / {dev.max():.1e} | "
                     f"{r['success_agree']:.1%} | {r['reward_agree']:.1%} | {time.perf_counter() - t0:.0f} |")
        print(lines[-1], flush=True)
        if args.out:
            Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
