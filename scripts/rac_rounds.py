#!/usr/bin/env python
"""RaC in its own regime: a demo-scaling curve, then rounds of deploy -> intervene -> fine-tune.

Stages (each resumable: every finished unit appends one JSON record to OUT/records.jsonl and is
skipped when the script is run again with the same arguments; a unit cut off mid-way is redone,
a cut-off training run continues with `robolearn train --resume` semantics):

  scaling  per seed and demo count N: N clean scripted demos (the first N of one collection, so
           the sets are nested), a policy trained from scratch, evaluated under perturbations.
           Pick a base on the plateau (below 0.9) from this curve.
  rounds   per seed, from the base trained on --base-demos demos, per method and round:
             rac        scripted operator: takeover when a failure predictor fires, recovery =
                        rewind to a pose this rollout visited, correction of the current sub-task,
                        then control returns to the policy (RaC's rule); data.mix=rac
             rac_end    the same, but the episode ends with the intervention; data.mix=rac
             hg_dagger  same trigger, correction without the rewind, hand back; data.mix=hg_dagger
             iwr        hg_dagger's protocol, data.mix=iwr
             sirius     hg_dagger's protocol, data.mix=sirius
             demos      more clean scripted demos, collected exactly like the base's; data.mix=all
             no_new_data the control: no collection, the same fine-tuning on the base's own demos
                        (what the extra training alone does)
           every method's collections of round r use the same scene seeds (so hg_dagger, iwr and
           sirius record identical round-1 data and differ by their weighting only), and every
           method has spent r x --budget operator-labelled steps by the end of round r (each round
           collects until the cumulative budget is reached, so one round's overshoot, at most one
           episode, is taken off the next; demos: whole demos), then FINE-TUNES the previous round's policy (train --init-from)
           on everything collected so far, evaluating every --continual-every steps on
           --continual-episodes episodes (min-ACC / WC-ACC from robolearn.rl.metrics), and
           finally on --eval-episodes episodes (the same seeds for every method and round).
  episodes for records written before evaluations kept per-episode outcomes: evaluate each recorded
           checkpoint again on the same episodes and append its outcomes (kind "episodes"; the
           successes must match the record's, or it says so), so the table can pair methods
  ablation what in RaC's data makes the difference: from the base, fine-tune on RaC's round-1
           recordings without the recovery segments (data.mix=corrections) and without the robot
           steps of autonomous successes (data.mix=hg_dagger), the same steps and training seed as
           RaC's round 1, evaluated on the same episodes (records kind "ablation")
  table    regenerate the tables (markdown) and plots from the records of one or more OUT dirs.

    python scripts/rac_rounds.py --stage scaling --out runs/rac19 --task sort --set num_cubes=3 --set obs_relative=true \
        --expert-mode 0 --perturb 0.05 --demo-counts 100 200 400 800 --seeds 0 1 2 --policy hierarchical ...
    python scripts/rac_rounds.py --stage rounds --out runs/rac19 ... --base-demos 200 --rounds 3 --budget 2000
    python scripts/rac_rounds.py --stage table --out docs/results/interventions --from runs/rac19

`--merge RUN_DIR...` pools the results.jsonl of the earlier from-scratch protocol (kept for its
committed results).
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

METHODS = ("rac", "rac_end", "hg_dagger", "iwr", "sirius", "demos", "no_new_data")
MIX = {"rac": "rac", "rac_end": "rac", "hg_dagger": "hg_dagger", "iwr": "iwr", "sirius": "sirius", "demos": "all",
       "no_new_data": "all"}
LEGACY_METHODS = ("rac", "hg_dagger", "iwr", "sirius", "demos")
HIERARCHICAL_SORT = ["policy.object_centric=true", "policy.stage_obs_others=true", "policy.stage_sliced_heads=true",
                     "policy.requery_on_stage_change=true", "policy.max_primitive_steps=40",
                     "policy.stage_head=first_not_done"]


def operator_labelled_steps(store: Any) -> int:
    c = store.source_counts()
    return c["demo"] + c["recovery"] + c["correction"]


# ----------------------------------------------------------------------------------- records
class Records:
    """OUT/records.jsonl: one JSON line per finished unit, appended (and fsynced) as it lands."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []

    def find(self, **key: Any) -> dict[str, Any] | None:
        return next((r for r in self.rows if all(r.get(k) == v for k, v in key.items())), None)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def seeds_of(seed: int) -> dict[str, int]:
    """Disjoint seed ranges per training seed: demos, per-round collections, evaluations."""
    return {"demos": 1_000_000 * (seed + 1), "rounds": 1_000_000 * (seed + 1) + 500_000,
            "eval": 50_000_000 + 100_000 * seed, "continual": 60_000_000 + 100_000 * seed}


