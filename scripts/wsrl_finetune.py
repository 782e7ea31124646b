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
import shutil
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
LATE = 5  # a returns-scored study also reports the mean of each run's last LATE evaluations (10k steps at eval_every 2500)
SCRATCH = "SAC from scratch"  # finetune.init=scratch: random weights, the study's --warmup of random actions
# run only when named in --methods: the pre-trained Cal-QL learner continuing online with its penalty (`finetune
# --algo calql`): with the study's warm-up and no retention (WSRL with the conservative penalty kept), and as the
# Cal-QL paper fine-tunes (no frozen warm-up, every batch half offline data)
OPTIONAL = {"Cal-QL penalty kept (warm-up, no retention)": ("calql", None, 0.0),
            "Cal-QL as published (no warm-up, 50/50 retention)": ("calql", 0, 0.5)}
ALL_METHODS = {**METHODS, **OPTIONAL}
METHOD_KEYS = {**dict(zip(("wsrl", "nowarmup", "retain"), METHODS)), "scratch": SCRATCH,
               **dict(zip(("calql", "calql_mix"), OPTIONAL))}  # --methods
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
            f"finetune.log_every={eval_every}", f"finetune.save_every={min(steps, 10 * eval_every)}", *(a.agent_set or [])]


REWARD_KEYS = ("agent.reward_scale", "agent.reward_bias")


def _reward_overrides(a: argparse.Namespace) -> list[str]:
    """The --agent-set entries that change the reward: pre-training must see the same reward as fine-tuning."""
    return [kv for kv in (a.agent_set or []) if kv.split("=", 1)[0] in REWARD_KEYS]


def _pretrain_dir(tag: str | None, pretrain_algo: str, pretrain_from: str | None = None) -> Path:
    """Where a study's offline checkpoint lives: its own folder, or that of the study named by --pretrain-from."""
    return _study_dir(pretrain_from or tag) / f"pretrain_{pretrain_algo}"


def _finished(pretrain_dir: Path) -> bool:
    """A pre-training that ran to its end (its final policy is written last)."""
    return (pretrain_dir / "policy" / "checkpoint.json").exists()


def pretrain(a: argparse.Namespace | None = None) -> Path:
    """The offline checkpoint every method starts from (IQL on Hopper for the old studies, else --pretrain on --data)."""
    from robolearn.rl.offline import train_offline

    if a is None or a.task == "hopper" and a.pretrain == "iql":
        out = BASE / "pretrain_iql"
        if not _finished(out):
            train_offline("iql", DATA, task="hopper", out=out, wandb_mode="off", progress=False, overrides=[
                "agent.hidden_dims=[64,64]", "agent.num_qs=5", "agent.actor_lr=0.001", "agent.critic_lr=0.001",
                "agent.value_lr=0.001", "train.steps=3000", "train.batch_size=128", "train.eval_every=3000",
                "train.eval_episodes=5", "train.log_every=1000", "train.save_every=3000"])
        return out / "policy"
    out = _pretrain_dir(a.tag, a.pretrain, a.pretrain_from)
    if a.pretrain_from and not _finished(out):
        raise SystemExit(f"--pretrain-from {a.pretrain_from}: {out} holds no finished pre-training")
    if a.pretrain_extend and not out.exists():  # a copy of that study's finished pre-training, continued below to --pretrain-steps
        src = _pretrain_dir(a.pretrain_extend, a.pretrain)
        if not _finished(src):
            raise SystemExit(f"--pretrain-extend {a.pretrain_extend}: {src} holds no finished pre-training")
        tmp = out.with_name(out.name + ".copying")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("policy", "continual.*"))
        tmp.rename(out)
    if (out / "checkpoints" / "last" / "checkpoint.json").exists() and not _finished(out):
        train_offline(a.pretrain, None, resume=out, wandb_mode="off", progress=False, overrides=[f"train.steps={a.pretrain_steps}"])
    elif not _finished(out):
        ov = [f"train.steps={a.pretrain_steps}", f"train.eval_every={max(1, a.pretrain_steps // 10)}",
              f"train.eval_episodes={a.eval_episodes}", "train.eval_num_envs=25", f"train.save_every={max(1, a.pretrain_steps // 10)}",
              f"train.log_every={max(1, a.pretrain_steps // 10)}", f"train.batch_size={a.batch_size}"]
        if a.pretrain in ("cql", "calql"):
            ov.append(f"agent.num_qs={a.num_qs}")  # SAC takes the whole ensemble over
        ov.extend(_reward_overrides(a))
        train_offline(a.pretrain, a.data, task=a.task, out=out, wandb_mode="off", progress=False, overrides=ov)
    return out / "policy"


