"""Env steps/s of the online learners' interaction: `robolearn finetune`'s env loop and SAILOR's
collector, on MuJoCo Warp (`--backend gpu`, or `warp-cpu` for a dry run) against MuJoCo C on the
host. Prepared for scripts/gpu_checks.sh (CUDA); one JSON record per measurement goes to --out.

What is timed (after --warmup untimed loop steps, which also capture the Warp graphs):
- finetune: the loop's interaction without gradient updates, i.e. the warm-up phase of
  `robolearn finetune` with a policy acting: SAC's actor samples an action for every env, every
  env steps once, the K transitions go into the replay (robolearn.rl.vector.VectorInteraction with
  the run's ReplayBuffer); backends: the device (agent + replay there) and the host vector path
  (finetune.num_envs=K, MuJoCo C, one thread), plus today's one-env host loop (RLEnv + agent.act,
  one transition per step) as the baseline. Gradient updates are excluded: their cost is the
  agent's, the same per transition on any backend.
- sailor: `SailorTrainer.collect(n, mode)` env steps/s with loop.num_envs=K, for the noisy base
  policy (warm start) and the planner (forced ready: untrained models cost what trained ones do),
  on a trained diffusion base (--base, --demos).

    python scripts/bench_learners.py --backend gpu --envs 4096 16384 --host-envs 16 \
        --base RUN/dp --demos data/pc.zarr --sailor-envs 1024 --out learners.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def _record(out: Path | None, rec: dict) -> None:
    rec = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.node(),
           "loadavg": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None, **rec}
    print(json.dumps(rec), flush=True)
    if out is not None:
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")


def _agent(task: str, device: torch.device):
    """A fresh SAC agent of policies/wsrl.yaml's shape for `task` (what finetune acts with)."""
    from robolearn.rl.agent import state_stats
    from robolearn.rl.algos import build_agent, load_run_config
    from robolearn.tasks.sim import TaskSim

    sim = TaskSim(task, num_envs=1)
    obs_dim, action_dim = sim.obs_dim, sim.action_dim
    sim.close()
    cfg = load_run_config("wsrl", "finetune", None, []).agent
    return build_agent("sac", cfg, obs_dim, action_dim, state_stats(None, obs_dim)).to(device)


def bench_finetune(task: str, backend: str, num_envs: int, steps: int, warmup: int) -> dict:
    """Env steps/s of the vector loop's interaction (acting + stepping + replay)."""
    from robolearn.rl.replay import ReplayBuffer
    from robolearn.rl.vector import VectorInteraction

    device = torch.device("cpu" if backend in ("cpu", "warp-cpu") else "cuda")
    agent = _agent(task, device)
    buffer = ReplayBuffer(agent.obs_dim, agent.action_dim, num_envs * (steps + warmup), device=None if backend == "cpu" else device)
    counter = iter(range(10**12))
    inter = VectorInteraction(task, {}, backend, num_envs, agent, buffer, torch.Generator(device).manual_seed(0),
                              lambda: next(counter))
    t_build = time.perf_counter()
    for _ in range(warmup):
        inter.step(random_actions=False)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        inter.step(random_actions=False)
    _sync(device)
    wall = time.perf_counter() - t0
    assert len(buffer) == num_envs * (steps + warmup)
    inter.close()
    return {"what": "finetune_interaction", "task": task, "backend": backend, "num_envs": num_envs, "steps": steps,
            "env_steps": num_envs * steps, "wall_s": wall, "env_steps_per_s": num_envs * steps / wall,
            "warmup_s": t0 - t_build}


def bench_finetune_one_env(task: str, steps: int) -> dict:
    """Today's default loop: one RLEnv (MuJoCo C), agent.act per step, buffer.add."""
    from robolearn.rl.envs import make_env
    from robolearn.rl.replay import ReplayBuffer

    agent = _agent(task, torch.device("cpu"))
    env = make_env(task)
    buffer = ReplayBuffer(agent.obs_dim, agent.action_dim, steps + 1)
    gen = torch.Generator().manual_seed(0)
    obs, ep = env.reset(seed=0), 0
    t0 = time.perf_counter()
    for _ in range(steps):
        action = agent.act(obs, deterministic=False, generator=gen)
        nxt, r, term, trunc, _ = env.step(action)
        buffer.add(obs, action, r, nxt, term)
        obs = nxt
        if term or trunc:
            ep += 1
            obs = env.reset(seed=ep)
    wall = time.perf_counter() - t0
    env.close()
    return {"what": "finetune_interaction", "task": task, "backend": "cpu-one-env", "num_envs": 1, "steps": steps,
            "env_steps": steps, "wall_s": wall, "env_steps_per_s": steps / wall}


def bench_sailor(task: str, backend: str, num_envs: int, steps: int, warmup: int, base: str, demos: str, device: str) -> list[dict]:
    """SAILOR collection env steps/s (noisy base, then planner) with loop.num_envs envs."""
    from robolearn.sailor.configuration import load_sailor_config
    from robolearn.sailor.loop import SailorTrainer

    cfg = load_sailor_config(None, [f"loop.num_envs={num_envs}", f"device={device}", "loop.eval_episodes=0"])
    out = Path(tempfile.mkdtemp(prefix="bench_sailor_")) / "run"
    trainer = SailorTrainer(cfg, base, demos, task, 10**9, out, wandb_mode="off", progress=False, backend=backend)
    recs = []
    for mode in ("noisy_base", "planner"):
        if mode == "planner":
            trainer.agent.planner_ready.fill_(True)
        trainer.collect(num_envs * warmup, mode)
        _sync(trainer.device)
        t0 = time.perf_counter()
        m = trainer.collect(num_envs * steps, mode)
        _sync(trainer.device)
        wall = time.perf_counter() - t0
        recs.append({"what": "sailor_collect", "mode": mode, "task": task, "backend": backend, "num_envs": num_envs,
                     "steps": steps, "env_steps": m["collect_steps"], "wall_s": wall,
                     "env_steps_per_s": m["collect_steps"] / wall, "episodes": m["collect_episodes"],
                     **({"planner_decisions": m.get("planner_decisions")} if mode == "planner" else {})})
    trainer.close_collector()
    trainer.replay_store.close()
    return recs


