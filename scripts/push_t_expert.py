"""Is push_t's scripted expert learnable? Success, episode length and contact consistency.

A policy sees the state, not the expert's memory. This script rolls the expert out, takes states
it visited, and asks the same expert (same per-episode mode, no history) for its contact at (a)
the identical state and (b) nearly identical copies (pusher and block moved by N(0, 1 mm), block
turned by N(0, 0.005 rad)). A contact that differs at the identical state comes from hidden
memory; at nearly identical states it also includes genuine decision boundaries. Compared: the
expert of robolearn.tasks.push_t (hysteresis read from where the pusher stands) and the earlier
one that remembered its contact (re-created here for the comparison only).

    python scripts/push_t_expert.py --episodes 100 --states 2000 --out docs/results/push_t_expert.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from robolearn.tasks.push_t import PushTExpert
from robolearn.tasks.sim import TaskSim


class RememberedContactExpert(PushTExpert):
    """The earlier push_t expert: keeps the contact it chose last step while that stays within
    KEEP_MARGIN of the best (memory a policy cannot see)."""

    def _reset_memory(self, mask: torch.Tensor) -> None:
        if not hasattr(self, "contact"):
            self.contact = torch.full((self.num_envs,), -1, dtype=torch.int64)
        self.contact = torch.where(mask, -1, self.contact)

    def choose_contact(self, score, best, at_k, at_any):
        c = self.contact
        kept = (c >= 0) & (score.gather(1, c.clamp_min(0)[:, None])[:, 0] > score.gather(1, best[:, None])[:, 0] - self.KEEP_MARGIN)
        self.contact = torch.where(kept, c, best)
        return self.contact


VARIANTS = {"state-read hysteresis (current)": PushTExpert, "remembered contact (before)": RememberedContactExpert}


def rollout(expert_cls, episodes: int, num_envs: int, seed: int, action_mode: str) -> dict:
    """Expert episodes; returns success/length per episode and visited (state, mode, contact)."""
    sim = TaskSim("push_t", num_envs=num_envs, action_mode=action_mode)
    expert = expert_cls(sim.task, num_envs, seed=seed)
    seeds = list(range(seed, seed + num_envs))
    launched = num_envs
    sim.reset(seeds=seeds)
    expert.reset()
    active = np.ones(num_envs, bool)
    steps = np.zeros(num_envs, int)
    out = {"success": [], "length": [], "states": [], "modes": [], "contacts": [], "actions": []}
    while active.any():
        s = sim.read()
        states = sim.get_state().copy()
        delta, prim, k = expert.decide(s)
        action = sim.task.absolute_action(s, delta) if action_mode == "absolute" else delta
        for i in np.flatnonzero(active):
            out["states"].append(states[i])
            out["modes"].append(int(expert.mode[i]))
            out["contacts"].append(int(k[i]))
            out["actions"].append(delta[i].numpy())
        _, _, term, trunc, info = sim.step(action.clamp(-1, 1).to(torch.float32).numpy())
        steps += active
        done = (term | trunc) & active
        reset = np.zeros(num_envs, bool)
        for i in np.flatnonzero(done):
            out["success"].append(bool(info["success"][i]))
            out["length"].append(int(steps[i]))
            steps[i] = 0
            if launched < episodes:
                seeds[i] = seed + launched
                launched += 1
                reset[i] = True
            else:
                active[i] = False
        if reset.any():
            sim.reset(torch.as_tensor(reset), seeds=[seeds[i] for i in np.flatnonzero(reset)])
            expert.reset(torch.as_tensor(reset))
    sim.close()
    return out


def contacts_at(expert_cls, states: np.ndarray, modes: np.ndarray, noise: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The contact a history-free expert (given mode) picks at each state, after moving the pusher
    and block by N(0, noise) m and turning the block by N(0, 5 * noise) rad."""
    sim = TaskSim("push_t", num_envs=len(states))
    task, L = sim.task, sim.task.layout
    st = torch.as_tensor(states).clone()
    gen = torch.Generator().manual_seed(seed)
    if noise > 0:
        qpos = task.get_from_state(st, "qpos")
        for name, scale in (("gx", noise), ("gy", noise), ("tx", noise), ("ty", noise), ("tyaw", 5 * noise)):
            adr = L.qpos_adr[name]
            task.set_in_state(st, "qpos", adr, qpos[:, adr] + scale * torch.randn(len(st), generator=gen, dtype=qpos.dtype))
    sim.set_state(st.numpy())
    expert = expert_cls(task, len(states), seed=seed)
    expert.mode = torch.as_tensor(modes)
    action, _, k = expert.decide(sim.read())
    sim.close()
    return k.numpy(), action.numpy()


