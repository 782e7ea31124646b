"""WSRL vs no warm-up vs 50/50 offline retention on Hopper-v5, CPU-sized.

    python scripts/wsrl_finetune.py run      # pre-train IQL once, fine-tune 3 methods x 3 seeds
    python scripts/wsrl_finetune.py report   # table + docs/results/wsrl_hopper.png

Needs runs/rl_study/data/hopper_mix0.5.zarr from `scripts/rl_reweighting.py data`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path("runs/rl_study/wsrl")
DATA = Path("runs/rl_study/data/hopper_mix0.5.zarr")
SEEDS = (0, 1, 2)
STEPS = 3_000  # online env steps, warm-up included
WARMUP = 1_000  # WSRL warm-up (the paper's 5000 of 500k steps, scaled to this budget)
EVAL_EVERY = 250
EVAL_EPISODES = 5
METHODS = {  # name -> (algo, warm-up, retained offline fraction)
    "WSRL (warm-up, no retention)": ("wsrl", WARMUP, 0.0),
    "no warm-up, no retention": ("sac", 0, 0.0),
    "50/50 offline retention": ("sac", 0, 0.5),
}
FT = ["agent.utd=2", "agent.num_qs=5", "agent.num_min_qs=2", "finetune.batch_size=128", f"finetune.eval_every={EVAL_EVERY}",
      f"finetune.eval_episodes={EVAL_EPISODES}", "finetune.log_every=500", f"finetune.save_every={STEPS}"]
WORKERS = int(os.environ.get("RL_WORKERS", "2"))


def pretrain() -> Path:
    from robolearn.rl.offline import train_offline

    out = ROOT / "pretrain_iql"
    if not (out / "policy" / "checkpoint.json").exists():
        train_offline("iql", DATA, task="hopper", out=out, wandb_mode="off", progress=False, overrides=[
            "agent.hidden_dims=[64,64]", "agent.num_qs=5", "agent.actor_lr=0.001", "agent.critic_lr=0.001",
            "agent.value_lr=0.001", "train.steps=3000", "train.batch_size=128", "train.eval_every=3000",
            "train.eval_episodes=5", "train.log_every=1000", "train.save_every=3000"])
    return out / "policy"


def _one(job: tuple[str, int]) -> dict:
    import torch

    from robolearn.rl.wsrl import finetune

    name, seed = job
    algo, warmup, retain = METHODS[name]
    out = ROOT / f"{algo}_w{warmup}_r{retain}_s{seed}"
    if not (out / "continual.json").exists():
        torch.set_num_threads(1)
        t0 = time.time()
        finetune(ROOT / "pretrain_iql" / "policy", task="hopper", algo=algo, warmup=warmup, retain_offline=retain, steps=STEPS,
                 data=DATA, overrides=[*FT, f"finetune.seed={seed}"], out=out, wandb_mode="off", progress=False)
        (out / "wall.txt").write_text(f"{time.time() - t0:.1f}")
    summary = json.loads((out / "continual.json").read_text())
    return {"method": name, "seed": seed, "dir": str(out), **summary["metrics"]}


def run() -> None:
    t0 = time.time()
    pretrain()
    print(f"pretrained in {time.time() - t0:.0f}s", flush=True)
    jobs = [(m, s) for s in SEEDS for m in METHODS]
    results = []
    with ProcessPoolExecutor(WORKERS) as pool:
        for res in pool.map(_one, jobs):
            results.append(res)
            print(f"[{time.time() - t0:.0f}s] {res}", flush=True)
    (ROOT / "results.json").write_text(json.dumps(results, indent=1))


def report() -> None:
    from robolearn.rl.metrics import plot_curves

    results = json.loads((ROOT / "results.json").read_text())
    curves = {}
    print(f"| method | initial | final | best | min-ACC | min-ACC step | WC-ACC | windowed forgetting (w={3 * EVAL_EVERY}) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in METHODS:
        rows = [r for r in results if r["method"] == name]
        cell = lambda k: f"{np.mean([r[k] for r in rows]):.0f} ± {np.std([r[k] for r in rows]):.0f}"  # noqa: E731
        print(f"| {name} | {cell('initial')} | {cell('final')} | {cell('best')} | {cell('min_acc')} | "
              f"{[r['min_acc_step'] for r in rows]} | {cell('wc_acc')} | {cell('windowed_forgetting')} |")
        hist = [json.loads((Path(r["dir"]) / "continual.json").read_text())["history"] for r in rows]
        steps = [h["step"] for h in hist[0]]
        scores = np.array([[h["score"] for h in hh] for hh in hist])
        curves[name] = (steps, scores.mean(0), (scores.min(0), scores.max(0)))
        print("   curve (mean over seeds):", " ".join(f"{s}:{v:.0f}" for s, v in zip(steps, scores.mean(0))))
    plot_curves(curves, "docs/results/wsrl_hopper.png", "mean return (5 fixed eval seeds)",
                f"Hopper-v5 fine-tuning from IQL, mean and min..max of {len(SEEDS)} seeds", warmup=WARMUP)


if __name__ == "__main__":
    {"run": run, "report": report}[sys.argv[1]]()