# ----------------------------------------------------------------------------------- pieces
def train_run(args: argparse.Namespace, data: Path, run: Path, mix: str, steps: int, seed: int,
              init_from: Path | None = None, save_every: int | None = None) -> Path:
    """Train (or continue training) into `run`; returns its final policy checkpoint."""
    from robolearn.training import train

    if (run / "policy" / "checkpoint.json").is_file():
        return run / "policy"
    last = run / "checkpoints" / "last"
    if (last / "checkpoint.json").is_file():  # cut off: continue exactly
        from robolearn.checkpoint import read_meta

        if int(read_meta(last)["step"]) >= steps:  # cut off between the last save and the final policy
            tmp = run / "policy.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            shutil.copytree(last, tmp)
            os.replace(tmp, run / "policy")
            return run / "policy"
        train(None, None, resume=run, wandb_mode="off", progress=False)
        if save_every is None:
            for step_dir in (run / "checkpoints").glob("step_*"):
                shutil.rmtree(step_dir)
        return run / "policy"
    if run.exists():
        shutil.rmtree(run)
    # scratch runs save every 1000 steps so a cut-off run resumes; their step copies are dropped at the end
    every = save_every or min(steps, 1000)
    overrides = [f"data.mix={mix}", f"train.steps={steps}", f"train.seed={seed}", "train.val_ratio=0.0",
                 "train.eval_episodes=0", f"train.save_every={every}", f"train.eval_every={steps}",
                 f"train.log_every={max(1, min(steps, save_every or steps) // 5)}", "train.device=cpu", "train.num_workers=0",
                 *args.policy_overrides]
    if init_from is not None:
        overrides.append(f"train.lr={args.finetune_lr}")
        overrides.append(f"train.lr_warmup_steps={min(100, steps // 10)}")
    train(args.policy, data, task=args.task, out=run, overrides=overrides, wandb_mode="off", progress=False,
          init_from=init_from)
    if save_every is None:
        for step_dir in (run / "checkpoints").glob("step_*"):
            shutil.rmtree(step_dir)
    return run / "policy"


def evaluate(args: argparse.Namespace, ckpt: Path, episodes: int, seed: int) -> dict[str, Any]:
    from robolearn.evaluation import evaluate_policy, load_any_policy

    t0 = time.perf_counter()
    policy, _ = load_any_policy(ckpt)
    rep = evaluate_policy(policy, args.task, episodes, seed=seed, num_envs=args.num_envs, perturb=args.perturb,
                          progress=False, task_overrides=args.task_overrides)
    succ = [r for r in rep["episodes"] if r["success"]]
    return {"n": rep["n"], "successes": rep["successes"], "success_rate": rep["success_rate"], "ci95": rep["ci95"],
            "recoveries_per_episode": rep["recoveries_per_episode"], "setbacks_per_episode": rep["setbacks_per_episode"],
            "failure_exposures_per_episode": rep["failure_exposures_per_episode"],
            "failure_events_per_episode": rep["failure_events_per_episode"],
            "recoveries_per_successful_episode": float(np.mean([r["recoveries"] for r in succ])) if succ else 0.0,
            "recoveries_histogram": np.bincount([r["recoveries"] for r in rep["episodes"]]).tolist(),
            "success_by_recoveries": _success_by_recoveries(rep["episodes"]),
            "successes_per_episode": [bool(r["success"]) for r in rep["episodes"]],
            "eval_seconds": time.perf_counter() - t0}


def _episodes_key(r: dict[str, Any]) -> tuple:
    """Which evaluation a record is: (kind, seed, demos or base demos, method, round)."""
    demos = r.get("demos") if r.get("demos") is not None else r.get("base_demos")
    return (r.get("of", r["kind"]), r["seed"], demos, r.get("method"), r.get("round"))


# record names: the corrections mixture leaves out the robot steps too, hg_dagger only the robot steps
RAC_ABLATIONS = {"rac data without recovery": "corrections", "rac data without robot steps": "hg_dagger"}


