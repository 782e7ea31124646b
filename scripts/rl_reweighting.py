"""Trajectory reweighting study (Hong et al., ICLR 2023) on push_cube and Hopper-v5, CPU-sized.

    python scripts/rl_reweighting.py data     # random + good data, mixes at 1% / 5% / 50% good
    python scripts/rl_reweighting.py grid     # IQL, TD3+BC x uniform/rw/aw/topk x ratios x seeds
    python scripts/rl_reweighting.py report   # markdown table -> stdout (pasted into the results doc)

Everything lands in runs/rl_study/ (ignored by git). The budget knobs are the constants below;
docs/results/offline_to_online.md records what was run with them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path("runs/rl_study")
TASKS = ("push_cube", "hopper")
RATIOS = (0.01, 0.05, 0.5)
SAMPLERS = ("uniform", "rw", "aw", "topk")
ALGOS = ("iql", "td3bc")
SEEDS = (0, 1, 2)
MIX_SIZE = 10_000  # transitions per mixed dataset
STEPS = 1_000  # gradient steps per offline run (CPU budget: 144 runs on a shared, heavily loaded 2-core box)
EVAL_EPISODES = 10
# lr 1e-3 instead of the papers' 3e-4: with only 1k gradient steps IQL's critic/AWR barely move at 3e-4
COMMON = ["agent.hidden_dims=[64,64]", "agent.actor_lr=0.001", "agent.critic_lr=0.001", "train.batch_size=128", f"train.steps={STEPS}", f"train.eval_every={STEPS}",
          f"train.eval_episodes={EVAL_EPISODES}", f"train.log_every={STEPS}", f"train.save_every={STEPS}"]
WORKERS = int(os.environ.get("RL_WORKERS", "2"))


def sh(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "robolearn.cli", *args], check=True, stderr=subprocess.DEVNULL)


def data() -> None:
    d = ROOT / "data"
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    need = lambda name: not (d / name).exists()  # noqa: E731  (re-running skips finished pieces)
    # push_cube: no termination on success, so a trajectory's dense-reward return ranks its quality
    # (with termination, fast successes collect *less* reward than long failures; see the results doc)
    pc = ["--task", "push_cube", "--task-override", "terminate_on_success=false"]
    if need("push_cube_random.zarr"):  # bad = uniform random actions
        sh("data", "rollout", *pc, "--policy", "random", "--episodes", "100000", "--max-steps", str(MIX_SIZE),
           "--out", str(d / "push_cube_random.zarr"), "--seed", "1")
    if need("push_cube_good.zarr"):  # good = scripted expert with N(0, 0.1) action noise
        sh("data", "rollout", *pc, "--policy", "expert", "--noise", "0.1", "--episodes", "100",
           "--out", str(d / "push_cube_good.zarr"), "--seed", "2")
    # hopper: bad = random; good = a SAC policy trained online from scratch for 12k steps, + N(0, 0.1) noise
    if need("hopper_random.zarr"):
        sh("data", "rollout", "--task", "hopper", "--policy", "random", "--episodes", "100000", "--max-steps", str(MIX_SIZE),
           "--out", str(d / "hopper_random.zarr"), "--seed", "1")
    if need("hopper_sac/policy"):
        sh("finetune", "--algo", "sac", "--task", "hopper", "--steps", "12000", "--out", str(d / "hopper_sac"), "--wandb", "off",
           "finetune.init=scratch", "finetune.warmup=2000", "agent.num_qs=2", "agent.utd=1", "agent.hidden_dims=[128,128]",
           "finetune.eval_every=2000", "finetune.eval_episodes=5", "finetune.batch_size=128")
    if need("hopper_good.zarr"):
        sh("data", "rollout", "--task", "hopper", "--policy", str(d / "hopper_sac" / "policy"), "--noise", "0.1",
           "--episodes", "100000", "--max-steps", str(MIX_SIZE), "--out", str(d / "hopper_good.zarr"), "--seed", "2")
    for task in TASKS:
        for r in RATIOS:
            sh("data", "mix", "--good", str(d / f"{task}_good.zarr"), "--bad", str(d / f"{task}_random.zarr"), "--ratio", str(r),
               "--size", str(MIX_SIZE), "--out", str(d / f"{task}_mix{r}.zarr"), "--seed", "0", "--overwrite")
    print(f"data done in {time.time() - t0:.0f}s")


def _one(job: tuple[str, str, float, str, int]) -> dict:
    import torch

    from robolearn.rl.offline import train_offline
    from robolearn.training import read_metrics

    task, algo, ratio, sampler, seed = job
    out = ROOT / "grid" / f"{task}_{algo}_{ratio}_{sampler}_s{seed}"
    done = out / "policy" / "checkpoint.json"
    if not done.exists():
        t0 = time.time()
        torch.set_num_threads(1)
        extra = ["agent.value_lr=0.001"] if algo == "iql" else []
        train_offline(algo, ROOT / "data" / f"{task}_mix{ratio}.zarr", task=task, sampler=sampler, out=out, wandb_mode="off",
                      overrides=[*COMMON, *extra, f"train.seed={seed}"], progress=False)
        (out / "wall.txt").write_text(f"{time.time() - t0:.1f}")
    last = read_metrics(out)[-1]
    return {"task": task, "algo": algo, "ratio": ratio, "sampler": sampler, "seed": seed,
            "return": last["eval_return"], "success": last["eval_success"], "top10_mass": last["sampler_top10_mass"]}


def grid() -> None:
    jobs = [(t, a, r, s, seed) for t in TASKS for a in ALGOS for r in RATIOS for s in SAMPLERS for seed in SEEDS]
    t0 = time.time()
    results = []
    with ProcessPoolExecutor(WORKERS) as pool:
        for i, res in enumerate(pool.map(_one, jobs)):
            results.append(res)
            print(f"[{i + 1}/{len(jobs)} {time.time() - t0:.0f}s] {res}", flush=True)
    (ROOT / "grid_results.json").write_text(json.dumps(results, indent=1))
    print(f"grid done in {time.time() - t0:.0f}s")


def report() -> None:
    from robolearn.data.store import EpisodeStore

    results = json.loads((ROOT / "grid_results.json").read_text())
    print("Dataset returns (per-episode, mean / max):\n")
    print("| dataset | episodes | steps | mean return | max return | success |")
    print("|---|---|---|---|---|---|")
    for task in TASKS:
        for name in ("random", "good", *[f"mix{r}" for r in RATIOS]):
            s = EpisodeStore.open(ROOT / "data" / f"{task}_{name}.zarr")
            ret = s.column("return")
            print(f"| {task}_{name} | {s.num_episodes} | {s.num_steps} | {ret.mean():.2f} | {ret.max():.2f} | {s.column('success').mean():.2f} |")
    for task in TASKS:
        metric = "success" if task == "push_cube" else "return"
        print(f"\n**{task}** — final eval {metric} ({EVAL_EPISODES} fixed-seed episodes), mean ± std over seeds {list(SEEDS)}:\n")
        print("| algo | good data | " + " | ".join(SAMPLERS) + " |")
        print("|---|---|" + "---|" * len(SAMPLERS))
        for algo in ALGOS:
            for r in RATIOS:
                cells = []
                for s in SAMPLERS:
                    v = [x[metric] for x in results if (x["task"], x["algo"], x["ratio"], x["sampler"]) == (task, algo, r, s)]
                    cells.append(f"{np.mean(v):.2f} ± {np.std(v):.2f}" if metric == "success" else f"{np.mean(v):.0f} ± {np.std(v):.0f}")
                print(f"| {algo} | {r:.0%} | " + " | ".join(cells) + " |")
    print("\nShare of sampling probability on the top-10% return trajectories (seed 0, IQL):\n")
    print("| task | good data | " + " | ".join(SAMPLERS) + " |")
    print("|---|---|" + "---|" * len(SAMPLERS))
    for task in TASKS:
        for r in RATIOS:
            cells = [f"{next(x['top10_mass'] for x in results if (x['task'], x['algo'], x['ratio'], x['sampler'], x['seed']) == (task, 'iql', r, s, 0)):.3f}"
                     for s in SAMPLERS]
            print(f"| {task} | {r:.0%} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    {"data": data, "grid": grid, "report": report}[sys.argv[1]]()
