"""Gradient steps per second of our IQL and TD3+BC against minimal single-file reference loops.

    OMP_NUM_THREADS=1 python scripts/bench_rl.py --out docs/results/offline_to_online/bench_rl.json
    python scripts/bench_rl.py --report docs/results/offline_to_online/bench_rl.json   # markdown table

The references below are written in the style of CleanRL's single-file implementations: plain
nn.Sequential MLPs (one per critic), Adam, a numpy dataset indexed with np.random.randint, nothing
else. They use the same network sizes as our runs (actor, critics and value MLPs of `--hidden`,
LayerNorm after each hidden layer of the critics and the value net as our configs do, 2 critics),
the same batch size and the same update order as ours, so the comparison measures framework
overhead (sampler, normaliser, vmapped critic ensemble, bookkeeping), not algorithmic differences.
Our side is exactly what `robolearn offline` runs per step: the trajectory sampler's next batch,
`Transitions.batch`, `agent.update`.

Both sides run on one CPU thread on the same synthetic dataset (random transitions with the
dimensions of push_cube with obs_relative=true unless told otherwise). Sides are interleaved
(ours, reference, ours, reference, ...) `--repeats` times, each timing `--steps` updates after
`--warmup` untimed ones. Each sample records steps per wall second and per CPU second of the process
(on a box shared with other jobs the CPU-time rate is the work per step, without waiting for a core);
the table reports medians, the median of the per-repeat paired ratios, and the load average.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

# ---------------------------------------------------------------------------------- reference loops


def _mlp(inp: int, out: int, hidden: list[int], layer_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(inp, h), *([nn.LayerNorm(h)] if layer_norm else []), nn.ReLU()]
        inp = h
    return nn.Sequential(*layers, nn.Linear(inp, out))


class RefIQL:
    """IQL (expectile 0.7, beta 3, weights clipped at 100), two critics, Gaussian actor with tanh mean."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], lr: float = 3e-4) -> None:
        self.q1, self.q2 = _mlp(obs_dim + act_dim, 1, hidden, True), _mlp(obs_dim + act_dim, 1, hidden, True)
        self.q1_t, self.q2_t = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.v = _mlp(obs_dim, 1, hidden, True)
        self.actor = _mlp(obs_dim, 2 * act_dim, hidden, False)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=lr)
        self.v_opt = torch.optim.Adam(self.v.parameters(), lr=lr)
        self.a_opt = torch.optim.Adam(self.actor.parameters(), lr=lr)

    def update(self, obs, act, rew, next_obs, done) -> None:
        with torch.no_grad():
            sa = torch.cat([obs, act], -1)
            q_t = torch.min(self.q1_t(sa), self.q2_t(sa)).squeeze(-1)
        diff = q_t - self.v(obs).squeeze(-1)
        v_loss = (torch.where(diff > 0, 0.7, 0.3) * diff ** 2).mean()
        self.v_opt.zero_grad()
        v_loss.backward()
        self.v_opt.step()
        with torch.no_grad():
            w = torch.exp(3.0 * (q_t - self.v(obs).squeeze(-1))).clamp(max=100.0)
        mean, log_std = self.actor(obs).chunk(2, -1)
        log_std = -5.0 + 3.5 * (torch.tanh(log_std) + 1)
        logp = (-0.5 * ((act - torch.tanh(mean)) / log_std.exp()) ** 2 - log_std - 0.9189385).sum(-1)
        a_loss = -(w * logp).mean()
        self.a_opt.zero_grad()
        a_loss.backward()
        self.a_opt.step()
        with torch.no_grad():
            target = rew + 0.99 * (1 - done) * self.v(next_obs).squeeze(-1)
        sa = torch.cat([obs, act], -1)
        q_loss = ((self.q1(sa).squeeze(-1) - target) ** 2).mean() + ((self.q2(sa).squeeze(-1) - target) ** 2).mean()
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        with torch.no_grad():
            for net, tgt in ((self.q1, self.q1_t), (self.q2, self.q2_t)):
                for p, tp in zip(net.parameters(), tgt.parameters()):
                    tp.mul_(0.995).add_(0.005 * p)


