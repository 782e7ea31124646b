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

At the papers' proportions (issue 20): `build` makes 300k-transition mixes (obs_relative=true, no
termination on success) whose good part is drawn from 1000 noisy-expert episodes and whose bad part from
uniform-random and failing noisy-expert rollouts; `sweep` is the resumable grid over them (>= 50k gradient
steps, learning curves), appending one JSON line per finished run to docs/results/offline_to_online/;
`table` / `curves` regenerate the page's tables and plots from those lines:

    python scripts/rl_reweighting.py build --tasks push_cube --ratios 0.01 0.05 0.5
    python scripts/rl_reweighting.py sweep --tag o2o --tasks push_cube --algos td3bc --ratios 0.01 0.05 \
        --samplers uniform rw aw --seeds 0 1 2          # skips finished runs, resumes an interrupted one
    python scripts/rl_reweighting.py table --tag o2o
    python scripts/rl_reweighting.py curves --tag o2o
    python scripts/rl_reweighting.py datasets          # the pools and mixes built, from datasets.jsonl
    python scripts/rl_reweighting.py awr-weights --tag o2o --tasks push_cube --ratios 0.5 --samplers uniform rw aw
                                                       # where trained IQL actors put their regression weight
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from robolearn.experiments import run_jobs, stop_time

ROOT = Path("runs/rl_study")
# Training statistics kept in a run's record, by algorithm: TD3+BC / IQL log `critic_loss`; CQL (SAC family) logs its
# TD error and penalty separately, so a filter on `critic_loss` alone would record no curve for it.
LOSS_KEYS = ("critic_loss", "td_loss", "cql_penalty", "actor_loss", "q_mean", "value_loss", "bc_mse", "temperature")
TASKS = ("push_cube", "hopper")
RATIOS = (0.01, 0.05, 0.5)
SAMPLERS = ("uniform", "rw", "aw", "topk")
# The ceiling of reweighting on a scaled mix (sweep only): the same algorithm trained uniformly on the mix's good
# part alone (the very draws the mix holds), i.e. a weighting that puts all its mass on the expert data.
GOOD_ONLY = "good_only"
ALGOS = ("iql", "td3bc")  # the default sub-grid; CQL runs when named (`--algos cql`)
# Named configurations run under their own label (their own rows and records): the base algorithm plus overrides.
# cql_harness takes the two CQL settings of the trajectory-reweighting paper's code (harness-offline-rl:
# experiments/d4rl/run_cql.py over JaxCQL) that policies/cql.yaml does not share: min-Q weight 10 (ours: JaxCQL's 5) and
# policy lr 3e-4 (ours: Cal-QL's 1e-4). Both keep what the harness code lacks: LayerNorm critics, observation normalisation.
# cql_lr3e4 changes only the policy lr (weight 5 kept): it tells which of the two settings separates cql_harness from
# cql on push_cube 5% (docs/results/offline_to_online.md, section 4).
# cql_min1 changes only the TD backup (our settings kept): one target critic drawn at random per update instead of the
# min of both, which removes the min's per-step cut that `cql-gaps` measures in the runs whose values sank below 0.
# cql_w10 changes only the min-Q weight (policy lr 1e-4 kept): the fourth corner of weight x lr with cql, cql_lr3e4
# and cql_harness, so that each setting's effect is measured with the other one held at both of its values.
ALGO_VARIANTS = {"cql_harness": ("cql", ("agent.cql_alpha=10.0", "agent.actor_lr=0.0003")),
                 "cql_lr3e4": ("cql", ("agent.actor_lr=0.0003",)),
                 "cql_w10": ("cql", ("agent.cql_alpha=10.0",)),
                 "cql_min1": ("cql", ("agent.num_min_qs=1",))}
ALGO_CHOICES = (*ALGOS, "cql", *ALGO_VARIANTS)
SEEDS = (0, 1, 2)
MIX_SIZE = 10_000  # transitions per mixed dataset
STEPS = 1_000  # gradient steps per offline run (CPU budget: 144 runs on a shared, heavily loaded 2-core box)
EVAL_EPISODES = 10
# lr 1e-3 instead of the papers' 3e-4: with only 1k gradient steps IQL's critic/AWR barely move at 3e-4
# (the defaults of the --hidden / --lr / --batch-size flags: 2x64 MLPs, lr 1e-3, batch 128)
WORKERS = int(os.environ.get("RL_WORKERS", "2"))


def base_algo(algo: str) -> str:
    """The algorithm a grid label trains (`cql_harness` -> `cql`)."""
    return ALGO_VARIANTS[algo][0] if algo in ALGO_VARIANTS else algo


def variant_overrides(algo: str) -> list[str]:
    """The config overrides that make a grid label out of its base algorithm (none for a plain algorithm)."""
    return list(ALGO_VARIANTS[algo][1]) if algo in ALGO_VARIANTS else []


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
        extra = [f"agent.value_lr={lr}"] if base_algo(algo) == "iql" else []
        train_offline(base_algo(algo), ROOT / "data" / f"{task}_mix{ratio}.zarr", task=task, sampler=sampler, out=out,
                      wandb_mode="off", overrides=[*common, *extra, *variant_overrides(algo), f"train.seed={seed}"], progress=False)
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
        from robolearn.rl.weighting import DEFAULT_ALPHA

        print(f"\nSampler concentration ({algo0}, alpha {DEFAULT_ALPHA[base_algo(algo0)]}): probability mass on successful episodes / "
              "effective number of episodes 1/sum(p_episode^2):\n")
        print("| task | good data | good episodes | " + " | ".join(a.samplers) + " |")
        print("|---|---|---|" + "---|" * len(a.samplers))
        for task in a.tasks:
            for r in a.ratios:
                st = EpisodeStore.open(ROOT / "data" / f"{task}_mix{r}.zarr")
                good = st.column("success").astype(bool)
                conc = sampler_concentration(st, a.samplers, algo0)
                cells = [f"{conc[smp][0]:.3f} / {conc[smp][1]:.1f}" for smp in a.samplers]
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



