"""Seconds per gradient update of WSRL's two learners (Cal-QL pre-training, SAC fine-tuning) on a device,
and what the WSRL paper's lengths would cost at that rate.

Section 5 of docs/results/offline_to_online.md runs WSRL in a reduced configuration because the paper's
(10 critics, UTD 4, 250k-1M Cal-QL pre-training steps, 500k online steps) is days of CPU time on our box.
Whether a GPU session could run it depends on one number per learner, measured here: the wall seconds of
`agent.update` (exactly what `robolearn offline` / `finetune` call per step) on a synthetic batch already
on the device. The env steps of fine-tuning are not included (scripts/bench_learners.py times those).

    python scripts/bench_rl_updates.py --device cuda --out rl_updates.jsonl     # in scripts/gpu_checks.sh
    OMP_NUM_THREADS=1 python scripts/bench_rl_updates.py --device cpu --threads 1 --out rl_updates.jsonl
    python scripts/bench_rl_updates.py --report rl_updates.jsonl                # markdown table

The agents are built from the YAMLs in policies/ (calql.yaml, wsrl.yaml's learner: sac) with the paper's
ensemble as overrides, so the networks are the ones our runs train (2x256, LayerNorm critics, batch 256).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

# label -> (algorithm, kind of its YAML, overrides, what one update call stands for in the paper's protocol)
SETUPS: dict[str, tuple[str, str, list[str], str]] = {
    "calql_q10": ("calql", "offline", ["agent.num_qs=10", "agent.num_min_qs=2"], "pre-training step (paper: 10 critics)"),
    "calql_q2": ("calql", "offline", ["agent.num_qs=2"], "pre-training step (our reduced study)"),
    "sac_q10_utd4": ("wsrl", "finetune", ["agent.num_qs=10", "agent.num_min_qs=2", "agent.utd=4"],
                     "one online env step of WSRL (paper: 10 critics, UTD 4)"),
    "sac_q2_utd1": ("wsrl", "finetune", ["agent.num_qs=2", "agent.utd=1"], "one online env step (our reduced study)"),
}
PAPER_PRETRAIN = (250_000, 1_000_000)  # Cal-QL pre-training steps in the WSRL paper (manipulation / locomotion)
PAPER_ONLINE = 500_000  # online env steps


def _agent(setup: str, obs_dim: int, act_dim: int, batch: int, device: str) -> tuple[Any, list[dict[str, torch.Tensor]]]:
    from robolearn.rl.agent import state_stats
    from robolearn.rl.algos import FINETUNE_LEARNER, build_agent, load_run_config

    name, kind, overrides, _ = SETUPS[setup]
    cfg = load_run_config(name, kind, None, overrides)
    learner = FINETUNE_LEARNER[name] if kind == "finetune" else name
    agent = build_agent(learner, cfg.agent, obs_dim, act_dim, state_stats(None, obs_dim)).to(device)
    g = torch.Generator().manual_seed(0)

    def one() -> dict[str, torch.Tensor]:
        b = {"obs": torch.randn(batch, obs_dim, generator=g), "next_obs": torch.randn(batch, obs_dim, generator=g),
             "action": torch.rand(batch, act_dim, generator=g) * 2 - 1, "reward": torch.rand(batch, generator=g),
             "terminal": torch.zeros(batch), "mc_return": torch.rand(batch, generator=g) * 10}
        return {k: v.to(device) for k, v in b.items()}

    utd = int(getattr(cfg.agent, "utd", 1)) if kind == "finetune" else 1
    return agent, [one() for _ in range(utd)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(setup: str, device: str, steps: int, warmup: int, repeats: int, obs_dim: int, act_dim: int,
            batch: int) -> dict[str, Any]:
    """Median wall seconds per update call over `repeats` samples of `steps` calls each (after `warmup`)."""
    agent, batches = _agent(setup, obs_dim, act_dim, batch, device)
    call = (lambda: agent.update(batches)) if len(batches) > 1 else (lambda: agent.update(batches[0]))
    for _ in range(warmup):
        call()
    _sync(device)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            call()
        _sync(device)
        samples.append((time.perf_counter() - t0) / steps)
    s = statistics.median(samples)
    is_pretrain = SETUPS[setup][1] == "offline"
    hours = ({f"hours_{n // 1000}k_pretrain": s * n / 3600 for n in PAPER_PRETRAIN} if is_pretrain
             else {f"hours_{PAPER_ONLINE // 1000}k_online_steps": s * PAPER_ONLINE / 3600})
    return {"setup": setup, "stands_for": SETUPS[setup][3], "device": device,
            "device_name": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "batch_size": batch, "obs_dim": obs_dim, "act_dim": act_dim,
            "steps": steps, "warmup": warmup, "repeats": repeats, "torch": torch.__version__, "s_per_update": s, "samples": samples, **hours}


def report(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = ["| setup | stands for | device | threads | s per update (median) | paper's length at that rate | load avg | date |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        h = [f"{k.removeprefix('hours_').replace('_', ' ')}: {v:.1f} h" for k, v in r.items() if k.startswith("hours_")]
        out.append(f"| {r['setup']} | {r['stands_for']} | {r['device']} ({r['device_name']}) | {r['threads']} | "
                   f"{r['s_per_update']:.4f} | {'; '.join(h)} | {' '.join(r.get('loadavg') or [])} | {r['date']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--steps", type=int, default=50, help="timed update calls per sample")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--obs-dim", type=int, default=18, help="push_cube with obs_relative=true: 18")
    ap.add_argument("--act-dim", type=int, default=4)
    ap.add_argument("--deadline-s", type=float, default=None, help="start no setup after this many seconds")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--commit", default="")
    ap.add_argument("--out", help="append one JSON line per setup to this file")
    ap.add_argument("--report", help="print the markdown table of the records in this file and exit")
    a = ap.parse_args()
    if a.report:
        print(report(Path(a.report)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_learners import _record  # the same record stamp (date, machine, load) as the other gpu_checks benchmarks

    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    for setup in a.setups:
        if a.deadline_s is not None and time.perf_counter() - t0 > a.deadline_s:
            print(f"deadline reached: {setup} not measured", flush=True)
            continue
        rec = measure(setup, a.device, a.steps, a.warmup, a.repeats, a.obs_dim, a.act_dim, a.batch_size)
        _record(a.out, {"commit": a.commit, **rec})


if __name__ == "__main__":
    main()
