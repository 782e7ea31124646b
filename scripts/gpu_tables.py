#!/usr/bin/env python3
"""The Warp-CPU tables of docs/results/gpu.md (issue 26), regenerated from the raw records in
docs/results/gpu/ (and, given --cuda DIR, the raw JSON a `scripts/gpu_checks.sh` run wrote).

    python scripts/gpu_tables.py [--cuda /path/to/gpu_checks_out]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "docs" / "results" / "gpu"


def _jsonl(name: str) -> list[dict]:
    path = RAW / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _load(rec: dict) -> str:
    return " ".join(f"{x:.1f}" for x in rec.get("load_average", []))


def profile_table() -> list[str]:
    rows = ["| task | worlds | graphed | physics | masked reset | task.evaluate | task.observe | action_to_ctrl | "
            "solver iterations (mean / p99 / max over worlds) | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in _jsonl("profile_warp_cpu.jsonl"):
        if not r.get("graph"):  # ungraphed records: Python launch overhead dominates on the CPU device
            continue
        ms = r["ms_per_step"]
        it = r.get("solver_iterations_last_substep", {})
        task = r["task"] + (f" ({' '.join(r['overrides'])})" if r.get("overrides") else "")
        rows.append(f"| {task} | {r['worlds']} | {'yes' if r.get('graph') else 'no'} | "
                    f"{ms['physics (frame_skip substeps)']:.0f} ms | {ms['masked reset (replayed every step)']:.1f} ms | "
                    f"{ms['task.evaluate']:.2f} ms | {ms['task.observe']:.2f} ms | {ms['action_to_ctrl']:.2f} ms | "
                    f"{it.get('mean', float('nan')):.2f} / {it.get('p99', float('nan')):.2f} / {it.get('max', float('nan')):.2f} | "
                    f"{_load(r)} |")
    return rows


def graphed_stage_table() -> list[str]:
    """MuJoCo Warp forward stages, each replayed as its own graph (ms per call = per substep)."""
    recs = [r for r in _jsonl("profile_warp_cpu.jsonl") if r.get("graphed_stage_ms_per_call")]
    if not recs:
        return []
    names = list(recs[0]["graphed_stage_ms_per_call"])
    rows = ["| task | worlds | graphed physics ms / control step | " + " | ".join(names) + " | load |",
            "|---|---|---|" + "---|" * len(names) + "---|"]
    for r in recs:
        st = r["graphed_stage_ms_per_call"]
        rows.append(f"| {r['task']} | {r['worlds']} | {r['ms_per_step']['physics (frame_skip substeps)']:.0f} | "
                    + " | ".join(f"{st[k]:.2f}" for k in names) + f" | {_load(r)} |")
    return rows


def variants_table() -> list[str]:
    rows = ["| variant (sort, 3 cubes) | worlds | default s/step | variant s/step | variant / default (median of rounds) | "
            "max nefc seen | load |", "|---|---|---|---|---|---|---|"]
    for r in _jsonl("buffers_warp_cpu.jsonl"):
        b = r["buffers"]
        var = "tight" if "tight" in b else "variant"
        sp = r["s_per_step"]
        rows.append(f"| buffers {b['default']['nconmax']}/{b['default']['njmax']} -> {b[var]['nconmax']}/{b[var]['njmax']} "
                    f"(nconmax/njmax) | {r['worlds']} | {sp['default']:.2f} | {sp[var]:.2f} | "
                    f"{r.get('tight_over_default', r.get('variant_over_default')):.2f} | "
                    f"{r['max_nefc_seen']['default']} | {_load(r)} |")
    for r in _jsonl("solver_warp_cpu.jsonl"):
        sp = r["s_per_step"]
        rows.append(f"| solver Newton -> CG (qpos {r['max_qpos_diff_after_4_steps']:.0e} m apart after 4 steps) | "
                    f"{r['worlds']} | {sp['newton']:.2f} | {sp['cg']:.2f} | {r['cg_over_newton']:.2f} | - | {_load(r)} |")
    return rows


def push_t_tables() -> list[str]:
    rows = ["| single env, push_t | exact coverage steps/s | grid coverage steps/s | raw mj_step steps/s | "
            "overhead exact / grid (wall) | exact / grid (wall) | exact / grid (CPU) | rounds | load | commit |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in _jsonl("push_t_host_coverage.jsonl"):
        s, o = r["steps_per_s"], r["overhead_wall"]
        rows.append(f"| {r['steps']} steps, seed {r['seed']} | {s['exact']:.0f} | {s['grid']:.0f} | {s['raw']:.0f} | "
                    f"{o['exact']:.2f}x / {o['grid']:.2f}x | {r['exact_over_grid_wall']:.3f} | {r['exact_over_grid_cpu']:.3f} | "
                    f"{r['rounds']} | {_load(r)} | {r['commit']} |")
    rows += ["", "| batched (torch CPU, float32, one call) | grid ms | exact ms | load |", "|---|---|---|---|"]
    for r in _jsonl("push_t_batched_coverage.jsonl"):
        ms = r["ms"]
        for n in sorted({int(k.split("_")[1]) for k in ms}):
            rows.append(f"| {n} worlds | {ms[f'grid_{n}']:.1f} | {ms[f'exact_{n}']:.2f} | {_load(r)} |")
    return rows


def cuda_tables(d: Path) -> list[str]:
    out = []
    for name in ("collect.json", "collect_parity.json", "eval_gpu.json", "eval_cpu.json"):
        p = d / name
        if p.exists():
            rec = json.loads(p.read_text())
            keep = {k: rec.get(k) for k in ("backend", "n", "success_rate", "ci95")} if name.startswith("eval") else rec
            out.append(f"- {name}: `{json.dumps(keep)}`")
    for name in ("parity.md", "bench.md"):
        if (d / name).exists():
            out += ["", (d / name).read_text()]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuda", type=Path, default=None, help="a gpu_checks.sh output folder")
    args = ap.parse_args()
    for block in (profile_table(), graphed_stage_table(), variants_table(), push_t_tables()):
        print("\n".join(block) + "\n")
    if args.cuda:
        print("\n".join(cuda_tables(args.cuda)))


if __name__ == "__main__":
    main()