CARRY = "finetune.optimizer_state=checkpoint"  # in --agent-set: fine-tune from the pre-training's final optimizer state


def _with_optimizers(policy: Path) -> Path:
    """The pre-training's checkpoints/last, which holds its optimizers, when it is the same step as its final policy."""
    last = policy.parent / "checkpoints" / "last"
    step = {d: json.loads((d / "checkpoint.json").read_text())["step"] for d in (policy, last) if (d / "checkpoint.json").exists()}
    if step.get(last) != step[policy]:
        raise SystemExit(f"{CARRY}: {last} is not the final step of {policy} ({step.get(last)} vs {step[policy]})")
    return last


def _warmup(name: str, study_warmup: int) -> int:
    w = ALL_METHODS[name][1] if name in ALL_METHODS else None
    return study_warmup if w is None else w


def _run_dir(root: Path, name: str, seed: int, warmup: int) -> Path:
    if name == SCRATCH:
        return root / f"scratch_w{warmup}_s{seed}"
    algo, _, retain = ALL_METHODS[name]
    return root / f"{algo}_w{_warmup(name, warmup)}_r{retain}_s{seed}"


def _one(job: tuple) -> dict:
    import torch

    from robolearn.rl.wsrl import finetune

    name, seed, root, steps, warmup, eval_every, a = job
    algo, _, retain = ALL_METHODS.get(name, ("sac", None, 0.0))
    out = _run_dir(Path(root), name, seed, warmup)
    new_study = a is not None and not (a.task == "hopper" and a.pretrain == "iql")
    finished_now = not (out / "continual.json").exists()
    if finished_now:
        torch.set_num_threads(1)
        t0 = time.time()
        # In the studies on our tasks SAC from scratch sees no offline data at all (no checkpoint: random
        # weights and an identity observation normalizer), as in the paper, so it need not wait for pre-training.
        ckpt = None if new_study and name == SCRATCH else pretrain(a)
        if ckpt is not None and new_study and CARRY in (a.agent_set or []):
            ckpt = _with_optimizers(ckpt)
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
                **({"agent_set": a.agent_set} if a.agent_set else {}),
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
    if new_study and not Path(a.data).exists():  # every method reads it (the store's normalizer, retention), scratch too
        raise SystemExit(f"--data {a.data}: no episode store there")
    budget = {"steps": a.steps, "warmup": a.warmup, "eval_every": a.eval_every,
              "eval_episodes": a.eval_episodes if new_study else EVAL_EPISODES}
    if new_study:
        budget.update(task=a.task, pretrain=a.pretrain, data=a.data, utd=a.utd, num_qs=a.num_qs, batch_size=a.batch_size,
                      pretrain_steps=a.pretrain_steps)
        if a.agent_set or a.pretrain_from:  # only when given, so that earlier studies' settings still match
            budget.update(agent_set=a.agent_set or [], pretrain_from=a.pretrain_from)
        if a.pretrain_extend:
            budget.update(pretrain_extend=a.pretrain_extend)
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


