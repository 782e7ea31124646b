"""SAILOR's CPU cost: the planner per decision and one model update, on one torch thread.

The models are the ones scripts/sailor_experiment.py trains for docs/results/sailor.md (its
CPU profile); weights are random (the cost does not depend on them; the reward and critic heads
get random weights so nothing is short-circuited). Compared sides run interleaved in one process,
each timed `--repeats` times; medians are reported with the load average before and after.

    python scripts/bench_sailor.py --out docs/results/sailor/bench.json     # measure, write json + print table
    python scripts/bench_sailor.py --table docs/results/sailor/bench.json   # the table again from the json
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def build_agent(overrides: list[str], state_dim: int, action_dim: int, n_action_steps: int):
    from robolearn.data.normalizer import Normalizer
    from robolearn.policies.diffusion.configuration import DiffusionConfig
    from robolearn.sailor.agent import SailorPolicy
    from robolearn.sailor.configuration import SailorConfig, load_sailor_config

    cfg = load_sailor_config(None, overrides).agent
    base = DiffusionConfig(input_shapes={"state": [state_dim]}, action_dim=action_dim, n_action_steps=n_action_steps,
                           down_dims=[64, 128, 256], diffusion_step_embed_dim=64)
    stats = {}
    for key, dim in (("obs/state", state_dim), ("action", action_dim)):
        stats[key] = {"min": [-1.0] * dim, "max": [1.0] * dim, "mean": [0.0] * dim, "std": [1.0] * dim,
                      "q01": [-1.0] * dim, "q99": [1.0] * dim}
    modes = base.normalizer_modes()
    agent = SailorPolicy(SailorConfig(**{**cfg.__dict__, "base": base}), Normalizer({k: stats[k] for k in modes}, modes))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in (agent.reward_model, agent.critic):
            for p in m.parameters():
                if p.abs().sum() == 0:
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return agent.eval()


def planner_case(agent, batch: int, **planner):
    """A closure timing one decision for `batch` environments with these planner settings."""
    import dataclasses

    cfg = dataclasses.replace(agent.config.planner, **planner)
    H, A = cfg.horizon, agent.config.action_dim
    gen = torch.Generator().manual_seed(1)
    state = torch.randn(batch, agent.config.state_dim, generator=gen)
    latent = agent.posterior_step(state, torch.ones(batch, dtype=torch.bool), None, torch.zeros(batch, A))
    base_plan = torch.rand(batch, H, A, generator=gen) * 2 - 1

    def run() -> float:
        from robolearn.sailor.planner import LatentScorer, plan_residual

        t, c = time.perf_counter(), time.process_time()
        scorer = LatentScorer(agent.world_model, agent.reward_model, agent.critic, latent, cfg)
        plan_residual(base_plan, scorer, cfg, agent.generator)
        return time.perf_counter() - t, time.process_time() - c

    return run


def update_case(agent):
    """A closure timing one model update (world model + reward model + critic) on a random batch."""
    from robolearn.sailor.loop import ModelUpdater

    cfg = agent.config
    updater = ModelUpdater(agent)
    updater.updates = cfg.reward.update_every - 1  # time the update that also trains the reward model...
    B, L, A = cfg.world_model.batch_size, cfg.world_model.batch_length, cfg.action_dim
    gen = torch.Generator().manual_seed(2)
    first = torch.zeros(B, L, dtype=torch.bool)
    first[:, 0] = True
    batch = {"state": torch.randn(B, L, cfg.state_dim, generator=gen), "prev_action": torch.rand(B, L, A, generator=gen) * 2 - 1,
             "is_first": first, "is_terminal": torch.zeros(B, L),
             "base_plan": torch.rand(B, L, cfg.critic.imag_horizon, A, generator=gen) * 2 - 1}

    def run(with_reward: bool) -> float:
        updater.updates = cfg.reward.update_every - 1 if with_reward else 0  # ...or the one that does not
        agent.train()
        t, c = time.perf_counter(), time.process_time()
        updater.step(batch, B // 2)
        out = time.perf_counter() - t, time.process_time() - c
        agent.eval()
        return out

    return run


def main() -> int:
    from sailor_experiment import CPU_SAILOR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--state-dim", type=int, default=15, help="pick_place's state (obs_relative off)")
    p.add_argument("--action-dim", type=int, default=5)
    p.add_argument("--n-action-steps", type=int, default=8)
    p.add_argument("--out", type=Path, help="write the raw json here (not overwritten)")
    p.add_argument("--table", type=Path, help="only print the table of this json")
    args = p.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
    if args.out is not None and args.out.exists():
        print(f"bench_sailor: {args.out} exists; pass another --out", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    agent = build_agent(CPU_SAILOR, args.state_dim, args.action_dim, args.n_action_steps)
    pl = agent.config.planner
    cases = {
        "decision, 1 env, 64 x 3 x H8, guarded (8 check particles)": planner_case(agent, 1, num_samples=64, iterations=3, num_elites=8, horizon=8),
        "decision, 1 env, 64 x 3 x H8, unguarded": planner_case(agent, 1, num_samples=64, iterations=3, num_elites=8, horizon=8, guard=False),
        "decision, 1 env, 64 x 3 x H8, guarded, beta = 0": planner_case(agent, 1, num_samples=64, iterations=3, num_elites=8, horizon=8, uncertainty_cost=0.0),
        "decision, 10 envs batched, 64 x 3 x H8, guarded": planner_case(agent, 10, num_samples=64, iterations=3, num_elites=8, horizon=8),
        "decision, 1 env, official 256 x 6 x H8, guarded": planner_case(agent, 1, num_samples=256, iterations=6, num_elites=32, horizon=8),
    }
    upd = update_case(agent)
    cases["model update (world model + critic)"] = lambda: upd(False)
    cases["model update (world model + reward model + critic)"] = lambda: upd(True)
    load_before = load_average()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    for _ in range(args.warmup):
        for fn in cases.values():
            fn()
    for _ in range(args.repeats):  # interleaved: every case once per repeat
        for name, fn in cases.items():
            times[name].append(fn())
    record = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread",
        "load_average_before": load_before, "load_average_after": load_average(), "repeats": args.repeats,
        "profile": CPU_SAILOR, "planner_defaults": {"particles": pl.particles, "check_particles": pl.check_particles},
        "results": {k: summary(v) for k, v in times.items()},
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, args.out)
    print(table(record))
    return 0


def summary(samples: list[tuple[float, float]]) -> dict:
    """Wall-clock and process CPU time (ms): the CPU time is what one thread costs when the machine
    is shared (wall time then includes waiting for a core)."""
    wall = 1000 * np.array([w for w, _ in samples])
    cpu = 1000 * np.array([c for _, c in samples])
    return {"median_ms": float(np.median(wall)), "p10_ms": float(np.percentile(wall, 10)), "p90_ms": float(np.percentile(wall, 90)),
            "cpu_median_ms": float(np.median(cpu)), "cpu_p10_ms": float(np.percentile(cpu, 10)),
            "cpu_p90_ms": float(np.percentile(cpu, 90)), "raw_wall_ms": wall.tolist(), "raw_cpu_ms": cpu.tolist()}


def table(record: dict) -> str:
    lines = [f"{record['date']}, {record['machine']}, load average {record['load_average_before']} -> "
             f"{record['load_average_after']}, {record['repeats']} interleaved repeats",
             "", "| case | CPU ms, median [p10, p90] | wall ms, median [p10, p90] |", "|---|---|---|"]
    for name, r in record["results"].items():
        cpu = f"{r['cpu_median_ms']:.1f} [{r['cpu_p10_ms']:.1f}, {r['cpu_p90_ms']:.1f}]" if "cpu_median_ms" in r else "-"
        lines.append(f"| {name} | {cpu} | {r['median_ms']:.1f} [{r['p10_ms']:.1f}, {r['p90_ms']:.1f}] |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
