"""Regenerate the tables of docs/results/retrieval.md from the raw records in docs/results/retrieval/.

Reads runs.jsonl (one line per condition and seed), data.json (the prior's composition) and
scaling.jsonl (retrieval time / memory per prior size). Prints the tables; with --write, replaces
the block between the `<!-- tables:begin -->` and `<!-- tables:end -->` markers of the page.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from robolearn.evaluation import wilson_interval

ORDER = ("target_only", "whole", "br", "strap", "importance", "oracle", "br_l2", "br_f10", "br_f40", "strap_f10", "importance_f10")
LABEL = {"target_only": "target only", "whole": "target + whole prior", "br": "target + br", "strap": "target + strap",
         "importance": "target + importance", "oracle": "target + oracle (hidden label)",
         "br_l2": "target + br, L2 score (ablation)",
         "br_f10": "target + br, 10% (ablation)", "br_f40": "target + br, 40% (ablation)", "strap_f10": "target + strap, 10% (ablation)",
         "importance_f10": "target + importance, 10% (ablation)"}


def load(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def success_table(runs: list[dict]) -> str:
    by = defaultdict(list)
    for r in runs:
        by[r["condition"]].append(r)
    lines = ["| training data | per seed (successes / n) | pooled | rate | 95% Wilson interval |", "|---|---|---|---|---|"]
    for c in ORDER:
        rs = sorted(by.get(c, []), key=lambda r: r["seed"])
        if not rs:
            continue
        k, n = sum(r["successes"] for r in rs), sum(r["n"] for r in rs)
        lo, hi = wilson_interval(k, n)
        seeds = ", ".join(f"s{r['seed']}: {r['successes']}/{r['n']}" for r in rs)
        lines.append(f"| {LABEL[c]} | {seeds} | {k}/{n} | {k / n:.3f} | [{lo:.3f}, {hi:.3f}] |")
    return "\n".join(lines)


def quality_table(runs: list[dict]) -> str:
    lines = ["| method | precision (per seed) | recall (per seed) | fraction of prior retrieved | retrieval time (s, per seed) |",
             "|---|---|---|---|---|"]
    for c in ORDER[1:]:
        rs = sorted((r for r in runs if r["condition"] == c), key=lambda r: r["seed"])
        if not rs:
            continue
        fmt = lambda key, d=3: " / ".join(f"{r[key]:.{d}f}" for r in rs)  # noqa: E731
        lines.append(f"| {LABEL[c].replace('target + ', '')} | {fmt('precision')} | {fmt('recall')} | {fmt('fraction')} | {fmt('retrieval_s', 1)} |")
    return "\n".join(lines)


def breakdown_table(runs: list[dict], data: dict) -> str:
    behaviors = sorted(data.get("per_behavior", {}))
    prior_steps = data.get("prior_steps", 1)
    head = "| method | " + " | ".join(behaviors) + " |"
    lines = [head, "|---|" + "---|" * len(behaviors)]
    share = " | ".join(f"{data['per_behavior'][b]['steps'] / prior_steps:.3f}" for b in behaviors)
    lines.append(f"| (share of the prior's steps) | {share} |")
    for c in ORDER[2:]:
        if c == "oracle":
            continue
        rs = [r for r in runs if r["condition"] == c]
        if not rs:
            continue
        tot = defaultdict(int)
        for r in rs:
            for b, n in r["retrieved_by_behavior"].items():
                tot[b] += n
        total = sum(tot.values()) or 1
        lines.append(f"| {c} | " + " | ".join(f"{tot[b] / total:.3f}" for b in behaviors) + " |")
    return "\n".join(lines)


def prior_table(data: dict) -> str:
    lines = ["| hidden behaviour | episodes | steps | task successes |", "|---|---|---|---|"]
    for b, d in sorted(data.get("per_behavior", {}).items()):
        lines.append(f"| {b} | {d['episodes']} | {d['steps']} | {d['successes']} |")
    lines.append(f"| **total** | {data.get('prior_episodes')} | {data.get('prior_steps')} | |")
    return "\n".join(lines)


def scaling_table(rows: list[dict]) -> str:
    by = defaultdict(list)
    for r in rows:
        by[(r["method"], r["prior_steps"])].append(r)
    lines = ["| method | prior steps | wall s (median) | CPU s (median) | CPU s per 10k steps | peak RSS above baseline (MB, max) | repeats |",
             "|---|---|---|---|---|---|---|"]
    for (m, n), rs in sorted(by.items()):
        wall = float(np.median([r["wall_s"] for r in rs]))
        cpu = float(np.median([r["cpu_s"] for r in rs]))
        mem = max(r["rss_above_baseline_mb"] for r in rs)
        lines.append(f"| {m} | {n} | {wall:.1f} | {cpu:.1f} | {cpu / n * 1e4:.2f} | {mem:.0f} | {len(rs)} |")
    return "\n".join(lines)


def stage_table(rows: list[dict]) -> str:
    """Retrieved steps split by the task's stage (pick_place: 1 = cube held), seed 0 records."""
    cols = [("pick_place_bin", "not_held"), ("pick_place_bin", "held"), ("place_elsewhere", "not_held"),
            ("place_elsewhere", "held"), ("drop", "held"), ("lift_hold", "held"), ("noisy_expert", "not_held")]
    lines = ["| method (seed 0) | " + " | ".join(f"{b} {h.replace('_', ' ')}" for b, h in cols) + " |",
             "|---|" + "---|" * len(cols)]
    seen = set()
    for r in sorted(rows, key=lambda r: ORDER.index(r["condition"])):
        if r["seed"] != 0 or "retrieved_by_behavior_and_stage" not in r or r["condition"] in seen:
            continue
        seen.add(r["condition"])
        d = r["retrieved_by_behavior_and_stage"]
        lines.append(f"| {LABEL[r['condition']].replace('target + ', '')} | " + " | ".join(str(d.get(f"{b}/{h}", 0)) for b, h in cols) + " |")
    return "\n".join(lines)


def render(root: Path) -> str:
    runs, data, scale = load(root / "runs.jsonl"), json.loads((root / "data.json").read_text()) if (root / "data.json").exists() else {}, load(root / "scaling.jsonl")
    parts = ["### Prior store (hidden labels)", prior_table(data), "", "### Success rate (pick_place, BC)", success_table(runs), "",
             "### Retrieval quality against the hidden labels", quality_table(runs), "",
             "### What each method retrieved (share of its retrieved steps per hidden behaviour, seeds pooled)",
             breakdown_table(runs, data), "",
             "### Reaching vs carrying steps retrieved (stage 1 = cube held; br/strap/importance re-run with --retrieval-only)",
             stage_table(load(root / "retrieval_only.jsonl") + runs), "",
             "### Retrieval time and memory vs prior size (one fresh process per measurement)", scaling_table(scale)]
    return "\n".join(parts) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", default="docs/results/retrieval")
    ap.add_argument("--write", help="page to update between the table markers, e.g. docs/results/retrieval.md")
    args = ap.parse_args()
    text = render(Path(args.records))
    if not args.write:
        print(text)
        return
    page = Path(args.write)
    src = page.read_text()
    a, b = "<!-- tables:begin -->", "<!-- tables:end -->"
    if a not in src or b not in src:
        raise SystemExit(f"{page} has no {a} ... {b} block")
    head, rest = src.split(a, 1)
    _, tail = rest.split(b, 1)
    page.write_text(f"{head}{a}\n{text}{b}{tail}")


if __name__ == "__main__":
    main()