def _study_record(tag: str) -> dict:
    """The study's settings and its pre-training curve, committed beside the runs' jsonl
    (offline_to_online/wsrl_TAG_study.json); refreshed from runs/ when the study is on this machine."""
    path = RESULTS / f"wsrl_{tag}_study.json"
    root = _study_dir(tag)
    if (root / "study.json").exists():
        rec = {"settings": json.loads((root / "study.json").read_text())}
        st = rec["settings"]
        pre = _pretrain_dir(tag, st["pretrain"], st.get("pretrain_from")) / "continual.json"
        if pre.exists():
            summary = json.loads(pre.read_text())
            rec["pretrain"] = {"history": summary["history"], "metrics": summary.get("metrics")}
        if not path.exists() or json.loads(path.read_text()) != rec:
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(rec, indent=1))
            os.replace(tmp, path)
    if not path.exists():
        raise SystemExit(f"no study {tag!r}: neither {root / 'study.json'} nor {path}")
    return json.loads(path.read_text())


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _runs_of(tag: str) -> list[dict]:
    """The study's per-run records (offline_to_online/wsrl_TAG.jsonl), the last line per (method, seed)."""
    return list({(r["method"], r["seed"]): r for r in _jsonl(RESULTS / f"wsrl_{tag}.jsonl")}.values())


def _by_method(runs: list[dict]) -> dict[str, list[dict]]:
    """The runs of each method that has any, in the study's method order, each sorted by seed."""
    by = {m: sorted((r for r in runs if r["method"] == m), key=lambda r: r["seed"]) for m in [*ALL_METHODS, SCRATCH]}
    return {m: rows for m, rows in by.items() if rows}


def _pool(rates: list[float], episodes: int) -> tuple[int, int, float, float]:
    """Per-seed success rates of `episodes` evaluation episodes each, pooled: (wins, n, Wilson 95% lo, hi)."""
    from robolearn.evaluation import wilson_interval

    wins, n = sum(int(round(v * episodes)) for v in rates), episodes * len(rates)
    return (wins, n, *wilson_interval(wins, n))


def _pool_cell(wins: int, n: int, lo: float, hi: float) -> str:
    return f"{wins}/{n} = {wins / n:.2f} [{lo:.2f}, {hi:.2f}]"


def _scores_are_returns(settings: dict) -> bool:
    """Gymnasium tasks (Hopper) have no success signal: their runs are scored by mean return."""
    from robolearn.rl.envs import is_own_task

    return not is_own_task(settings["task"])


