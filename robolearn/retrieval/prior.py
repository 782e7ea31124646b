"""A large unlabeled prior store of mixed behaviour in the pick_place scene (retrieval experiments).

Every episode runs one behaviour drawn from a fixed mix: pick_place into the bin (the target
behaviour), pick and place at another spot on the table, pushes, dropped grasps, lift-and-hold
partial attempts, random motion and a very noisy expert. All share the task's observation and
action layout (the same features `robolearn collect` writes), so the store can be queried with a
few target demos. The true behaviour is kept only in each episode's metadata (`behavior`), a
hidden label for measuring retrieval quality: the retrieval methods never read it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

# name -> share of episodes. `pick_place_bin` is what the retrieval experiment's target demos do.
BEHAVIORS: dict[str, float] = {
    "pick_place_bin": 0.15,
    "place_elsewhere": 0.25,
    "push": 0.15,
    "drop": 0.12,
    "lift_hold": 0.10,
    "random": 0.10,
    "noisy_expert": 0.13,
}
TARGET_BEHAVIOR = "pick_place_bin"
_END_AFTER = 3  # steps kept after a behaviour's own end condition


def behavior_schedule(episodes: int, seed: int, mix: dict[str, float] | None = None) -> list[str]:
    """The behaviour of every episode: the mix's shares (rounded), in a seeded random order."""
    mix = mix or BEHAVIORS
    names = list(mix)
    shares = np.asarray([mix[n] for n in names], np.float64)
    counts = np.floor(shares / shares.sum() * episodes).astype(int)
    for i in np.argsort(-(shares / shares.sum() * episodes - counts))[: episodes - counts.sum()]:
        counts[i] += 1
    order = [n for n, c in zip(names, counts) for _ in range(c)]
    np.random.default_rng(seed).shuffle(order)
    return order


