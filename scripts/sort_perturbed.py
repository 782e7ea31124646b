#!/usr/bin/env python
"""Sort with K = 1..4 cubes under injected perturbations: does success fall slower than p^K?

Unperturbed, the hierarchical policy succeeds in every K = 1 episode (p = 1), so p^K = 1 at every K
and the comparison says nothing. This script re-evaluates trained checkpoints with perturbation
events (cube nudged, gripper opened, bin moved) injected at a per-step rate. Then K = 1 success is
below 1 and each extra cube is more time exposed to perturbations: the regime where failures
compound like p^K unless the policy recovers (a hierarchical policy re-selects the primitive that
was undone; a flat one has to have learned the recovery inside its chunks).

Checkpoints are named by patterns with {K} and {seed}; every (policy, rate, K, seed) evaluation is
appended to OUT.jsonl, so a rerun skips what is done and several invocations (e.g. 200 episodes per
seed for one policy, 100 for a slower one) fill one table. Evaluation seeds are
1000000 + 10000 x seed + 0..N-1, those of `imitation_results.py`.

    python scripts/sort_perturbed.py --perturb 0.02 0.05 --episodes 200 \\
        --policy hierarchical=runs/s7pk1000/sort-hierarchical-n1000-s{seed}-K{K}-n1000-10k-mode0-fnd/policy \\
        --out docs/results/sort_perturbed
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
from typing import Any

import torch

from imitation_results import first_eval_seed  # the same evaluation seeds as the imitation grid
from robolearn.evaluation import evaluate_policy, load_any_policy, pool_evaluations, task_overrides_from_meta


def parse_policies(specs: list[str]) -> dict[str, str]:
    policies = {}
    for spec in specs:
        name, sep, pattern = spec.partition("=")
        if not sep or not name or "{K}" not in pattern or "{seed}" not in pattern:
            raise SystemExit(f"sort_perturbed: --policy wants NAME=PATTERN with {{K}} and {{seed}} in the pattern, got {spec!r}")
        policies[name] = pattern
    return policies


def load_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise SystemExit(f"sort_perturbed: {path} line {i} is not JSON; fix or remove it") from None
    return records


def evaluate_one(pattern: str, k: int, seed: int, rate: float, episodes: int, num_envs: int) -> dict[str, Any]:
    ckpt = pattern.format(K=k, seed=seed)
    policy, meta = load_any_policy(ckpt)
    overrides = task_overrides_from_meta(meta, "sort")
    if f"num_cubes={k}" not in overrides:
        raise SystemExit(f"sort_perturbed: {ckpt} was trained on {overrides or 'no recorded sort config'}, not num_cubes={k}")
    started = time.time()
    report = evaluate_policy(policy, "sort", episodes, seed=first_eval_seed(seed), num_envs=num_envs,
                             perturb=rate, task_overrides=overrides, progress=False)
    return {
        "checkpoint": ckpt, "successes": report["successes"], "n": report["n"], "mean_length": report["mean_length"],
        "failure_events_per_episode": report["failure_events_per_episode"],
        "recoveries_per_episode": report["recoveries_per_episode"], "retries_per_episode": report.get("retries_per_episode"),
        "eval_s": round(time.time() - started, 1),
    }


def pooled(records: list[dict[str, Any]], policy: str, rate: float, k: int) -> dict[str, Any] | None:
    cell = sorted((r for r in records if (r["policy"], r["perturb"], r["K"]) == (policy, rate, k)), key=lambda r: r["seed"])
    if not cell:
        return None
    succ, n, (lo, hi) = pool_evaluations(cell)
    mean = lambda key: sum(r[key] * r["n"] for r in cell) / n  # noqa: E731 (episode-weighted)
    has_retries = all(r.get("retries_per_episode") is not None for r in cell)  # hierarchical policies only
    return {"rate": succ / n, "n": n, "lo": lo, "hi": hi, "per_seed": " / ".join(f"{r['successes'] / r['n']:.2f}" for r in cell),
            "events": mean("failure_events_per_episode"), "recoveries": mean("recoveries_per_episode"),
            "retries": mean("retries_per_episode") if has_retries else None}


def table(records: list[dict[str, Any]], rate: float, policies: list[str], cubes: list[int]) -> list[str]:
    """One markdown table per perturbation rate; p is each policy's own pooled K = 1 success."""
    head = ["K"]
    for name in policies:
        head += [f"{name}: success [95% CI] (per seed)", f"{name}: p^K", f"{name}: failure events / recoveries / retries per ep"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in cubes:
        row = [str(k)]
        for name in policies:
            cell, base = pooled(records, name, rate, k), pooled(records, name, rate, 1)
            if cell is None:
                row += ["not run", "", ""]
                continue
            pk = f"{base['rate'] ** k:.3f}" if base else "no K = 1 run"
            row += [f"{cell['rate']:.3f} [{cell['lo']:.3f}, {cell['hi']:.3f}] ({cell['per_seed']}), n = {cell['n']}", pk,
                    f"{cell['events']:.2f} / {cell['recoveries']:.2f} / "
                    + ("-" if cell["retries"] is None else f"{cell['retries']:.2f}")]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def verdicts(records: list[dict[str, Any]], rate: float, name: str, cubes: list[int]) -> list[str]:
    """Per K > 1: is success above p^K, and is even its Wilson lower bound above p_hi^K (K = 1's upper bound)?"""
    base = pooled(records, name, rate, 1)
    out = []
    for k in cubes:
        cell = pooled(records, name, rate, k)
        if k == 1 or cell is None or base is None:
            continue
        above = cell["rate"] > base["rate"] ** k
        strict = cell["lo"] > base["hi"] ** k
        out.append(f"K = {k}: {cell['rate']:.3f} vs p^K = {base['rate'] ** k:.3f} ({'above' if above else 'NOT above'}); "
                   f"lower bound {cell['lo']:.3f} vs p_hi^K = {base['hi'] ** k:.3f} ({'above' if strict else 'not above'})")
    return out


def plot(records: list[dict[str, Any]], rates: list[float], policies: list[str], cubes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rates), figsize=(4.5 * len(rates), 3.6), squeeze=False)
    for ax, rate in zip(axes[0], rates):
        for i, name in enumerate(policies):
            cells = [(k, pooled(records, name, rate, k)) for k in cubes]
            cells = [(k, c) for k, c in cells if c is not None]
            if not cells:
                continue
            ks = [k for k, _ in cells]
            y = [c["rate"] for _, c in cells]
            err = [[c["rate"] - c["lo"] for _, c in cells], [c["hi"] - c["rate"] for _, c in cells]]
            line = ax.errorbar(ks, y, yerr=err, marker="o", capsize=3, label=name)
            base = pooled(records, name, rate, 1)
            if base is not None:
                ax.plot(cubes, [base["rate"] ** k for k in cubes], "--", color=line[0].get_color(), alpha=0.7,
                        label=f"{name}: p^K")
        ax.set_title(f"sort, perturbation rate {rate}/step")
        ax.set_xlabel("cubes K")
        ax.set_xticks(cubes)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0][0].set_ylabel("success rate (95% Wilson CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", action="append", required=True, help="NAME=PATTERN, pattern with {K} and {seed}")
    ap.add_argument("--perturb", nargs="+", type=float, required=True, help="perturbation events per step")
    ap.add_argument("--cubes", nargs="+", type=int, default=[1, 2, 3, 4])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--episodes", type=int, default=200, help="evaluation episodes per seed")
    ap.add_argument("--num-envs", type=int, default=10)
    ap.add_argument("--out", required=True, help="writes OUT.jsonl (every evaluation), OUT.md and OUT.png")
    args = ap.parse_args()
    if any(not 0.0 <= r <= 1.0 for r in args.perturb):
        raise SystemExit(f"sort_perturbed: --perturb rates must be in [0, 1], got {args.perturb}")
    policies = parse_policies(args.policy)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".jsonl")
    records = load_records(raw)
    done = {(r["policy"], r["perturb"], r["K"], r["seed"]) for r in records}
    todo = [(name, rate, k, seed) for rate in args.perturb for name in policies for k in args.cubes for seed in args.seeds
            if (name, rate, k, seed) not in done]
    from tqdm import tqdm

    command = "python " + " ".join(sys.argv)

    for name, rate, k, seed in tqdm(todo, desc="sort evaluations"):
        rec = {"policy": name, "perturb": rate, "K": k, "seed": seed,
               **evaluate_one(policies[name], k, seed, rate, args.episodes, args.num_envs),
               "date": dt.date.today().isoformat(), "command": command}
        records.append(rec)
        with raw.open("a") as f:  # one line per evaluation: an interrupted run keeps what finished
            f.write(json.dumps(rec) + "\n")

    names = list(dict.fromkeys([*policies, *(r["policy"] for r in records)]))  # this invocation's order first
    rates = sorted({r["perturb"] for r in records})
    cubes = sorted({r["K"] for r in records})
    lines = [
        "# sort under perturbations: success vs number of cubes K, against p^K",
        "",
        "- commands that produced the evaluations below: "
        + "; ".join(f"`{c}`" for c in dict.fromkeys(r.get("command", "not recorded") for r in records)),
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, CPU, torch {torch.__version__}; evaluation seeds {first_eval_seed(0)} + 10000 x seed + 0..N-1",
        "- checkpoints: " + "; ".join(f"{n} = `{policies.get(n) or next(r['checkpoint'] for r in records if r['policy'] == n)}`"
                                    for n in names),
        f"- dates: {', '.join(sorted({r['date'] for r in records}))}; raw per-seed results: `{raw}`; plot: `{out.with_suffix('.png')}`",
        "- p = the policy's own pooled K = 1 success at the same rate; a failure event is an injected perturbation"
        " or a detected drop; a recovery is a failure event in an episode that still succeeded; a retry (hierarchical"
        " policies) is the high level going back to an earlier primitive without stage progress (`robolearn eval`)",
        "",
    ]
    for rate in rates:
        here = [n for n in names if any((r["policy"], r["perturb"]) == (n, rate) for r in records)]
        lines += [f"## perturbation rate {rate} per step", "", *table(records, rate, here, cubes), ""]
        for name in here:
            lines += [f"- {name}: {v}" for v in verdicts(records, rate, name, cubes)]
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))
    plot(records, rates, names, cubes, out.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
