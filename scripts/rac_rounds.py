#!/usr/bin/env python
"""K rounds of deploy -> intervene (scripted operator) -> retrain, for RaC and its baselines.

Per seed: collect base demos, train a base policy (BC by default) and evaluate it. Then, per
method, starting from the base policy and a copy of the demos, each round
  rac        records interventions with recovery + correction, episodes end with the intervention
             (RaC rule 2), and retrains with data.mix=rac;
  hg_dagger  records correct-and-hand-back interventions and retrains with data.mix=hg_dagger;
  iwr        same recording, data.mix=iwr;
  sirius     same recording, data.mix=sirius;
  demos      collects full scripted demos (the "batched full demos" baseline), data.mix=all;
every method spends the same operator-step budget per round (`--budget`: recording stops after the
episode in which it is reached; for demos, episodes are added until it is reached). The policy is
retrained from scratch on the grown store and evaluated on a fixed, disjoint set of seeds.

Writes OUT/results.jsonl (one line per evaluated point), OUT/summary.md and OUT/success_vs_steps.png.

    python scripts/rac_rounds.py --task pick_place --perturb 0.02 --rounds 2 --seeds 0 --out runs/rac_rounds
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("rac", "hg_dagger", "iwr", "sirius", "demos")
MIX = {"rac": "rac", "hg_dagger": "hg_dagger", "iwr": "iwr", "sirius": "sirius", "demos": "all"}


def operator_labelled_steps(store: Any) -> int:
    c = store.source_counts()
    return c["demo"] + c["recovery"] + c["correction"]


def train_policy(policy: str, data: Path, task: str, out: Path, mix: str, steps: int, seed: int, extra: list[str]) -> Path:
    from robolearn.training import train

    if out.exists():
        shutil.rmtree(out)
    overrides = [f"data.mix={mix}", f"train.steps={steps}", f"train.seed={seed}", "train.val_ratio=0.0",
                 "train.eval_episodes=0", f"train.save_every={steps}", f"train.eval_every={steps}",
                 f"train.log_every={max(1, steps // 10)}", "train.device=cpu", *extra]
    return train(policy, data, task=task, out=out, overrides=overrides, wandb_mode="off", progress=False) / "policy"


def evaluate(ckpt: Path, task: str, episodes: int, seed: int, perturb: float, num_envs: int) -> dict[str, Any]:
    from robolearn.evaluation import evaluate_policy, load_any_policy

    policy, _ = load_any_policy(ckpt)
    rep = evaluate_policy(policy, task, episodes, seed=seed, num_envs=num_envs, perturb=perturb, progress=False)
    succ = [r for r in rep["episodes"] if r["success"]]
    return {"n": rep["n"], "successes": rep["successes"], "success_rate": rep["success_rate"], "ci95": rep["ci95"],
            "eval_recoveries_per_successful_episode": float(np.mean([r["recoveries"] for r in succ])) if succ else 0.0}


def run_seed(args: argparse.Namespace, seed: int, out: Path, log: Any) -> None:
    from robolearn.data.store import EpisodeStore
    from robolearn.evaluation import load_any_policy
    from robolearn.tasks.collect import collect
    from robolearn.teleop.recorder import record_interventions
    from robolearn.teleop.scripted_operator import FamiliarityModel, OperatorConfig, ScriptedOperator

    root = out / f"seed{seed}"
    root.mkdir(parents=True, exist_ok=True)
    base_seed = seed * 1_000_000
    eval_seed = 50_000_000 + seed * 100_000  # disjoint from every collection seed below
    demos = root / "base_demos.zarr"
    if demos.exists():
        shutil.rmtree(demos)
    collect(args.task, episodes=args.demos, out=demos, num_envs=min(10, args.demos), seed=base_seed,
            perturb=args.perturb, progress=False)
    with EpisodeStore.open(demos) as st:
        demo_len = float(np.mean(st.episode_lengths))
        base_steps = operator_labelled_steps(st)
        familiarity = FamiliarityModel.from_store(st)
    t0 = time.perf_counter()
    base = train_policy(args.policy, demos, args.task, root / "base", "all", args.train_steps, seed, args.overrides)
    ev = evaluate(base, args.task, args.eval_episodes, eval_seed, args.perturb, args.num_envs)
    log({"seed": seed, "method": "base", "round": 0, "operator_labelled_steps": base_steps, **ev,
         "seconds": time.perf_counter() - t0})
    for mi, method in enumerate(args.methods):
        data = root / f"data_{method}.zarr"
        if data.exists():
            shutil.rmtree(data)
        shutil.copytree(demos, data)
        ckpt = base
        for rnd in range(1, args.rounds + 1):
            t0 = time.perf_counter()
            coll_seed = base_seed + 100_000 * rnd + 10_000 * mi
            if method == "demos":
                n_eps = max(1, math.ceil(args.budget / demo_len))
                with EpisodeStore.open(data) as st:
                    before = st.num_episodes
                collect(args.task, episodes=n_eps, out=data, num_envs=min(10, n_eps), seed=coll_seed,
                        perturb=args.perturb, progress=False)
                with EpisodeStore.open(data) as st:
                    new = np.arange(before, st.num_episodes)
                    rm = {"episodes": len(new), "operator_steps": int(st.episode_lengths[new].sum()),
                          "intervention_rate": float("nan"), "recoveries_per_successful_episode": float("nan"),
                          "recovery_steps": 0, "correction_steps": 0, "recovery_correction_ratio": float("nan")}
            else:
                policy, _ = load_any_policy(ckpt)
                rac = method == "rac"
                cfg = OperatorConfig(recover=rac)
                rm = record_interventions(
                    policy, args.task, lambda sim, cfg=cfg: ScriptedOperator(sim.task, familiarity=familiarity, config=cfg, seed=coll_seed),
                    args.max_episodes, data, seed=coll_seed, terminate_after_intervention=rac, recovery=rac,
                    perturb=args.perturb, max_operator_steps=args.budget, progress=False)
            ckpt = train_policy(args.policy, data, args.task, root / f"{method}_r{rnd}", MIX[method], args.train_steps, seed, args.overrides)
            ev = evaluate(ckpt, args.task, args.eval_episodes, eval_seed, args.perturb, args.num_envs)
            with EpisodeStore.open(data) as st:
                labelled = operator_labelled_steps(st)
                counts = st.source_counts()
            keep = ("episodes", "operator_steps", "intervention_rate", "recoveries_per_successful_episode",
                    "recovery_steps", "correction_steps", "recovery_correction_ratio", "success_rate")
            log({"seed": seed, "method": method, "round": rnd, "operator_labelled_steps": labelled, "data_sources": counts,
                 "round_collection": {k: rm.get(k) for k in keep}, **ev, "seconds": time.perf_counter() - t0})


def save_plot(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend_size: int = 8) -> None:
    """Label, lay out, write (PNG) and close one figure: every plot of this script ends this way."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(out: Path, rows: list[dict[str, Any]], args: argparse.Namespace, wall: float) -> None:
    lines = [
        f"# rac_rounds: {args.task} (perturb {args.perturb})",
        "",
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}; wall {wall / 60:.1f} min",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}",
        f"- command: `{' '.join(sys.argv)}`",
        "",
        "| seed | method | round | operator-labelled steps | success | 95% CI | round: episodes | intervention rate | "
        "recoveries / successful ep | recovery:correction steps | eval recoveries / successful ep |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rc = r.get("round_collection") or {}

        def f(v: Any, fmt: str = ".2f") -> str:
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

        ratio = rc.get("recovery_correction_ratio")
        lines.append(
            f"| {r['seed']} | {r['method']} | {r['round']} | {r['operator_labelled_steps']} | {r['success_rate']:.2f} | "
            f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | {rc.get('episodes', '-')} | {f(rc.get('intervention_rate'))} | "
            f"{f(rc.get('recoveries_per_successful_episode'))} | "
            f"{str(rc.get('recovery_steps', '-')) + ':' + str(rc.get('correction_steps', '-')) if rc else '-'}"
            f"{'' if ratio is None or (isinstance(ratio, float) and math.isnan(ratio)) else f' ({ratio:.2f})'} | "
            f"{r['eval_recoveries_per_successful_episode']:.2f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        base = [r for r in rows if r["method"] == "base"]
        for method in args.methods:
            for seed in sorted({r["seed"] for r in rows}):
                pts = [b for b in base if b["seed"] == seed] + [r for r in rows if r["method"] == method and r["seed"] == seed]
                if len(pts) < 2:
                    continue
                x = [p["operator_labelled_steps"] for p in pts]
                y = [p["success_rate"] for p in pts]
                err = np.array([[p["success_rate"] - p["ci95"][0] for p in pts], [p["ci95"][1] - p["success_rate"] for p in pts]])
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{method} (seed {seed})")
        save_plot(fig, ax, out / "success_vs_steps.png", "operator-labelled steps in the training data",
                  "success rate (95% Wilson CI)", f"{args.task}, perturb {args.perturb}", legend_size=7)
    except Exception as exc:  # plotting is a convenience
        print(f"plot skipped: {exc}", file=sys.stderr)


def pool_by_round(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (method, round), over seeds: the seeds' rows, pooled successes k of n evaluation episodes
    with the Wilson interval, and the mean operator-labelled steps (what the table and plot show)."""
    from robolearn.evaluation import pool_evaluations

    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["round"]), []).append(r)
    pooled = {}
    for key, rs in groups.items():
        k, n, ci = pool_evaluations(rs)
        pooled[key] = {"rows": sorted(rs, key=lambda r: r["seed"]), "k": k, "n": n, "ci": ci,
                       "steps": float(np.mean([r["operator_labelled_steps"] for r in rs]))}
    return pooled


def pooled_table(pooled: dict[tuple[str, int], dict[str, Any]]) -> list[str]:
    """The pooled results as a markdown table, with the per-seed rates."""
    order = {m: i for i, m in enumerate(("base", *METHODS))}
    lines = ["| method | round | seeds | mean operator-labelled steps | pooled success | 95% CI (Wilson) | per seed |",
             "|---|---|---|---|---|---|---|"]
    for (method, rnd), g in sorted(pooled.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        k, n, (lo, hi) = g["k"], g["n"], g["ci"]
        per_seed = ", ".join(f"s{r['seed']}: {r['success_rate']:.2f}" for r in g["rows"])
        lines.append(f"| {method} | {rnd} | {len(g['rows'])} | {g['steps']:.0f} | "
                     f"{k / n:.3f} ({k}/{n}) | [{lo:.2f}, {hi:.2f}] | {per_seed} |")
    return lines


def merge(dirs: list[Path], out: Path) -> int:
    """Pool the results.jsonl of several runs (e.g. one per seed, run in parallel) into one table."""
    rows = []
    for d in dirs:
        f = d / "results.jsonl"
        if not f.is_file():
            raise SystemExit(f"rac_rounds --merge: {f} not found")
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    out.mkdir(parents=True, exist_ok=True)
    pooled = pool_by_round(rows)
    text = [f"# rac_rounds: pooled over {len({r['seed'] for r in rows})} seed(s)", "",
            f"- sources: {', '.join(str(d) for d in dirs)}", f"- command: `{' '.join(sys.argv)}`", "",
            *pooled_table(pooled)]
    (out / "pooled.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    rounds = range(1, 1 + max((r["round"] for r in rows), default=0))
    for method in METHODS:  # each curve starts at the shared base policy (round 0)
        groups = [pooled[key] for key in [("base", 0), *((method, rnd) for rnd in rounds)] if key in pooled]
        pts = [(g["steps"], g["k"] / g["n"], *g["ci"]) for g in groups]
        if len(pts) > 1:
            x, y, lo, hi = map(np.array, zip(*pts))
            ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=method)
    save_plot(fig, ax, out / "pooled_success_vs_steps.png", "operator-labelled steps in the training data (mean over seeds)",
              "pooled success rate (95% Wilson CI)", f"pooled over {len({r['seed'] for r in rows})} seed(s)")
    # RaC's "test-time scaling": success against recoveries per successful evaluation episode,
    # one point per (method, round, seed).
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in ("base", *METHODS):
        rs = [r for r in rows if r["method"] == method]
        if rs:
            ax.scatter([r["eval_recoveries_per_successful_episode"] for r in rs], [r["success_rate"] for r in rs],
                       label=method, s=18)
    save_plot(fig, ax, out / "pooled_success_vs_recoveries.png", "recoveries per successful evaluation episode",
              "success rate", "one point per method, round and seed")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="RUN_DIR",
                   help="only pool the results of these finished runs into OUT/pooled.md")
    p.add_argument("--task", default="pick_place")
    p.add_argument("--perturb", type=float, default=0.02)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--demos", type=int, default=20, help="base demos per seed")
    p.add_argument("--budget", type=int, default=300, help="operator steps per round and method")
    p.add_argument("--max-episodes", type=int, default=200, help="cap on intervention episodes per round")
    p.add_argument("--policy", default="bc")
    p.add_argument("--train-steps", type=int, default=1500)
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--num-envs", type=int, default=10)
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*", default=["policy.hidden_dims=[256,256]", "train.batch_size=256", "train.lr=0.001"],
                   help="training overrides (default: a small BC)")
    args = p.parse_args()
    if args.merge:
        return merge(args.merge, Path(args.out or "runs/rac_rounds-pooled"))
    if args.rounds < 1 or args.budget < 1 or args.demos < 1:
        p.error("--rounds, --budget and --demos must be >= 1")
    import torch

    torch.set_num_threads(1)
    out = Path(args.out or f"runs/rac_rounds-{args.task}-{dt.datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    results = out / "results.jsonl"
    results.write_text("")
    t_start = time.perf_counter()

    def log(row: dict[str, Any]) -> None:
        rows.append(row)
        with results.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"[{(time.perf_counter() - t_start) / 60:5.1f} min] seed {row['seed']} {row['method']:>9} round {row['round']}: "
              f"labelled steps {row['operator_labelled_steps']}, success {row['success_rate']:.2f} "
              f"[{row['ci95'][0]:.2f}, {row['ci95'][1]:.2f}]", flush=True)

    for seed in args.seeds:
        run_seed(args, seed, out, log)
    summarize(out, rows, args, time.perf_counter() - t_start)
    print(f"summary: {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