class _Behaviors:
    """Batched scripted behaviours over N envs; each env runs the behaviour assigned at its reset."""

    def __init__(self, sim: Any, seed: int) -> None:
        from robolearn.tasks.pick_place import PickPlaceExpert

        self.sim = sim
        self.task = sim.task
        n = sim.num_envs
        self.n = n
        self.to_bin = PickPlaceExpert(self.task, n, seed=seed)
        self.to_spot = PickPlaceExpert(self.task, n, seed=seed + 1)
        self.gen = torch.Generator().manual_seed(seed + 2)
        self.kind = ["random"] * n
        self.spot = torch.zeros(n, 3, dtype=torch.float64)
        self.push_from = torch.zeros(n, 2, dtype=torch.float64)
        self.push_to = torch.zeros(n, 2, dtype=torch.float64)
        self.phase = torch.zeros(n, dtype=torch.int64)
        self.count = torch.zeros(n, dtype=torch.int64)  # steps in the current phase
        self.limit = torch.zeros(n, dtype=torch.int64)  # behaviour-specific step budget
        self.finished = torch.zeros(n, dtype=torch.int64)  # steps since the behaviour's own end (0 = not ended)
        self.prev_action = torch.zeros(n, self.task.action_dim, dtype=torch.float64)

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen, dtype=torch.float64)

    def reset(self, i: int, kind: str) -> None:
        """Start behaviour `kind` in env i (after the env itself was reset)."""
        s = self.sim.read()
        mask = torch.zeros(self.n, dtype=torch.bool)
        mask[i] = True
        self.to_bin.reset(mask)
        self.to_spot.reset(mask)
        self.kind[i] = kind
        self.phase[i] = 0
        self.count[i] = 0
        self.finished[i] = 0
        self.prev_action[i] = 0
        cube = torch.as_tensor(self.task.cube_pos(s)[i], dtype=torch.float64)
        bin_pos = torch.as_tensor(self.task.bin_pos(s)[i], dtype=torch.float64)
        if kind == "place_elsewhere":  # a free spot on the table, away from the bin and the cube
            for _ in range(200):
                xy = (self._rand(2) * 2 - 1) * 0.15
                if (xy - bin_pos[:2]).norm() > 0.14 and (xy - cube[:2]).norm() > 0.1:
                    break
            self.spot[i] = torch.cat([xy, torch.zeros(1, dtype=torch.float64)])
        if kind == "push":
            ang = float(self._rand(1)) * 2 * math.pi
            d = torch.tensor([math.cos(ang), math.sin(ang)], dtype=torch.float64)
            self.push_from[i] = cube[:2] - 0.06 * d
            self.push_to[i] = cube[:2] + (0.08 + 0.08 * float(self._rand(1))) * d
        if kind == "drop":
            self.limit[i] = 2 + int(self._rand(1) * 8)  # steps held before letting go
        if kind == "lift_hold":
            self.limit[i] = 8 + int(self._rand(1) * 8)
        if kind == "random":
            self.limit[i] = 40 + int(self._rand(1) * 40)

    def act(self) -> np.ndarray:
        """Actions (N, A) in [-1, 1] for the current states; advances each env's phase."""
        task, s = self.task, self.sim.read()
        cube, quat, bin_pos = task.cube_pos(s), task.sensor(s, "cube_quat"), task.bin_pos(s)
        cube, quat, bin_pos = (torch.as_tensor(x, dtype=torch.float64) for x in (cube, quat, bin_pos))
        grip = torch.as_tensor(task.grip_pos(s), dtype=torch.float64)
        held = torch.as_tensor(task.grasped(s, cube), dtype=torch.bool)
        a_bin, _ = self.to_bin.pick_place_policy(s, cube, quat, bin_pos, self.to_bin.mode, obstacles=bin_pos[:, None, :2])
        spot = torch.where(self.spot.abs().sum(-1, keepdim=True) > 0, self.spot, bin_pos)
        a_spot, _ = self.to_spot.pick_place_policy(s, cube, quat, spot, self.to_spot.mode, obstacles=bin_pos[:, None, :2])
        out = torch.zeros(self.n, task.action_dim, dtype=torch.float64)
        noise = torch.randn(self.n, task.action_dim, generator=self.gen, dtype=torch.float64)
        for i, kind in enumerate(self.kind):
            a = a_bin[i].clone()
            if kind == "pick_place_bin":
                a = a + 0.1 * noise[i]
            elif kind == "noisy_expert":
                a = a + 0.6 * noise[i]
            elif kind == "place_elsewhere":
                a = a_spot[i] + 0.1 * noise[i]
                placed = bool(task.in_bin(cube[i], spot[i])) and not bool(held[i])
                if placed and self.finished[i] == 0:
                    self.finished[i] = 1
            elif kind == "drop":
                if self.phase[i] == 0 and held[i]:
                    self.count[i] += 1
                    if self.count[i] >= self.limit[i]:
                        self.phase[i], self.count[i] = 1, 0
                if self.phase[i] == 1:  # let go where it is and back off upwards
                    target = torch.stack([grip[i, 0], grip[i, 1], torch.tensor(0.2, dtype=torch.float64)])
                    a = torch.cat([self.to_bin.move_action(_row(s, i), target[None])[0], torch.tensor([0.0, -1.0], dtype=torch.float64)])
                    self.count[i] += 1
                    if self.count[i] >= 8 and self.finished[i] == 0:
                        self.finished[i] = 1
                a = a + 0.05 * noise[i]
            elif kind == "lift_hold":
                if self.phase[i] == 0 and held[i] and cube[i, 2] > 0.06:
                    self.phase[i] = 1
                    self.spot[i] = torch.stack([grip[i, 0], grip[i, 1], torch.tensor(0.12, dtype=torch.float64)])
                if self.phase[i] == 1:  # hold the cube up and hover in place
                    a = torch.cat([self.to_bin.move_action(_row(s, i), self.spot[i][None])[0], torch.tensor([0.0, 1.0], dtype=torch.float64)])
                    self.count[i] += 1
                    if self.count[i] >= self.limit[i] and self.finished[i] == 0:
                        self.finished[i] = 1
                a = a + 0.05 * noise[i]
            elif kind == "push":
                z = torch.tensor([0.1 if self.phase[i] == 0 else 0.03], dtype=torch.float64)
                xy = self.push_from[i] if self.phase[i] < 2 else self.push_to[i]
                target = torch.cat([xy, z])
                err = (target - grip[i]).norm()
                if self.phase[i] < 2 and err < 0.012:
                    self.phase[i] += 1
                elif self.phase[i] == 2 and (err < 0.015 or self.count[i] > 40):
                    if self.finished[i] == 0:
                        self.finished[i] = 1
                if self.phase[i] == 2:
                    self.count[i] += 1
                move = self.to_bin.move_action(_row(s, i), target[None], speed=0.6 if self.phase[i] == 2 else 1.0)[0]
                a = torch.cat([move, torch.tensor([0.0, 1.0], dtype=torch.float64)]) + 0.05 * noise[i]
            elif kind == "random":  # smoothed random motion, random gripper
                a = 0.7 * self.prev_action[i] + 0.5 * noise[i]
                self.count[i] += 1
                if self.count[i] >= self.limit[i] and self.finished[i] == 0:
                    self.finished[i] = 1
            if self.finished[i] > 0:
                self.finished[i] += 1
            out[i] = a.clamp(-1, 1)
        self.prev_action = out
        return out.numpy().astype(np.float32)

    def ended(self, i: int) -> bool:
        return bool(self.finished[i] > _END_AFTER)


