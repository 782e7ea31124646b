"""Seconds per training step of diffusion_small U-Net variants on the demo's data, interleaved.

The step is robolearn train's (loss, backward, fused AdamW, EMA) on fixed pre-built batches, so the
sampler is left out; sides run in rotation, 20 steps per turn, medians over the turns. Writes one
JSON record (load average, torch threads, per-variant times and parameter counts); `--table`
prints the markdown table from it. Used to choose `robolearn demo`'s recipe (docs/results/demo.md).

    python scripts/bench_unet_widths.py runs/demo_recipe/demos200.zarr --out docs/results/demo/unet_widths.json
    python scripts/bench_unet_widths.py --table docs/results/demo/unet_widths.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "64-128-256 (the preset)": [],
    "32-64-128": ["policy.down_dims=[32,64,128]", "policy.diffusion_step_embed_dim=32"],
    "48-96-192": ["policy.down_dims=[48,96,192]", "policy.diffusion_step_embed_dim=48"],
    "64-128": ["policy.down_dims=[64,128]"],
    "64-128-256, kernel 3": ["policy.kernel_size=3"],
    "64-128-256, horizon 8": ["policy.horizon=8"],
}


def measure(store_path: str, turns: int, steps: int) -> dict:
    import torch

    from robolearn.config import project_root
    from robolearn.data.normalizer import compute_stats
    from robolearn.data.store import EpisodeStore
    from robolearn.nn.ema import EMA
    from robolearn.policies import make_policy
    from robolearn.policies.configuration import load_run_config
    from robolearn.training import build_datasets

    store = EpisodeStore.open(store_path, mode="r")
    rng = np.random.default_rng(0)
    sides = {}
    for name, overrides in VARIANTS.items():
        cfg = load_run_config(project_root() / "policies" / "diffusion_small.yaml", overrides)
        pcfg = cfg.policy.with_features(store.features)
        cfg = dataclasses.replace(cfg, policy=pcfg)
        dataset, _, _ = build_datasets(cfg, store, 0, [])
        stats = compute_stats(store, list(pcfg.normalizer_modes()))
        batches = [dataset.torch_batch(rng.integers(0, len(dataset), cfg.train.batch_size), torch.device("cpu"))
                   for _ in range(10)]
        torch.manual_seed(0)
        policy = make_policy("diffusion", pcfg, stats)
        opt = torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr, fused=True)
        sides[name] = (policy, EMA(policy), opt, batches)

    def run(policy, ema, opt, batches, n: int) -> float:
        start = time.perf_counter()
        for i in range(n):
            loss = policy.compute_loss(batches[i % len(batches)]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(policy)
        return (time.perf_counter() - start) / n

    for side in sides.values():
        run(*side, 3)  # warm-up
    load_start = list(os.getloadavg())
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for turn in range(turns):
        for name in names[turn % len(names):] + names[:turn % len(names)]:  # rotate the order each turn
            times[name].append(run(*sides[name], steps))
    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "store": store_path, "turns": turns,
            "steps_per_turn": steps, "torch_threads": torch.get_num_threads(), "load_start": load_start,
            "load_end": list(os.getloadavg()), "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
            "variants": {name: {"overrides": VARIANTS[name], "seconds_per_step": times[name],
                                "params": sum(p.numel() for p in sides[name][0].parameters())} for name in names}}


def table(record: dict) -> str:
    base = np.median(record["variants"]["64-128-256 (the preset)"]["seconds_per_step"])
    lines = [f"- {record['date']}, {record['machine']}, {record['torch_threads']} torch thread(s), load average "
             f"{record['load_start'][0]:.1f} -> {record['load_end'][0]:.1f}; {record['turns']} interleaved turns of "
             f"{record['steps_per_turn']} steps, medians", "",
             "| U-Net | parameters | ms per step (median) | vs the preset |", "|---|---|---|---|"]
    for name, v in record["variants"].items():
        ms = np.median(v["seconds_per_step"])
        lines.append(f"| {name} | {v['params'] / 1e6:.2f} M | {ms * 1000:.0f} | {base / ms:.2f}x faster |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", nargs="?", help="the demo's episode store")
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--table", type=Path, default=None, help="print the table of this JSON record and exit")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    if not args.store:
        ap.error("a store is needed (or --table)")
    record = measure(args.store, args.turns, args.steps)
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(args.out)
    print(table(record))


if __name__ == "__main__":
    main()