def wsrl_table(runs: list[dict], episodes: int, pretrained: float | None, returns: bool = False) -> list[str]:
    """Markdown table of a study plus the issue's three hypotheses, from per-run records.

    Success rates pool the final evaluation over seeds (n = episodes x seeds, Wilson 95%); returns
    (`returns`, Hopper) are averaged over seeds (± sd; min..max for the comparison). min-ACC is checked per
    seed against 0.8 x the pre-trained policy's level (`pretrained`, else the run's own step-0 evaluation,
    which for the methods that start from the checkpoint is that policy)."""
    by = _by_method(runs)
    final_head = "final (mean ± sd over seeds)" if returns else "final (pooled, 95% CI)"
    # Returns (Hopper, 10 episodes) swing by thousands between two evaluations when the hopper falls; the mean of
    # each run's last LATE evaluations says where a run ends up without hanging on one of them.
    late_head = f" last {LATE} evaluations (mean ± sd over seeds) |" if returns else ""
    out = [f"| method | seeds | step 0 | {final_head} |{late_head} best | min-ACC | min-ACC step | gap depth | "
           "time to recover | WC-ACC | runs with min-ACC >= 0.8 x pre-trained | wall/run |", "|" + "---|" * (13 if returns else 12)]
    late = {m: [float(np.mean([c[2] for c in r["curve"][-LATE:]])) for r in rows] for m, rows in by.items()} if returns else {}
    pooled, kept = {}, {}  # per method: (level, lo, hi) (Wilson interval, or the seeds' min..max for returns); seeds with min-ACC >= 0.8 x reference
    ref = lambda r: pretrained if pretrained is not None else r["initial"]  # noqa: E731
    digits = 0 if returns else 2
    spread_of = lambda vals: f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}"  # noqa: E731
    sd = lambda rows, k: spread_of([r[k] for r in rows])  # noqa: E731
    mean_range = lambda vals: (float(np.mean(vals)), min(vals), max(vals))  # noqa: E731  (returns: mean, seeds' min..max)
    for m, rows in by.items():
        finals = [r["final"] for r in rows]
        if returns:
            pooled[m] = mean_range(finals)
            final_cell = sd(rows, "final")
        else:
            wins, n, lo, hi = _pool(finals, episodes)
            pooled[m] = (wins / n, lo, hi)
            final_cell = _pool_cell(wins, n, lo, hi)
        kept[m] = sum(r["min_acc"] >= 0.8 * ref(r) for r in rows)
        ttr = [r["time_to_recover"] for r in rows]
        wall = [r["wall_s"] for r in rows if r.get("wall_s")]
        late_cell = f" {spread_of(late[m])} |" if returns else ""
        out.append(f"| {m} | {[r['seed'] for r in rows]} | {sd(rows, 'initial')} | {final_cell} |{late_cell}"
                   f" {sd(rows, 'best')} | {sd(rows, 'min_acc')} | {[r['min_acc_step'] for r in rows]} | "
                   f"{sd(rows, 'gap_depth')} | {ttr} | {sd(rows, 'wc_acc')} | {kept[m]}/{len(rows)} | "
                   f"{(f'{np.mean(wall) / 60:.0f} min' if wall else '-')} |")
    level = f"the pre-trained policy's {'return' if returns else 'success'}" + (
        f" ({pretrained:.{digits}f})" if pretrained is not None else " (each run's step 0)")
    verdicts = [f"Reference for min-ACC: {level}."]
    w, nw, ret = list(METHODS)
    for m, claim in ((w, "no early collapse with warm-up"), (nw, "collapse without warm-up")):
        if m in kept:
            n_seeds = len(by[m])
            holds = kept[m] == n_seeds if m == w else kept[m] == 0
            verdicts.append(f"- {claim}: min-ACC >= 0.8 x reference on {kept[m]}/{n_seeds} seeds of {m!r} -> "
                            f"{'holds' if holds else 'does not hold'}")
    if w in pooled and ret in pooled:
        spread = "seeds" if returns else "intervals"

        def compare(wsrl_level: tuple, ret_level: tuple) -> str:
            """'A [lo, hi] vs B [lo, hi] -> verdict' for WSRL >= retention."""
            (pw, lw, hw), (pr, lr, hr) = wsrl_level, ret_level
            verdict = ("holds" if pw >= pr else f"does not hold ({spread} apart)" if lr > hw
                       else f"not shown: WSRL lower, {spread} overlap")
            return (f"{pw:.{digits}f} [{lw:.{digits}f}, {hw:.{digits}f}] vs {pr:.{digits}f} [{lr:.{digits}f}, {hr:.{digits}f}] "
                    f"-> {verdict}")

        what = "mean return (seeds' min..max)" if returns else "success"
        verdicts.append(f"- final {what} WSRL >= retention: {compare(pooled[w], pooled[ret])}")
        if returns:
            verdicts.append(f"- the same on the mean of each run's last {LATE} evaluations: "
                            f"{compare(mean_range(late[w]), mean_range(late[ret]))}")
    return out + [""] + verdicts


