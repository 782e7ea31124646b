"""SAILOR vs its base diffusion policy, and vs DP on 5x the demos (docs/results/sailor.md).

Per seed: collect N and 5N clean scripted demos; train a diffusion policy on each; run SAILOR
(guarded, the default planner) around the N-demo policy, and the no-warm-start ablation as its
own run; evaluate everything on the same seeded, perturbed episodes. The planner ablations (no
guard, no common random numbers, no uncertainty penalty) re-plan with the trained guarded run's
models (test-time ablations). The reward model's separation of demo states from states of failed
base-policy episodes is scored (AUROC). Every stage checkpoints and resumes: diffusion training
(`train.save_every`), SAILOR runs (`robolearn sailor --resume`), and every finished evaluation
is appended as one JSON line to OUT/records.jsonl as it lands (a rerun skips what is recorded).

    python scripts/sailor_experiment.py --out runs/sailor_pp50 --demos 50 --seeds 0 --env-steps 20000 \\
        --only base sailor        # stages to run now (default: all)
    python scripts/sailor_experiment.py --table runs/sailor_pp50/records.jsonl [more.jsonl]   # the table
    python scripts/sailor_experiment.py --progress runs/sailor_pp50/sailor_seed0/metrics.jsonl   # a run so far
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

# policies/sailor.yaml scaled to a 2-core CPU: smaller networks and planner, more frequent evaluation;
# the official update ratio (1.5 per env step), sequence length 32, warm start fraction 0.2
CPU_SAILOR = [
    "agent.world_model.deter=128", "agent.world_model.stoch=8", "agent.world_model.classes=8",
    "agent.world_model.hidden=128", "agent.world_model.units=128", "agent.reward.units=128", "agent.reward.update_every=50",
    "agent.critic.units=128", "agent.critic.lr=1e-4",
    "agent.planner.num_samples=64", "agent.planner.iterations=3", "agent.planner.num_elites=8",
    "loop.num_envs=10", "loop.min_env_steps_per_round=2000", "loop.eval_every_round=2", "loop.eval_episodes=20",
    "loop.update_dp_every=2", "loop.n_dp_train_itrs=500", "loop.dp_batch_size=64", "loop.n_traj_to_relabel_per_round=32",
    "loop.n_dp_traj_buffer_size=64", "loop.num_buffer_transitions=20000", "loop.checkpoint_every_updates=500",
]
# the diffusion recipe of the earlier pick_place table (U-Net 64-128-256, 5k steps, 2 actions per chunk)
CPU_DP = [
    "train.steps=5000", "train.batch_size=64", "train.lr=1e-3", "train.lr_warmup_steps=100", "train.val_ratio=0",
    "train.save_every=500", "train.eval_every=100000", "train.log_every=100",
    "policy.down_dims=[64,128,256]", "policy.diffusion_step_embed_dim=64", "policy.n_action_steps=2",
]
# Test-time rows: the guarded run's trained models with the planner switched on whatever the readiness check
# said at the end of training (otherwise, with a world model judged not ready, every row would run the
# distilled DP alone and the ablations would measure nothing), then one planner setting changed per row.
PLANNER_ABLATIONS = {
    "planner_on": {},
    "no_guard": {"guard": False},
    "no_crn": {"common_random_numbers": False},
    "no_uncertainty": {"uncertainty_cost": 0.0},
    "no_gripper_residual": {"residual_gripper": False},
}
STAGES = ("base", "sailor", "ablations", "no_warmstart", "data5x")
EVAL_SEED = 500_000  # evaluation episodes: EVAL_SEED + 1000 * seed + i (collection seeds are 10000 * seed + ...)


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Records:
    """OUT/records.jsonl: one line per finished evaluation / run summary, appended as it lands."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []

    def get(self, kind: str, name: str, seed: int) -> dict | None:
        for r in self.rows:
            if r["kind"] == kind and r["name"] == name and r["seed"] == seed:
                return r
        return None

    def add(self, row: dict) -> dict:
        row = {"recorded": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "load_average": [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]], **row}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)
        return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="pick_place")
    p.add_argument("--demos", type=int, default=50, help="N: demos for DP and SAILOR (DP-5x gets 5N)")
    p.add_argument("--data-multiple", type=int, default=5)
    p.add_argument("--perturb", type=float, default=0.05, help="perturbation events per step (SAILOR's envs and every evaluation)")
    p.add_argument("--env-steps", type=int, default=20000, help="SAILOR env-step budget (warm start included)")
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--eval-envs", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--only", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run in this invocation")
    p.add_argument("--dp-set", nargs="*", default=[], metavar="KEY=VALUE", help="diffusion overrides after CPU_DP")
    p.add_argument("--sailor-set", nargs="*", default=[], metavar="KEY=VALUE", help="SAILOR overrides after CPU_SAILOR")
    p.add_argument("--table", nargs="+", type=Path, default=None, metavar="RECORDS", help="only print the table of these records.jsonl")
    p.add_argument("--progress", type=Path, default=None, metavar="METRICS",
                   help="only print a SAILOR run's per-phase table from its metrics.jsonl (a run in progress)")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="OUT_DIR",
                   help="pool the results.json of runs made by the earlier version of this script (the 2026-11-26 table)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/sailor_exp")
    args = p.parse_args()
    if args.table:
        print(table([json.loads(ln) for path in args.table for ln in path.read_text().splitlines() if ln.strip()]))
        return 0
    if args.merge:
        print(merge_legacy(args.merge))
        return 0
    if args.progress:
        print(progress_table([json.loads(ln) for ln in args.progress.read_text().splitlines() if ln.strip()]))
        return 0
    torch.set_num_threads(args.threads)

    from robolearn.checkpoint import load_policy
    from robolearn.data.store import EpisodeStore
    from robolearn.evaluation import evaluate_policy
    from robolearn.sailor.diagnostics import auroc, reward_scores
    from robolearn.sailor.loop import resume_sailor, run_sailor
    from robolearn.tasks.collect import collect
    from robolearn.training import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = Records(out / "records.jsonl")
    meta = {"command": " ".join(sys.argv), "machine": f"{platform.machine()}, {os.cpu_count()} cores", "task": args.task,
            "perturb": args.perturb, "env_steps": args.env_steps, "demos": args.demos, "dp_overrides": [*CPU_DP, *args.dp_set],
            "sailor_overrides": [*CPU_SAILOR, *args.sailor_set], "eval_episodes": args.eval_episodes}

    def evaluate(name: str, policy, seed: int) -> dict:
        done = records.get("eval", name, seed)
        if done is not None:
            return done
        t = time.time()
        rep = evaluate_policy(policy, args.task, episodes=args.eval_episodes, seed=EVAL_SEED + 1000 * seed,
                              num_envs=args.eval_envs, perturb=args.perturb, progress=False)
        row = {"kind": "eval", "name": name, "seed": seed, **{k: rep[k] for k in (
            "n", "successes", "success_rate", "ci95", "mean_return", "mean_length", "failure_events_per_episode",
            "recoveries_per_episode")}, "first_eval_seed": EVAL_SEED + 1000 * seed, "eval_seconds": time.time() - t,
            "returns": [e["return"] for e in rep["episodes"]], "successes_per_episode": [bool(e["success"]) for e in rep["episodes"]],
            **meta}
        stats = getattr(policy, "stats", None)
        if stats is not None:
            row.update(stats.summary("planner_"))
        log(f"eval {name} seed {seed}: {row['success_rate']:.3f} {row['ci95']} ({row['eval_seconds']:.0f}s)")
        return records.add(row)

    def dp_policy(n: int, seed: int) -> Path:
        store = out / f"demos_{n}_seed{seed}.zarr"
        if not store.exists():
            collect(args.task, n, store, num_envs=10, seed=10_000 * seed, progress=False)
        run = out / f"dp_{n}_seed{seed}"
        if not (run / "policy" / "checkpoint.json").exists():
            t = time.time()
            kw = dict(task=args.task, wandb_mode="off", progress=False)
            if (run / "config.yaml").exists():
                try:
                    train("diffusion", store, resume=run, **kw)
                except FileNotFoundError:  # stopped before its first checkpoint
                    train("diffusion", store, out=run, overwrite=True, **kw,
                          overrides=[*CPU_DP, *args.dp_set, f"train.seed={seed}", "train.device=cpu"])
            else:
                train("diffusion", store, out=run, **kw, overrides=[*CPU_DP, *args.dp_set, f"train.seed={seed}", "train.device=cpu"])
            records.add({"kind": "train", "name": f"dp_{n}", "seed": seed, "seconds": time.time() - t})
            log(f"trained dp_{n}_seed{seed} in {time.time() - t:.0f}s")
        return run / "policy"

    def sailor_run(name: str, seed: int, base: Path, demos: Path, extra: list[str]) -> Path:
        run = out / f"{name}_seed{seed}"
        if not (run / "policy" / "checkpoint.json").exists():
            t = time.time()
            if (run / "checkpoints" / "last").exists() or (run / "checkpoints" / "last.old").exists():
                log(f"resuming {run}")
                resume_sailor(run, wandb_mode="off", progress=False)
            else:
                run_sailor(base, demos, args.task, args.env_steps, out=run, perturb=args.perturb, wandb_mode="off",
                           progress=False, overrides=[*CPU_SAILOR, *args.sailor_set, f"seed={seed}", *extra])
            log(f"{name}_seed{seed} finished ({time.time() - t:.0f}s in this invocation)")
        if records.get("run", name, seed) is None:
            metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
            diag = json.loads((run / "diagnostics.json").read_text()) if (run / "diagnostics.json").exists() else {}
            rounds = [m for m in metrics if m.get("phase") == "round"]
            records.add({"kind": "run", "name": name, "seed": seed, "wall_s": metrics[-1].get("wall_s"),
                         "env_steps": metrics[-1]["env_step"], "model_updates": metrics[-1]["model_updates"],
                         "final_diagnostics": diag,
                         "rounds": [{k: m.get(k) for k in ("env_step", "model_updates", "planner_ready", "wm_err_ratio",
                                                           "rm_auroc", "planner_decisions", "planner_accept_frac",
                                                           "planner_predicted_gain", "planner_rescored_gain", "planner_gain_se",
                                                           "collect_success_rate", "eval_planner_success_rate",
                                                           "eval_base_success_rate", "eval_planner_won", "dp_loss", "dp_skipped")}
                                    for m in rounds], **meta})
        return run

    n_small, n_large = args.demos, args.demos * args.data_multiple
    for seed in args.seeds:
        base = dp_policy(n_small, seed)
        demos = out / f"demos_{n_small}_seed{seed}.zarr"
        if "base" in args.only:
            evaluate(f"DP ({n_small} demos)", load_policy(base), seed)
        if "data5x" in args.only:
            evaluate(f"DP ({n_large} demos, {args.data_multiple}x)", load_policy(dp_policy(n_large, seed)), seed)
        if "sailor" in args.only or "ablations" in args.only:
            run = sailor_run("sailor", seed, base, demos, [])
            evaluate(f"SAILOR guarded ({n_small} demos)", load_policy(run / "policy"), seed)
            evaluate(f"SAILOR distilled DP ({n_small} demos)", load_policy(run / "base_policy"), seed)
            if records.get("auroc", "dp_failures", seed) is None:
                fail_store = out / f"dp_{n_small}_rollouts_seed{seed}.zarr"
                if not fail_store.exists():
                    evaluate_policy(load_policy(base), args.task, episodes=30, seed=900_000 + 1000 * seed, num_envs=10,
                                    perturb=args.perturb, save=fail_store, progress=False)
                demo, roll = EpisodeStore.open(demos), EpisodeStore.open(fail_store)
                failed = np.flatnonzero(~roll.column("success").astype(bool))
                agent = load_policy(run / "policy")
                keys = [f"obs/{k}" for k in agent.config.base.state_keys]
                ds = [demo.get_episode(i, [*keys, "action"]) for i in range(demo.num_episodes)]
                fs = [roll.get_episode(int(i), [*keys, "action"]) for i in failed]
                row = {"kind": "auroc", "name": "dp_failures", "seed": seed, "failed_episodes": int(len(fs)),
                       "of_episodes": int(roll.num_episodes)}
                if fs:
                    state = lambda e: np.concatenate([e[k] for k in keys], -1)  # noqa: E731
                    pos = reward_scores(agent, [state(d) for d in ds], [d["action"] for d in ds])
                    neg = reward_scores(agent, [state(f) for f in fs], [f["action"] for f in fs])
                    row.update({"auroc": auroc(pos, neg), "demo_states": int(len(pos)), "failed_states": int(len(neg)),
                                "mean_r_demo": float(pos.mean()), "mean_r_failed": float(neg.mean())})
                log(f"reward AUROC seed {seed}: {records.add(row).get('auroc')}")
            if "ablations" in args.only:
                for ab, change in PLANNER_ABLATIONS.items():
                    agent = load_policy(run / "policy")
                    agent.planner_ready.fill_(True)
                    for key, value in change.items():
                        setattr(agent.config.planner, key, value)
                    label = "planner on" if ab == "planner_on" else f"planner on, {ab.replace('_', ' ')}"
                    evaluate(f"SAILOR, {label} at test time ({n_small} demos)", agent, seed)
        if "no_warmstart" in args.only:
            run = sailor_run("sailor_no_warmstart", seed, base, demos, ["loop.warmstart=false"])
            evaluate(f"SAILOR, no warm start ({n_small} demos)", load_policy(run / "policy"), seed)
    print(table(records.rows))
    return 0