class RefTD3BC:
    """TD3+BC (alpha 2.5, policy noise 0.2 clipped at 0.5, actor and targets every 2nd update)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], lr: float = 3e-4) -> None:
        self.q1, self.q2 = _mlp(obs_dim + act_dim, 1, hidden, True), _mlp(obs_dim + act_dim, 1, hidden, True)
        self.q1_t, self.q2_t = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.actor = _mlp(obs_dim, 2 * act_dim, hidden, False)  # same width as ours: mean and (unused) log-std
        self.actor_t = copy.deepcopy(self.actor)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=lr)
        self.a_opt = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.it = 0

    @staticmethod
    def _pi(net: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(net(obs).chunk(2, -1)[0])

    def update(self, obs, act, rew, next_obs, done) -> None:
        self.it += 1
        with torch.no_grad():
            noise = (torch.randn_like(act) * 0.2).clamp(-0.5, 0.5)
            na = (self._pi(self.actor_t, next_obs) + noise).clamp(-1, 1)
            nsa = torch.cat([next_obs, na], -1)
            target = rew + 0.99 * (1 - done) * torch.min(self.q1_t(nsa), self.q2_t(nsa)).squeeze(-1)
        sa = torch.cat([obs, act], -1)
        q_loss = ((self.q1(sa).squeeze(-1) - target) ** 2).mean() + ((self.q2(sa).squeeze(-1) - target) ** 2).mean()
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        if self.it % 2 == 0:
            pi = self._pi(self.actor, obs)
            q = self.q1(torch.cat([obs, pi], -1))
            lam = 2.5 / q.abs().mean().detach()
            a_loss = -lam * q.mean() + ((pi - act) ** 2).mean()
            self.a_opt.zero_grad()
            a_loss.backward()
            self.a_opt.step()
            with torch.no_grad():
                for net, tgt in ((self.q1, self.q1_t), (self.q2, self.q2_t), (self.actor, self.actor_t)):
                    for p, tp in zip(net.parameters(), tgt.parameters()):
                        tp.mul_(0.995).add_(0.005 * p)


def reference_runner(algo: str, data: dict[str, np.ndarray], hidden: list[int], batch: int, seed: int):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    obs_dim, act_dim = data["obs"].shape[1], data["action"].shape[1]
    agent = (RefIQL if algo == "iql" else RefTD3BC)(obs_dim, act_dim, hidden)
    n = len(data["reward"])

    def step() -> None:
        i = rng.integers(0, n, batch)
        agent.update(torch.as_tensor(data["obs"][i]), torch.as_tensor(data["action"][i]), torch.as_tensor(data["reward"][i]),
                     torch.as_tensor(data["next_obs"][i]), torch.as_tensor(data["terminal"][i]))

    return step


# ---------------------------------------------------------------------------------- ours
def ours_runner(algo: str, store_path: Path, hidden: list[int], batch: int, seed: int, sampler: str):
    from robolearn.data.normalizer import compute_stats
    from robolearn.data.store import EpisodeStore
    from robolearn.rl.agent import MIN_STATE_STD, STATE_KEY
    from robolearn.rl.algos import algo_classes, build_agent
    from robolearn.rl.replay import transitions_from_store
    from robolearn.rl.weighting import DEFAULT_ALPHA, make_sampler, transition_probs

    torch.manual_seed(seed)
    store = EpisodeStore.open(store_path)
    trans = transitions_from_store(store)
    stats = compute_stats(store, [STATE_KEY])
    stats[STATE_KEY]["std"] = np.maximum(stats[STATE_KEY]["std"], MIN_STATE_STD)
    _, cfg_cls = algo_classes(algo)
    agent = build_agent(algo, cfg_cls(hidden_dims=list(hidden)), trans.obs_dim, trans.action_dim, stats)
    agent.train()
    probs = transition_probs(sampler, trans.episode, trans.episode_return, trans.initial_obs, DEFAULT_ALPHA[algo])
    smp = make_sampler(probs, seed=seed)

    def step() -> None:
        agent.update(trans.batch(smp.next_batch(batch)))

    return step


def synthetic_store(path: Path, obs_dim: int, act_dim: int, episodes: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A store of random transitions (and the same transitions as flat arrays for the reference)."""
    from robolearn.data.store import EpisodeStore, Feature
    from robolearn.rl.replay import transitions_from_store

    if not path.exists():
        rng = np.random.default_rng(seed)
        store = EpisodeStore.create(path, {"obs/state": Feature("float32", (obs_dim,), "obs"),
                                           "action": Feature("float32", (act_dim,), "action")}, task="bench")
        for _ in range(episodes):
            store.append_episode({"obs/state": rng.normal(size=(length, obs_dim)).astype(np.float32),
                                  "action": rng.uniform(-1, 1, (length, act_dim)).astype(np.float32),
                                  "reward": rng.normal(size=length).astype(np.float32)}, metadata={"terminated": False})
        store.close()
    t = transitions_from_store(EpisodeStore.open(path))
    # the reference normalises states once up front, as CleanRL-style offline scripts do
    mean, std = t.obs.mean(0), t.obs.std(0) + 1e-3
    return {"obs": (t.obs - mean) / std, "next_obs": (t.next_obs - mean) / std, "action": t.action,
            "reward": t.reward, "terminal": t.terminal.astype(np.float32)}


