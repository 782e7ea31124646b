"""SAILOR vs Diffusion Policy on the same demos and on 5x the demos (docs/results/sailor.md).

Stages (each cached in --out, so a rerun resumes): collect N and 5N scripted demos; train a
diffusion policy on each; run SAILOR around the N-demo policy (and the no-warm-start ablation);
evaluate everything on the same seeded, perturbed episodes (Wilson 95% CIs); score the reward
model's separation of demo states from failed base-policy states (AUROC); the no-uncertainty
ablation re-plans with the trained SAILOR models and beta = 0. Writes OUT/results.json and a
markdown table to stdout (pasted into docs/results/sailor.md).

    python scripts/sailor_experiment.py --out runs/sailor_exp            # CPU profile (~30 min, 2 cores)
    python scripts/sailor_experiment.py --profile official --device cuda ...
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

# the official values (policies/sailor.yaml) scaled to a 2-core CPU
CPU_SAILOR = [
    "agent.world_model.deter=128", "agent.world_model.stoch=8", "agent.world_model.classes=8",
    "agent.world_model.hidden=128", "agent.world_model.units=128", "agent.world_model.batch_length=12",
    "agent.reward.units=128", "agent.reward.update_every=5", "agent.critic.units=128", "agent.critic.lr=1e-4",
    "agent.planner.num_samples=32", "agent.planner.iterations=2", "agent.planner.num_elites=8",
    "loop.num_envs=10", "loop.min_env_steps_per_round=400", "loop.rounds_train_ratio=0.5",
    "loop.warmstart_train_ratio=0.5", "loop.eval_every_round=1000", "loop.eval_episodes=0", "loop.update_dp_every=2",
    "loop.n_dp_train_itrs=150", "loop.dp_batch_size=64", "loop.n_traj_to_relabel_per_round=32",
    "loop.n_dp_traj_buffer_size=64", "loop.num_buffer_transitions=20000",
]
CPU_DP = [
    "train.steps=1500", "train.batch_size=64", "train.lr=3e-4", "train.lr_warmup_steps=100", "train.val_ratio=0",
    "train.save_every=100000", "train.eval_every=100000", "train.log_every=100",
    "policy.down_dims=[32,64,128]", "policy.diffusion_step_embed_dim=32",
]
PROFILES = {"cpu": (CPU_DP, CPU_SAILOR), "official": ([], [])}


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score(pos) > score(neg)) + 0.5 P(tie): the Mann-Whitney AUROC."""
    scores = np.concatenate([pos, neg])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for v in np.unique(scores):  # average ranks of ties
        tie = scores == v
        ranks[tie] = ranks[tie].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@torch.no_grad()
