"""Training throughput and inference latency of each policy on this machine.

Builds each policy from its default YAML (optionally scaled with overrides) over synthetic windows
of a task's shapes, then measures optimizer steps/s at a batch size and the latency of one
`predict_action` call (one action chunk) for a single observation history.

    python scripts/bench_train.py --out docs/results/bench_train.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from robolearn.config import project_root
from robolearn.data.schema import Feature
from robolearn.policies import make_policy
from robolearn.policies.configuration import load_run_config

PROFILES = {
    # name -> (policy, overrides)
    "bc (default)": ("bc", []),
    "bc-gmm (default)": ("bc", ["policy.head=gmm"]),
    "diffusion (default, U-Net 256-512-1024)": ("diffusion", []),
    "diffusion (demo size, U-Net 64-128-256)": ("diffusion", ["policy.down_dims=[64,128,256]", "policy.diffusion_step_embed_dim=64"]),
    "hierarchical (default)": ("hierarchical", []),
}


def synthetic_batch(cfg, batch: int, state_dim: int, gen: torch.Generator) -> dict:
    obs = {k: torch.randn(batch, cfg.n_obs_steps, state_dim, generator=gen) for k in cfg.state_keys}
    out = {
        "obs": obs,
        "action": torch.rand(batch, cfg.horizon, cfg.action_dim, generator=gen) * 2 - 1,
        "pad_mask": torch.ones(batch, cfg.horizon, dtype=torch.bool),
        "weight": torch.ones(batch),
    }
    for key in cfg.extra_batch_keys:
        out[key] = torch.randint(0, getattr(cfg, "num_primitives", 4), (batch, cfg.horizon), generator=gen)
    return out


def bench_one(policy_name: str, overrides: list[str], batch: int, steps: int, state_dim: int, action_dim: int) -> tuple[float, float]:
    run = load_run_config(project_root() / "policies" / f"{policy_name}.yaml", overrides, name=policy_name)
    features = {"obs/state": Feature("float32", (state_dim,), "obs"), "action": Feature("float32", (action_dim,), "action")}
    cfg = run.policy.with_features(features)
    stats = {
        "obs/state": {"min": -np.ones(state_dim), "max": np.ones(state_dim), "mean": np.zeros(state_dim), "std": np.ones(state_dim)},
        "action": {"min": -np.ones(action_dim), "max": np.ones(action_dim), "mean": np.zeros(action_dim), "std": np.ones(action_dim)},
    }
    policy = make_policy(policy_name, cfg, stats)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    data = synthetic_batch(cfg, batch, state_dim, gen)
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        loss = policy.compute_loss(data).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_sps = steps / (time.perf_counter() - t0)
    policy.eval()
    obs = {k: v[:1] for k, v in data["obs"].items()}
    with torch.no_grad():
        for _ in range(3):
            policy.predict_action(obs)
        reps = 20
        t0 = time.perf_counter()
        for _ in range(reps):
            policy.predict_action(obs)
    latency_ms = (time.perf_counter() - t0) / reps * 1000
    return train_sps, latency_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--state-dim", type=int, default=13, help="push_cube's state size")
    ap.add_argument("--action-dim", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for label, (name, overrides) in PROFILES.items():
        sps, lat = bench_one(name, overrides, args.batch, args.steps, args.state_dim, args.action_dim)
        rows.append(f"| {label} | {sps:.1f} | {sps * args.batch:,.0f} | {lat:.2f} |")
        print(rows[-1], flush=True)
    table = "\n".join(
        [f"| policy | train steps/s (batch {args.batch}) | samples/s | inference latency per chunk (ms, batch 1) |", "|---|---|---|---|", *rows]
    )
    if args.out:
        cmd = f"python scripts/bench_train.py --batch {args.batch} --steps {args.steps} --state-dim {args.state_dim} --action-dim {args.action_dim} --threads {args.threads} --out {args.out}"
        Path(args.out).write_text(
            "# Training throughput and inference latency\n\n"
            f"- command: `{cmd}`\n- machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({args.threads} threads), CPU only\n- seed: 0 (synthetic batches)\n- date: {dt.date.today().isoformat()}\n\n"
            "Diffusion inference is one DDIM sampling of a whole chunk (10 denoising steps by default).\n\n" + table + "\n"
        )


if __name__ == "__main__":
    main()