def awr_weight_shares(agent: Any, tr: Any, sampler_probs: np.ndarray, pool: np.ndarray, chunk: int = 50_000) -> dict[str, Any]:
    """What a trained IQL actor regresses onto: each transition's share of the actor loss is its sampler
    probability times its advantage weight min(exp(beta A), max). Per pool (`pool`: one label per transition):
    the share under the sampler alone (the batches) and with the advantage weights (the regression), the
    mean advantage, and the fraction of weights at the clip."""
    import torch

    adv, w = [], []
    for i in range(0, len(tr.obs), chunk):
        obs = agent.norm(torch.as_tensor(tr.obs[i:i + chunk]))
        a_, w_ = agent.advantage_weights(obs, torch.as_tensor(tr.action[i:i + chunk]))
        adv.append(a_.numpy())
        w.append(w_.numpy())
    adv, w = np.concatenate(adv).astype(float), np.concatenate(w).astype(float)
    eff = sampler_probs * w
    out: dict[str, Any] = {"pools": {}}
    for name in sorted(set(pool.tolist())):
        m = pool == name
        out["pools"][name] = {"batch_share": round(float(sampler_probs[m].sum() / sampler_probs.sum()), 4),
                              "actor_share": round(float(eff[m].sum() / eff.sum()), 4),
                              "mean_advantage": round(float(adv[m].mean()), 4),
                              "clipped": round(float(np.mean(w[m] >= agent.cfg.max_weight)), 4)}
    out["effective_transitions"] = round(float(eff.sum() ** 2 / np.sum(eff ** 2)), 1)  # Kish: (sum w)^2 / sum w^2
    out["transitions"] = int(len(eff))
    return out


def _runs_on_disk(recs: list[dict]):
    """(record, its policy/ directory, its mix's path, the mix's transitions, each transition's source pool) for
    every record whose final agent is on this machine, in grid order; each mix is read once."""
    from robolearn.data.store import EpisodeStore
    from robolearn.rl.replay import transitions_from_store

    mixes: dict[Path, tuple[Any, np.ndarray]] = {}
    for r in sorted(recs, key=_o2o_key):
        policy = Path(r["run_dir"]) / "policy"
        if not (policy / "checkpoint.json").exists():
            print(f"{policy}: not on this machine, skipped", file=sys.stderr)
            continue
        path = o2o_mix_path(r["task"], float(r["ratio"]), r.get("bad_pools", O2O_BAD))
        if path not in mixes:
            st = EpisodeStore.open(path)
            tr = transitions_from_store(st)
            ep_pool = _pool_names(r["task"], np.asarray(st.episode_table()["seed"])[np.asarray(tr.store_episode)])
            mixes[path] = (tr, ep_pool[tr.episode])  # per transition
        yield r, policy, path, *mixes[path]