def reward_scores(agent, states: list[np.ndarray], actions: list[np.ndarray]) -> np.ndarray:
    """r(z_t) along recorded trajectories, z_t the world model's posterior (filtered, deterministic)."""
    out = []
    wm = agent.world_model
    for s, a in zip(states, actions):
        st = agent.wm_state({"state": torch.as_tensor(s, dtype=torch.float32)})[None]
        prev = torch.cat([torch.zeros(1, a.shape[-1]), torch.as_tensor(a[:-1], dtype=torch.float32)])[None]
        first = torch.zeros(1, len(s), dtype=torch.bool)
        first[0, 0] = True
        post, _ = wm.dynamics.observe(wm.embed(st), prev, first)
        out.append(agent.reward_model(wm.dynamics.feat(post))[0].numpy())
    return np.concatenate(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="pick_place")
    p.add_argument("--demos", type=int, default=10, help="N: demos for DP and SAILOR (DP-5x gets 5N)")
    p.add_argument("--data-multiple", type=int, default=5)
    p.add_argument("--perturb", type=float, default=0.05, help="perturbation events per step (collection and eval)")
    p.add_argument("--env-steps", type=int, default=2000, help="SAILOR env-step budget (warm start included)")
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--eval-envs", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--profile", choices=list(PROFILES), default="cpu")
    p.add_argument("--ablations", nargs="*", default=["no_warmstart", "no_uncertainty"],
                   choices=["no_warmstart", "no_uncertainty"])
    p.add_argument("--dp-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="diffusion-policy training overrides applied after the profile's (e.g. train.steps=5000)")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="OUT_DIR",
                   help="only pool the results.json of these finished runs into one table (stdout)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/sailor_exp")
    args = p.parse_args()
    if args.merge:
        print(merge(args.merge))
        return 0
    torch.set_num_threads(args.threads)

    from robolearn.checkpoint import load_policy
    from robolearn.data.store import EpisodeStore
    from robolearn.evaluation import evaluate_policy
    from robolearn.sailor.loop import run_sailor
    from robolearn.tasks.collect import collect
    from robolearn.training import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    dp_over, sailor_over = PROFILES[args.profile]
    dp_over = [*dp_over, *args.dp_set]
    sailor_over = [*sailor_over, f"device={args.device}"]
    t_start = time.time()

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=1))

    def evaluate(name: str, policy, seed: int) -> dict:
        key = f"{name}/seed{seed}"
        if key in results.get("eval", {}):
            return results["eval"][key]
        t = time.time()
        rep = evaluate_policy(policy, args.task, episodes=args.eval_episodes, seed=500_000 + 1000 * seed,
                              num_envs=args.eval_envs, perturb=args.perturb, progress=False)
        row = {k: rep[k] for k in ("n", "successes", "success_rate", "ci95", "mean_return", "mean_length",
                                   "failure_events_per_episode", "recoveries_per_episode")}
        row["eval_seconds"] = time.time() - t
        results.setdefault("eval", {})[key] = row
        save()
        log(f"eval {key}: {row['success_rate']:.3f} {row['ci95']} ({row['eval_seconds']:.0f}s)")
        return row

    n_small, n_large = args.demos, args.demos * args.data_multiple
    for seed in args.seeds:
        # 1) demos (clean expert) and 2) diffusion policies, per seed
        stores = {}
        for n in (n_small, n_large):
            path = out / f"demos_{n}_seed{seed}.zarr"
            if not path.exists():
                collect(args.task, n, path, num_envs=10, seed=10_000 * seed, progress=False)
            stores[n] = path
        dps = {}
        for n in (n_small, n_large):
            run = out / f"dp_{n}_seed{seed}"
            if not (run / "policy" / "checkpoint.json").exists():
                t = time.time()
                train("diffusion", stores[n], task=args.task, out=run, wandb_mode="off", progress=False,
                      overrides=[*dp_over, f"train.seed={seed}", f"train.device={args.device}"])
                results.setdefault("train_seconds", {})[f"dp_{n}_seed{seed}"] = time.time() - t
                save()
                log(f"trained dp_{n}_seed{seed} in {time.time() - t:.0f}s")
            dps[n] = run / "policy"
        evaluate(f"DP ({n_small} demos)", load_policy(dps[n_small], args.device), seed)
        evaluate(f"DP ({n_large} demos)", load_policy(dps[n_large], args.device), seed)

        # 3) SAILOR runs
        variants = {"sailor": []}
        if "no_warmstart" in args.ablations:
            variants["sailor_no_warmstart"] = ["loop.warmstart=false"]
        for name, extra in variants.items():
            run = out / f"{name}_seed{seed}"
            if not (run / "policy" / "checkpoint.json").exists():
                t = time.time()
                run_sailor(dps[n_small], stores[n_small], args.task, args.env_steps, out=run, perturb=args.perturb,
                           overrides=[*sailor_over, f"seed={seed}", *extra], wandb_mode="offline", progress=False)
                results.setdefault("train_seconds", {})[f"{name}_seed{seed}"] = time.time() - t
                save()
                log(f"ran {name}_seed{seed} in {time.time() - t:.0f}s")
            agent = load_policy(run / "policy", args.device)
            label = {"sailor": f"SAILOR ({n_small} demos)", "sailor_no_warmstart": f"SAILOR, no warm start ({n_small} demos)"}[name]
            evaluate(label, agent, seed)
            if name == "sailor":
                evaluate(f"SAILOR distilled DP ({n_small} demos)", load_policy(run / "base_policy", args.device), seed)
                if "no_uncertainty" in args.ablations:
                    agent.config.planner.uncertainty_cost = 0.0
                    evaluate(f"SAILOR, no uncertainty penalty at planning ({n_small} demos)", agent, seed)
                    agent.config.planner.uncertainty_cost = 1.0
                # 4) reward model: demo states vs states of failed episodes of the original DP
                key = f"seed{seed}"
                if key not in results.get("auroc", {}):
                    fail_store = out / f"dp_{n_small}_rollouts_seed{seed}.zarr"
                    if not fail_store.exists():
                        evaluate_policy(load_policy(dps[n_small], args.device), args.task, episodes=30, seed=900_000,
                                        num_envs=10, perturb=args.perturb, save=fail_store, progress=False)
                    demo = EpisodeStore.open(stores[n_small])
                    roll = EpisodeStore.open(fail_store)
                    failed = np.flatnonzero(~roll.column("success").astype(bool))
                    ds = [demo.get_episode(i, ["obs/state", "action"]) for i in range(demo.num_episodes)]
                    fs = [roll.get_episode(int(i), ["obs/state", "action"]) for i in failed]
                    agent = load_policy(run / "policy", "cpu")
                    if len(fs):
                        pos = reward_scores(agent, [d["obs/state"] for d in ds], [d["action"] for d in ds])
                        neg = reward_scores(agent, [f["obs/state"] for f in fs], [f["action"] for f in fs])
                        results.setdefault("auroc", {})[key] = {
                            "auroc": auroc(pos, neg), "expert_states": int(len(pos)), "failed_states": int(len(neg)),
                            "failed_episodes": int(len(fs)), "of_episodes": int(roll.num_episodes),
                            "mean_r_expert": float(pos.mean()), "mean_r_failed": float(neg.mean()),
                        }
                    else:
                        results.setdefault("auroc", {})[key] = {"auroc": None, "failed_episodes": 0}
                    save()
                    log(f"reward AUROC {results['auroc'][key]}")

    results["meta"] = {
        "command": " ".join(sys.argv), "date": dt.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "torch_threads": args.threads, "device": args.device, "task": args.task, "perturb": args.perturb,
        "env_steps": args.env_steps, "seeds": args.seeds, "profile": args.profile, "dp_overrides": dp_over,
        "sailor_overrides": sailor_over, "last_invocation_seconds": time.time() - t_start,
    }
    save()
    print(markdown(results))
    return 0


def merge(dirs: list[Path]) -> str:
    """Pool the evaluations of several output dirs (e.g. one per seed, run in parallel): per policy,
    successes summed over seeds with the Wilson interval, plus each seed's rate and the AUROCs."""
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


def markdown(results: dict) -> str:
    lines = ["| policy | seed | n | success rate | 95% CI (Wilson) | mean return | failure events/ep | recoveries/ep |",
             "|---|---|---|---|---|---|---|---|"]
    for key, r in results.get("eval", {}).items():
        name, seed = key.rsplit("/", 1)
        lines.append(f"| {name} | {seed[4:]} | {r['n']} | {r['success_rate']:.2f} | [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | "
                     f"{r['mean_return']:.2f} | {r['failure_events_per_episode']:.2f} | {r['recoveries_per_episode']:.2f} |")
    for key, a in results.get("auroc", {}).items():
        if a.get("auroc") is not None:
            lines.append(f"\nreward-model AUROC ({key}): {a['auroc']:.3f} — {a['expert_states']} demo states vs "
                         f"{a['failed_states']} states of {a['failed_episodes']}/{a['of_episodes']} failed DP episodes "
                         f"(mean r: {a['mean_r_expert']:.3f} vs {a['mean_r_failed']:.3f})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