def report(a: argparse.Namespace) -> None:
    from robolearn.rl.metrics import plot_curves

    root = _study_dir(a.tag)
    study = root / "study.json"
    settings = json.loads(study.read_text()) if study.exists() else {"steps": STEPS, "warmup": WARMUP, "eval_every": EVAL_EVERY}
    # a study with a "task" setting is a new one, whatever --task says
    new_study = a.tag and ((RESULTS / f"wsrl_{a.tag}.jsonl").exists() or "task" in settings)
    if a.task != "hopper" or a.pretrain != "iql" or new_study:
        return _report_committed(a.tag)
    results = json.loads((root / "results.json").read_text())
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


def _success_settings(tag: str) -> dict:
    """A study's settings, for the tables that pool success rates (a Hopper study's returns cannot be)."""
    settings = _study_record(tag)["settings"]
    if _scores_are_returns(settings):
        raise SystemExit(f"study {tag} ({settings['task']}) is scored by returns; this table pools success rates (use `report`)")
    return settings


def _pooled_at(runs: list[dict], step: int, episodes: int) -> str:
    """Success at one evaluation step pooled over the runs' seeds, with its Wilson interval."""
    vals = [next((c[1] for c in r["curve"] if c[0] == step), None) for r in runs]
    return "-" if any(v is None for v in vals) else _pool_cell(*_pool(vals, episodes))


PROBE_BASE = {"utd": 1, "batch_size": 256, "num_qs": 2}  # study pc's settings, against which a probe's changes are listed


def probe_table(tags: list[str], until: int) -> list[str]:
    """One row per study (WSRL runs only), compared through the same window: the pre-trained level, pooled
    success 2500 env steps after the warm-up and at `until`, and min-ACC over steps <= `until`."""
    wsrl = list(METHODS)[0]
    out = ["| study | changed from pc | pre-training | pre-trained | first evaluation after the warm-up (step: pooled) | "
           "2500 env steps after the warm-up (pooled) | "
           f"min-ACC to {until} (per seed) | at {until} (pooled) | seeds with min-ACC >= 0.8 x pre-trained |",
           "|---|---|---|---|---|---|---|---|---|"]
    for tag in tags:
        st = _success_settings(tag)
        runs = sorted((r for r in _runs_of(tag) if r["method"] == wsrl), key=lambda r: r["seed"])
        changed = [f"{k} {st[k]}" for k, v in PROBE_BASE.items() if st[k] != v]
        changed += st.get("agent_set") or []
        pre_from = st.get("pretrain_from") or tag
        pre = (f"{st['pretrain']} {st['pretrain_steps']} steps" + (f" (study {pre_from}'s)" if pre_from != tag else "")
               + (f", extending {st['pretrain_extend']}'s" if st.get("pretrain_extend") else ""))
        level = runs[0]["initial"]
        mins = [min(c[1] for c in r["curve"] if c[0] <= until) for r in runs]
        switch = st["warmup"] + 2500
        first = min(c[0] for c in runs[0]["curve"] if c[0] > st["warmup"])
        out.append(f"| {tag} | {', '.join(changed) or '-'} | {pre} | {level:.2f} | {first}: {_pooled_at(runs, first, st['eval_episodes'])} | "
                   f"{_pooled_at(runs, switch, st['eval_episodes'])} | "
                   f"{' / '.join(f'{m:.2f}' for m in mins)} | {_pooled_at(runs, until, st['eval_episodes'])} | "
                   f"{sum(m >= 0.8 * level for m in mins)}/{len(runs)} |")
    return out


def at_table(tags: list[str], steps: list[int]) -> list[str]:
    """Every method of the studies in `tags`, pooled success at the same env steps (Wilson intervals):
    methods of different studies compared step for step, e.g. two fine-tunings with the same data mix."""
    out = [f"| study | method | seeds | {' | '.join(f'step {s}' for s in steps)} |", "|---|---|---|" + "---|" * len(steps)]
    for tag in tags:
        episodes = _success_settings(tag)["eval_episodes"]
        for m, rows in _by_method(_runs_of(tag)).items():
            out.append(f"| {tag} | {m} | {[r['seed'] for r in rows]} | "
                       + " | ".join(_pooled_at(rows, s, episodes) for s in steps) + " |")
    return out