def awr_weights(a: argparse.Namespace) -> None:
    """For every IQL run of the grid whose final agent is still on disk (runs/o2o/TAG/...): where its actor's
    regression weight lands on the mix, pool by pool (awr_weight_shares). Written to
    offline_to_online/iql_awr_weights.json (one entry per run) and printed as a table."""
    from robolearn.rl.algos import load_agent

    recs = [r for r in _read(O2O_RESULTS / f"{a.tag}.jsonl") if r["algo"] == "iql" and r["task"] in a.tasks
            and float(r["ratio"]) in a.ratios and r["sampler"] in a.samplers]
    rows = []
    for r, policy, path, tr, pool in _runs_on_disk(recs):
        agent, _ = load_agent(policy)
        shares = awr_weight_shares(agent, tr, _sampler_probs(tr, r["sampler"], "iql"), pool)
        rows.append({**{k: r[k] for k in ("task", "algo", "ratio", "sampler", "seed", "final_success")}, "mix": path.name,
                     "beta": agent.cfg.beta, "max_weight": agent.cfg.max_weight, **shares})
    if not rows:
        raise SystemExit("no IQL run of these cells has its agent on disk")
    out = O2O_RESULTS / "iql_awr_weights.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    tmp.replace(out)
    print("| task | expert data | sampler | seed | final success | expert share: batches -> actor loss | failing | random "
          "| mean advantage: expert / failing / random | weights at the clip: expert / failing / random | effective transitions |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        p = x["pools"]
        def pair(k: str) -> str:
            return f"{p[k]['batch_share']:.3f} -> {p[k]['actor_share']:.3f}" if k in p else "-"
        print(f"| {x['task']} | {x['ratio']:.0%} | {x['sampler']} | {x['seed']} | {x['final_success']:.2f} | {pair('expert')} | "
              f"{pair('failing')} | {pair('random')} | "
              + " / ".join(f"{p[k]['mean_advantage']:+.3f}" if k in p else "-" for k in ("expert", "failing", "random"))
              + " | " + " / ".join(f"{p[k]['clipped']:.3f}" if k in p else "-" for k in ("expert", "failing", "random"))
              + f" | {x['effective_transitions']:.0f} of {x['transitions']} |")
    print(f"\nwrote {out}")


def cql_value_gaps(agent: Any, tr: Any, idx: np.ndarray, pool: np.ndarray, seed: int = 0, chunk: int = 4096) -> dict[str, Any]:
    """Why a CQL critic's values on the data's actions can sink below every return in the data: at the states
    `idx` of `tr` (drawn as the run's batches are), per source pool (`pool`: one label per transition of `tr`),
    the means of
      q_data    Q(s, a) on the data's action (the critics' mean, what the runs log as q_mean)
      q_pi      Q(s, a') with a' ~ pi(s), the policy the actor became (critics' mean)
      q_random  Q(s, u), u uniform in [-1, 1]^A
      target    r + gamma (1 - terminal) min_e Qtarget_e(s', a'') with a'' ~ pi(s'): the TD target the update fits
      min_cut   mean_e Qtarget_e(s', a'') - min_e Qtarget_e(s', a''): what taking the critics' min removes from the
                bootstrap each step (compounded over 1 / (1 - gamma) steps it lowers the values' level)
      entropy   -log pi(a'|s) of the policy's own draws
      mc        the data's discounted return-to-go from s (>= 0 when every reward is)
      mode_dist |tanh(mu(s)) - a|, the policy's mode against the data's action (L2)
    and two differences: gap_pi = q_data - q_pi (how far below the data's action the penalty holds the policy's)
    and bias = q_data - mc."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("q_data", "q_pi", "q_random", "target", "min_cut", "entropy", "mc",
                                                          "mode_dist")}
    with torch.no_grad():
        for i in range(0, len(idx), chunk):
            j = idx[i:i + chunk]
            obs, nxt = agent.norm(torch.as_tensor(tr.obs[j])), agent.norm(torch.as_tensor(tr.next_obs[j]))
            act = torch.as_tensor(tr.action[j])
            a_pi, logp = agent.actor.sample(obs, generator=gen)
            a_next, _ = agent.actor.sample(nxt, generator=gen)
            u = torch.rand(act.shape, generator=gen) * 2 - 1
            q_next_all = agent.critic_target(nxt, a_next)
            q_next = q_next_all.min(0).values
            not_done = 1.0 - torch.as_tensor(tr.terminal[j].astype(np.float32))
            cols["q_data"].append(agent.critic(obs, act).mean(0).numpy())
            cols["q_pi"].append(agent.critic(obs, a_pi).mean(0).numpy())
            cols["q_random"].append(agent.critic(obs, u).mean(0).numpy())
            cols["target"].append((torch.as_tensor(tr.reward[j]) + agent.cfg.discount * not_done * q_next).numpy())
            cols["min_cut"].append((q_next_all.mean(0) - q_next).numpy())
            cols["entropy"].append((-logp).numpy())
            cols["mc"].append(np.asarray(tr.mc_return[j]))
            cols["mode_dist"].append(torch.linalg.vector_norm(agent.actor.mode(obs) - act, dim=-1).numpy())
    v = {k: np.concatenate(x).astype(float) for k, x in cols.items()}
    v["gap_pi"], v["bias"] = v["q_data"] - v["q_pi"], v["q_data"] - v["mc"]
    at = pool[idx]
    out: dict[str, Any] = {"states": int(len(idx)), "all": {k: round(float(x.mean()), 3) for k, x in v.items()}, "pools": {}}
    for name in sorted(set(at.tolist())):
        m = at == name
        out["pools"][name] = {"share": round(float(m.mean()), 4), **{k: round(float(x[m].mean()), 3) for k, x in v.items()}}
    return out


def cql_gaps(a: argparse.Namespace) -> None:
    """For every CQL-family run of the grid whose final agent is on disk: cql_value_gaps at `--gap-states`
    states drawn with the run's own sampler (fixed seed). Merged into offline_to_online/cql_value_gaps.json
    (the rows of runs whose agent is not on this machine stay as recorded) and printed as a table."""
    from robolearn.rl.algos import load_agent

    recs = [r for r in _read(O2O_RESULTS / f"{a.tag}.jsonl") if base_algo(r["algo"]) == "cql" and r["algo"] in a.algos
            and r["task"] in a.tasks and float(r["ratio"]) in a.ratios and r["sampler"] in a.samplers]
    rows = []
    for r, policy, path, tr, pool in _runs_on_disk(recs):
        probs = _sampler_probs(tr, r["sampler"], r["algo"])
        idx = np.random.default_rng(0).choice(len(probs), size=a.gap_states, p=probs / probs.sum())
        agent, meta = load_agent(policy)
        if (agent.cfg.discount, agent.cfg.reward_scale, agent.cfg.reward_bias) != (0.99, 1.0, 0.0):
            raise SystemExit(f"{policy}: discount / reward scale / bias {agent.cfg.discount} / {agent.cfg.reward_scale} / "
                             f"{agent.cfg.reward_bias}; the return-to-go here is of raw rewards at 0.99")
        rows.append({**{k: r[k] for k in ("task", "algo", "ratio", "sampler", "seed", "final_success")},
                     "bad_pools": r.get("bad_pools", list(O2O_BAD)), "mix": path.name, "step": int(meta.get("step", -1)),
                     "cql_alpha": agent.cfg.cql_alpha, "actor_lr": agent.cfg.actor_lr,
                     **cql_value_gaps(agent, tr, idx, pool)})
    if not rows:
        raise SystemExit("no CQL run of these cells has its agent on disk")
    out = O2O_RESULTS / "cql_value_gaps.json"
    key = lambda x: (x["task"], x["algo"], float(x["ratio"]), x["sampler"], x["seed"], tuple(x["bad_pools"]))  # noqa: E731
    new_keys = {key(x) for x in rows}
    kept = [x for x in (json.loads(out.read_text()) if out.exists() else []) if key(x) not in new_keys]
    order = {s: i for i, s in enumerate(SAMPLERS)}
    rows = sorted(kept + rows, key=lambda x: (x["task"], x["algo"], float(x["ratio"]), order.get(x["sampler"], 99), x["seed"]))
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    tmp.replace(out)
    print("| task | algo | expert data | sampler | seed | final success | Q(s, a_data) | Q(s, pi) | gap data - pi | Q(s, random) "
          "| TD target | min's cut per step | MC return-to-go | Q(s, a_data) on expert states: Q / MC | gap on expert states "
          "| policy mode to data action | policy entropy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        v, e = x["all"], x["pools"].get("expert", {})
        print(f"| {x['task']} | {x['algo']} | {float(x['ratio']):.0%} | {x['sampler']} | {x['seed']} | {x['final_success']:.2f} | "
              f"{v['q_data']:.1f} | {v['q_pi']:.1f} | {v['gap_pi']:+.2f} | {v['q_random']:.1f} | {v['target']:.1f} | {v['min_cut']:.2f} | "
              f"{v['mc']:.1f} | " + (f"{e['q_data']:.1f} / {e['mc']:.1f} | {e['gap_pi']:+.2f}" if e else "- | -")
              + f" | {v['mode_dist']:.2f} | {v['entropy']:.1f} |")
    print(f"\n(states per run: {rows[-1]['states']}, drawn with each run's sampler; wrote {out})")


# ------------------------------------------------------------------------------------ papers' proportions (issue 20)
O2O_DATA = Path("data/o2o")
O2O_RUNS = Path("runs/o2o")
O2O_RESULTS = Path("docs/results/offline_to_online")
O2O_SET = ["terminate_on_success=false", "obs_relative=true"]  # returns rank quality; object-relative state
O2O_MIX_SIZE = 300_000
# pool name -> (policy, action noise std, keep, episodes, seed). Good: the scripted expert with N(0, 0.1) noise
# (success 1.0 on both tasks); bad: uniform random actions and the expert with so much noise that it mostly
# fails (push_cube 1.0: 16% success, pick_place 0.5: 2%), failed episodes only. Bad pools hold 300k steps.
O2O_POOLS = {
    "push_cube": {"expert": ("expert", 0.1, "all", 1000, 2), "random": ("random", 0.0, "all", 2500, 1),
                  "failing": ("expert", 1.0, "failure", 2500, 3)},
    "pick_place": {"expert": ("expert", 0.1, "all", 1000, 2), "random": ("random", 0.0, "all", 1875, 1),
                   "failing": ("expert", 0.5, "failure", 1875, 3)},
}
O2O_TASKS = tuple(O2O_POOLS)


def _sh_checked(*args: str) -> None:
    """`robolearn ARGS` in a subprocess; its progress bars are dropped, its error line is raised."""
    print("+ robolearn", " ".join(args), flush=True)
    res = subprocess.run([sys.executable, "-m", "robolearn.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        lines = [ln for ln in res.stderr.replace("\r", "\n").splitlines() if ln.strip()]
        raise SystemExit(f"robolearn {args[0]} {args[1]} failed ({res.returncode}): {lines[-1] if lines else '(no output)'}")
    print(res.stdout.strip(), flush=True)


def _loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def _record(path: Path, rec: dict) -> None:
    """Append one JSON line (the raw record the page's tables are regenerated from)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


_CODE_COMMIT: str | None = None


def _commit() -> str:
    """The commit of the code this process runs (the script's own checkout, not the cwd's), with
    '+dirty' when tracked files differ from it; fixed at the first call, so every record a long sweep
    writes names the code it started with even if the checkout moves meanwhile."""
    global _CODE_COMMIT
    if _CODE_COMMIT is None:
        here = str(Path(__file__).resolve().parent)
        rev = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
        _CODE_COMMIT = (rev or "unknown") + ("+dirty" if dirty else "")
    return _CODE_COMMIT


def sampler_concentration(store: Any, samplers: list[str], algo: str) -> dict[str, tuple[float, float]]:
    """Per sampler: (probability mass on successful episodes, effective number of episodes
    1 / sum p_episode^2) on `store`, i.e. how far the weighting already moves the batches onto the good
    data. The store's transitions are read once for all samplers (the slow part on a 300k mix)."""
    from robolearn.rl.replay import transitions_from_store

    tr = transitions_from_store(store)
    good = store.column("success").astype(bool)[tr.store_episode]
    out = {}
    for sampler in samplers:
        pe = _episode_mass(tr, sampler, algo)
        out[sampler] = (float(pe[good].sum()), float(1 / np.sum(pe ** 2)))
    return out


def _sampler_probs(tr: Any, sampler: str, algo: str) -> np.ndarray:
    """Probability of each transition of `tr` in a batch under `sampler`, with the alpha (and top-10% cut)
    the grid trains `algo` with."""
    from robolearn.rl.weighting import DEFAULT_ALPHA, transition_probs

    return transition_probs(sampler, tr.episode, tr.episode_return, tr.initial_obs, DEFAULT_ALPHA[base_algo(algo)], 0.1)


def _episode_mass(tr: Any, sampler: str, algo: str) -> np.ndarray:
    """Probability that a batch transition comes from each episode of `tr` under `sampler` (the training alpha)."""
    return np.bincount(tr.episode, weights=_sampler_probs(tr, sampler, algo), minlength=len(tr.episode_return))


def _pool_names(task: str, seeds: Any) -> np.ndarray:
    """Source pool ('expert', 'random', 'failing') of episodes of a `task` mix from their collection seeds:
    pool seed * 1_000_003 + k (robolearn.rl.datasets), the pool seeds in O2O_POOLS."""
    by_seed = {seed: name for name, (*_, seed) in O2O_POOLS[task].items()}
    return np.array([by_seed[int(s) // 1_000_003] for s in np.asarray(seeds)])


def composition(a: argparse.Namespace) -> None:
    """Where each sampler's batches come from on the scaled mixes: probability mass per source pool (expert,
    random, failing; an episode's pool is its collection seed // 1000003, see O2O_POOLS) on every built mix,
    the issue's (random + failing bad part) and the expert + random ablation, the mass-weighted
    mean return of the non-expert part, the effective number of episodes. Merged into
    offline_to_online/sampler_composition.json (the rows of a mix that is not built on this machine stay as
    recorded) and printed as a table."""
    from robolearn.data.store import EpisodeStore
    from robolearn.rl.replay import transitions_from_store

    out_rows = []
    for task in a.tasks:
        names = sorted(O2O_POOLS[task], key=lambda n: O2O_POOLS[task][n][-1])  # by pool seed: the records' key order
        for ratio, bad in [(r, b) for r in a.ratios for b in (O2O_BAD, ("random",))]:
            path = o2o_mix_path(task, ratio, bad)
            if not _store_ok(path, mix=True):
                print(f"{path}: not built, skipped", file=sys.stderr)
                continue
            st = EpisodeStore.open(path)
            tr = transitions_from_store(st)
            t = st.episode_table()
            ep_pool = _pool_names(task, np.asarray(t["seed"])[np.asarray(tr.store_episode)])
            ep_ret = np.asarray(t["return"], dtype=float)[np.asarray(tr.store_episode)]
            other = ep_pool != "expert"
            for algo in a.algos:
                for smp in [s_ for s_ in a.samplers if s_ != GOOD_ONLY]:
                    pe = _episode_mass(tr, smp, algo)
                    non_expert = float(pe[other].sum())
                    out_rows.append({"mix": path.name, "task": task, "ratio": ratio, "algo": algo, "sampler": smp,
                                     "mass": {n: round(float(pe[ep_pool == n].sum()), 4) for n in names},
                                     "non_expert_mean_return": round(float((pe[other] * ep_ret[other]).sum() / non_expert), 2)
                                     if non_expert > 0 else None,
                                     "effective_episodes": round(float(1 / np.sum(pe ** 2)), 1)})
    if not out_rows:
        raise SystemExit("no mix built for these tasks / ratios")
    path = O2O_RESULTS / "sampler_composition.json"
    # rows of mixes not on this machine (or samplers not asked for) stay as they were recorded
    new_keys = {(r["mix"], r["algo"], r["sampler"]) for r in out_rows}
    kept = [r for r in (json.loads(path.read_text()) if path.exists() else []) if (r["mix"], r["algo"], r["sampler"]) not in new_keys]
    out_rows = kept + out_rows
    out_rows.sort(key=lambda r: (r["task"], r["mix"], r["algo"], SAMPLERS.index(r["sampler"])))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out_rows, indent=1) + "\n")
    tmp.replace(path)
    print("| mix | algo | sampler | mass: expert / random / failing | mean return of the non-expert mass | effective episodes |")
    print("|---|---|---|---|---|---|")
    for r in out_rows:
        m = r["mass"]
        print(f"| {r['mix']} | {r['algo']} | {r['sampler']} | {m.get('expert', 0):.3f} / {m.get('random', 0):.3f} / {m.get('failing', 0):.3f} | "
              f"{'-' if r['non_expert_mean_return'] is None else format(r['non_expert_mean_return'], '.1f')} | {r['effective_episodes']:.1f} |")
    print(f"\nwrote {path}")


def _store_ok(path: Path, episodes: int | None = None, mix: bool = False) -> bool:
    """A finished build: the store opens, holds all its episodes (pools) or its `mix` attribute (written last)."""
    from robolearn.data.store import EpisodeStore

    if not path.exists():
        return False
    try:
        st = EpisodeStore.open(path)
    except Exception:  # noqa: BLE001 -- a half-written store is rebuilt
        return False
    return ("mix" in st.attrs) if mix else st.num_episodes == episodes


O2O_BAD = ("random", "failing")  # the issue's bad part; ("random",) alone is the harness paper's expert + random mix


def o2o_mix_path(task: str, ratio: float, bad: Sequence[str] = O2O_BAD) -> Path:
    suffix = "" if tuple(bad) == O2O_BAD else "_" + "_".join(bad)
    return O2O_DATA / f"{task}_mix{ratio}{suffix}.zarr"


def o2o_good_path(task: str, ratio: float) -> Path:
    return O2O_DATA / f"{task}_good{ratio}.zarr"


def _build_piece(cmd: list[str], out: Path, pool: bool, check: Callable[[Any], None] | None = None) -> None:
    """Run one `robolearn data rollout|mix` build and append its datasets.jsonl record: the exact command,
    size, success rate, then the return range (pools) or the `mix` attribute (mixes), wall time and load."""
    from robolearn.data.store import EpisodeStore

    load, t0 = _loadavg(), time.time()
    _sh_checked(*cmd)
    st = EpisodeStore.open(out)
    if check is not None:
        check(st)
    rec = {"name": out.name, "command": "robolearn " + " ".join(cmd), "episodes": st.num_episodes, "steps": st.num_steps,
           "success_rate": float(st.column("success").mean())}
    if pool:
        ret = st.column("return")
        rec.update(return_mean=float(ret.mean()), return_min=float(ret.min()), return_max=float(ret.max()))
    else:
        rec["mix"] = st.attrs["mix"]
    rec.update(wall_s=round(time.time() - t0, 1), loadavg_before=load,
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), commit=_commit())
    _record(O2O_RESULTS / "datasets.jsonl", rec)


def _mix_cmd(task: str, bad: Sequence[str], ratio: float, size: int, out: Path) -> list[str]:
    """`robolearn data mix` arguments for one mix of the task's expert pool with the named bad pools (mix seed 0)."""
    return ["data", "mix", "--good", str(O2O_DATA / f"{task}_expert.zarr"), "--bad", *(str(O2O_DATA / f"{task}_{b}.zarr") for b in bad),
            "--ratio", str(ratio), "--size", str(size), "--seed", "0", "--out", str(out), "--overwrite"]


def build_good_part(task: str, ratio: float) -> Path:
    """The good part of the `ratio` mix as a store of its own: `data mix` draws the good trajectories first
    from the same generator, so ratio 1 at size int(300k * ratio) with the mix's seed repeats exactly the
    mix's good draws (checked against the mix's recorded draws)."""
    from robolearn.data.store import EpisodeStore

    out = o2o_good_path(task, ratio)
    if _store_ok(out, mix=True):
        return out
    cmd = _mix_cmd(task, ("random",), 1.0, int(O2O_MIX_SIZE * ratio), out)
    mix = EpisodeStore.open(o2o_mix_path(task, ratio))
    mix_seeds = mix.episode_table()["seed"][:mix.attrs["mix"]["good_episodes"]]

    def same_draws(st: Any) -> None:
        seeds = st.episode_table()["seed"]
        if len(seeds) != len(mix_seeds) or not np.array_equal(seeds, mix_seeds):
            raise SystemExit(f"{out}: its episodes are not the good draws of {o2o_mix_path(task, ratio)} (episode seeds differ)")

    _build_piece(cmd, out, pool=False, check=same_draws)
    return out


def build_o2o(tasks: list[str], ratios: list[float], bad: Sequence[str] = O2O_BAD) -> None:
    """Pools then mixes (bad part from the pools named in `bad`), each skipped when already complete; one
    record per piece built."""
    for task in tasks:
        sets = [x for kv in O2O_SET for x in ("--set", kv)]
        for name, (policy, noise, keep, episodes, seed) in O2O_POOLS[task].items():
            out = O2O_DATA / f"{task}_{name}.zarr"
            if _store_ok(out, episodes=episodes):
                continue
            cmd = ["data", "rollout", "--task", task, *sets, "--policy", policy, "--noise", str(noise), "--keep", keep,
                   "--episodes", str(episodes), "--num-envs", "50", "--seed", str(seed), "--out", str(out), "--overwrite"]
            _build_piece(cmd, out, pool=True)
        for r in ratios:
            out = o2o_mix_path(task, r, bad)
            if _store_ok(out, mix=True):
                continue
            cmd = _mix_cmd(task, bad, r, O2O_MIX_SIZE, out)
            _build_piece(cmd, out, pool=False)


def _o2o_overrides(a: argparse.Namespace, algo: str, seed: int) -> list[str]:
    ov = [f"train.steps={a.steps}", f"train.eval_every={a.eval_every}", f"train.eval_episodes={a.eval_episodes}",
          f"train.log_every={a.eval_every}", f"train.save_every={a.eval_every}", f"train.batch_size={a.batch_size}",
          f"agent.hidden_dims=[{','.join(map(str, a.hidden))}]", f"train.seed={seed}", "train.eval_num_envs=25"]
    if base_algo(algo) == "iql":
        ov.append("train.reward_norm=return_range")  # the IQL recipe's reward scaling
    return ov + variant_overrides(algo)


def _o2o_key(x: dict) -> tuple:
    return x["task"], x["algo"], float(x["ratio"]), x["sampler"], int(x["seed"]), tuple(x.get("bad_pools", O2O_BAD))


def _task_label(x: dict) -> str:
    """The task, plus the mix's bad part when it is not the default (random + failing) one."""
    bad = tuple(x.get("bad_pools", O2O_BAD))
    return x["task"] if bad == O2O_BAD else f"{x['task']} (bad: {' + '.join(bad)})"


def _o2o_one(a: argparse.Namespace, job: tuple, results: Path) -> dict:
    import torch

    from robolearn.data.store import EpisodeStore
    from robolearn.rl.offline import train_offline
    from robolearn.training import read_metrics

    task, algo, ratio, sampler, seed = job
    data = o2o_mix_path(task, ratio, a.bad_pools)
    if not _store_ok(data, mix=True):
        build_o2o([task], [ratio], a.bad_pools)
    train_sampler = sampler
    if sampler == GOOD_ONLY:
        data, train_sampler = build_good_part(task, ratio), "uniform"
    bad_suffix = "" if tuple(a.bad_pools) == O2O_BAD else "_bad_" + "_".join(a.bad_pools)
    out = O2O_RUNS / a.tag / f"{task}_{algo}_{ratio}_{sampler}_s{seed}{bad_suffix}"
    torch.set_num_threads(1)
    load, t0 = _loadavg(), time.time()
    resumed_from = None  # a resumed run's wall time covers only the steps trained in this process
    if (out / "checkpoints" / "last" / "checkpoint.json").exists() and not (out / "policy" / "checkpoint.json").exists():
        resumed_from = int(json.loads((out / "checkpoints" / "last" / "checkpoint.json").read_text())["step"])
        train_offline(base_algo(algo), None, resume=out, wandb_mode="off", progress=a.progress)  # interrupted: continue where it stopped
    elif not (out / "policy" / "checkpoint.json").exists():
        if out.exists():  # killed before its first checkpoint: nothing to resume, and a fresh run would append to its metrics
            shutil.rmtree(out)
        train_offline(base_algo(algo), data, task=task, sampler=train_sampler, out=out, wandb_mode="off", progress=a.progress,
                      overrides=_o2o_overrides(a, algo, seed))
    wall = time.time() - t0
    summary = json.loads((out / "continual.json").read_text())
    hist = summary["history"]
    final = hist[-1]
    n = a.eval_episodes
    mix_store = EpisodeStore.open(data)
    mix = mix_store.attrs["mix"]
    mass_good, effective = sampler_concentration(mix_store, [train_sampler], algo)[train_sampler]
    losses = [{k: v for k, v in r.items() if k == "step" or k in LOSS_KEYS}
              for r in read_metrics(out) if any(k in r for k in LOSS_KEYS)]
    rec = {"task": task, "algo": algo, "ratio": ratio, "sampler": sampler, "seed": seed, "bad_pools": list(a.bad_pools),
           "steps": summary["steps"],
           "eval_episodes": n, "final_success": final["success"], "final_successes": int(round(final["success"] * n)),
           "final_return": final["return"], "curve": [[h["step"], h["success"], h["return"]] for h in hist],
           "losses": losses, "metrics": summary["metrics"], "reward_scale": summary.get("reward_scale"),
           "mix": {k: mix[k] for k in ("good_episodes", "good_distinct", "good_steps", "bad_episodes", "size")},
           "sampler_mass_on_successes": round(mass_good, 4), "sampler_effective_episodes": round(effective, 1),
           "wall_s": round(wall, 1), "resumed_from_step": resumed_from,
           "steps_per_s_incl_eval": round((summary["steps"] - (resumed_from or 0)) / wall, 1) if wall > 60 else None,
           "loadavg_before": load, "loadavg_after": _loadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "commit": _commit(), "run_dir": str(out), "overrides": _o2o_overrides(a, algo, seed)}
    _record(results, rec)
    return rec


def sweep(a: argparse.Namespace) -> None:
    """The grid, seed-major; a run whose record is in the results file is skipped, an interrupted one resumed."""
    from robolearn.experiments import stop_time

    results = O2O_RESULTS / f"{a.tag}.jsonl"
    done = {_o2o_key(x) for x in _read(results)}
    jobs = [(t, al, r, s, seed) for seed in a.seeds for t in a.tasks for al in a.algos for r in a.ratios for s in a.samplers]
    todo = [j for j in jobs if _o2o_key({**dict(zip(("task", "algo", "ratio", "sampler", "seed"), j)), "bad_pools": a.bad_pools})
            not in done]
    stop = stop_time(a.stop_at)
    print(f"{len(jobs)} runs in the grid, {len(jobs) - len(todo)} recorded in {results}, {len(todo)} to run; stop launching at {stop}",
          flush=True)
    import datetime as dt

    for i, job in enumerate(todo):
        if stop is not None and dt.datetime.now(dt.timezone.utc) >= stop:
            print(f"stop time reached; {len(todo) - i} runs left", flush=True)
            break
        print(f"[{i + 1}/{len(todo)}] {job} at {time.strftime('%H:%M:%S', time.gmtime())} UTC", flush=True)
        rec = _o2o_one(a, job, results)
        print(f"    success {rec['final_success']:.3f} return {rec['final_return']:.1f} wall {rec['wall_s']:.0f}s", flush=True)


def late_score(rec: dict, last: int = 3) -> float:
    """A run's success averaged over its last `last` evaluations: one evaluation of 50 episodes swings
    by several points from one checkpoint to the next."""
    return float(np.mean([c[1] for c in rec["curve"][-last:]]))


def table(a: argparse.Namespace) -> None:
    """Markdown tables from the results file: final success pooled over seeds (Wilson 95%), return, gain over uniform."""
    from robolearn.evaluation import wilson_interval

    rows = _read(O2O_RESULTS / f"{a.tag}.jsonl")
    if not rows:
        raise SystemExit(f"no records in {O2O_RESULTS / f'{a.tag}.jsonl'}")
    cells: dict[tuple, list[dict]] = {}
    for x in rows:
        cells.setdefault((_task_label(x), x["algo"], float(x["ratio"]), x["sampler"]), []).append(x)
    samplers = [s for s in (*SAMPLERS, GOOD_ONLY) if any(k[3] == s for k in cells)]
    print(f"Final success of the deterministic actor after {rows[0]['steps']} gradient steps: successes / episodes pooled over "
          "the seeds in the cell, 95% Wilson interval; mean return in brackets.\n")
    print("| task | algo | expert data | " + " | ".join(samplers) + " |")
    print("|---|---|---|" + "---|" * len(samplers))
    for task, algo, ratio in sorted({k[:3] for k in cells}):
        out = []
        for smp in samplers:
            xs = cells.get((task, algo, ratio, smp), [])
            if not xs:
                out.append("not run")
                continue
            k, n = sum(x["final_successes"] for x in xs), sum(x["eval_episodes"] for x in xs)
            lo, hi = wilson_interval(k, n)
            seeds = sorted(x["seed"] for x in xs)
            out.append(f"{k}/{n} = {k / n:.2f} [{lo:.2f}, {hi:.2f}] ({np.mean([x['final_return'] for x in xs]):.1f}; seeds {seeds})")
        print(f"| {task} | {algo} | {ratio:.0%} | " + " | ".join(out) + " |")
    print("\nThe hypothesis (RW/AW >> uniform at 1-5%): relative gain in pooled success over uniform, and whether the 95% "
          f"intervals are apart (target: gain >= 50% with intervals apart). `{GOOD_ONLY}` is the ceiling: the same algorithm "
          "trained on the mix's good part alone.\n")
    print("| task | algo | expert data | sampler | seeds (sampler / uniform) | gain over uniform | intervals apart |")
    print("|---|---|---|---|---|---|---|")
    for task, algo, ratio in sorted({k[:3] for k in cells}):
        base = cells.get((task, algo, ratio, "uniform"))
        if not base:
            continue
        kb, nb = sum(x["final_successes"] for x in base), sum(x["eval_episodes"] for x in base)
        lo_b, hi_b = wilson_interval(kb, nb)
        for smp in [s_ for s_ in samplers if s_ != "uniform"]:
            xs = cells.get((task, algo, ratio, smp))
            if not xs:
                continue
            k, n = sum(x["final_successes"] for x in xs), sum(x["eval_episodes"] for x in xs)
            lo, hi = wilson_interval(k, n)
            gain = "undefined (uniform 0)" if kb == 0 else f"{(k / n) / (kb / nb) - 1:+.0%}"
            print(f"| {task} | {algo} | {ratio:.0%} | {smp} | {len(xs)} / {len(base)} | {gain} ({k}/{n} vs {kb}/{nb}) | "
                  f"{'yes, above' if lo > hi_b else 'yes, below' if hi < lo_b else 'no'} |")
    print("\nPaired by training seed (the unit of replication; the samplers of one seed share the mix and the "
          "evaluation episodes): each run scored by the mean success of its last 3 evaluations, sampler minus uniform.\n")
    print("| task | algo | expert data | sampler | per seed (sampler - uniform) | mean difference | seeds ahead |")
    print("|---|---|---|---|---|---|---|")
    for task, algo, ratio in sorted({k[:3] for k in cells}):
        base = {x["seed"]: late_score(x) for x in cells.get((task, algo, ratio, "uniform"), [])}
        for smp in [s_ for s_ in samplers if s_ != "uniform"]:
            other = {x["seed"]: late_score(x) for x in cells.get((task, algo, ratio, smp), [])}
            seeds = sorted(set(base) & set(other))
            if not seeds:
                continue
            diff = [other[sd] - base[sd] for sd in seeds]
            print(f"| {task} | {algo} | {ratio:.0%} | {smp} | " + ", ".join(f"s{sd}: {d:+.3f}" for sd, d in zip(seeds, diff))
                  + f" | {np.mean(diff):+.3f} | {sum(d > 0 for d in diff)} of {len(seeds)} |")
    whole = [x for x in rows if not x.get("resumed_from_step")]  # a resumed run's wall covers only its last part
    walls = {al: [x["wall_s"] for x in whole if x["algo"] == al] for al in sorted({x["algo"] for x in whole})}  # per algorithm: CQL is ~15x TD3+BC
    print("\nWall time per run (incl. evaluation; runs trained in one process): "
          + "; ".join(f"{al} median {np.median(w):.0f} s, {min(w):.0f}-{max(w):.0f} s, n={len(w)}" for al, w in walls.items())
          + (f"; {len(rows) - len(whole)} resumed run(s) left out" if len(whole) < len(rows) else "")
          + f"; load average before the runs {min(float(x['loadavg_before'][0]) for x in rows):.1f}-"
          f"{max(float(x['loadavg_before'][0]) for x in rows):.1f}.")


def critic_stats(a: argparse.Namespace) -> None:
    """Per-run table of the CQL runs' critics (one row per algorithm, sampler and seed): whether a run that
    learns nothing has critics whose values left the data's return range (every return in the mixes is >= 0)."""
    rows = [x for x in _read(O2O_RESULTS / f"{a.tag}.jsonl") if base_algo(x["algo"]) == "cql" and x["algo"] in a.algos]
    if not rows:
        raise SystemExit(f"no CQL records ({', '.join(a.algos)}) in {O2O_RESULTS / f'{a.tag}.jsonl'}")

    def at(rec: dict, step: int, key: str) -> str:
        hit = [x for x in rec["losses"] if x["step"] == step and key in x]
        return f"{hit[0][key]:.1f}" if hit else "-"

    order = {s: i for i, s in enumerate(SAMPLERS)}
    print("| task | algo | expert data | sampler | seed | final success (episodes) | success at each evaluation | "
          "critics' mean Q on batch actions at first log / half / end | TD loss at the end (summed over the critics) | "
          "CQL penalty at first log / end (unweighted, summed) | batch mass on successful episodes | wall |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in sorted(rows, key=lambda r: (_task_label(r), r["algo"], float(r["ratio"]), order.get(r["sampler"], 99), r["seed"])):
        first, half, end = (x["losses"][0]["step"] if x["losses"] else None), x["steps"] // 2, x["steps"]
        curve = ", ".join(f"{c[1]:.2f}".replace("0.", ".") if c[1] else "0" for c in x["curve"])
        print(f"| {_task_label(x)} | {x['algo']} | {float(x['ratio']):.0%} | {x['sampler']} | {x['seed']} | "
              f"{x['final_successes']}/{x['eval_episodes']} = {x['final_success']:.2f} | {curve} | "
              f"{at(x, first, 'q_mean')} / {at(x, half, 'q_mean')} / {at(x, end, 'q_mean')} | {at(x, end, 'td_loss')} | "
              f"{at(x, first, 'cql_penalty')} / {at(x, end, 'cql_penalty')} | {x['sampler_mass_on_successes']:.2f} | {x['wall_s']:.0f} s"
              + (f" (from step {x['resumed_from_step']}, resumed)" if x.get("resumed_from_step") else "") + " |")


def same_build(first: dict, later: dict) -> bool:
    """Whether a later datasets.jsonl record of a store reproduces the first: same command (up to the
    output path), size, success rate and `mix` draws, and the same returns up to float summation order."""
    keys = ("episodes", "steps", "success_rate")
    if first["command"] != later["command"] or any(first[k] != later[k] for k in keys):
        return False
    if ("mix" in first) != ("mix" in later) or first.get("mix") != later.get("mix"):
        return False
    return all(math.isclose(first[k], later[k], rel_tol=1e-9, abs_tol=1e-9)
               for k in ("return_mean", "return_min", "return_max") if k in first or k in later)


def datasets_table(a: argparse.Namespace) -> None:
    """Markdown table of every pool and mix built (docs/results/offline_to_online/datasets.jsonl): one row per
    store, its first build; a store built again (e.g. on a fresh machine) is checked against that first
    build and the last column says whether it came out the same."""
    rows = _read(O2O_RESULTS / "datasets.jsonl")
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
    print("| store | episodes | steps | success | return mean (min, max) | expert part: draws / distinct / steps | built in (s) | load avg | date "
          "| built again: same size, success, returns? |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, recs in by_name.items():
        r, later = recs[0], recs[1:]
        mix = r.get("mix")
        ret = f"{r['return_mean']:.1f} ({r['return_min']:.1f}, {r['return_max']:.1f})" if "return_mean" in r else "-"
        part = f"{mix['good_episodes']} / {mix['good_distinct']} / {mix['good_steps']}" if mix else "-"
        again = "; ".join(f"{x['date']}: {'same' if same_build(r, x) else '**differs**'}" for x in later) or "-"
        print(f"| {name} | {r['episodes']} | {r['steps']} | {r['success_rate']:.3f} | {ret} | {part} | {r['wall_s']:.0f} | "
              f"{r['loadavg_before'][0]} | {r['date']} | {again} |")


def curves(a: argparse.Namespace) -> None:
    """Learning curves, mean over seeds with the min-max band: one row of panels per (task, algo), one column
    per expert ratio; evaluation success in TAG_curves.png, evaluation return in TAG_curves_return.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read(O2O_RESULTS / f"{a.tag}.jsonl")
    groups = sorted({(_task_label(x), x["algo"]) for x in rows})
    ratios = sorted({float(x["ratio"]) for x in rows})
    if not groups:
        raise SystemExit("no records")
    colors = dict(zip((*SAMPLERS, GOOD_ONLY), ("tab:gray", "tab:blue", "tab:orange", "tab:green", "black")))
    for metric, label, suffix in ((1, "eval success", ""), (2, "eval return", "_return")):
        fig, axes = plt.subplots(len(groups), len(ratios), figsize=(4.2 * len(ratios), 2.8 * len(groups)), squeeze=False)
        for i, (task, algo) in enumerate(groups):
            for j, ratio in enumerate(ratios):
                ax = axes[i, j]
                cell = [x for x in rows if (_task_label(x), x["algo"], float(x["ratio"])) == (task, algo, ratio)]
                ax.set_title(f"{task} {algo}, {ratio:.0%} expert", fontsize=9)
                if not cell:
                    ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="gray")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    continue
                for smp in (*SAMPLERS, GOOD_ONLY):
                    xs = [x for x in cell if x["sampler"] == smp]
                    if not xs:
                        continue
                    steps = [c[0] for c in xs[0]["curve"]]
                    v = np.array([[c[metric] for c in x["curve"]] for x in xs if len(x["curve"]) == len(steps)])
                    ax.plot(steps, v.mean(0), color=colors[smp], label=f"{smp} (n={len(v)})")
                    if len(v) > 1:
                        ax.fill_between(steps, v.min(0), v.max(0), color=colors[smp], alpha=0.15, linewidth=0)
                if metric == 1:
                    ax.set_ylim(-0.03, 1.03)
                ax.set_ylabel(label, fontsize=8)
                ax.set_xlabel("gradient steps", fontsize=8)
                ax.legend(fontsize=7)
                ax.grid(alpha=0.3)
        fig.suptitle(f"Offline learning curves, 300k-transition mixes: {label}\n(mean over seeds, band min..max)", fontsize=10)
        fig.tight_layout()
        out = O2O_RESULTS / f"{a.tag}_curves{suffix}.png"
        tmp = out.with_name(out.stem + ".tmp.png")
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        tmp.replace(out)
        print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["data", "grid", "report", "plot", "build", "sweep", "table", "curves", "datasets", "composition",
                                           "awr-weights", "critic-stats", "cql-gaps"])
    ap.add_argument("--tag", help="name of a separate grid (runs/rl_study/grid_TAG, grid_results_TAG.json); default: the 1k-step study")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=sorted(set(TASKS) | set(O2O_TASKS)))
    ap.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGO_CHOICES))
    ap.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=[*SAMPLERS, GOOD_ONLY],
                    help=f"{GOOD_ONLY} (sweep): the ceiling, trained uniformly on the mix's good part alone")
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
    ap.add_argument("--eval-every", type=int, default=5000, help="sweep: gradient steps between evaluations")
    ap.add_argument("--progress", action="store_true", help="sweep: show each run's progress bar")
    ap.add_argument("--gap-states", type=int, default=20_000, help="cql-gaps: batch states per run")
    ap.add_argument("--bad-pools", nargs="+", default=list(O2O_BAD), choices=list(O2O_BAD),
                    help="build/sweep: pools the mixes' bad part is drawn from (random alone: the harness paper's expert + random mix)")
    a = ap.parse_args()
    if GOOD_ONLY in a.samplers and a.action != "sweep":
        raise SystemExit(f"--samplers {GOOD_ONLY} is a sweep run (the scaled mixes' ceiling), not a {a.action} one")
    if a.action in ("build", "sweep", "table", "curves", "datasets", "composition", "awr-weights", "critic-stats", "cql-gaps"):
        if a.action in ("build", "sweep", "composition"):
            bad = [t for t in a.tasks if t not in O2O_TASKS]
            if bad:
                raise SystemExit(f"{a.action}: tasks must be among {', '.join(O2O_TASKS)}, got {', '.join(bad)}")
        a.tag = a.tag or "o2o"
        if a.action == "sweep":
            if a.steps == STEPS:  # the flag's default is the 1k-step study's; the scaled grid trains >= 50k steps
                a.steps = 50_000
            if a.eval_episodes == EVAL_EPISODES:
                a.eval_episodes = 50
            if a.hidden == [64, 64]:
                a.hidden = [256, 256]
            if a.batch_size == 128:
                a.batch_size = 256
        {"build": lambda: build_o2o(a.tasks, a.ratios, a.bad_pools), "sweep": lambda: sweep(a), "table": lambda: table(a),
         "curves": lambda: curves(a), "datasets": lambda: datasets_table(a), "composition": lambda: composition(a),
         "awr-weights": lambda: awr_weights(a), "critic-stats": lambda: critic_stats(a), "cql-gaps": lambda: cql_gaps(a)}[a.action]()
        return
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
