"""Choose `robolearn demo`'s training recipe: candidate diffusion_small variants, 3 training seeds each.

Every candidate trains on the demo's own data (its number of scripted push_cube demos, object-relative
state, collection seeds 0..N-1 as `robolearn demo --episodes N` collects them, once per N into --workdir) with policies/diffusion_small.yaml plus the
candidate's overrides, and is evaluated on 100 *selection* episodes (seeds 200000 + 1000 x train_seed
+ i): disjoint from the collection seeds and from the demo's own evaluation seeds (100000..100049),
which stay untouched by this choice. One record per (candidate, seed) is appended to --records as it
lands (training time and load average included); rerunning skips recorded pairs.

    python scripts/demo_recipe.py --candidates unet32 --seeds 0 1 2
    python scripts/demo_recipe.py --table
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

RECORDS = "docs/results/demo/recipe_selection.jsonl"
UNET32 = ["policy.down_dims=[32,64,128]", "policy.diffusion_step_embed_dim=32"]
# name -> (scripted demos, training overrides on top of policies/diffusion_small.yaml, whose own
# U-Net is 64-128-256: "unet64")
CANDIDATES = {
    "unet64": (200, []),
    "unet32": (200, UNET32),
    "unet32-1000demos": (1000, UNET32),
    "unet64-1000demos": (1000, []),
}
FIRST_SELECTION_SEED = 200_000


def selection_seed(train_seed: int) -> int:
    return FIRST_SELECTION_SEED + 1000 * train_seed


def run(args: argparse.Namespace, name: str, seed: int) -> dict:
    import torch

    from robolearn.config import project_root
    from robolearn.demo import DEFAULTS, DEMO_PRESET, DEMO_TASK_OVERRIDES, load_average
    from robolearn.evaluation import evaluate_policy, load_any_policy, task_overrides_from_meta
    from robolearn.tasks.collect import collect
    from robolearn.training import train

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    task = DEFAULTS["task"]
    episodes, candidate_overrides = CANDIDATES[name]
    demos = work / f"demos{episodes}.zarr"  # collection seeds 0..episodes-1, as `robolearn demo --episodes N`
    if not (demos / "zarr.json").exists():
        collect(task, episodes=episodes, out=demos, num_envs=DEFAULTS["num_envs"], seed=DEFAULTS["seed"],
                overrides=DEMO_TASK_OVERRIDES, progress=True)
    out = work / f"{name}-s{seed}"
    if out.exists():
        shutil.rmtree(out)  # an interrupted run of this script: train it again from the start
    overrides = [f"train.steps={DEFAULTS['steps']}", f"train.seed={seed}", "train.eval_every=1000000", *candidate_overrides]
    load_start = load_average()
    t0 = time.time()
    train("diffusion", demos, task=task, out=out, overrides=overrides,
          config_path=project_root() / "policies" / f"{DEMO_PRESET}.yaml", wandb_mode="off", progress=args.progress)
    train_s = time.time() - t0
    policy, meta = load_any_policy(out / "policy")
    t0 = time.time()
    report = evaluate_policy(policy, task, args.eval_episodes, seed=selection_seed(seed), num_envs=DEFAULTS["num_envs"],
                             task_overrides=task_overrides_from_meta(meta, task), progress=False)
    return {"candidate": name, "seed": seed, "demos": episodes, "overrides": overrides, "n": report["n"], "successes": report["successes"],
            "success_rate": report["success_rate"], "eval_seeds": [report["seeds"][0], report["seeds"][-1]],
            "train_s": round(train_s, 1), "eval_s": round(time.time() - t0, 1), "load_train_start": load_start,
            "load_end": load_average(), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "date": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"}


def table(records: list[dict]) -> str:
    from robolearn.evaluation import pool_evaluations

    lines = ["| candidate | demos | overrides on diffusion_small | seeds | n (pooled) | success | 95% CI (Wilson) | per seed | train s/run (median) | load at start |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["candidate"] for r in records):
        cell = sorted((r for r in records if r["candidate"] == name), key=lambda r: r["seed"])
        k, n, (lo, hi) = pool_evaluations(cell)
        per = ", ".join(f"s{r['seed']}: {r['success_rate']:.2f}" for r in cell)
        times = [r["train_s"] for r in cell]
        loads = ", ".join(f"{r['load_train_start'][0]:.1f}" for r in cell)
        extra = [o for o in cell[0]["overrides"] if not o.startswith(("train.seed=", "train.steps=", "train.eval_every="))]
        lines.append(f"| {name} | {cell[0].get('demos', CANDIDATES[name][0])} | `{' '.join(extra) or '(none)'}` | {len(cell)} | {n} | {k / n:.3f} | "
                     f"[{lo:.3f}, {hi:.3f}] | {per} | {np.median(times):.0f} | {loads} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", nargs="+", choices=sorted(CANDIDATES), default=["unet32"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--eval-episodes", type=int, default=100)
    ap.add_argument("--workdir", default="runs/demo_recipe")
    ap.add_argument("--records", default=RECORDS)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the table from --records and exit")
    args = ap.parse_args()
    path = Path(args.records)
    records = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
    if args.table:
        if not records:
            sys.exit(f"error: no records in {path}")
        print(table(records))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in args.candidates:
        for seed in args.seeds:
            if any(r["candidate"] == name and r["seed"] == seed for r in records):
                print(f"{name} seed {seed}: already recorded, skipped")
                continue
            record = run(args, name, seed)
            with path.open("a") as f:  # one line per finished run: a crash keeps it
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