TRAINING_KEYS = ("td_loss", "q_mean", "actor_loss", "temperature", "entropy", "train_episode_return", "grad_updates",
                 "cql_penalty", "calql_bound_rate", "calql_bound_rate_next")  # the last three: CQL-family learners fine-tuning online
PRETRAIN_KEYS = ("td_loss", "cql_penalty", "q_mean", "calql_bound_rate", "calql_bound_rate_next", "temperature", "entropy")  # Cal-QL's learner, per log


def training_stats(a: argparse.Namespace) -> None:
    """What the learners did around the switch to online updates, per run: the logged training
    statistics (critic TD loss, mean Q, temperature, entropy, ...) from each run's metrics.jsonl and the
    pre-training's logs (its last in full), into offline_to_online/wsrl_TAG_training.json (needs the runs' folders)."""
    root = _study_dir(a.tag)
    settings = json.loads((root / "study.json").read_text())
    out: dict = {"settings": settings, "runs": []}
    pre = _pretrain_dir(a.tag, settings["pretrain"], settings.get("pretrain_from")) / "metrics.jsonl"
    if pre.exists():
        logged = [r for r in _jsonl(pre) if "q_mean" in r]
        out["pretrain_last_log"] = logged[-1]
        out["pretrain_log"] = [{"step": r["step"], **{k: r[k] for k in PRETRAIN_KEYS if k in r}} for r in logged]
    for run in sorted(root.glob("*_s[0-9]*")):
        metrics = run / "metrics.jsonl"
        if not (run / "continual.json").exists() or not metrics.exists():
            continue  # unfinished
        out["runs"].append({"dir": run.name, "log": [{"step": r["step"], **{k: r[k] for k in TRAINING_KEYS if k in r},
                                                      **({"eval_success": r["eval_success"]} if "eval_success" in r else {})}
                                                     for r in _jsonl(metrics)]})
    path = RESULTS / f"wsrl_{a.tag}_training.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, path)
    print(f"wrote {path}: {len(out['runs'])} finished runs")


def _report_committed(tag: str | None) -> None:
    """A study on our tasks, from the committed records alone: table, hypotheses and the curves plot."""
    from robolearn.rl.metrics import plot_curves

    if not tag:
        raise SystemExit("a study on our tasks needs --tag")
    if not (RESULTS / f"wsrl_{tag}.jsonl").exists():
        raise SystemExit(f"study {tag}: no finished run yet ({RESULTS / f'wsrl_{tag}.jsonl'} is written as runs finish)")
    study = _study_record(tag)
    settings, runs = study["settings"], _runs_of(tag)
    pre = study.get("pretrain")
    returns = _scores_are_returns(settings)
    key, col, digits = ("return", 2, 0) if returns else ("success", 1, 2)  # curve entries: [step, success, return]
    pretrained = pre["history"][-1][key] if pre else None
    if pre:
        print(f"pre-training ({settings['pretrain']}, {settings['pretrain_steps']} steps) {key} by step: "
              + " ".join(f"{h['step']}:{h[key]:.{digits}f}" for h in pre["history"]))
    print("\n".join(wsrl_table(runs, settings["eval_episodes"], pretrained, returns=returns)))
    curves = {}
    for m, rows in _by_method(runs).items():
        steps = [c[0] for c in rows[0]["curve"]]
        scores = np.array([[c[col] for c in r["curve"]] for r in rows])
        curves[m] = (steps, scores.mean(0), (scores.min(0), scores.max(0)))
    seeds = sorted({r["seed"] for r in runs})
    extra = f", {' '.join(settings['agent_set'])}" if settings.get("agent_set") else ""
    plot = plot_curves(curves, RESULTS / f"wsrl_{tag}.png", "mean return" if returns else "success rate",
                       f"{settings['task']} fine-tuning from {settings['pretrain']} (UTD {settings['utd']}, {settings['num_qs']} critics{extra}), "
                       f"mean and min..max of seeds {seeds}", warmup=settings["warmup"], reference=pretrained)
    print(f"plot: {plot}")


