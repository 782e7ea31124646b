"""Push-T like the Diffusion Policy paper: 200 state demos, diffusion, 3 seeds, success and score.

Per training seed s: collect the demos (absolute pusher-target actions, object-relative state,
expert mode fixed so the demos are unimodal; store reused when complete), train the CPU preset
(resumed from its last checkpoint if interrupted), evaluate the final policy on 100 episodes
(seeds first_eval_seed(s) + i, disjoint from the collection seeds 100000 s + i) for each
executed-actions count, and append one record per (seed, executed actions) to --records as it
lands. Seeds with records are skipped, so rerunning the same command continues the sweep.
`--table` prints the markdown table from the records (success pooled with its Wilson interval,
score = the paper's mean over episodes of max over steps of clip(coverage / 0.95, 0, 1)).

    python scripts/push_t_results.py --seeds 0 1 2 --records docs/results/push_t/records.jsonl
    python scripts/push_t_results.py --image --seeds 0 --action-steps 8 --extra train.steps=6000 train.save_every=500   # image variant
    python scripts/push_t_results.py --table --records docs/results/push_t/records.jsonl
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imitation_results import IMAGE, describe_demos, first_eval_seed  # noqa: E402

TASK_OVERRIDES = ["action_mode=absolute", "obs_relative=true"]
# policies/diffusion_small.yaml, trained longer: 200 push_t demos hold ~25k windows, so 30000
# steps at batch 64 are ~80 epochs (the 8000-step recipe of push_cube/pick_place is ~21).
TRAIN_OVERRIDES = ["train.steps=30000", "train.eval_every=5000", "train.save_every=1000", "train.log_every=100"]
# --image: the paper's image setting, the 84x84 top camera plus the pusher's own xy (`proprio`); the
# block's pose reaches the policy only through the camera.
IMAGE_OVERRIDES = [*IMAGE, "policy.state_keys=[proprio]"]


def variant(args_or_record) -> str:
    image = args_or_record.image if isinstance(args_or_record, argparse.Namespace) else args_or_record.get("variant") == "image+proprio"
    return "image+proprio" if image else "state"


def run_seed(args: argparse.Namespace, seed: int, done_steps: set[int]) -> None:
    import torch

    from robolearn.config import project_root
    from robolearn.data.store import EpisodeStore, copy_store
    from robolearn.evaluation import evaluate_policy, load_any_policy, set_action_steps, task_overrides_from_meta
    from robolearn.tasks.collect import collect
    from robolearn.training import train

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tag = "-image" if args.image else ""
    store_path = work / f"push_t{tag}-demos-s{seed}.zarr"
    complete = store_path.exists() and EpisodeStore.open(store_path).num_episodes >= args.demos
    if not complete:
        if store_path.exists():
            shutil.rmtree(store_path)  # an interrupted collection: start it over (fixed seeds)
        t0 = time.time()
        collect("push_t", episodes=args.demos, out=store_path, num_envs=args.num_envs, seed=seed * 100_000,
                overrides=TASK_OVERRIDES, expert_mode=args.expert_mode, image=args.image, progress=True)
        print(f"collected {args.demos} demos in {time.time() - t0:.0f} s", flush=True)
    demos = EpisodeStore.open(store_path)
    run = work / f"push_t-diffusion{tag}-s{seed}"
    image_overrides = IMAGE_OVERRIDES if args.image else []
    t0 = time.time()
    if not (run / "policy" / "checkpoint.json").is_file():
        if (run / "checkpoints" / "last" / "checkpoint.json").is_file():
            train(None, None, resume=run, wandb_mode="off")
        else:
            if run.exists():
                shutil.rmtree(run)
            sub = work / f"push_t{tag}-demos-s{seed}-first{args.demos}.zarr"
            if not sub.exists():
                copy_store(demos, sub, list(range(args.demos))).close()
            train("diffusion", sub, task="push_t", out=run, config_path=project_root() / "policies" / "diffusion_small.yaml",
                  overrides=[*TRAIN_OVERRIDES, *image_overrides, f"train.seed={seed}", *args.extra], wandb_mode="off")
    train_s = time.time() - t0
    policy, meta = load_any_policy(run / "policy")
    for steps in args.action_steps:
        if steps in done_steps:
            continue
        set_action_steps(policy, steps)
        t0 = time.time()
        load = list(os.getloadavg())
        report = evaluate_policy(policy, "push_t", args.eval_episodes, seed=first_eval_seed(seed), num_envs=args.num_envs,
                                 task_overrides=task_overrides_from_meta(meta, "push_t"), progress=True)
        record = {"variant": variant(args), "seed": seed, "action_steps": steps, "n": report["n"], "successes": report["successes"],
                  "success_rate": report["success_rate"], "score": report["score"], "score_name": report["score_name"],
                  "eval_seeds": [report["seeds"][0], report["seeds"][-1]], "demos": args.demos,
                  "demo_summary": describe_demos(demos, args.demos), "task_overrides": TASK_OVERRIDES,
                  "expert_mode": args.expert_mode, "train_overrides": [*TRAIN_OVERRIDES, *image_overrides, *args.extra],
                  "train_s_this_session": round(train_s, 1), "eval_s": round(time.time() - t0, 1),
                  "loadavg_eval_start": load, "date": dt.datetime.now().isoformat(timespec="seconds"),
                  "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"}
        with open(args.records, "a") as f:  # one line per finished evaluation: a crash keeps it
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)


def table(records: list[dict]) -> str:
    from robolearn.evaluation import pool_evaluations

    lines = ["| observations | executed actions | seeds | n (pooled) | success | 95% CI (Wilson) | score (paper's metric) | per seed: success / score |",
             "|---|---|---|---|---|---|---|---|"]
    for obs, steps in sorted({(variant(r), r["action_steps"]) for r in records}, key=lambda k: (k[0] != "state", k)):
        cell = sorted((r for r in records if r["action_steps"] == steps and variant(r) == obs), key=lambda r: r["seed"])
        k, n, (lo, hi) = pool_evaluations(cell)
        score = sum(r["score"] * r["n"] for r in cell) / n
        per = ", ".join(f"s{r['seed']}: {r['success_rate']:.2f} / {r['score']:.3f}" for r in cell)
        lines.append(f"| {obs} | {steps} | {len(cell)} | {n} | {k / n:.3f} | [{lo:.3f}, {hi:.3f}] | {score:.3f} | {per} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--demos", type=int, default=200)
    ap.add_argument("--eval-episodes", type=int, default=100)
    ap.add_argument("--action-steps", nargs="+", type=int, default=[1, 8], help="executed actions per chunk to evaluate")
    ap.add_argument("--expert-mode", type=int, default=0, help="fixed expert mode (unimodal demos); -1: drawn per episode")
    ap.add_argument("--num-envs", type=int, default=10)
    ap.add_argument("--extra", nargs="*", default=[], help="extra training overrides")
    ap.add_argument("--image", action="store_true", help="the image variant: top camera + pusher xy (own demos and runs)")
    ap.add_argument("--workdir", default="runs/push_t")
    ap.add_argument("--records", default="docs/results/push_t/records.jsonl")
    ap.add_argument("--table", action="store_true", help="print the table from --records and exit")
    args = ap.parse_args()
    if args.expert_mode < 0:
        args.expert_mode = None
    records = [json.loads(ln) for ln in Path(args.records).read_text().splitlines() if ln.strip()] \
        if Path(args.records).exists() else []
    if args.table:
        if not records:
            sys.exit(f"error: no records in {args.records}")
        print(table(records))
        return
    Path(args.records).parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        done = {r["action_steps"] for r in records if r["seed"] == seed and variant(r) == variant(args)}
        if set(args.action_steps) <= done:
            print(f"seed {seed}: already recorded, skipped")
            continue
        run_seed(args, seed, done)


if __name__ == "__main__":
    main()
