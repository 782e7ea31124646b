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

WSRL as in the paper (issue 20): `--pretrain calql` pre-trains Cal-QL (10-critic ensemble) on a store of
our tasks, then fine-tunes with a 5000-step warm-up of the frozen pre-trained policy and online-only SAC;
baselines no warm-up, 50/50 retention, and SAC from scratch (random-action warm-up). Each finished run is
appended to docs/results/offline_to_online/wsrl_TAG.jsonl (curve + continual metrics), e.g.

    python scripts/wsrl_finetune.py run --tag pc --task push_cube --data data/o2o/push_cube_mix0.5.zarr \
        --pretrain calql --pretrain-steps 50000 --steps 50000 --warmup 5000 --eval-every 2500 --eval-episodes 50 \
        --utd 4 --num-qs 10 --batch-size 256 --workers 1 --with-scratch
    python scripts/wsrl_finetune.py report --tag pc
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
SCRATCH = "SAC from scratch"  # finetune.init=scratch: random weights, the study's --warmup of random actions
METHOD_KEYS = {"wsrl": "WSRL (warm-up, no retention)", "nowarmup": "no warm-up, no retention",
               "retain": "50/50 offline retention", "scratch": SCRATCH}  # --methods
RESULTS = Path("docs/results/offline_to_online")
WORKERS = int(os.environ.get("RL_WORKERS", "2"))


def _study_dir(tag: str | None) -> Path:
    return BASE if not tag else BASE.parent / f"wsrl_{tag}"


def _plot_path(tag: str | None) -> str:
    return "docs/results/wsrl_hopper.png" if not tag else f"docs/results/wsrl_hopper_{tag}.png"


def _ft_overrides(steps: int, eval_every: int, a: argparse.Namespace | None = None) -> list[str]:
    if a is None or a.task == "hopper" and a.pretrain == "iql":  # the Hopper studies (sections 2, 2b)
        return ["agent.utd=2", "agent.num_qs=5", "agent.num_min_qs=2", "finetune.batch_size=128", f"finetune.eval_every={eval_every}",
                f"finetune.eval_episodes={EVAL_EPISODES}", "finetune.log_every=500", f"finetune.save_every={steps}"]
    return [f"agent.utd={a.utd}", f"agent.num_qs={a.num_qs}", "agent.num_min_qs=2", f"finetune.batch_size={a.batch_size}",
            f"finetune.eval_every={eval_every}", f"finetune.eval_episodes={a.eval_episodes}", "finetune.eval_num_envs=25",
            f"finetune.log_every={eval_every}", f"finetune.save_every={min(steps, 10 * eval_every)}"]


def pretrain(a: argparse.Namespace | None = None) -> Path:
    """The offline checkpoint every method starts from (IQL on Hopper for the old studies, else --pretrain on --data)."""
    from robolearn.rl.offline import train_offline

    if a is None or a.task == "hopper" and a.pretrain == "iql":
        out = BASE / "pretrain_iql"
        if not (out / "policy" / "checkpoint.json").exists():
            train_offline("iql", DATA, task="hopper", out=out, wandb_mode="off", progress=False, overrides=[
                "agent.hidden_dims=[64,64]", "agent.num_qs=5", "agent.actor_lr=0.001", "agent.critic_lr=0.001",
                "agent.value_lr=0.001", "train.steps=3000", "train.batch_size=128", "train.eval_every=3000",
                "train.eval_episodes=5", "train.log_every=1000", "train.save_every=3000"])
        return out / "policy"
    out = _study_dir(a.tag) / f"pretrain_{a.pretrain}"
    if (out / "checkpoints" / "last" / "checkpoint.json").exists() and not (out / "policy" / "checkpoint.json").exists():
        train_offline(a.pretrain, None, resume=out, wandb_mode="off", progress=False)
    elif not (out / "policy" / "checkpoint.json").exists():
        ov = [f"train.steps={a.pretrain_steps}", f"train.eval_every={max(1, a.pretrain_steps // 10)}",
              f"train.eval_episodes={a.eval_episodes}", "train.eval_num_envs=25", f"train.save_every={max(1, a.pretrain_steps // 10)}",
              f"train.log_every={max(1, a.pretrain_steps // 10)}", f"train.batch_size={a.batch_size}"]
        if a.pretrain in ("cql", "calql"):
            ov.append(f"agent.num_qs={a.num_qs}")  # SAC takes the whole ensemble over
        train_offline(a.pretrain, a.data, task=a.task, out=out, wandb_mode="off", progress=False, overrides=ov)
    return out / "policy"