def time_steps(step, n: int) -> tuple[float, float]:
    """(steps per wall second, steps per CPU second of this process). On a shared box the CPU-time rate
    measures the work per step without the time spent waiting for a core."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def run(a: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    store = Path(a.workdir) / f"bench_{a.obs_dim}x{a.act_dim}.zarr"
    store.parent.mkdir(parents=True, exist_ok=True)
    data = synthetic_store(store, a.obs_dim, a.act_dim, a.episodes, a.length)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    runners = {}
    for algo in a.algos:
        runners[(algo, "ours")] = ours_runner(algo, store, a.hidden, a.batch_size, 0, a.sampler)
        runners[(algo, "reference")] = reference_runner(algo, data, a.hidden, a.batch_size, 0)
    for step in runners.values():  # warm-up: allocator, autograd graph caches
        for _ in range(a.warmup):
            step()
    samples: dict[str, list[float]] = {f"{algo}/{side}": [] for algo, side in runners}
    cpu: dict[str, list[float]] = {f"{algo}/{side}": [] for algo, side in runners}
    for r in range(a.repeats):
        for (algo, side), step in runners.items():  # interleaved: ours, reference, ours, reference, ...
            wall_rate, cpu_rate = time_steps(step, a.steps)
            samples[f"{algo}/{side}"].append(wall_rate)
            cpu[f"{algo}/{side}"].append(cpu_rate)
        print(f"repeat {r + 1}/{a.repeats}: " + ", ".join(f"{k} {v[-1]:.0f}/s ({cpu[k][-1]:.0f}/cpu-s)" for k, v in samples.items()),
              flush=True)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    result = {
        "command": "OMP_NUM_THREADS=1 python scripts/bench_rl.py " + " ".join(a.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
        "threads": torch.get_num_threads(), "loadavg_before": load_before, "loadavg_after": load_after,
        "obs_dim": a.obs_dim, "act_dim": a.act_dim, "hidden": a.hidden, "batch_size": a.batch_size, "sampler": a.sampler,
        "steps_per_sample": a.steps, "repeats": a.repeats, "samples_steps_per_s": samples,
        "median_steps_per_s": {k: float(np.median(v)) for k, v in samples.items()},
        "samples_steps_per_cpu_s": cpu, "median_steps_per_cpu_s": {k: float(np.median(v)) for k, v in cpu.items()},
    }
    result["ratio_ours_over_reference"] = {algo: result["median_steps_per_s"][f"{algo}/ours"] / result["median_steps_per_s"][f"{algo}/reference"]
                                           for algo in a.algos}
    # paired: each repeat's ours / reference (adjacent samples see similar load), median over repeats
    result["median_paired_ratio_wall"] = {algo: float(np.median(np.array(samples[f"{algo}/ours"]) / np.array(samples[f"{algo}/reference"])))
                                          for algo in a.algos}
    result["median_paired_ratio_cpu"] = {algo: float(np.median(np.array(cpu[f"{algo}/ours"]) / np.array(cpu[f"{algo}/reference"])))
                                         for algo in a.algos}
    return result


def report(path: Path) -> str:
    runs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    lines = ["| date (UTC) | algo | ours steps/s (per CPU-s) | reference steps/s (per CPU-s) | ours / reference: median paired wall (CPU) | "
             "hidden, batch, repeats x steps | load avg before / after | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for algo in r["ratio_ours_over_reference"]:
            med, mc = r["median_steps_per_s"], r["median_steps_per_cpu_s"]
            lines.append(f"| {r['date']} | {algo} | {med[f'{algo}/ours']:.0f} ({mc[f'{algo}/ours']:.0f}) | {med[f'{algo}/reference']:.0f} "
                         f"({mc[f'{algo}/reference']:.0f}) | {r['median_paired_ratio_wall'][algo]:.2f}x ({r['median_paired_ratio_cpu'][algo]:.2f}x) | "
                         f"{'x'.join(map(str, r['hidden']))}, {r['batch_size']}, {r['repeats']} x {r['steps_per_sample']} | "
                         f"{' '.join(r['loadavg_before'])} / {' '.join(r['loadavg_after'])} | {r.get('note', '')} |")
    return "\n".join(lines)


def main() -> None:
    import sys

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algos", nargs="+", default=["iql", "td3bc"], choices=["iql", "td3bc"])
    ap.add_argument("--hidden", nargs="+", type=int, default=[256, 256])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--obs-dim", type=int, default=18, help="state size (push_cube with obs_relative=true: 18)")
    ap.add_argument("--act-dim", type=int, default=4)
    ap.add_argument("--episodes", type=int, default=500)
    ap.add_argument("--length", type=int, default=60)
    ap.add_argument("--sampler", default="aw", choices=["uniform", "rw", "aw", "topk"])
    ap.add_argument("--steps", type=int, default=300, help="timed updates per sample")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", default="runs/bench_rl")
    ap.add_argument("--note", default="", help="free text stored with the record (e.g. the commit measured)")
    ap.add_argument("--out", help="append the record (one JSON line) to this file")
    ap.add_argument("--report", help="print the markdown table of every record in this file and exit")
    a = ap.parse_args()
    if a.report:
        print(report(Path(a.report)))
        return
    a.argv = sys.argv[1:]
    result = run(a)
    result["note"] = a.note
    print(json.dumps(result["median_steps_per_cpu_s"]), "paired ratio wall", json.dumps(result["median_paired_ratio_wall"]),
          "cpu", json.dumps(result["median_paired_ratio_cpu"]))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