def pair_table(tags: list[str], every: int = 1000) -> list[str]:
    """Two studies' runs of the same method and seed, side by side from their committed training logs
    (wsrl_TAG_training.json): where their logged statistics first differ, and every `every` env steps
    the Cal-QL bound rate, mean Q and success of each (e.g. a change that only acts once a bound binds)."""
    first, second = ({r["dir"]: r["log"] for r in json.loads((RESULTS / f"wsrl_{t}_training.json").read_text())["runs"]} for t in tags)
    out = []
    for name in sorted(set(first) & set(second)):
        a, b = ({r["step"]: r for r in log} for log in (first[name], second[name]))
        steps = sorted(set(a) & set(b))
        differ = [s for s in steps if a[s] != b[s]]
        out += [f"{name}: {tags[0]} and {tags[1]} logged the same values at {len(steps) - len(differ)} of {len(steps)} logged steps; "
                + (f"first difference at step {differ[0]}" if differ else "no difference"), "",
                f"| step | bound rate {tags[1]} | mean Q {tags[0]} | mean Q {tags[1]} | success {tags[0]} | success {tags[1]} |",
                "|---|---|---|---|---|---|"]
        for s in steps:
            if s % every == 0 and "q_mean" in b[s]:
                out.append(f"| {s} | {b[s].get('calql_bound_rate', float('nan')):.4f} | {a[s]['q_mean']:.1f} | {b[s]['q_mean']:.1f} "
                           f"| {a[s].get('eval_success', float('nan')):.2f} | {b[s].get('eval_success', float('nan')):.2f} |")
        out.append("")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["run", "report", "training-stats", "probes", "pair", "at"],
                    help="probes: one table row per study in --tags, WSRL runs compared up to --until env steps; "
                         "pair: two studies' (--tags A B) runs of the same method and seed, from their training logs; "
                         "at: every method of the studies in --tags, pooled success at --at-steps")
    ap.add_argument("--tags", nargs="+", default=["pc", "pc_min", "pc_utd4", "pc_b1024", "pc_pre80k", "pc_rb1", "pc_ref"])
    ap.add_argument("--until", type=int, default=15000)
    ap.add_argument("--at-steps", nargs="+", type=int, default=[2500, 5000, 7500, 15000], help="env steps the `at` table shows")
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
    ap.add_argument("--agent-set", nargs="+", metavar="KEY=VALUE",
                    help="extra fine-tuning overrides for every method, e.g. agent.actor_q=min (recorded in the study); "
                         "agent.reward_scale / agent.reward_bias also apply to the pre-training")
    ap.add_argument("--pretrain-from", metavar="TAG", help="start from the finished pre-training of study TAG instead of pre-training again")
    ap.add_argument("--pretrain-extend", metavar="TAG",
                    help="continue a copy of study TAG's finished pre-training (same settings) to --pretrain-steps")
    ap.add_argument("--methods", nargs="+", choices=list(METHOD_KEYS),
                    help="run only these methods (e.g. `--methods scratch` in a second process while the first pre-trains)")
    a = ap.parse_args()
    if a.pretrain_from and a.pretrain_extend:
        ap.error("--pretrain-from and --pretrain-extend exclude each other")
    if a.action == "probes":
        print("\n".join(probe_table(a.tags, a.until)))
        return
    if a.action == "at":
        print("\n".join(at_table(a.tags, a.at_steps)))
        return
    if a.action == "pair":
        if len(a.tags) != 2:
            ap.error("pair compares two studies: --tags A B")
        print("\n".join(pair_table(a.tags)))
        return
    {"run": run, "report": report, "training-stats": training_stats}[a.action](a)


if __name__ == "__main__":
    main()