def table(result: dict) -> str:
    """Markdown of the records (docs/results/imitation.md, Push-T section)."""
    lines = ["| expert | action mode | episodes | success | mean length | contact differs: identical / nearly identical state "
             "| action differs by > 0.5: identical / nearly identical | mean action difference (nearly identical) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["records"]:
        if "states_probed" in r:
            probes = (f"{r['contact_differs_identical_state']:.3f} / {r['contact_differs_nearly_identical_state']:.3f} | "
                      f"{r['action_differs_by_half_identical_state']:.3f} / {r['action_differs_by_half_nearly_identical_state']:.3f} | "
                      f"{r['mean_action_difference_nearly_identical_state']:.3f}")
        else:
            probes = "rolled out only | | "
        lines.append(f"| {r['expert']} | {r['action_mode']} | {r['episodes']} | {r['success_rate']:.3f} | {r['mean_length']:.1f} | {probes} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default=None, metavar="JSON", help="print the table of a records file and exit")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--num-envs", type=int, default=10)
    ap.add_argument("--states", type=int, default=2000, help="visited states probed per variant")
    ap.add_argument("--noise", type=float, default=0.001, help="std of the pusher/block displacement (m)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the records (JSON) here")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    started = time.time()
    load_start = list(os.getloadavg())
    records = []
    for name, cls in VARIANTS.items():
        for mode in ("delta", "absolute") if cls is PushTExpert else ("delta",):
            t0 = time.time()
            r = rollout(cls, args.episodes, args.num_envs, args.seed, mode)
            rec = {"expert": name, "action_mode": mode, "episodes": len(r["success"]),
                   "success_rate": float(np.mean(r["success"])), "mean_length": float(np.mean(r["length"])),
                   "rollout_s": round(time.time() - t0, 1)}
            if mode == "delta":
                rng = np.random.default_rng(args.seed)
                pick = rng.choice(len(r["states"]), min(args.states, len(r["states"])), replace=False)
                states, modes = np.stack(r["states"])[pick], np.asarray(r["modes"])[pick]
                contacts, actions = np.asarray(r["contacts"])[pick], np.stack(r["actions"])[pick]
                same, same_a = contacts_at(cls, states, modes, 0.0, args.seed)
                near, near_a = contacts_at(cls, states, modes, args.noise, args.seed + 1)
                # actions are normalized pusher displacements (norm <= 1); 0.5 = half the largest step
                rec.update(states_probed=len(pick), noise_m=args.noise,
                           contact_differs_identical_state=float(np.mean(same != contacts)),
                           contact_differs_nearly_identical_state=float(np.mean(near != contacts)),
                           action_differs_by_half_identical_state=float(np.mean(np.linalg.norm(same_a - actions, axis=1) > 0.5)),
                           action_differs_by_half_nearly_identical_state=float(np.mean(np.linalg.norm(near_a - actions, axis=1) > 0.5)),
                           mean_action_difference_nearly_identical_state=float(np.mean(np.linalg.norm(near_a - actions, axis=1))))
            records.append(rec)
            print(json.dumps(rec), flush=True)
    result = {"command": "python scripts/push_t_expert.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
              "date": dt.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
              "loadavg_start": load_start, "loadavg_end": list(os.getloadavg()),
              "wall_s": round(time.time() - started, 1), "records": records}
    if args.out:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
