"""Seconds per training step (and per action chunk at inference) of each policy preset on this machine.

Each preset's YAML (policies/<preset>.yaml) is built on a small store of real push_cube demos
(obs_relative, as the demo) and trained for a few optimizer steps through the same sampler,
prefetcher, loss and AdamW as `robolearn train`; the median step time after warm-up steps is
reported with the load average, so the README can state how long each preset's recipe takes.

    python scripts/bench_presets.py --presets diffusion_small diffusion --out docs/results/demo/presets.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def bench_preset(preset: str, store_path: Path, steps: int, warmup: int) -> dict:
    from robolearn.config import project_root
    from robolearn.data.normalizer import compute_stats
    from robolearn.data.sampler import BatchPrefetcher, SequenceDataset, WeightedWindowSampler
    from robolearn.data.store import EpisodeStore
    from robolearn.policies import make_policy
    from robolearn.policies.configuration import load_run_config

    path = project_root() / "policies" / f"{preset}.yaml"
    cfg = load_run_config(path)
    store = EpisodeStore.open(store_path)
    pcfg = cfg.policy.with_features(store.features)
    stats = compute_stats(store, list(pcfg.normalizer_modes()))
    policy = make_policy(cfg.name, pcfg, stats)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas), weight_decay=cfg.train.weight_decay,
                            fused=True)  # as robolearn train on CPU since 2026-12-05
    ds = SequenceDataset(store, pcfg.obs_keys, n_obs_steps=pcfg.n_obs_steps, horizon=pcfg.horizon)
    batches = BatchPrefetcher(ds, WeightedWindowSampler(np.ones(len(ds)), seed=0), cfg.train.batch_size, cfg.train.num_workers)
    times = []
    load = list(os.getloadavg())
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch, _ = batches.next()
        loss = policy.compute_loss(batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    batches.close()
    policy.eval()
    obs = {k: torch.as_tensor(v[:1]) for k, v in ds.torch_batch(np.arange(1))["obs"].items()}
    infer = []
    with torch.no_grad():
        for _ in range(5):
            t0 = time.perf_counter()
            policy.predict_action(obs)
            infer.append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in policy.parameters())
    return {"preset": preset, "policy": cfg.name, "params": n_params, "batch_size": cfg.train.batch_size,
            "recipe_steps": cfg.train.steps, "seconds_per_step_median": float(np.median(times)),
            "seconds_per_step": [round(t, 4) for t in times], "recipe_hours_at_median": float(np.median(times)) * cfg.train.steps / 3600,
            "inference_s_per_chunk_median": float(np.median(infer)), "loadavg_start": load, "loadavg_end": list(os.getloadavg())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["diffusion_small", "diffusion"])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per preset")
    ap.add_argument("--paper-steps", type=int, default=5, help="timed steps for presets slower than 1 s/step")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from robolearn.tasks.collect import collect

    work = Path(tempfile.mkdtemp(prefix="bench_presets_"))
    store = work / "demos.zarr"
    collect("push_cube", episodes=20, out=store, num_envs=10, seed=0, overrides=["obs_relative=true"], progress=False)
    results = []
    for preset in args.presets:
        probe = bench_preset(preset, store, 1, 1)  # one timed step decides how many to time
        slow = probe["seconds_per_step_median"] > 1.0
        r = bench_preset(preset, store, args.paper_steps if slow else args.steps, 1 if slow else args.warmup)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "seconds_per_step"}), flush=True)
    out = {"command": "python scripts/bench_presets.py " + " ".join(
               f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
               for k, v in vars(args).items() if v is not None),
           "date": dt.datetime.now().isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                      f"{torch.get_num_threads()} torch threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})",
           "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