def ablation_for_seed(args: argparse.Namespace, records: Records, seed: int) -> None:
    """RaC's round-1 recordings trained with parts left out (see the docstring's `ablation`)."""
    from robolearn.data.mixtures import mixture_weights
    from robolearn.data.store import EpisodeStore

    root = Path(args.out) / f"seed{seed}"
    data = root / "rac_r1" / "data.zarr"
    rac = records.find(kind="round", seed=seed, base_demos=args.base_demos, method="rac", round=1)
    if rac is None or not data.exists():
        print(f"seed {seed}: no recorded RaC round 1 in {args.out}; run the rounds first", flush=True)
        return
    base = scaling_unit(args, records, seed, args.base_demos)
    for name, mix in RAC_ABLATIONS.items():
        key = dict(kind="ablation", seed=seed, base_demos=args.base_demos, name=name, finetune_steps=args.finetune_steps,
                   perturb=args.perturb)
        if records.find(**key) is not None:
            continue
        if args.stop is not None and dt.datetime.now(dt.timezone.utc) >= args.stop:
            print(f"--stop-at reached: ablation {name!r} of seed {seed} not started", flush=True)
            return
        t0 = time.perf_counter()
        ckpt = train_run(args, data, root / f"ablation_{mix}", mix, args.finetune_steps, seed, init_from=base)
        t1 = time.perf_counter()
        ev = evaluate(args, ckpt, args.eval_episodes, seeds_of(seed)["eval"])
        with EpisodeStore.open(data) as st:
            shares = mixture_weights(st, mix, np.arange(st.num_episodes)).shares
        records.add({**key, "mix": mix, "data": str(data), "mixture_shares": shares, **ev, "train_seconds": t1 - t0,
                     "policy": args.policy, "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                     "loadavg": _loadavg()})
        print(f"seed {seed} {name}: success {ev['success_rate']:.2f} [{ev['ci95'][0]:.2f}, {ev['ci95'][1]:.2f}] "
              f"(rac round 1: {rac['success_rate']:.2f})", flush=True)


def backfill_episodes(args: argparse.Namespace, records: Records) -> int:
    """Per-episode outcomes for the scaling and round records that lack them (see the docstring)."""
    have = {_episodes_key(r) for r in records.rows if r["kind"] == "episodes"}
    todo = [r for r in records.rows if r["kind"] in ("scaling", "round") and "successes_per_episode" not in r
            and _episodes_key(r) not in have]
    for r in todo:
        root = Path(args.out) / f"seed{r['seed']}"
        ckpt = root / f"scale_n{r['demos']}" / "policy" if r["kind"] == "scaling" else root / f"{r['method']}_r{r['round']}" / "run" / "policy"
        if not (ckpt / "checkpoint.json").is_file():
            print(f"no checkpoint for {_episodes_key(r)} at {ckpt}: skipped", flush=True)
            continue
        ev = evaluate(args, ckpt, r["n"], seeds_of(r["seed"])["eval"])
        same = ev["successes"] == r["successes"]
        records.add({"kind": "episodes", "of": r["kind"], "seed": r["seed"], "demos": r.get("demos"),
                     "base_demos": r.get("base_demos"), "method": r.get("method"), "round": r.get("round"),
                     "successes_per_episode": ev["successes_per_episode"], "successes": ev["successes"],
                     "matches_record": same})
        print(f"{_episodes_key(r)}: {ev['successes']}/{ev['n']}" + ("" if same else f" -- the record says {r['successes']}: NOT reproduced"),
              flush=True)
    return 0


def _success_by_recoveries(episodes: list[dict[str, Any]]) -> dict[str, list[int]]:
    """{recoveries: [successes, episodes]}: the test-time-scaling plot's raw counts."""
    out: dict[str, list[int]] = {}
    for r in episodes:
        cell = out.setdefault(str(r["recoveries"]), [0, 0])
        cell[0] += int(r["success"])
        cell[1] += 1
    return out


def collect_demos(args: argparse.Namespace, out: Path, episodes: int, seed: int) -> None:
    from robolearn.tasks.collect import collect

    collect(args.task, episodes=episodes, out=out, num_envs=min(10, episodes), seed=seed, perturb=args.demo_perturb,
            overrides=list(args.task_overrides), expert_mode=args.expert_mode, progress=False)


def demo_store(args: argparse.Namespace, root: Path, seed: int, n: int) -> Path:
    """The first n of this seed's clean demos (collected once, up to the largest count needed)."""
    from robolearn.data.store import EpisodeStore, copy_store

    full = root / "demos_all.zarr"
    need = max([n, *args.demo_counts])
    if full.exists():
        with EpisodeStore.open(full) as st:
            have = st.num_episodes
        if have < need:  # seeds seed+have.. continue the same sequence
            collect_demos(args, full, need - have, seeds_of(seed)["demos"] + have)
    else:
        collect_demos(args, full, need, seeds_of(seed)["demos"])
    sub = root / f"demos_{n}.zarr"
    if not sub.exists():
        tmp = root / f".demos_{n}.tmp.zarr"
        if tmp.exists():
            shutil.rmtree(tmp)
        with EpisodeStore.open(full) as st:
            copy_store(st, tmp, list(range(n))).close()
        os.replace(tmp, sub)
    return sub


def scaling_unit(args: argparse.Namespace, records: Records, seed: int, n: int) -> Path:
    """Train and evaluate the policy on n demos (skipped when its record exists); its checkpoint."""
    from robolearn.data.store import EpisodeStore

    root = Path(args.out) / f"seed{seed}"
    root.mkdir(parents=True, exist_ok=True)
    run = root / f"scale_n{n}"
    if records.find(kind="scaling", seed=seed, demos=n) is not None:
        if not (run / "policy" / "checkpoint.json").is_file():  # recorded elsewhere: rebuild the checkpoint only
            return train_run(args, demo_store(args, root, seed, n), run, "all", args.train_steps, seed)
        return run / "policy"
    t0 = time.perf_counter()
    data = demo_store(args, root, seed, n)
    t1 = time.perf_counter()
    ckpt = train_run(args, data, run, "all", args.train_steps, seed)
    t2 = time.perf_counter()
    ev = evaluate(args, ckpt, args.eval_episodes, seeds_of(seed)["eval"])
    with EpisodeStore.open(data) as st:
        steps = st.num_steps
    records.add({"kind": "scaling", "seed": seed, "demos": n, "demo_steps": steps, "policy": args.policy,
                 "train_steps": args.train_steps, **ev, "collect_seconds": t1 - t0, "train_seconds": t2 - t1,
                 "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "loadavg": _loadavg()})
    print(f"seed {seed} demos {n}: success {ev['success_rate']:.2f} [{ev['ci95'][0]:.2f}, {ev['ci95'][1]:.2f}], "
          f"true recoveries/ep {ev['recoveries_per_episode']:.2f} (train {t2 - t1:.0f}s, eval {ev['eval_seconds']:.0f}s)",
          flush=True)
    return ckpt


def takeover_reasons(store: Any, episodes: np.ndarray) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in episodes:
        for seg in store.episode_metadata(int(e)).get("interventions", []):
            out[seg.get("reason", "")] = out.get(seg.get("reason", ""), 0) + 1
    return out


def collect_round(args: argparse.Namespace, method: str, data: Path, ckpt: Path, coll_seed: int, familiarity: Any,
                  demo_len: float, budget: int) -> dict[str, Any]:
    """Spend `budget` operator-labelled steps on `data` (already a copy of the previous round's store)."""
    from robolearn.data.store import EpisodeStore
    from robolearn.evaluation import load_any_policy
    from robolearn.tasks.registry import expert_class
    from robolearn.teleop.recorder import intervention_metrics, record_interventions
    from robolearn.teleop.scripted_operator import OperatorConfig, ScriptedOperator

    with EpisodeStore.open(data) as st:
        before = st.num_episodes
    if method == "demos":
        collect_demos(args, data, max(1, math.ceil(budget / demo_len)), coll_seed)
    else:
        policy, _ = load_any_policy(ckpt)
        recover = method in ("rac", "rac_end")
        cfg = OperatorConfig(recover=recover, stall_steps=args.stall_steps)

        def operator(sim: Any) -> ScriptedOperator:
            expert = expert_class(args.task)(sim.task, 1, seed=coll_seed, mode=args.expert_mode)
            return ScriptedOperator(sim.task, expert=expert, familiarity=familiarity, config=cfg, seed=coll_seed)

        record_interventions(policy, args.task, operator, args.max_episodes, data, seed=coll_seed,
                             terminate_after_intervention=method == "rac_end", recovery=recover, perturb=args.perturb,
                             task_overrides=list(args.task_overrides), max_operator_steps=budget, progress=False)
    with EpisodeStore.open(data) as st:
        new = np.arange(before, st.num_episodes)
        m = intervention_metrics(st, new)
        if method == "demos":
            m["operator_steps"] = int(st.episode_lengths[new].sum())
        m["takeover_reasons"] = takeover_reasons(st, new)
    return m


def continual_curve(args: argparse.Namespace, run: Path, start_score: float, seed: int) -> dict[str, Any]:
    """Evaluate the fine-tuning run's step checkpoints; continual metrics from robolearn.rl.metrics."""
    from robolearn.rl.metrics import continual_metrics

    history = [{"step": 0, "score": start_score}]
    done_file = run / "continual.jsonl"  # one fsynced line per evaluated step: a rerun after a kill reads them back
    done = {}
    if done_file.is_file():
        for line in done_file.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut off by the kill: that step is evaluated again
                continue
            done[row["step"]] = row
    for step_dir in sorted((run / "checkpoints").glob("step_*")):
        step = int(step_dir.name.split("_")[1])
        if step not in done:
            ev = evaluate(args, step_dir, args.continual_episodes, seeds_of(seed)["continual"])
            done[step] = {"step": step, "score": ev["success_rate"], "successes": ev["successes"], "n": ev["n"]}
            with done_file.open("a") as fh:
                fh.write(json.dumps(done[step]) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        shutil.rmtree(step_dir)  # evaluated: the optimizer state is no longer needed
    history += [done[k] for k in sorted(done)]
    window = max(1, args.continual_every * 2)
    return {"history": history, "metrics": continual_metrics([h["step"] for h in history], [h["score"] for h in history],
                                                             window, reference=start_score)}


def rounds_for_seed(args: argparse.Namespace, records: Records, seed: int) -> None:
    from robolearn.data.mixtures import mixture_weights
    from robolearn.data.store import EpisodeStore
    from robolearn.teleop.scripted_operator import FamiliarityModel

    root = Path(args.out) / f"seed{seed}"
    base = scaling_unit(args, records, seed, args.base_demos)
    demos = demo_store(args, root, seed, args.base_demos)
    base_rec = records.find(kind="scaling", seed=seed, demos=args.base_demos)
    with EpisodeStore.open(demos) as st:
        demo_len = float(np.mean(st.episode_lengths))
        familiarity = FamiliarityModel.from_store(st)
        base_labelled = operator_labelled_steps(st)
    # the base's score on the continual-evaluation seeds: every method's curve starts there
    start = records.find(kind="continual_start", seed=seed, base_demos=args.base_demos)
    if start is None:
        ev = evaluate(args, base, args.continual_episodes, seeds_of(seed)["continual"])
        start = {"kind": "continual_start", "seed": seed, "base_demos": args.base_demos, **ev}
        records.add(start)
    for mi, method in enumerate(args.methods):
        prev_data, prev_ckpt, prev_score = demos, base, start["success_rate"]
        for rnd in range(1, args.rounds + 1):
            key = dict(kind="round", seed=seed, base_demos=args.base_demos, method=method, round=rnd, budget=args.budget,
                       finetune_steps=args.finetune_steps, perturb=args.perturb)
            unit = root / f"{method}_r{rnd}"
            done = records.find(**key)
            if done is not None:
                prev_data, prev_ckpt, prev_score = unit / "data.zarr", unit / "run" / "policy", done["continual"]["history"][-1]["score"]
                continue
            if args.stop is not None and dt.datetime.now(dt.timezone.utc) >= args.stop:
                print(f"--stop-at reached: {method} round {rnd} of seed {seed} not started", flush=True)
                return
            t0 = time.perf_counter()
            data = unit / "data.zarr"
            collected_file = unit / "collection.json"
            if not collected_file.is_file():  # (re)do the collection from the previous round's store
                if unit.exists():
                    shutil.rmtree(unit)
                unit.mkdir(parents=True)
                shutil.copytree(prev_data, data)
                coll_seed = seeds_of(seed)["rounds"] + 20_000 * rnd  # the same scenes for every method
                with EpisodeStore.open(prev_data) as st:
                    spent = operator_labelled_steps(st) - base_labelled
                budget = 0 if method == "no_new_data" else rnd * args.budget - spent  # cumulative: an overshoot is taken off
                m = collect_round(args, method, data, prev_ckpt, coll_seed, familiarity, demo_len, budget) if budget > 0 \
                    else {"operator_steps": 0}
                m.update(collection_seed=coll_seed, round_budget=budget)
                tmp = collected_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(m))
                os.replace(tmp, collected_file)
            m = json.loads(collected_file.read_text())
            t1 = time.perf_counter()
            ckpt = train_run(args, data, unit / "run", MIX[method], args.finetune_steps, seed, init_from=prev_ckpt,
                             save_every=args.continual_every)
            t2 = time.perf_counter()
            curve = continual_curve(args, unit / "run", prev_score, seed)
            ev = evaluate(args, ckpt, args.eval_episodes, seeds_of(seed)["eval"])
            with EpisodeStore.open(data) as st:
                labelled, counts = operator_labelled_steps(st), st.source_counts()
                shares = mixture_weights(st, MIX[method], np.arange(st.num_episodes)).shares
            records.add({**key, "operator_labelled_steps": labelled, "data_sources": counts, "round_collection": m,
                         "mixture_shares": shares,
                         **ev, "continual": curve, "collect_seconds": t1 - t0, "train_seconds": t2 - t1,
                         "finetune_steps": args.finetune_steps, "policy": args.policy,
                         "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "loadavg": _loadavg()})
            print(f"seed {seed} {method:>9} round {rnd}: labelled steps {labelled}, success {ev['success_rate']:.2f} "
                  f"[{ev['ci95'][0]:.2f}, {ev['ci95'][1]:.2f}], min-ACC {curve['metrics']['min_acc']:.2f}, "
                  f"true recoveries/ep {ev['recoveries_per_episode']:.2f}", flush=True)
            prev_data, prev_ckpt, prev_score = data, ckpt, curve["history"][-1]["score"]


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


# ----------------------------------------------------------------------------------- tables
def per_seed(rows: list[dict[str, Any]]) -> str:
    return ", ".join("s{}: {:.2f}".format(r["seed"], r["success_rate"]) for r in rows)


def round_cells(rounds: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Round records grouped by (base demos, method, round), each group sorted by seed."""
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for r in sorted(rounds, key=lambda r: r["seed"]):
        cells.setdefault((r["base_demos"], r["method"], r["round"]), []).append(r)
    return cells


def tables(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown tables (pooled over seeds: successes over episodes, Wilson interval) of the records."""
    from robolearn.evaluation import paired_outcomes, pool_evaluations

    outcomes = {_episodes_key(r): r["successes_per_episode"] for r in rows if r.get("kind") == "episodes" and r.get("matches_record")}
    rows = [{**r, "successes_per_episode": outcomes[_episodes_key(r)]} if r.get("kind") in ("scaling", "round")
            and "successes_per_episode" not in r and _episodes_key(r) in outcomes else r for r in rows]

    def vs(rs: list[dict[str, Any]], ref: list[dict[str, Any]]) -> str:
        pr = paired_outcomes(rs, ref)
        return "-" if pr is None else f"+{pr[0]} / -{pr[1]} (p {pr[2]:.2g})"

    out: list[str] = []
    scaling = [r for r in rows if r.get("kind") == "scaling"]
    if scaling:
        out += ["### Demo-scaling curve", "",
                "| demos | seeds | mean demo steps | pooled success | 95% CI (Wilson) | per seed | true recoveries / ep | "
                "setbacks / ep | failure exposures / ep | train min (mean) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for n in sorted({r["demos"] for r in scaling}):
            rs = sorted((r for r in scaling if r["demos"] == n), key=lambda r: r["seed"])
            k, tot, (lo, hi) = pool_evaluations(rs)
            out.append(f"| {n} | {len(rs)} | {np.mean([r['demo_steps'] for r in rs]):.0f} | {k / tot:.3f} ({k}/{tot}) | "
                       f"[{lo:.2f}, {hi:.2f}] | {per_seed(rs)} | "
                       f"{np.mean([r['recoveries_per_episode'] for r in rs]):.2f} | {np.mean([r['setbacks_per_episode'] for r in rs]):.2f} | "
                       f"{np.mean([r['failure_exposures_per_episode'] for r in rs]):.2f} | "
                       f"{np.mean([r['train_seconds'] for r in rs]) / 60:.1f} |")
        out.append("")
    rounds = [r for r in rows if r.get("kind") == "round"]
    cells = round_cells(rounds)
    if rounds:
        out += ["### Rounds (fine-tuning from the previous round's policy)", "",
                "| base demos | method | round | seeds | mean operator-labelled steps | pooled success | 95% CI (Wilson) | per seed | "
                "true recoveries / ep | intervention rate | recovery:correction steps | min-ACC (mean) | WC-ACC (mean) | "
                "paired vs base | paired vs demos (same round) | paired vs no new data (same round) |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        order = {m: i for i, m in enumerate(METHODS)}
        for key in sorted(cells, key=lambda k: (k[0], order.get(k[1], 99), k[2])):
            rs = cells[key]
            k, tot, (lo, hi) = pool_evaluations(rs)
            rc = [r["round_collection"] for r in rs]
            rec, cor = sum(c.get("recovery_steps", 0) for c in rc), sum(c.get("correction_steps", 0) for c in rc)
            rate = [c["intervention_rate"] for c in rc if c.get("intervention_rate") is not None and key[1] != "demos"]
            out.append(f"| {key[0]} | {key[1]} | {key[2]} | {len(rs)} | {np.mean([r['operator_labelled_steps'] for r in rs]):.0f} | "
                       f"{k / tot:.3f} ({k}/{tot}) | [{lo:.2f}, {hi:.2f}] | {per_seed(rs)} | "
                       f"{np.mean([r['recoveries_per_episode'] for r in rs]):.2f} | {f'{np.mean(rate):.2f}' if rate else '-'} | "
                       f"{rec}:{cor} | {np.mean([r['continual']['metrics']['min_acc'] for r in rs]):.2f} | "
                       f"{np.mean([r['continual']['metrics']['wc_acc'] for r in rs]):.2f} | "
                       f"{vs(rs, [r for r in scaling if r['demos'] == key[0]])} | "
                       f"{'-' if key[1] == 'demos' else vs(rs, cells.get((key[0], 'demos', key[2]), []))} | "
                       f"{'-' if key[1] == 'no_new_data' else vs(rs, cells.get((key[0], 'no_new_data', key[2]), []))} |")
        out += ["", "paired: over the same 100 evaluation episodes per seed, +episodes only this row solved / -episodes only "
                "the reference solved, exact two-sided McNemar p", ""]
    if len(cells) >= 3:  # RaC's test-time scaling claim, across policies
        succ, rec, setb = [], [], []
        for rs in cells.values():
            k, tot, _ = pool_evaluations(rs)
            succ.append(k / tot)
            rec.append(float(np.mean([r["recoveries_per_episode"] for r in rs])))
            setb.append(float(np.mean([r["setbacks_per_episode"] for r in rs])))
        frac = [a / b if b > 0 else 0.0 for a, b in zip(rec, setb)]

        def corr(x: list[float]) -> str:
            return f"{np.corrcoef(x, succ)[0, 1]:.2f}" if np.std(x) > 0 and np.std(succ) > 0 else "-"

        out += ["### Test-time scaling across policies (every method x round cell, pooled over seeds)", "",
                f"Pearson r with pooled success over {len(succ)} cells: true recoveries / episode {corr(rec)}; "
                f"setbacks / episode {corr(setb)}; recovered fraction of setbacks (recoveries / setbacks) {corr(frac)} "
                f"(range {min(frac):.2f}-{max(frac):.2f}).", ""]
    ablations = [r for r in rows if r.get("kind") == "ablation"]
    if ablations:
        out += ["### What in RaC's round-1 data matters (fine-tuned from the base on RaC's round-1 recordings)", "",
                "RaC's own round 1 trains on all of it: demos + recovery + corrections + the robot steps of fully autonomous "
                "successes.", "",
                "| base demos | training data (RaC's round-1 store) | seeds | pooled success | 95% CI (Wilson) | per seed | "
                "shares demo / intervention / robot | paired vs RaC round 1 | paired vs HG-DAgger round 1 | "
                "paired vs demos + corrections |", "|---|---|---|---|---|---|---|---|---|---|"]
        content = {"corrections": "demos + corrections", "hg_dagger": "demos + recovery + corrections"}
        for bd, mix in sorted({(r["base_demos"], r["mix"]) for r in ablations}):
            rs = sorted((r for r in ablations if (r["base_demos"], r["mix"]) == (bd, mix)), key=lambda r: r["seed"])
            name = content.get(mix, mix)
            without_recovery = [r for r in ablations if (r["base_demos"], r["mix"]) == (bd, "corrections")]
            k, tot, (lo, hi) = pool_evaluations(rs)
            sh = [r.get("mixture_shares") or {} for r in rs]
            shares = " / ".join(f"{np.mean([x.get(c, 0.0) for x in sh]):.3f}" for c in ("demo", "intervention", "robot"))
            out.append(f"| {bd} | {name} | {len(rs)} | {k / tot:.3f} ({k}/{tot}) | [{lo:.2f}, {hi:.2f}] | {per_seed(rs)} | {shares} | "
                       f"{vs(rs, cells.get((bd, 'rac', 1), []))} | {vs(rs, cells.get((bd, 'hg_dagger', 1), []))} | "
                       f"{'-' if mix == 'corrections' else vs(rs, without_recovery)} |")
        out.append("")
    return out


def plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """success vs demos; success vs operator-labelled steps; success vs true recoveries per episode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robolearn.evaluation import pool_evaluations, wilson_interval

    written = []
    scaling = [r for r in rows if r.get("kind") == "scaling"]
    if scaling:
        fig, ax = plt.subplots(figsize=(6, 4))
        ns = sorted({r["demos"] for r in scaling})
        pts = [pool_evaluations([r for r in scaling if r["demos"] == n]) for n in ns]
        y = np.array([k / n for k, n, _ in pts])
        ax.errorbar(ns, y, yerr=[y - np.array([c[0] for _, _, c in pts]), np.array([c[1] for _, _, c in pts]) - y],
                    marker="o", capsize=3, label="pooled over seeds")
        ax.set_xscale("log")
        save_plot(fig, ax, out / "demo_scaling.png", "clean demos", "success (95% Wilson CI)", "demo-scaling curve")
        written.append(out / "demo_scaling.png")
    rounds = [r for r in rows if r.get("kind") == "round"]
    if rounds:
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in METHODS:
            rs = [r for r in rounds if r["method"] == method]
            if not rs or method == "no_new_data":  # adds no labelled steps: it is a row of the table
                continue
            pts = []
            for bd in sorted({r["base_demos"] for r in rs}):
                base = [r for r in scaling if r["demos"] == bd]
                groups = [base] + [[r for r in rs if r["round"] == k and r["base_demos"] == bd] for k in sorted({r["round"] for r in rs})]
                for g in groups:
                    if g:
                        k, n, ci = pool_evaluations(g)
                        steps = np.mean([r.get("operator_labelled_steps", r.get("demo_steps", 0)) for r in g])
                        pts.append((steps, k / n, *ci))
            x, y, lo, hi = map(np.array, zip(*pts))
            ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=method)
        save_plot(fig, ax, out / "success_vs_operator_steps.png", "operator-labelled steps in the training data (mean over seeds)",
                  "pooled success (95% Wilson CI)", "rounds at equal operator budgets")
        written.append(out / "success_vs_operator_steps.png")
    evals = scaling + rounds
    if evals:  # RaC's test-time scaling: success against the number of true recoveries in the episode
        fig, ax = plt.subplots(figsize=(6, 4))
        by_demos = [(f"{n} demos (scratch)", [r for r in scaling if r["demos"] == n]) for n in sorted({r["demos"] for r in scaling})]
        for label, group in by_demos + [(m, [r for r in rounds if r["method"] == m]) for m in METHODS]:
            cells: dict[int, list[int]] = {}
            for r in group:
                for k, (s, n) in r.get("success_by_recoveries", {}).items():
                    c = cells.setdefault(int(k), [0, 0])
                    c[0] += s
                    c[1] += n
            if cells:
                ks = sorted(cells)
                y = np.array([cells[k][0] / cells[k][1] for k in ks])
                ci = [wilson_interval(*cells[k]) for k in ks]
                ax.errorbar(ks, y, yerr=[y - np.array([c[0] for c in ci]), np.array([c[1] for c in ci]) - y], marker="o",
                            capsize=3, label=label)
        save_plot(fig, ax, out / "success_vs_true_recoveries.png", "true recoveries in the episode (robolearn.metrics_recovery)",
                  "success rate (95% Wilson CI)", "test-time scaling: success by recoveries performed")
        written.append(out / "success_vs_true_recoveries.png")
    if rounds:  # across policies: one point per method x round, pooled over seeds
        fig, ax = plt.subplots(figsize=(6, 4))
        cells = round_cells(rounds)
        for method in METHODS:
            pts = []
            for key in sorted(k for k in cells if k[1] == method):
                g = cells[key]
                k, n, ci = pool_evaluations(g)
                pts.append((float(np.mean([r["recoveries_per_episode"] for r in g])), k / n, *ci))
            if pts:
                x, y, lo, hi = map(np.array, zip(*pts))
                ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", linestyle="none", capsize=3, label=method)
        save_plot(fig, ax, out / "success_vs_recoveries_across_policies.png", "true recoveries per episode (mean over seeds)",
                  "pooled success (95% Wilson CI)", "test-time scaling across policies (method x round)")
        written.append(out / "success_vs_recoveries_across_policies.png")
    return written


def table_stage(sources: list[Path], out: Path) -> int:
    rows = []
    for src in sources:
        f = src / "records.jsonl" if src.is_dir() else src
        if not f.is_file():
            print(f"rac_rounds --stage table: {f} not found", file=sys.stderr)
            return 2
        rows += [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    out.mkdir(parents=True, exist_ok=True)
    text = [f"<!-- generated by scripts/rac_rounds.py --stage table from {', '.join(str(s) for s in sources)} -->", "",
            *tables(rows)]
    tmp = out / "tables.md.tmp"
    tmp.write_text("\n".join(text) + "\n")
    os.replace(tmp, out / "tables.md")
    plots(rows, out)
    print("\n".join(text))
    return 0


# ----------------------------------------------------------------------------------- legacy merge
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
    order = {m: i for i, m in enumerate(("base", *LEGACY_METHODS))}
    lines = ["| method | round | seeds | mean operator-labelled steps | pooled success | 95% CI (Wilson) | per seed |",
             "|---|---|---|---|---|---|---|"]
    for (method, rnd), g in sorted(pooled.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        k, n, (lo, hi) = g["k"], g["n"], g["ci"]
        per_seed = ", ".join(f"s{r['seed']}: {r['success_rate']:.2f}" for r in g["rows"])
        lines.append(f"| {method} | {rnd} | {len(g['rows'])} | {g['steps']:.0f} | "
                     f"{k / n:.3f} ({k}/{n}) | [{lo:.2f}, {hi:.2f}] | {per_seed} |")
    return lines


def merge(dirs: list[Path], out: Path) -> int:
    """Pool the results.jsonl of the earlier from-scratch protocol's runs into one table."""
    rows = []
    for d in dirs:
        f = d / "results.jsonl"
        if not f.is_file():
            print(f"rac_rounds --merge: {f} not found", file=sys.stderr)
            return 2
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
    for method in LEGACY_METHODS:  # each curve starts at the shared base policy (round 0)
        groups = [pooled[key] for key in [("base", 0), *((method, rnd) for rnd in rounds)] if key in pooled]
        pts = [(g["steps"], g["k"] / g["n"], *g["ci"]) for g in groups]
        if len(pts) > 1:
            x, y, lo, hi = map(np.array, zip(*pts))
            ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=method)
    save_plot(fig, ax, out / "pooled_success_vs_steps.png", "operator-labelled steps in the training data (mean over seeds)",
              "pooled success rate (95% Wilson CI)", f"pooled over {len({r['seed'] for r in rows})} seed(s)")
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in ("base", *LEGACY_METHODS):
        rs = [r for r in rows if r["method"] == method]
        if rs:
            ax.scatter([r["eval_recoveries_per_successful_episode"] for r in rs], [r["success_rate"] for r in rs],
                       label=method, s=18)
    save_plot(fig, ax, out / "pooled_success_vs_recoveries.png", "failure exposures per successful evaluation episode",
              "success rate", "one point per method, round and seed")
    return 0


# ----------------------------------------------------------------------------------- main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["scaling", "rounds", "episodes", "ablation", "table"], default=None)
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="RUN_DIR",
                   help="pool the earlier protocol's results.jsonl files into OUT/pooled.md")
    p.add_argument("--from", dest="sources", nargs="+", type=Path, default=None, help="--stage table: run dirs or records files")
    p.add_argument("--out", default=None, help="run directory (records.jsonl, stores, runs); --stage table: where tables go")
    p.add_argument("--task", default="sort")
    p.add_argument("--set", dest="task_overrides", action="append", default=[], metavar="KEY=VALUE", help="task setting")
    p.add_argument("--perturb", type=float, default=0.05, help="perturbation rate of evaluation and intervention rollouts")
    p.add_argument("--demo-perturb", type=float, default=0.0, help="perturbation rate of the scripted demos (clean: 0)")
    p.add_argument("--expert-mode", type=int, default=None, help="fixed expert mode (unimodal demos and corrections)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--demo-counts", type=int, nargs="+", default=[100, 200, 400, 800])
    p.add_argument("--policy", default="hierarchical")
    p.add_argument("--train-steps", type=int, default=5000, help="training steps of a policy trained from scratch")
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--num-envs", type=int, default=10)
    p.add_argument("--base-demos", type=int, default=None, help="--stage rounds: the scaling point used as the base")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget", type=int, default=2000, help="operator-labelled steps per round and method")
    p.add_argument("--max-episodes", type=int, default=300, help="cap on intervention episodes per round")
    p.add_argument("--stall-steps", type=int, default=25, help="scripted operator: steps without progress = stall")
    p.add_argument("--finetune-steps", type=int, default=1000)
    p.add_argument("--finetune-lr", type=float, default=3e-4)
    p.add_argument("--continual-every", type=int, default=250, help="evaluate the fine-tuning run every N steps")
    p.add_argument("--continual-episodes", type=int, default=30)
    p.add_argument("--stop-at", default=None, metavar="HH:MM", help="UTC time after which no new round is started")
    p.add_argument("policy_overrides", nargs="*", default=[], help="training overrides (key=value)")
    args = p.parse_args()
    if args.merge:
        return merge(args.merge, Path(args.out or "runs/rac_rounds-pooled"))
    if args.stage is None:
        p.error("choose --stage scaling|rounds|episodes|ablation|table (or --merge)")
    if args.stage == "table":
        if not args.sources or not args.out:
            p.error("--stage table needs --from RUN_DIR... and --out DIR")
        return table_stage(args.sources, Path(args.out))
    if not args.out:
        p.error("--out is required")
    if args.stage in ("rounds", "ablation") and args.base_demos is None:
        p.error("--stage rounds needs --base-demos N (a point of the scaling curve)")
    if min(args.demo_counts) < 1 or args.rounds < 1 or args.budget < 1 or args.finetune_steps < 1 or args.continual_every < 1:
        p.error("--demo-counts, --rounds, --budget, --finetune-steps and --continual-every must be >= 1")
    if args.policy == "hierarchical" and args.task == "sort" and not any(o.startswith("policy.object_centric") for o in args.policy_overrides):
        args.policy_overrides = [*HIERARCHICAL_SORT, *args.policy_overrides]  # the recipe of hierarchical_sort.md
    from robolearn.experiments import stop_time

    args.stop = stop_time(args.stop_at)
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.txt").open("a").write(" ".join(sys.argv) + f"  # {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
                                          f"{platform.machine()}, {os.cpu_count()} cores\n")
    records = Records(out / "records.jsonl")
    if args.stage == "episodes":
        return backfill_episodes(args, records)
    for seed in args.seeds:
        if args.stage == "scaling":
            for n in sorted(args.demo_counts):
                if args.stop is not None and dt.datetime.now(dt.timezone.utc) >= args.stop and \
                        records.find(kind="scaling", seed=seed, demos=n) is None:
                    print(f"--stop-at reached: seed {seed} demos {n} not started", flush=True)
                    return 0
                scaling_unit(args, records, seed, n)
        elif args.stage == "ablation":
            ablation_for_seed(args, records, seed)
        else:
            rounds_for_seed(args, records, seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
