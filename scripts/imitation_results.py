"""Imitation results grid: success of bc / diffusion / hierarchical vs number of demos, per task.

For each task one store of scripted demos is collected per seed; each (policy, N demos, seed)
trains on the first N episodes and is evaluated on fixed seeds. Cells report pooled success over
the seeds with a 95% Wilson interval, plus per-seed rates. Appends a section to --out.

--collect-perturb / --collect-noise / --collect-set change only the demo collection (failure
injection the expert recovers from, Gaussian noise on the executed expert action, collection-only
task overrides); evaluation always uses the task config plus --task-overrides.

    python scripts/imitation_results.py --tasks push_cube --policies bc diffusion --demos 10 50 \
        --seeds 0 --steps 2000 --eval-episodes 100 --out docs/results/imitation.md

Every finished run also appends one JSON line to --records (default docs/results/imitation/records.jsonl,
committed beside the page), and `--table RECORDS [--label L]` regenerates a section's table from them.
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
import torch

from robolearn.data.store import EpisodeStore, copy_store
from robolearn.evaluation import evaluate_policy, load_any_policy, pool_evaluations
from robolearn.tasks.base import FAILURE_EVENTS
from robolearn.tasks.collect import collect
from robolearn.training import train

# CPU-sized training profiles (the YAML defaults are the papers' GPU-sized ones).
PROFILES = {
    "bc": ["policy.hidden_dims=[256,256]", "train.batch_size=256", "train.lr=0.001"],
    "diffusion": [
        "policy.down_dims=[64,128,256]", "policy.diffusion_step_embed_dim=64", "train.batch_size=128",
        "train.lr=0.001", "train.lr_warmup_steps=100",
    ],
    "hierarchical": [
        "policy.num_primitives=5", "policy.bc.hidden_dims=[256,256]", "policy.high_level_hidden_dims=[128,128]",
        "policy.termination_hidden_dims=[128,128]", "train.batch_size=256", "train.lr=0.001", "train.lr_warmup_steps=100",
    ],
}
COMMON = ["train.log_every=100", "train.val_ratio=0.05"]
# --image: demos carry the 84x84 front-camera RGB (obs/image) and the policy reads it through a
# CPU-sized encoder (the YAML's is [32,64,128]). --image-lowdim picks the low-dim key beside it:
# the full `state` (robot AND object pose: not vision-only), `proprio` (the robot's own pose and
# gripper: Diffusion Policy's image setting) or none (camera only).
IMAGE_LOWDIM = {"state": "the full low-dim `state` (robot AND object pose: not a vision-only policy)",
                "proprio": "`proprio`, the robot's own pose and gripper opening (vision-only for the objects)",
                "none": "nothing else (camera only)"}
IMAGE = ["policy.image_keys=[image]", "policy.vision.crop_shape=[76,76]", "policy.vision.channels=[16,32,64]",
         "policy.vision.feature_dim=64"]


def collection_tag(args: argparse.Namespace) -> str:
    """Store-name suffix for non-default demo collection (so differently collected stores never mix)."""
    tag = ""
    if args.collect_perturb is not None:
        tag += f"-perturb{args.collect_perturb:g}"
    if args.collect_noise:
        tag += f"-noise{args.collect_noise:g}"
    if args.expert_mode is not None:
        tag += f"-mode{args.expert_mode}"
    if args.collect_set:
        tag += "-" + "-".join(args.collect_set).replace("[", "").replace("]", "").replace(",", "+")
    return tag


def describe_demos(store: EpisodeStore, n: int) -> str:
    """Success count, mean length and failure events by kind over the first n episodes of a store."""
    success = store.column("success")[:n]
    lengths = store.episode_lengths[:n]
    codes = store.read("failure_event")[: int(lengths.sum())]
    events = ", ".join(f"{FAILURE_EVENTS[c]} {int((codes == c).sum())}" for c in np.unique(codes) if c) or "none"
    return (f"first {len(success)} demos: {int(success.sum())} successes, mean length {lengths.mean():.1f} steps, "
            f"failure events: {events}")


def image_overrides(args: argparse.Namespace) -> list[str]:
    if not args.image:
        return []
    lowdim = "[]" if args.image_lowdim == "none" else f"[{args.image_lowdim}]"
    return [*IMAGE, f"policy.state_keys={lowdim}"]


def pooled_score(cell: list[dict]) -> str:
    """The task's score pooled over seeds (episode-weighted mean; push_t: the Diffusion Policy
    paper's max-over-episode clipped coverage), with the per-seed values; success for other tasks."""
    if any("score" not in r for r in cell):
        return "n/a"
    mean = sum(r["score"] * r["n"] for r in cell) / sum(r["n"] for r in cell)
    per_seed = ", ".join(f"{r['score']:.2f}" for r in cell)
    return f"{mean:.3f} ({per_seed})"