def merge_legacy(dirs: list[Path]) -> str:
    """The earlier version's results.json files (one per seed) pooled per policy, with the AUROCs."""
    from robolearn.evaluation import pool_evaluations

    evals: dict[str, list[tuple[str, dict]]] = {}
    aurocs = []
    for d in dirs:
        res = json.loads((d / "results.json").read_text())
        for key, r in res.get("eval", {}).items():
            name, seed = key.rsplit("/", 1)
            evals.setdefault(name, []).append((seed[4:], r))
        aurocs += [a["auroc"] for a in res.get("auroc", {}).values() if a.get("auroc") is not None]
    lines = ["| policy | seeds | pooled success | 95% CI (Wilson) | per seed | mean return |", "|---|---|---|---|---|---|"]
    for name, rs in evals.items():
        k, n, (lo, hi) = pool_evaluations(r for _, r in rs)
        per = ", ".join(f"s{s}: {r['success_rate']:.2f}" for s, r in sorted(rs))
        lines.append(f"| {name} | {len(rs)} | {k / n:.3f} ({k}/{n}) | [{lo:.2f}, {hi:.2f}] | {per} | "
                     f"{np.mean([r['mean_return'] for _, r in rs]):.2f} |")
    if aurocs:
        lines.append(f"\nreward-model AUROC per seed: {', '.join(f'{a:.3f}' for a in aurocs)}")
    return "\n".join(lines)


