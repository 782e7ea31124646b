"""Behaviour retrieval experiment (issue 21): few target demos query a large mixed-behaviour prior.

Scene: pick_place with obs_relative. Target: `--target-demos` scripted demos of pick_place into
the bin (`robolearn collect`, seeds 0..). Prior: `robolearn.retrieval.prior.generate_prior`
(mixed behaviours, hidden labels in episode metadata only). For every seed and condition a BC
MLP is trained and evaluated on `--eval-episodes` episodes (seeds first_eval_seed(seed) + i,
disjoint from the collection seeds). Conditions:
  target_only        the target demos alone (data.mix=all);
  whole              target + the whole prior (every prior step 'retrieved', same batch weighting);
  br, strap, importance  target + what each method retrieves (same retrieved fraction each);
  oracle             target + the prior episodes whose hidden label is the target behaviour;
  ablations (not in the default set): br_l2 scores br by negative L2 distance, as the paper's
  released code does, instead of cosine similarity; <method>_fNN retrieves NN% instead of --fraction.
Retrieval runs per seed (its VAE / subsampling seed = the seed). Every finished run appends one
JSON line to OUT/runs.jsonl and is skipped on restart (resume = run the same command again).
`--scaling` instead measures the retrieval step's time and peak memory at several prior sizes,
each in a fresh subprocess (OUT/scaling.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CONDITIONS = ("target_only", "whole", "br", "strap", "importance", "oracle", "br_l2", "br_f10", "br_f40", "strap_f10", "importance_f10")
DEFAULT_CONDITIONS = CONDITIONS[:6]
BC = ["policy.hidden_dims=[256,256]", "train.batch_size=256", "train.lr=0.001", "train.val_ratio=0.0"]
TASK_SET = ["obs_relative=true"]


def first_eval_seed(train_seed: int) -> int:
    """Same convention as scripts/imitation_results.py (evaluation seeds disjoint from collection)."""
    return 1_000_000 + 10_000 * train_seed


def prepare_data(work: Path, args: argparse.Namespace) -> tuple[Path, Path, Path]:
    from robolearn.data.store import EpisodeStore
    from robolearn.retrieval.prior import generate_prior
    from robolearn.retrieval.store_io import write_retrieval_store
    from robolearn.tasks.collect import collect

    prior, target, base = work / "prior.zarr", work / "target.zarr", work / "merged_base.zarr"
    if not prior.exists():
        generate_prior(prior, args.prior_episodes, seed=200_000, num_envs=16, task_overrides=TASK_SET)
    if not target.exists():
        collect("pick_place", episodes=args.target_demos, out=target, num_envs=args.target_demos, seed=0,
                overrides=TASK_SET, progress=False)
    if not base.exists():
        p, t = EpisodeStore.open(prior), EpisodeStore.open(target)
        write_retrieval_store(base, p, t, np.zeros(p.num_steps, bool), np.zeros(p.num_steps, np.float32),
                              {"method": "none"}, progress=True).close()
    return prior, target, base


def label_quality(prior, mask: np.ndarray, target_behavior: str) -> dict:
    """Precision / recall of a per-step mask against the hidden episode labels, and a breakdown."""
    from robolearn.retrieval.prior import hidden_labels

    labels = hidden_labels(prior)[np.repeat(np.arange(prior.num_episodes), prior.episode_lengths)]
    pos = labels == target_behavior
    tp = int((mask & pos).sum())
    names, counts = np.unique(labels[mask], return_counts=True)
    # the task's stage label (pick_place: 1 = cube held) splits reach/grasp steps from carrying ones
    held = prior.read("stage", cache=False) == 1
    by_stage = {f"{b}/{'held' if h else 'not_held'}": int((mask & (labels == b) & (held == h)).sum())
                for b in np.unique(labels) for h in (False, True)}
    return {"precision": tp / max(int(mask.sum()), 1), "recall": tp / max(int(pos.sum()), 1),
            "fraction": float(mask.mean()), "retrieved_steps": int(mask.sum()),
            "retrieved_by_behavior": {str(n): int(c) for n, c in zip(names, counts)},
            "retrieved_by_behavior_and_stage": by_stage}


def run_one(cond: str, seed: int, work: Path, paths: tuple[Path, Path, Path], args: argparse.Namespace) -> dict:
    from robolearn.data.store import EpisodeStore
    from robolearn.evaluation import evaluate_policy, load_any_policy, task_overrides_from_meta
    from robolearn.retrieval.core import RetrievalConfig, retrieve
    from robolearn.retrieval.prior import TARGET_BEHAVIOR, hidden_labels
    from robolearn.retrieval.store_io import rewrite_retrieval
    from robolearn.training import train

    prior_path, target_path, base = paths
    record: dict = {"condition": cond, "seed": seed}
    data = target_path
    mix = "all"
    if cond != "target_only":
        prior, target = EpisodeStore.open(prior_path), EpisodeStore.open(target_path)
        t0 = time.perf_counter()
        if cond.split("_")[0] in ("br", "strap", "importance"):
            method, _, variant = cond.partition("_")
            fraction = int(variant[1:]) / 100 if variant.startswith("f") else args.fraction
            res = retrieve(prior, target, RetrievalConfig(method=method, fraction=fraction, seed=seed,
                                                          similarity="l2" if variant == "l2" else "cosine", progress=False))
            mask, scores, info = res.mask, res.scores, res.info
            record["retrieval_info"] = {k: v for k, v in info.items() if k != "config"}
        elif cond == "whole":
            mask, scores, info = np.ones(prior.num_steps, bool), np.ones(prior.num_steps, np.float32), {"method": "whole"}
        else:  # oracle: the hidden label, which only this baseline reads
            ep = hidden_labels(prior) == TARGET_BEHAVIOR
            mask = np.repeat(ep, prior.episode_lengths)
            scores, info = mask.astype(np.float32), {"method": "oracle"}
        record["retrieval_s"] = round(time.perf_counter() - t0, 2)
        record.update(label_quality(prior, mask, TARGET_BEHAVIOR))
        data = work / "stores" / f"{cond}-s{seed}.zarr"
        if data.exists():
            shutil.rmtree(data)
        data.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(base, data)
        rewrite_retrieval(data, mask, scores, {**info, "prior_steps": int(len(mask)), "target_steps": target.num_steps,
                                                "retrieved_steps": int(mask.sum()), "fraction_retrieved": float(mask.mean())})
        mix = "retrieval"
    run = work / "runs" / f"{cond}-s{seed}"
    if run.exists():
        shutil.rmtree(run)
    t0 = time.perf_counter()
    train("bc", data, task="pick_place", out=run, wandb_mode="off", progress=False,
          overrides=[*BC, f"train.steps={args.steps}", f"train.seed={seed}", f"data.mix={mix}",
                     f"train.eval_every={args.steps}", f"train.save_every={args.steps}"])
    record["train_s"] = round(time.perf_counter() - t0, 1)
    policy, meta = load_any_policy(run / "policy")
    t0 = time.perf_counter()
    report = evaluate_policy(policy, "pick_place", args.eval_episodes, seed=first_eval_seed(seed), num_envs=10,
                             task_overrides=task_overrides_from_meta(meta, "pick_place") or None, progress=False)
    record.update({"eval_s": round(time.perf_counter() - t0, 1), "successes": int(report["successes"]), "n": int(report["n"]),
                   "rate": float(report["success_rate"]), "eval_seeds": [report["seeds"][0], report["seeds"][-1]],
                   "steps": args.steps, "fraction_setting": int(cond.rsplit("_f", 1)[1]) / 100 if "_f" in cond else args.fraction})
    if data != target_path:
        shutil.rmtree(data)
    return record


def scaling(work: Path, out: Path, args: argparse.Namespace) -> None:
    """Time and peak RSS of `retrieve` at several prior sizes, one fresh process per measurement."""
    from robolearn.data.store import EpisodeStore, copy_store

    prior_path, target_path, _ = prepare_data(work, args)
    prior = EpisodeStore.open(prior_path)
    path = out / "scaling.jsonl"
    done = {(r["method"], r["prior_episodes"], r["repeat"]) for r in map(json.loads, path.read_text().splitlines())} if path.exists() else set()
    sizes = sorted({int(round(f * prior.num_episodes)) for f in args.scaling_fractions})
    for n in sizes:
        sub = work / f"prior-first{n}.zarr"
        if not sub.exists() and n < prior.num_episodes:
            copy_store(prior, sub, list(range(n))).close()
    for rep in range(args.scaling_repeats):
        for method in ("br", "strap", "importance"):  # sizes interleaved within each method and repeat
            for n in sizes:
                if (method, n, rep) in done:
                    continue
                sub = prior_path if n >= prior.num_episodes else work / f"prior-first{n}.zarr"
                cmd = [sys.executable, __file__, "--measure", str(sub), str(target_path), method, str(args.fraction)]
                res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
                res.update({"method": method, "prior_episodes": n, "repeat": rep, "loadavg": open("/proc/loadavg").read().split()[:3]})
                print(json.dumps(res), flush=True)
                with path.open("a") as f:
                    f.write(json.dumps(res) + "\n")


def measure(prior_path: str, target_path: str, method: str, fraction: float) -> None:
    """One retrieval in this (fresh) process: wall time, CPU time and peak RSS above the loaded baseline."""
    from robolearn.data.store import EpisodeStore
    from robolearn.retrieval.core import RetrievalConfig, retrieve

    prior, target = EpisodeStore.open(prior_path), EpisodeStore.open(target_path)
    import torch  # noqa: F401  (imported before the baseline so it is not counted)

    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c0, t0 = time.process_time(), time.perf_counter()
    res = retrieve(prior, target, RetrievalConfig(method=method, fraction=fraction, seed=0, progress=False))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"prior_steps": prior.num_steps, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                      "peak_rss_mb": round(peak_kb / 1024, 1), "rss_above_baseline_mb": round((peak_kb - base_kb) / 1024, 1),
                      "retrieved_steps": int(res.mask.sum())}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        measure(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/retrieval")
    ap.add_argument("--out", default="docs/results/retrieval")
    ap.add_argument("--prior-episodes", type=int, default=1300)
    ap.add_argument("--target-demos", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--conditions", nargs="+", default=list(DEFAULT_CONDITIONS), choices=CONDITIONS,
                    help="ablations: br_l2 (negative L2 score, as the released code), <method>_fNN (retrieve NN%%)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--eval-episodes", type=int, default=100)
    ap.add_argument("--fraction", type=float, default=0.2, help="share of the prior each method retrieves")
    ap.add_argument("--retrieval-only", action="store_true",
                    help="re-run only the retrieval of the given conditions/seeds (OUT/retrieval_only.jsonl, with the per-stage breakdown)")
    ap.add_argument("--scaling", action="store_true", help="measure retrieval time/memory at several prior sizes instead")
    ap.add_argument("--scaling-fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--scaling-repeats", type=int, default=2)
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if args.scaling:
        scaling(work, out, args)
        return
    paths = prepare_data(work, args)
    from robolearn.data.store import EpisodeStore

    if args.retrieval_only:  # re-run the retrieval step alone and record what it selected (no training)
        from robolearn.retrieval.core import RetrievalConfig, retrieve
        from robolearn.retrieval.prior import TARGET_BEHAVIOR

        prior, target = EpisodeStore.open(paths[0]), EpisodeStore.open(paths[1])
        path = out / "retrieval_only.jsonl"
        done = {(r["condition"], r["seed"]) for r in map(json.loads, path.read_text().splitlines())} if path.exists() else set()
        for seed in args.seeds:
            for cond in args.conditions:
                if (cond, seed) in done or cond.split("_")[0] not in ("br", "strap", "importance"):
                    continue
                method, _, variant = cond.partition("_")
                fraction = int(variant[1:]) / 100 if variant.startswith("f") else args.fraction
                res = retrieve(prior, target, RetrievalConfig(method=method, fraction=fraction, seed=seed,
                                                              similarity="l2" if variant == "l2" else "cosine", progress=False))
                rec = {"condition": cond, "seed": seed, **label_quality(prior, res.mask, TARGET_BEHAVIOR),
                       "retrieval_s": res.info["seconds"], "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
                print(json.dumps(rec), flush=True)
                with path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
        return
    from robolearn.retrieval.prior import hidden_labels

    data_json = out / "data.json"
    if not data_json.exists():
        p, t = EpisodeStore.open(paths[0]), EpisodeStore.open(paths[1])
        labels = hidden_labels(p)
        per = {str(b): {"episodes": int((labels == b).sum()), "steps": int(p.episode_lengths[labels == b].sum()),
                        "successes": int(p.column("success")[labels == b].sum())} for b in np.unique(labels)}
        data_json.write_text(json.dumps({"prior_episodes": p.num_episodes, "prior_steps": p.num_steps, "per_behavior": per,
                                         "target_episodes": t.num_episodes, "target_steps": t.num_steps,
                                         "target_success": float(t.column("success").mean())}, indent=1) + "\n")
    path = out / "runs.jsonl"
    done = {(r["condition"], r["seed"]) for r in map(json.loads, path.read_text().splitlines())} if path.exists() else set()
    for seed in args.seeds:
        for cond in args.conditions:
            if (cond, seed) in done:
                continue
            rec = run_one(cond, seed, work, paths, args)
            rec.update({"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "loadavg": open("/proc/loadavg").read().split()[:3],
                        "machine": f"{platform.machine()} {os.cpu_count()} cores", "command": " ".join(sys.argv)})
            print(json.dumps(rec), flush=True)
            with path.open("a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