TABLE_HEADER = ["| task | policy | demos | eval episodes (pooled) | success | 95% CI (Wilson) | score | per seed | train s/run |",
                "|---|---|---|---|---|---|---|---|---|"]


def table_rows(results: list[dict]) -> list[str]:
    """One row per (task, policy, demos): successes pooled over seeds with the Wilson interval."""
    rows = []
    keys = sorted({(r["task"], r["policy"], r["demos"]) for r in results}, key=lambda k: (k[0], k[1], k[2]))
    for task, pol, n in keys:
        cell = [r for r in results if (r["task"], r["policy"], r["demos"]) == (task, pol, n)]
        k, tot, (lo, hi) = pool_evaluations(cell)
        per_seed = ", ".join(f"s{r['seed']}: {r['rate']:.2f}" for r in cell)
        rows.append(f"| {task} | {pol} | {n} | {tot} | {k / tot:.3f} | [{lo:.3f}, {hi:.3f}] | {pooled_score(cell)} | {per_seed} | "
                    f"{sum(r['train_s'] for r in cell) / len(cell):.0f} |")
    return rows


def first_eval_seed(train_seed: int) -> int:
    """Evaluation episodes of training seed s use seeds first_eval_seed(s) + 0..N-1: disjoint from
    the demo-collection seeds (100000 x s + i) and from other training seeds' evaluations."""
    return 1_000_000 + 10_000 * train_seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["push_cube"])
    ap.add_argument("--policies", nargs="+", default=["bc", "diffusion", "hierarchical"])
    ap.add_argument("--demos", nargs="+", type=int, default=[10, 50, 200])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--eval-episodes", type=int, default=100)
    ap.add_argument("--num-envs", type=int, default=10)
    ap.add_argument("--task-overrides", nargs="*", default=[], help="e.g. num_cubes=2 for sort")
    ap.add_argument("--extra", nargs="*", default=[], help="extra training overrides for every run")
    ap.add_argument("--label", default="", help="section title suffix")
    ap.add_argument("--image", action="store_true", help="collect demos with front-camera images and train on them")
    ap.add_argument("--image-lowdim", choices=sorted(IMAGE_LOWDIM), default="state",
                    help="with --image: the low-dim observation the policy reads beside the camera")
    ap.add_argument("--collect-perturb", type=float, default=None,
                    help="perturbation events per step during demo collection only (the expert recovers)")
    ap.add_argument("--collect-noise", type=float, default=0.0,
                    help="std of Gaussian noise on the expert's actions during collection (`action` stores the executed noisy "
                         "one, `expert_action` the noise-free label; train on it with --extra data.action_key=expert_action)")
    ap.add_argument("--collect-set", nargs="*", default=[],
                    help="task overrides for demo collection only, e.g. perturb_kinds=[nudge_object]")
    ap.add_argument("--expert-mode", type=int, default=None,
                    help="fix the expert's per-episode mode during collection (unimodal demos); default: drawn per episode")
    ap.add_argument("--workdir", default="runs/imitation")
    ap.add_argument("--out", default="docs/results/imitation.md")
    ap.add_argument("--records", default="docs/results/imitation/records.jsonl",
                    help="append one JSON line per finished run here (the raw records beside the page)")
    ap.add_argument("--table", default=None, metavar="RECORDS",
                    help="print the table of the runs in RECORDS (those with --label, if given) and exit")
    args = ap.parse_args()
    if args.table:
        path = Path(args.table)
        if not path.is_file():
            sys.exit(f"error: no records file {path}")
        chosen = [r for r in (json.loads(ln) for ln in path.read_text().splitlines() if ln.strip())
                  if not args.label or r.get("label") == args.label]
        if not chosen:
            sys.exit(f"error: no records{' with label ' + repr(args.label) if args.label else ''} in {path}")
        print("\n".join([*TABLE_HEADER, *table_rows(chosen)]))
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    demo_stats: dict[str, str] = {}
    started = time.time()
    records = Path(args.records)
    records.parent.mkdir(parents=True, exist_ok=True)
    context = {"label": args.label, "command": "python " + " ".join(sys.argv), "task_overrides": args.task_overrides,
               "image": args.image, "image_lowdim": args.image_lowdim if args.image else None,
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"}
    for task in args.tasks:
        for seed in args.seeds:
            full = work / (f"{task}{'-' + '-'.join(args.task_overrides) if args.task_overrides else ''}"
                           f"{'-image' if args.image else ''}{collection_tag(args)}-demos-s{seed}.zarr")
            if not full.exists():
                collect(task, episodes=max(args.demos), out=full, num_envs=args.num_envs, seed=seed * 100_000,
                        noise=args.collect_noise, perturb=args.collect_perturb,
                        overrides=[*args.task_overrides, *args.collect_set] or None, image=args.image, progress=False,
                        expert_mode=args.expert_mode)
            src = EpisodeStore.open(full)
            if src.num_episodes < max(args.demos):
                sys.exit(f"error: {full} holds {src.num_episodes} demos, fewer than --demos {max(args.demos)}; "
                         "use another --workdir (a store is reused, never topped up, so its seeds stay fixed)")
            demo_stats[f"{task} s{seed}"] = describe_demos(src, max(args.demos))
            for n in args.demos:
                sub = work / f"{full.stem}-first{n}.zarr"
                if not sub.exists():
                    copy_store(src, sub, list(range(n))).close()
                for policy_name in args.policies:
                    run = work / f"{task}-{policy_name}-n{n}-s{seed}{'-' + args.label if args.label else ''}"
                    if run.exists():
                        shutil.rmtree(run)
                    overrides = [*PROFILES[policy_name], *image_overrides(args), *COMMON,
                                 f"train.steps={args.steps}", f"train.seed={seed}",
                                 f"train.eval_every={args.steps}", f"train.save_every={args.steps}", *args.extra]
                    t0 = time.time()
                    train(policy_name, sub, task=task, out=run, overrides=overrides, wandb_mode="off", progress=False)
                    train_s = time.time() - t0
                    policy, _ = load_any_policy(run / "policy")
                    report = evaluate_policy(policy, task, args.eval_episodes, seed=first_eval_seed(seed),
                                             num_envs=args.num_envs, task_overrides=args.task_overrides or None, progress=False)
                    results.append({"task": task, "policy": policy_name, "demos": n, "seed": seed,
                                    "successes": report["successes"], "n": report["n"], "rate": report["success_rate"],
                                    "score": report.get("score", report["success_rate"]),
                                    "score_name": report.get("score_name", "success"),
                                    "train_s": train_s, "eval_seeds": [report["seeds"][0], report["seeds"][-1]]})
                    print(json.dumps(results[-1]), flush=True)
                    record = {**results[-1], **context, "train_overrides": overrides, "demo_summary": demo_stats[f"{task} s{seed}"],
                              "loadavg": list(os.getloadavg()), "date": dt.datetime.now().isoformat(timespec="seconds")}
                    with records.open("a") as log:  # per run: a crash later keeps it
                        log.write(json.dumps(record) + "\n")
    rows = table_rows(results)
    cmd = context["command"]
    obs_desc = "state (the task's full low-dim vector)"
    if args.image:
        obs_desc = (f"84x84 front-camera RGB `image` + {IMAGE_LOWDIM[args.image_lowdim]}; "
                    f"image overrides {json.dumps(image_overrides(args))}")
    section = [
        f"## {', '.join(args.tasks)}{' (' + args.label + ')' if args.label else ''}",
        "",
        f"- command: `{cmd}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs while it ran), torch {torch.__version__}, CPU",
        f"- training seeds: {args.seeds}; demo-collection seed = 100000 x seed; evaluation seeds 1000000 + 10000 x seed + 0..{args.eval_episodes - 1}",
        f"- observations: {obs_desc}",
        f"- demo collection: perturb_rate {args.collect_perturb if args.collect_perturb is not None else 'task default'}, "
        f"expert action noise std {args.collect_noise}"
        + ((" (labels: the noise-free `expert_action`, DART-style)" if "data.action_key=expert_action" in args.extra
            else " (labels: the executed noisy action)") if args.collect_noise else "")
        + f", expert mode {'drawn per episode' if args.expert_mode is None else args.expert_mode}"
        + f", collection-only task overrides {args.collect_set or 'none'}; "
        + "; ".join(f"{k}: {v}" for k, v in demo_stats.items()),
        f"- {args.steps} gradient steps per run; profiles: {json.dumps({p: PROFILES[p] for p in args.policies})}"
        + (f"; extra overrides applied after the profile: {args.extra}" if args.extra else ""),
        f"- task overrides: {args.task_overrides or 'none'}; date: {dt.date.today().isoformat()}; wall time {time.time() - started:.0f} s",
        "",
        f"- raw records: `{args.records}` (label {args.label or '(none)'}); "
        f"`python scripts/imitation_results.py --table {args.records}{' --label ' + args.label if args.label else ''}` regenerates this table",
        "",
        *TABLE_HEADER,
        *rows,
        "",
    ]
    out = Path(args.out)
    if not out.exists():
        out.write_text("# Imitation results\n\nSuccess of each policy vs the number of scripted demos (state observations).\n\n")
    with out.open("a") as f:
        f.write("\n".join(section) + "\n")
    print("\n".join(section))


if __name__ == "__main__":
    main()