def _warmup(name: str, study_warmup: int) -> int:
    w = METHODS[name][1] if name in METHODS else None
    return study_warmup if w is None else w


def _run_dir(root: Path, name: str, seed: int, warmup: int) -> Path:
    if name == SCRATCH:
        return root / f"scratch_w{warmup}_s{seed}"
    algo, _, retain = METHODS[name]
    return root / f"{algo}_w{_warmup(name, warmup)}_r{retain}_s{seed}"


def _one(job: tuple) -> dict:
    import torch

    from robolearn.rl.wsrl import finetune

    name, seed, root, steps, warmup, eval_every, a = job
    algo, _, retain = METHODS.get(name, ("sac", None, 0.0))
    out = _run_dir(Path(root), name, seed, warmup)
    new_study = a is not None and not (a.task == "hopper" and a.pretrain == "iql")
    finished_now = not (out / "continual.json").exists()
    if finished_now:
        torch.set_num_threads(1)
        t0 = time.time()
        # In the studies on our tasks SAC from scratch sees no offline data at all (no checkpoint: random
        # weights and an identity observation normalizer), as in the paper, so it need not wait for pre-training.
        ckpt = None if new_study and name == SCRATCH else pretrain(a)
        extra = ["finetune.init=scratch"] if name == SCRATCH else []
        if (out / "checkpoints" / "last" / "checkpoint.json").exists():
            finetune(None, resume=out, wandb_mode="off", progress=False)
        else:
            finetune(ckpt, task=a.task if new_study else "hopper", algo=algo, warmup=_warmup(name, warmup), retain_offline=retain,
                     steps=steps, data=a.data if new_study else DATA,
                     overrides=[*_ft_overrides(steps, eval_every, a), f"finetune.seed={seed}", *extra], out=out,
                     wandb_mode="off", progress=False)
        (out / "wall.txt").write_text(f"{time.time() - t0:.1f}")
    summary = json.loads((out / "continual.json").read_text())
    wall = out / "wall.txt"
    rec = {"method": name, "seed": seed, "dir": str(out), "wall_s": float(wall.read_text()) if wall.exists() else None,
           **summary["metrics"]}
    if new_study and finished_now:  # a run found finished (a resumed study) is already in the jsonl
        line = {**rec, "task": a.task, "pretrain": a.pretrain, "steps": steps, "warmup": _warmup(name, warmup),
                "curve": [[h["step"], h["success"], h["return"]] for h in summary["history"]],
                "grad_updates": summary.get("grad_updates"), "offline_samples": summary.get("offline_samples"),
                "loadavg": Path("/proc/loadavg").read_text().split()[:3], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        RESULTS.mkdir(parents=True, exist_ok=True)
        with (RESULTS / f"wsrl_{a.tag}.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")
    return rec


def run(a: argparse.Namespace) -> None:
    root = _study_dir(a.tag)
    new_study = not (a.task == "hopper" and a.pretrain == "iql")
    if new_study and (not a.tag or not a.data):
        raise SystemExit("a study on another task or pre-training algorithm needs --tag and --data")
    budget = {"steps": a.steps, "warmup": a.warmup, "eval_every": a.eval_every,
              "eval_episodes": a.eval_episodes if new_study else EVAL_EPISODES}
    if new_study:
        budget.update(task=a.task, pretrain=a.pretrain, data=a.data, utd=a.utd, num_qs=a.num_qs, batch_size=a.batch_size,
                      pretrain_steps=a.pretrain_steps)
    if not a.tag and budget != {"steps": STEPS, "warmup": WARMUP, "eval_every": EVAL_EVERY, "eval_episodes": EVAL_EPISODES}:
        raise SystemExit("a budget other than the 3k-step study's needs --tag (run directories do not encode the budget)")
    old = json.loads((root / "study.json").read_text()) if (root / "study.json").exists() else None
    if old is not None and {k: old.get(k) for k in budget} != budget:
        raise SystemExit(f"{root} holds a study with {old}; use another --tag for {budget}")
    root.mkdir(parents=True, exist_ok=True)
    seeds = sorted(set(a.seeds) | set(old["seeds"] if old else []))
    settings = {**budget, "seeds": seeds}
    (root / "study.json").write_text(json.dumps(settings, indent=1))
    methods = [*METHODS, *([SCRATCH] if a.with_scratch else [])]
    if a.methods:
        methods = [METHOD_KEYS[k] for k in a.methods]
    t0 = time.time()
    if not (new_study and methods == [SCRATCH]):  # scratch alone can run beside the pre-training
        pretrain(a)
    print(f"pretrained in {time.time() - t0:.0f}s; study {root}: {settings}", flush=True)
    jobs = [(m, s, str(root), a.steps, a.warmup, a.eval_every, a) for s in a.seeds for m in methods]  # seed-major
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
    for name in [*METHODS, SCRATCH]:
        rows = sorted((r for r in results if r["method"] == name), key=lambda r: r["seed"])
        if not rows:
            continue
        digits = 0 if settings.get("task", "hopper") == "hopper" else 2  # returns vs success rates
        cell = lambda k: f"{np.mean([r[k] for r in rows]):.{digits}f} ± {np.std([r[k] for r in rows]):.{digits}f}"  # noqa: E731
        print(f"| {name} | {[r['seed'] for r in rows]} | {cell('initial')} | {cell('final')} | {cell('best')} | {cell('min_acc')} | "
              f"{[r['min_acc_step'] for r in rows]} | {cell('wc_acc')} | {cell('windowed_forgetting')} |")
        hist = [json.loads((Path(r["dir"]) / "continual.json").read_text())["history"] for r in rows]
        steps = [h["step"] for h in hist[0]]
        scores = np.array([[h["score"] for h in hh] for hh in hist])
        curves[name] = (steps, scores.mean(0), (scores.min(0), scores.max(0)))
        print("   curve (mean over seeds):", " ".join(f"{s}:{v:.{digits}f}" for s, v in zip(steps, scores.mean(0))))
        walls = [r["wall_s"] for r in rows if r.get("wall_s")]
        if walls:
            lines.append(f"{name} {np.mean(walls):.0f} s ({min(walls):.0f}-{max(walls):.0f}, n={len(walls)})")
    if lines:
        print("\nWall time per run: " + "; ".join(lines))
    n_seeds = len({r["seed"] for r in results})
    task, pre = settings.get("task", "hopper"), settings.get("pretrain", "iql")
    plot_curves(curves, _plot_path(a.tag) if task == "hopper" else str(RESULTS / f"wsrl_{a.tag}.png"),
                "mean return" if task == "hopper" else "success rate", f"{task} fine-tuning from {pre}, {settings['steps']} env steps, "
                f"mean and min..max of {n_seeds} seeds", warmup=settings["warmup"])


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
    ap.add_argument("--task", default="hopper", help="task to fine-tune on (default: the Hopper studies)")
    ap.add_argument("--data", help="offline store: pre-training data and the 50/50 baseline's retained data")
    ap.add_argument("--pretrain", default="iql", choices=["iql", "calql", "cql", "td3bc"], help="offline algorithm pre-trained once")
    ap.add_argument("--pretrain-steps", type=int, default=50_000)
    ap.add_argument("--eval-episodes", type=int, default=50)
    ap.add_argument("--utd", type=int, default=4)
    ap.add_argument("--num-qs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--with-scratch", action="store_true", help="also run SAC from scratch (random weights, random-action warm-up)")
    ap.add_argument("--methods", nargs="+", choices=list(METHOD_KEYS),
                    help="run only these methods (e.g. `--methods scratch` in a second process while the first pre-trains)")
    a = ap.parse_args()
    run(a) if a.action == "run" else report(a)


if __name__ == "__main__":
    main()