def table(path: Path) -> str:
    """Markdown table of a learners.jsonl: env steps/s per measurement and the speed-up over the
    host measurement of the same kind (finetune: today's one-env loop and the host vector loop;
    sailor: the host collector with the same mode)."""
    recs = [json.loads(line) for line in open(path) if line.strip()]
    ok = [r for r in recs if "env_steps_per_s" in r]
    one_env = next((r["env_steps_per_s"] for r in ok if r["backend"] == "cpu-one-env"), None)
    host = {(r["what"], r.get("mode")): r["env_steps_per_s"] for r in ok if r["backend"] == "cpu"}
    lines = ["| measurement | backend | envs | env steps | wall s | env steps/s | vs host vector | vs one-env host loop |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in recs:
        name = r["what"] + (f" ({r['mode']})" if r.get("mode") else "")
        if "error" in r:
            lines.append(f"| {name} | {r['backend']} | {r['num_envs']} | failed: {r['error'][:80]} | | | | |")
            continue
        rate = r["env_steps_per_s"]
        h = host.get((r["what"], r.get("mode")))
        vs_host = f"{rate / h:.1f}x" if h and r["backend"] not in ("cpu", "cpu-one-env") else ""
        vs_one = f"{rate / one_env:.1f}x" if one_env and r["what"] == "finetune_interaction" else ""
        lines.append(f"| {name} | {r['backend']} | {r['num_envs']} | {r['env_steps']} | {r['wall_s']:.2f} | {rate:,.0f} | {vs_host} | {vs_one} |" if rate >= 10 else
                     f"| {name} | {r['backend']} | {r['num_envs']} | {r['env_steps']} | {r['wall_s']:.2f} | {rate:.2f} | {vs_host} | {vs_one} |")
    first = recs[0] if recs else {}
    lines.append("")
    lines.append(f"commit {first.get('commit')}, machine {first.get('machine')}, {first.get('date')}, load {first.get('loadavg')}")
    return "\n".join(lines)


def _sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="gpu", choices=["gpu", "warp-cpu"])
    p.add_argument("--task", default="push_cube")
    p.add_argument("--envs", type=int, nargs="+", default=[4096, 16384], help="device env counts (finetune)")
    p.add_argument("--host-envs", type=int, nargs="+", default=[16], help="host vector env counts (finetune, sailor)")
    p.add_argument("--steps", type=int, default=50, help="timed loop steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed loop steps first (graph capture, caches)")
    p.add_argument("--one-env-steps", type=int, default=600, help="steps of the one-env host loop (0: skip)")
    p.add_argument("--base", help="diffusion checkpoint for the SAILOR measurement (skipped without)")
    p.add_argument("--demos", help="its demo store")
    p.add_argument("--sailor-envs", type=int, nargs="+", default=[1024], help="device env counts (sailor)")
    p.add_argument("--sailor-steps", type=int, default=24)
    p.add_argument("--sailor-device", default="auto",
                   help="torch device of the SAILOR agent on both backends (auto: cuda if available, as `robolearn sailor`)")
    p.add_argument("--deadline-s", type=float, default=None, help="start no measurement after this many seconds")
    p.add_argument("--commit", default="unknown")
    p.add_argument("--out", type=Path)
    p.add_argument("--table", type=Path, help="print the markdown table of this learners.jsonl and exit")
    args = p.parse_args(argv)
    if args.table is not None:
        print(table(args.table))
        return 0
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    common = {"commit": args.commit}

    def time_left() -> bool:
        if args.deadline_s is not None and time.perf_counter() - t_start > args.deadline_s:
            print(f"deadline {args.deadline_s} s reached: no further measurement", file=sys.stderr)
            return False
        return True

    jobs = [("finetune", args.backend, k) for k in args.envs] + [("finetune", "cpu", k) for k in args.host_envs]
    if args.one_env_steps:
        jobs.append(("finetune1", "cpu", 1))
    if args.base and args.demos:
        jobs += [("sailor", "cpu", k) for k in args.host_envs] + [("sailor", args.backend, k) for k in args.sailor_envs]
    for kind, backend, k in jobs:
        if not time_left():
            break
        try:
            if kind == "finetune":
                recs = [bench_finetune(args.task, backend, k, args.steps, args.warmup)]
            elif kind == "finetune1":
                recs = [bench_finetune_one_env(args.task, args.one_env_steps)]
            else:
                recs = bench_sailor(args.task, backend, k, args.sailor_steps, 2, args.base, args.demos, args.sailor_device)
        except Exception as e:  # one failed measurement must not lose the others
            recs = [{"what": kind, "backend": backend, "num_envs": k, "error": f"{type(e).__name__}: {e}"}]
        for r in recs:
            _record(args.out, {**common, **r})
    return 0


if __name__ == "__main__":
    sys.exit(main())