def _row(s: Any, i: int) -> Any:
    """Env i's state as a batch of one (the experts' move helpers take batched states)."""
    from robolearn.tasks.base import SimState

    return SimState(*(x[i : i + 1] for x in s))


def generate_prior(out: str | Path, episodes: int, seed: int = 200_000, num_envs: int = 16,
                   task_overrides: list[str] | None = None, mix: dict[str, float] | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Write `episodes` mixed-behaviour pick_place episodes to a new store at `out`.

    Episode k starts from task seed `seed + k`; its behaviour is `behavior_schedule(...)[k]`,
    recorded only as the hidden label `metadata["behavior"]`. Returns {episodes, steps, per_behavior}.
    """
    from tqdm import tqdm

    from robolearn.data.store import EpisodeStore
    from robolearn.tasks.collect import store_features
    from robolearn.tasks.registry import load_task_config
    from robolearn.tasks.sim import TaskSim

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    cfg = load_task_config("pick_place", task_overrides)
    n = min(num_envs, episodes)
    sim = TaskSim("pick_place", cfg=cfg, num_envs=n)
    schedule = behavior_schedule(episodes, seed, mix)
    tmp = out.with_name(out.name + ".generating")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    store = EpisodeStore.create(tmp, features=store_features(sim), task=cfg.task, env_kwargs=dataclasses.asdict(cfg),
                                control_period=sim.control_period)
    beh = _Behaviors(sim, seed)
    per: dict[str, dict[str, int]] = {}
    bar = tqdm(total=episodes, desc="generate prior", unit="ep", disable=not progress)
    ep_index = list(range(n))
    obs = sim.reset(seeds=[seed + k for k in ep_index])
    for i in range(n):
        beh.reset(i, schedule[ep_index[i]])
    status = sim.status()
    bufs: list[dict[str, list]] = [_new_buf() for _ in range(n)]
    active = np.ones(n, bool)
    launched = n
    try:
        while active.any():
            states = sim.get_state()
            act = beh.act()
            for i in np.flatnonzero(active):
                b = bufs[i]
                for k, v in obs.items():
                    b["obs/" + k].append(v[i])
                b["stage"].append(status["stage"][i])
                b["failure_event"].append(status["failure_event"][i])
                b["sim_state"].append(states[i])
                b["primitive"].append(-1)
                b["action"].append(act[i])
            obs, rew, term, trunc, info = sim.step(act)
            status = info
            reset_mask = np.zeros(n, bool)
            for i in np.flatnonzero(active):
                end = bool(term[i] or trunc[i]) or beh.ended(i)
                bufs[i]["reward"].append(rew[i])
                bufs[i]["done"].append(end)
                if not end:
                    continue
                k = ep_index[i]
                steps = {key: np.asarray(v) for key, v in bufs[i].items()}
                kind = schedule[k]
                store.append_episode(steps, success=bool(info["success"][i]), collector="prior_generator", seed=seed + k,
                                     metadata={"behavior": kind})
                row = per.setdefault(kind, {"episodes": 0, "steps": 0, "successes": 0})
                row["episodes"] += 1
                row["steps"] += len(steps["action"])
                row["successes"] += int(bool(info["success"][i]))
                bar.update(1)
                bufs[i] = _new_buf()
                if launched < episodes:
                    ep_index[i] = launched
                    launched += 1
                    reset_mask[i] = True
                else:
                    active[i] = False
            if reset_mask.any():
                idx = np.flatnonzero(reset_mask)
                new_obs = sim.reset(torch.as_tensor(reset_mask), seeds=[seed + ep_index[i] for i in idx])
                for key in obs:
                    obs[key][reset_mask] = new_obs[key][reset_mask]
                fresh = sim.status()
                for key in status:
                    status[key][reset_mask] = fresh[key][reset_mask]
                for i in idx:
                    beh.reset(int(i), schedule[ep_index[i]])
        n_steps = store.num_steps
        store.close()
    except BaseException:
        store.close()
        raise
    finally:
        bar.close()
        sim.close()
    import os

    os.replace(tmp, out)
    return {"episodes": episodes, "steps": n_steps, "per_behavior": per}


def _new_buf() -> dict[str, list]:
    from collections import defaultdict

    return defaultdict(list)


def hidden_labels(store: Any) -> np.ndarray:
    """Per-episode behaviour names from the metadata (for measuring retrieval, never for retrieving)."""
    return np.asarray([store.episode_metadata(i).get("behavior", "") for i in range(store.num_episodes)], dtype=object)
