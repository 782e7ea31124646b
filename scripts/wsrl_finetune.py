"""WSRL vs no warm-up vs 50/50 offline retention on Hopper-v5, CPU-sized.

    python scripts/wsrl_finetune.py run      # pre-train IQL once, fine-tune 3 methods x 3 seeds (3k steps)
    python scripts/wsrl_finetune.py report   # table + docs/results/wsrl_hopper.png

Needs runs/rl_study/data/hopper_mix0.5.zarr from `scripts/rl_reweighting.py data`.
Without flags this is the 3k-step study in runs/rl_study/wsrl. `--tag T` writes a separate study
(runs/rl_study/wsrl_T, docs/results/wsrl_hopper_T.png) from the same pre-trained IQL checkpoint,
with its own budget, e.g. the 10k-step study:

    OMP_NUM_THREADS=1 python scripts/wsrl_finetune.py run --tag 10k --steps 10000 --eval-every 500 \
        --workers 1 --stop-at 21:05
    python scripts/wsrl_finetune.py report --tag 10k

Jobs run seed-major (seed 0 of every method, then seed 1, ...), results are written after every
run, and `--stop-at HH:MM` (UTC) launches nothing after that time, so a study cut short by the
clock still compares the methods on whole seeds. `report` reads the study's settings from
`study.json` (written by `run`). docs/results/offline_to_online.md records what was run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from robolearn.experiments import run_jobs, stop_time

BASE = Path("runs/rl_study/wsrl")  # the 3k-step study and the shared pre-trained checkpoint
DATA = Path("runs/rl_study/data/hopper_mix0.5.zarr")
SEEDS = (0, 1, 2)
STEPS = 3_000  # online env steps, warm-up included
WARMUP = 1_000  # WSRL warm-up (the paper's 5000 of 500k steps, scaled to this budget)
EVAL_EVERY = 250
EVAL_EPISODES = 5
METHODS = {  # name -> (algo, warm-up or None for the study's --warmup, retained offline fraction)
    "WSRL (warm-up, no retention)": ("wsrl", None, 0.0),
    "no warm-up, no retention": ("sac", 0, 0.0),
    "50/50 offline retention": ("sac", 0, 0.5),
}
WORKERS = int(os.environ.get("RL_WORKERS", "2"))


def _study_dir(tag: str | None) -> Path:
    return BASE if not tag else BASE.parent / f"wsrl_{tag}"


def _plot_path(tag: str | None) -> str:
    return "docs/results/wsrl_hopper.png" if not tag else f"docs/results/wsrl_hopper_{tag}.png"


def _ft_overrides(steps: int, eval_every: int) -> list[str]:
    return ["agent.utd=2", "agent.num_qs=5", "agent.num_min_qs=2", "finetune.batch_size=128", f"finetune.eval_every={eval_every}",
            f"finetune.eval_episodes={EVAL_EPISODES}", "finetune.log_every=500", f"finetune.save_every={steps}"]


def pretrain() -> Path:
    from robolearn.rl.offline import train_offline

    out = BASE / "pretrain_iql"
    if not (out / "policy" / "checkpoint.json").exists():
        train_offline("iql", DATA, task="hopper", out=out, wandb_mode="off", progress=False, overrides=[
            "agent.hidden_dims=[64,64]", "agent.num_qs=5", "agent.actor_lr=0.001", "agent.critic_lr=0.001",
            "agent.value_lr=0.001", "train.steps=3000", "train.batch_size=128", "train.eval_every=3000",
            "train.eval_episodes=5", "train.log_every=1000", "train.save_every=3000"])
    return out / "policy"


def _warmup(name: str, study_warmup: int) -> int:
    w = METHODS[name][1]
    return study_warmup if w is None else w


def _run_dir(root: Path, name: str, seed: int, warmup: int) -> Path:
    algo, _, retain = METHODS[name]
    return root / f"{algo}_w{_warmup(name, warmup)}_r{retain}_s{seed}"


def _one(job: tuple[str, int, str, int, int, int]) -> dict:
    import torch

    from robolearn.rl.wsrl import finetune

    name, seed, root, steps, warmup, eval_every = job
    algo, _, retain = METHODS[name]
    out = _run_dir(Path(root), name, seed, warmup)
    if not (out / "continual.json").exists():
        torch.set_num_threads(1)
        t0 = time.time()
        finetune(BASE / "pretrain_iql" / "policy", task="hopper", algo=algo, warmup=_warmup(name, warmup), retain_offline=retain,
                 steps=steps, data=DATA, overrides=[*_ft_overrides(steps, eval_every), f"finetune.seed={seed}"], out=out,
                 wandb_mode="off", progress=False)
        (out / "wall.txt").write_text(f"{time.time() - t0:.1f}")
    summary = json.loads((out / "continual.json").read_text())
    wall = out / "wall.txt"
    return {"method": name, "seed": seed, "dir": str(out), "wall_s": float(wall.read_text()) if wall.exists() else None,
            **summary["metrics"]}


def run(a: argparse.Namespace) -> None:
    root = _study_dir(a.tag)
    budget = {"steps": a.steps, "warmup": a.warmup, "eval_every": a.eval_every, "eval_episodes": EVAL_EPISODES}
    if not a.tag and budget != {"steps": STEPS, "warmup": WARMUP, "eval_every": EVAL_EVERY, "eval_episodes": EVAL_EPISODES}:
        raise SystemExit("a budget other than the 3k-step study's needs --tag (run directories do not encode the budget)")
    old = json.loads((root / "study.json").read_text()) if (root / "study.json").exists() else None
    if old is not None and {k: old.get(k) for k in budget} != budget:
        raise SystemExit(f"{root} holds a study with {old}; use another --tag for {budget}")
    root.mkdir(parents=True, exist_ok=True)
    seeds = sorted(set(a.seeds) | set(old["seeds"] if old else []))
    settings = {**budget, "seeds": seeds}
    (root / "study.json").write_text(json.dumps(settings, indent=1))
    t0 = time.time()
    pretrain()
    print(f"pretrained in {time.time() - t0:.0f}s; study {root}: {settings}", flush=True)
    jobs = [(m, s, str(root), a.steps, a.warmup, a.eval_every) for s in a.seeds for m in METHODS]  # seed-major
    stop = stop_time(a.stop_at)
    print(f"{len(jobs)} jobs, {a.workers} worker(s), stop launching at {stop}", flush=True)
    run_jobs(jobs, _one, a.workers, lambda job: (_run_dir(root, job[0], job[1], a.warmup) / "continual.json").exists(),
             lambda results: (root / "results.json").write_text(json.dumps(results, indent=1)), stop,
             label=lambda job: job[:2])


def report(a: argparse.Namespace) -> None:
    from robolearn.rl.metrics import plot_curves

    root = _study_dir(a.tag)
    results = json.loads((root / "results.json").read_text())
    study = root / "study.json"
    settings = json.loads(study.read_text()) if study.exists() else {"steps": STEPS, "warmup": WARMUP, "eval_every": EVAL_EVERY}
    curves = {}
    print(f"| method | seeds | initial | final | best | min-ACC | min-ACC step | WC-ACC | windowed forgetting (w={3 * settings['eval_every']}) |")
    print("|---|---|---|---|---|---|---|---|---|")
    lines = []
    for name in METHODS:
        rows = sorted((r for r in results if r["method"] == name), key=lambda r: r["seed"])
        if not rows:
            continue
        cell = lambda k: f"{np.mean([r[k] for r in rows]):.0f} ± {np.std([r[k] for r in rows]):.0f}"  # noqa: E731
        print(f"| {name} | {[r['seed'] for r in rows]} | {cell('initial')} | {cell('final')} | {cell('best')} | {cell('min_acc')} | "
              f"{[r['min_acc_step'] for r in rows]} | {cell('wc_acc')} | {cell('windowed_forgetting')} |")
        hist = [json.loads((Path(r["dir"]) / "continual.json").read_text())["history"] for r in rows]
        steps = [h["step"] for h in hist[0]]
        scores = np.array([[h["score"] for h in hh] for hh in hist])
        curves[name] = (steps, scores.mean(0), (scores.min(0), scores.max(0)))
        print("   curve (mean over seeds):", " ".join(f"{s}:{v:.0f}" for s, v in zip(steps, scores.mean(0))))
        walls = [r["wall_s"] for r in rows if r.get("wall_s")]
        if walls:
            lines.append(f"{name} {np.mean(walls):.0f} s ({min(walls):.0f}-{max(walls):.0f}, n={len(walls)})")
    if lines:
        print("\nWall time per run: " + "; ".join(lines))
    n_seeds = len({r["seed"] for r in results})
    plot_curves(curves, _plot_path(a.tag), "mean return (5 fixed eval seeds)",
                f"Hopper-v5 fine-tuning from IQL, {settings['steps']} env steps, mean and min..max of {n_seeds} seeds",
                warmup=settings["warmup"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["run", "report"])
    ap.add_argument("--tag", help="separate study (runs/rl_study/wsrl_TAG, docs/results/wsrl_hopper_TAG.png); default: the 3k-step study")
    ap.add_argument("--steps", type=int, default=STEPS, help="online env steps per run, warm-up included")
    ap.add_argument("--warmup", type=int, default=WARMUP, help="WSRL warm-up env steps (no updates)")
    ap.add_argument("--eval-every", type=int, default=EVAL_EVERY, help="env steps between evaluations")
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--workers", type=int, default=WORKERS, help="parallel runs (env RL_WORKERS, default 2)")
    ap.add_argument("--stop-at", help="UTC HH:MM after which `run` launches no further run")
    a = ap.parse_args()
    run(a) if a.action == "run" else report(a)


if __name__ == "__main__":
    main()
