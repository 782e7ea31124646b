"""Trajectory reweighting study (Hong et al., ICLR 2023) on push_cube and Hopper-v5, CPU-sized.

    python scripts/rl_reweighting.py data     # random + good data, mixes at 1% / 5% / 50% good
    python scripts/rl_reweighting.py grid     # IQL, TD3+BC x uniform/rw/aw/topk x ratios x seeds
    python scripts/rl_reweighting.py report   # markdown table -> stdout (pasted into the results doc)
    python scripts/rl_reweighting.py plot     # docs/results/reweighting.png: every grid's final scores vs good-data ratio

Everything lands in runs/rl_study/ (ignored by git). Without flags `grid`/`report` use the budget
constants below (the 1k-step study); flags select a sub-grid and a larger budget, written to its own
directory and results file under --tag, e.g. the push_cube study at 10k steps with 2x256 nets:

    python scripts/rl_reweighting.py grid --tag pc10k --tasks push_cube --algos td3bc iql --steps 10000 \
        --hidden 256 256 --lr 0.001 --batch-size 256 --eval-episodes 20 --workers 1 --stop-at 18:30
    python scripts/rl_reweighting.py report --tag pc10k --tasks push_cube --algos td3bc iql

Jobs run seed-major (every cell's seed 0, then seed 1, ...), results are merged into the tag's results
file after every run (a call with e.g. `--algos iql` keeps the td3bc runs recorded there),
and `--stop-at HH:MM` (UTC) launches nothing after that time, so a grid cut short by the clock
still has whole seeds; `report` prints the number of seeds per cell.
docs/results/offline_to_online.md records what was run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from robolearn.experiments import run_jobs, stop_time

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
# (the defaults of the --hidden / --lr / --batch-size flags: 2x64 MLPs, lr 1e-3, batch 128)
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
    pc = ["--task", "push_cube", "--set", "terminate_on_success=false"]
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


def _overrides(steps: int, hidden: list[int], lr: float, batch_size: int, eval_episodes: int) -> list[str]:
    return [f"agent.hidden_dims=[{','.join(map(str, hidden))}]", f"agent.actor_lr={lr}", f"agent.critic_lr={lr}",
            f"train.batch_size={batch_size}", f"train.steps={steps}", f"train.eval_every={steps}",
            f"train.eval_episodes={eval_episodes}", f"train.log_every={steps}", f"train.save_every={steps}"]


def _run_dir(job: tuple) -> Path:
    task, algo, ratio, sampler, seed, grid_dir = job[:6]
    return grid_dir / f"{task}_{algo}_{ratio}_{sampler}_s{seed}"


def _one(job: tuple) -> dict:
    import torch

    from robolearn.rl.offline import train_offline
    from robolearn.training import read_metrics

    task, algo, ratio, sampler, seed, grid_dir, common, lr = job
    out = _run_dir(job)
    done = out / "policy" / "checkpoint.json"
    if not done.exists():
        t0 = time.time()
        torch.set_num_threads(1)
        extra = [f"agent.value_lr={lr}"] if algo == "iql" else []
        train_offline(algo, ROOT / "data" / f"{task}_mix{ratio}.zarr", task=task, sampler=sampler, out=out, wandb_mode="off",
                      overrides=[*common, *extra, f"train.seed={seed}"], progress=False)
        (out / "wall.txt").write_text(f"{time.time() - t0:.1f}")
    last = read_metrics(out)[-1]
    return {"task": task, "algo": algo, "ratio": ratio, "sampler": sampler, "seed": seed,
            "return": last["eval_return"], "success": last["eval_success"], "top10_mass": last["sampler_top10_mass"],
            "wall_s": float((out / "wall.txt").read_text()) if (out / "wall.txt").exists() else None}


def _paths(tag: str | None) -> tuple[Path, Path]:
    return (ROOT / "grid", ROOT / "grid_results.json") if not tag else (ROOT / f"grid_{tag}", ROOT / f"grid_results_{tag}.json")


def _key(x: dict) -> tuple:
    return x["task"], x["algo"], x["ratio"], x["sampler"], x["seed"]


def _save(results_path: Path, results: list[dict]) -> None:
    """Merge into the results file: a sub-grid (e.g. `--algos iql`) keeps the runs other calls recorded there."""
    old = json.loads(results_path.read_text()) if results_path.exists() else []
    new = {_key(x): x for x in results}
    merged = [x for x in old if _key(x) not in new] + results
    results_path.write_text(json.dumps(merged, indent=1))


def grid(a: argparse.Namespace) -> None:
    grid_dir, results_path = _paths(a.tag)
    common = _overrides(a.steps, a.hidden, a.lr, a.batch_size, a.eval_episodes)
    jobs = [(t, al, r, s, seed, grid_dir, common, a.lr) for seed in a.seeds for t in a.tasks for al in a.algos
            for r in a.ratios for s in a.samplers]
    stop = stop_time(a.stop_at)
    print(f"{len(jobs)} jobs, overrides {common}, stop launching at {stop}", flush=True)
    run_jobs(jobs, _one, a.workers, lambda job: (_run_dir(job) / "policy" / "checkpoint.json").exists(),
             lambda results: _save(results_path, results), stop, label=lambda job: job[:5])


def report(a: argparse.Namespace) -> None:
    from robolearn.data.store import EpisodeStore

    grid_dir, results_path = _paths(a.tag)
    results = json.loads(results_path.read_text())
    if a.tag and results:  # the episodes each run was evaluated on, as its config recorded them
        import yaml

        x = results[0]
        cfg = yaml.safe_load((_run_dir((x["task"], x["algo"], x["ratio"], x["sampler"], x["seed"], grid_dir)) / "config.yaml").read_text())
        a.eval_episodes = cfg["train"]["eval_episodes"]
    print("Dataset returns (per-episode, mean / max):\n")
    print("| dataset | episodes | steps | mean return | max return | success |")
    print("|---|---|---|---|---|---|")
    for task in a.tasks:
        for name in ("random", "good", *[f"mix{r}" for r in a.ratios]):
            s = EpisodeStore.open(ROOT / "data" / f"{task}_{name}.zarr")
            ret = s.column("return")
            print(f"| {task}_{name} | {s.num_episodes} | {s.num_steps} | {ret.mean():.2f} | {ret.max():.2f} | {s.column('success').mean():.2f} |")
    for task in a.tasks:
        metrics = ("success", "return") if task == "push_cube" and a.tag else ("success",) if task == "push_cube" else ("return",)
        for metric in metrics:
            seeds = sorted({x["seed"] for x in results if x["task"] == task})
            print(f"\n**{task}** — final eval {metric} ({a.eval_episodes} fixed-seed episodes), mean ± std over seeds {seeds}"
                  + (" (n = seeds in the cell where fewer)" if a.tag else "") + ":\n")
            print("| algo | good data | " + " | ".join(a.samplers) + " |")
            print("|---|---|" + "---|" * len(a.samplers))
            for algo in a.algos:
                for r in a.ratios:
                    cells = []
                    for smp in a.samplers:
                        v = [x[metric] for x in results if (x["task"], x["algo"], x["ratio"], x["sampler"]) == (task, algo, r, smp)]
                        if not v:
                            cells.append("not run")
                            continue
                        digits = 2 if metric == "success" else 1 if task == "push_cube" else 0
                        cell = f"{np.mean(v):.{digits}f} ± {np.std(v):.{digits}f}"
                        cells.append(cell + (f" (n={len(v)})" if len(v) < len(seeds) else ""))
                    print(f"| {algo} | {r:.0%} | " + " | ".join(cells) + " |")
    algo0 = a.algos[0]
    print(f"\nShare of sampling probability on the top-10% return trajectories (seed 0, {algo0}):\n")
    print("| task | good data | " + " | ".join(a.samplers) + " |")
    print("|---|---|" + "---|" * len(a.samplers))
    for task in a.tasks:
        for r in a.ratios:
            cells = [next((f"{x['top10_mass']:.3f}" for x in results if (x['task'], x['algo'], x['ratio'], x['sampler'], x['seed']) == (task, algo0, r, smp, 0)), "-")
                     for smp in a.samplers]
            print(f"| {task} | {r:.0%} | " + " | ".join(cells) + " |")
    if a.tag:  # what each sampler trains on: probability mass on successful episodes, effective number of episodes
        from robolearn.rl.replay import transitions_from_store
        from robolearn.rl.weighting import DEFAULT_ALPHA, transition_probs

        print(f"\nSampler concentration ({algo0}, alpha {DEFAULT_ALPHA[algo0]}): probability mass on successful episodes / "
              "effective number of episodes 1/sum(p_episode^2):\n")
        print("| task | good data | good episodes | " + " | ".join(a.samplers) + " |")
        print("|---|---|---|" + "---|" * len(a.samplers))
        for task in a.tasks:
            for r in a.ratios:
                st = EpisodeStore.open(ROOT / "data" / f"{task}_mix{r}.zarr")
                tr = transitions_from_store(st)
                good = st.column("success").astype(bool)[tr.store_episode]
                cells = []
                for smp in a.samplers:
                    pr = transition_probs(smp, tr.episode, tr.episode_return, tr.initial_obs, DEFAULT_ALPHA[algo0], 0.1)
                    pe = np.bincount(tr.episode, weights=pr, minlength=len(tr.episode_return))
                    cells.append(f"{pe[good].sum():.3f} / {1 / np.sum(pe ** 2):.1f}")
                print(f"| {task} | {r:.0%} | {int(good.sum())} | " + " | ".join(cells) + " |")
    walls = [x["wall_s"] for x in results if x.get("wall_s")]
    if a.tag and walls:
        by = {al: [x["wall_s"] for x in results if x["algo"] == al and x.get("wall_s")] for al in a.algos}
        print("\nWall time per run (s, incl. evaluation): " + ", ".join(f"{al} {np.mean(w):.0f} (n={len(w)}, {min(w):.0f}-{max(w):.0f})" for al, w in by.items() if w))


def _budget(tag: str | None, results: list[dict]) -> str:
    """'10000 steps, 2x256, 20 eval eps', read from the config.yaml of one run of the grid."""
    import yaml

    x = results[0]
    cfg = yaml.safe_load((_run_dir((*_key(x), _paths(tag)[0])) / "config.yaml").read_text())
    h = cfg["agent"]["hidden_dims"]
    return f"{cfg['train']['steps']} steps, {len(h)}x{h[0]}, {cfg['train']['eval_episodes']} eval eps"


def plot(a: argparse.Namespace) -> None:
    """Final eval score per sampler vs good-data ratio, one column per algorithm, one row per (task, grid, metric).

    Points are means over seeds, error bars the std over seeds (as in the tables), dots the single seeds;
    dashed lines are the mean episode return of the random and good datasets. Everything is read from the
    results files of the grids in --plot-tags ('base' = the 1k-step study) and from the dataset stores.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robolearn.data.store import EpisodeStore

    rows = []  # (task, tag, metric, results, budget)
    for tag in a.plot_tags:
        tag = None if tag == "base" else tag
        path = _paths(tag)[1]
        if not path.exists():
            continue
        results = json.loads(path.read_text())
        budget = _budget(tag, results)
        for task in a.tasks:
            res = [x for x in results if x["task"] == task]
            if res:
                for metric in (("return", "success") if task == "push_cube" else ("return",)):
                    rows.append((task, tag, metric, res, budget))
    rows.sort(key=lambda row: row[0] != "hopper")  # Hopper (where the effect shows) first
    ref = {task: {name: EpisodeStore.open(ROOT / "data" / f"{task}_{name}.zarr").column("return").mean() for name in ("random", "good")}
           for task in a.tasks}
    colors = dict(zip(SAMPLERS, ("tab:gray", "tab:blue", "tab:orange", "tab:green")))
    fig, axes = plt.subplots(len(rows), len(a.algos), figsize=(5.2 * len(a.algos), 2.9 * len(rows)), squeeze=False)
    off = np.linspace(-0.27, 0.27, len(a.samplers))
    for i, (task, tag, metric, res, budget) in enumerate(rows):
        for j, algo in enumerate(a.algos):
            ax = axes[i, j]
            ax.set_title(f"{task} {algo}, {budget}", fontsize=9)
            any_run = False
            for k, smp in enumerate(a.samplers):
                for xi, r in enumerate(a.ratios):
                    v = np.array([x[metric] for x in res if (x["algo"], x["ratio"], x["sampler"]) == (algo, r, smp)])
                    if not len(v):
                        continue
                    any_run = True
                    ax.errorbar(xi + off[k], v.mean(), yerr=v.std(), fmt="o", color=colors.get(smp), capsize=3,
                                label=smp if xi == 0 or not ax.get_legend_handles_labels()[1].count(smp) else None)
                    ax.scatter(np.full(len(v), xi + off[k]), v, s=8, color=colors.get(smp), alpha=0.35)
                    if len(v) < len({x["seed"] for x in res}):
                        ax.annotate(f"n={len(v)}", (xi + off[k], v.mean()), fontsize=6, xytext=(2, 4), textcoords="offset points")
            if metric == "return":
                for name, ls in (("random", ":"), ("good", "--")):
                    ax.axhline(ref[task][name], color="k", ls=ls, lw=0.8, label=f"{name} data")
            else:  # success: zoomed to the measured range (the good data succeed in 100% of episodes)
                top = max([0.25] + [x["success"] for x in res if x["algo"] == algo])
                ax.set_ylim(-0.02, 1.15 * top)
            if not any_run:
                ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", va="center", color="gray")
            ax.set_xticks(range(len(a.ratios)), [f"{r:.0%}" for r in a.ratios])
            ax.set_xlim(-0.5, len(a.ratios) - 0.5)
            ax.set_ylabel(f"final eval {metric}", fontsize=8)
            ax.grid(alpha=0.3)
            if i == len(rows) - 1:
                ax.set_xlabel("good data in the 10k-transition mix")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    fig.suptitle("Trajectory reweighting: final eval score, mean ± std over seeds (dots: single seeds)", y=0.998, fontsize=11)
    fig.legend(uniq.values(), uniq.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.985), ncol=len(uniq), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.965))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out} ({len(rows)} rows x {len(a.algos)} algos)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["data", "grid", "report", "plot"])
    ap.add_argument("--tag", help="name of a separate grid (runs/rl_study/grid_TAG, grid_results_TAG.json); default: the 1k-step study")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    ap.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--steps", type=int, default=STEPS, help="gradient steps per run")
    ap.add_argument("--hidden", nargs="+", type=int, default=[64, 64], help="MLP widths (actor, critics, value)")
    ap.add_argument("--lr", type=float, default=0.001, help="actor / critic / value learning rate")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--eval-episodes", type=int, default=EVAL_EPISODES)
    ap.add_argument("--workers", type=int, default=WORKERS, help="parallel runs (env RL_WORKERS, default 2)")
    ap.add_argument("--stop-at", help="UTC HH:MM after which `grid` launches no further run")
    ap.add_argument("--plot-tags", nargs="+", default=["base", "pc10k"], help="grids `plot` draws ('base' = the 1k-step study)")
    ap.add_argument("--out", default="docs/results/reweighting.png", help="figure written by `plot`")
    a = ap.parse_args()
    if a.action == "data":
        data()
    elif a.action == "grid":
        grid(a)
    elif a.action == "plot":
        plot(a)
    else:
        report(a)


if __name__ == "__main__":
    main()