def progress_table(metrics: list[dict]) -> str:
    """One row per phase of a SAILOR run (its metrics.jsonl): collection, the planner's guard
    statistics, the readiness check, and the in-loop evaluation (planner vs base, few episodes)."""
    def f(x, spec=".3f"):
        return "-" if x is None else format(x, spec)

    lines = ["| phase (env steps) | model updates | collection episodes | collection success | planner decisions | "
             "residual accepted | predicted gain | re-scored gain | its s.e. | WM / constant error | reward AUROC | "
             "in-loop eval: planner / base success |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    previous = 0
    for m in metrics:
        name = {"warmstart": "warm start", "final": "final"}.get(m.get("phase")) or f"round {m.get('round')}"
        evaluation = "-"
        if "eval_planner_success_rate" in m:
            evaluation = f"{m['eval_planner_success_rate']:.2f} / {m['eval_base_success_rate']:.2f}"
        lines.append(f"| {name} ({previous:,}-{m['env_step']:,}) | {m.get('model_updates', 0):,} | {m.get('collect_episodes', '-')} | "
                     f"{f(m.get('collect_success_rate'))} | {m.get('planner_decisions', '-')} | {f(m.get('planner_accept_frac'))} | "
                     f"{f(m.get('planner_predicted_gain'))} | {f(m.get('planner_rescored_gain'))} | {f(m.get('planner_gain_se'))} | "
                     f"{f(m.get('wm_err_ratio'))} | {f(m.get('rm_auroc'))} | {evaluation} |")
        previous = m["env_step"]
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    """Per policy: successes pooled over seeds with the Wilson interval, each seed's rate, mean
    return, and the planner's acceptance fraction during evaluation; then the SAILOR runs'
    diagnostics and the reward AUROCs."""
    from robolearn.evaluation import paired_outcomes, pool_evaluations

    evals: dict[str, list[dict]] = {}
    for r in rows:
        if r["kind"] == "eval":
            evals.setdefault(r["name"], []).append(r)
    # paired references: the base DP for every row, and for the test-time planner rows also the distilled DP
    # whose chunks the planner corrects
    base = next((rs for name, rs in evals.items() if name.startswith("DP (") and "x)" not in name), [])
    distilled = next((rs for name, rs in evals.items() if name.startswith("SAILOR distilled DP")), [])

    def vs(rs: list[dict], ref: list[dict]) -> str:
        pr = paired_outcomes(rs, ref) if ref and rs is not ref else None
        return "-" if pr is None else f"+{pr[0]} / -{pr[1]} (p {pr[2]:.2g})"

    lines = ["| policy | seeds | pooled success | 95% CI (Wilson) | per seed | mean return | residual accepted | "
             "paired vs base DP | paired vs distilled DP |", "|---|---|---|---|---|---|---|---|---|"]
    for name, rs in evals.items():
        k, n, (lo, hi) = pool_evaluations(rs)
        per = ", ".join(f"s{r['seed']}: {r['success_rate']:.2f}" for r in sorted(rs, key=lambda r: r["seed"]))
        acc = [r["planner_accept_frac"] for r in rs if "planner_accept_frac" in r]
        lines.append(f"| {name} | {len(rs)} | {k / n:.3f} ({k}/{n}) | [{lo:.2f}, {hi:.2f}] | {per} | "
                     f"{np.mean([r['mean_return'] for r in rs]):.2f} | {f'{np.mean(acc):.2f}' if acc else '-'} | "
                     f"{vs(rs, base)} | {vs(rs, distilled) if name.startswith('SAILOR, planner on') else '-'} |")
    lines.append("\npaired: over the same evaluation episodes (seed by seed), +episodes only this row solved / -episodes "
                 "only the reference solved, exact two-sided McNemar p")
    runs = [r for r in rows if r["kind"] == "run"]
    if runs:
        lines += ["", "| run | seed | env steps | model updates | wall s | WM error / constant (last) | planner ready | "
                      "accepted (last round) | predicted gain | re-scored gain | train-time AUROC |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in runs:
            d, last = r["final_diagnostics"], (r["rounds"][-1] if r["rounds"] else {})
            fmt = lambda x: "-" if x is None else f"{x:.3g}"  # noqa: E731
            lines.append(f"| {r['name']} | {r['seed']} | {r['env_steps']} | {r['model_updates']} | {fmt(r['wall_s'])} | "
                         f"{fmt(d.get('wm_err_ratio'))} | {d.get('planner_ready')} | {fmt(last.get('planner_accept_frac'))} | "
                         f"{fmt(last.get('planner_predicted_gain'))} | {fmt(last.get('planner_rescored_gain'))} | "
                         f"{fmt(d.get('rm_auroc'))} |")
    for r in rows:
        if r["kind"] == "auroc" and r.get("auroc") is not None:
            lines.append(f"\nreward-model AUROC (seed {r['seed']}): {r['auroc']:.3f}: {r['demo_states']} demo states vs "
                         f"{r['failed_states']} states of {r['failed_episodes']}/{r['of_episodes']} failed base-DP episodes "
                         f"(mean r {r['mean_r_demo']:.3f} vs {r['mean_r_failed']:.3f})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
