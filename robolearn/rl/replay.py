"""Transitions for RL: an offline buffer built from an EpisodeStore and an online ring buffer.

The store keeps, per step t of an episode, the observation *before* the action, the action, the
reward received after it and `done`. A transition (s_t, a_t, r_t, s_{t+1}) therefore exists for
t < T-1 from the stored arrays; the last step of an episode is a transition only when the episode
*terminated* there (its next state is never bootstrapped, so it is not needed). Episodes that
ended by a time limit drop their last step (as D4RL's qlearning_dataset does), since bootstrapping
from a missing next state would be wrong and treating a timeout as terminal biases values.

Whether an episode terminated is read from its metadata (`{"terminated": bool}`, written by
robolearn.rl.datasets collectors); stores written elsewhere fall back to `done[-1] and success`
(our tasks terminate on success and truncate otherwise).

Per transition the buffer also holds its episode id, the episode's undiscounted return G_i (the
sum of all its stored rewards, what trajectory reweighting ranks), the episode's initial state
s0_i (for AW's baseline), and the discounted Monte-Carlo return-to-go (Cal-QL's lower bound).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch


def transition_batch(source: Any, idx: np.ndarray, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """(s, a, r, s', terminal) rows `idx` of any buffer holding those arrays, as torch tensors."""
    return {
        "obs": torch.as_tensor(source.obs[idx], device=device),
        "action": torch.as_tensor(source.action[idx], device=device),
        "reward": torch.as_tensor(source.reward[idx], device=device),
        "next_obs": torch.as_tensor(source.next_obs[idx], device=device),
        "terminal": torch.as_tensor(source.terminal[idx].astype(np.float32), device=device),
    }


@dataclass
class Transitions:
    """Flat transition arrays (N = number of transitions, E = number of episodes)."""

    obs: np.ndarray  # (N, D) float32
    action: np.ndarray  # (N, A) float32
    reward: np.ndarray  # (N,) float32
    next_obs: np.ndarray  # (N, D) float32
    terminal: np.ndarray  # (N,) bool: no bootstrapping from next_obs
    episode: np.ndarray  # (N,) int64 index into the episode arrays below
    mc_return: np.ndarray  # (N,) float32 discounted reward-to-go within the episode
    episode_return: np.ndarray  # (E,) float64 undiscounted sum of the episode's rewards
    episode_length: np.ndarray  # (E,) int64 stored steps of the episode
    initial_obs: np.ndarray  # (E, D) float32 s0 of each episode
    store_episode: np.ndarray  # (E,) int64 episode index in the source store

    def __len__(self) -> int:
        return len(self.reward)

    @property
    def obs_dim(self) -> int:
        return int(self.obs.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.action.shape[1])

    @property
    def transition_return(self) -> np.ndarray:
        """G of each transition's episode (N,)."""
        return self.episode_return[self.episode]

    def batch(self, idx: np.ndarray, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        out = transition_batch(self, idx, device)
        out["mc_return"] = torch.as_tensor(self.mc_return[idx], device=device)
        return out


def discounted_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    out = np.zeros(len(rewards), np.float64)
    acc = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = float(rewards[t]) + gamma * acc
        out[t] = acc
    return out


def episode_terminated(store: Any, index: int, done_last: bool, success: bool) -> bool:
    raw = store.column("metadata")[index]
    if raw:
        try:
            meta = json.loads(raw)
        except ValueError:
            meta = {}
        if isinstance(meta, dict) and "terminated" in meta:
            return bool(meta["terminated"])
    return bool(done_last and success)


def transitions_from_store(store: Any, obs_key: str = "obs/state", episodes: Sequence[int] | None = None,
                           gamma: float = 0.99, reward_scale: float = 1.0, reward_bias: float = 0.0) -> Transitions:
    """All transitions of (a subset of) a store's episodes; rewards become r * scale + bias."""
    if obs_key not in store.features:
        raise ValueError(f"{store.path} has no {obs_key!r} observations (features: {', '.join(store.features)})")
    if "action" not in store.features:
        raise ValueError(f"{store.path} has no actions")
    if store.features[obs_key].role != "obs" or len(store.features[obs_key].shape) != 1:
        raise ValueError(f"{obs_key!r} must be a flat state vector, got shape {store.features[obs_key].shape}")
    eps = np.arange(store.num_episodes) if episodes is None else np.asarray(episodes, dtype=np.int64)
    if len(eps) == 0:
        raise ValueError(f"{store.path}: no episodes selected")
    obs_all = store.read(obs_key).astype(np.float32)
    act_all = store.read("action").astype(np.float32)
    rew_all = store.read("reward").astype(np.float64) * reward_scale + reward_bias
    done_all = store.read("done").astype(bool)
    starts, ends = store.episode_starts, store.episode_ends
    success = store.column("success").astype(bool)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "action", "reward", "next_obs", "terminal", "episode", "mc")}
    ep_ret, ep_len, s0 = [], [], []
    for j, i in enumerate(eps):
        s, e = int(starts[i]), int(ends[i])
        obs, act, rew = obs_all[s:e], act_all[s:e], rew_all[s:e]
        term = episode_terminated(store, int(i), bool(done_all[e - 1]), bool(success[i]))
        n = len(rew) if term else len(rew) - 1
        next_obs = np.concatenate([obs[1:], obs[-1:]], axis=0)  # last row only used when terminal
        terminal = np.zeros(len(rew), bool)
        terminal[-1] = term
        mc = discounted_to_go(rew, gamma)
        parts["obs"].append(obs[:n])
        parts["action"].append(act[:n])
        parts["reward"].append(rew[:n])
        parts["next_obs"].append(next_obs[:n])
        parts["terminal"].append(terminal[:n])
        parts["episode"].append(np.full(n, j, np.int64))
        parts["mc"].append(mc[:n])
        ep_ret.append(float(rew.sum()))
        ep_len.append(len(rew))
        s0.append(obs[0])
    total = sum(len(x) for x in parts["reward"])
    if total == 0:
        raise ValueError(f"{store.path}: no transitions (every episode has a single, truncated step)")
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return Transitions(
        obs=cat["obs"], action=cat["action"], reward=cat["reward"].astype(np.float32), next_obs=cat["next_obs"],
        terminal=cat["terminal"], episode=cat["episode"], mc_return=cat["mc"].astype(np.float32),
        episode_return=np.asarray(ep_ret), episode_length=np.asarray(ep_len, np.int64),
        initial_obs=np.stack(s0).astype(np.float32), store_episode=eps.copy(),
    )


class ReplayBuffer:
    """Online FIFO ring buffer of transitions, sampled uniformly with a seeded (numpy) generator.

    With `returns_to_go=True` (Cal-QL fine-tuning) every row also holds its Monte-Carlo return-to-go,
    known only once its episode ends: rows of running episodes hold -inf (no bound) until the loop
    calls `close_episodes`, which fills the finished episodes' rows from their stored rewards (the
    reference code computes it per finished online trajectory the same way).

    Storage is numpy on the host (default), or torch tensors on `device` (`robolearn finetune
    --backend gpu|warp-cpu`): `add_batch` then writes a batch of device tensors in place and
    `sample` gathers on the device, so nothing of a transition crosses to the host (only the
    sampled row indices go the other way). Both keep the same counters, generator stream and
    checkpoint format."""

    _ARRAYS = ("obs", "next_obs", "action", "reward", "terminal")

    def __init__(self, obs_dim: int, action_dim: int, capacity: int, seed: int = 0,
                 device: torch.device | str | None = None, returns_to_go: bool = False) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.device = None if device is None else torch.device(device)
        if self.device is None:
            self.obs = np.zeros((capacity, obs_dim), np.float32)
            self.next_obs = np.zeros((capacity, obs_dim), np.float32)
            self.action = np.zeros((capacity, action_dim), np.float32)
            self.reward = np.zeros(capacity, np.float32)
            self.terminal = np.zeros(capacity, bool)
        else:
            z = dict(device=self.device)
            self.obs = torch.zeros(capacity, obs_dim, dtype=torch.float32, **z)
            self.next_obs = torch.zeros(capacity, obs_dim, dtype=torch.float32, **z)
            self.action = torch.zeros(capacity, action_dim, dtype=torch.float32, **z)
            self.reward = torch.zeros(capacity, dtype=torch.float32, **z)
            self.terminal = torch.zeros(capacity, dtype=torch.bool, **z)
        self.mc_return: Any = None
        self.arrays: tuple[str, ...] = self._ARRAYS
        if returns_to_go:
            self.mc_return = (np.full(capacity, -np.inf, np.float32) if self.device is None
                              else torch.full((capacity,), -torch.inf, dtype=torch.float32, device=self.device))
            self.arrays = (*self._ARRAYS, "mc_return")
        self.size = 0
        self.pos = 0
        self.added = 0  # total transitions ever added
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, terminal: bool) -> None:
        i = self.pos
        self.obs[i], self.action[i], self.reward[i] = obs, action, reward
        self.next_obs[i], self.terminal[i] = next_obs, terminal
        if self.mc_return is not None:
            self.mc_return[i] = -np.inf  # known when the episode ends (close_episodes)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.added += 1

    def add_batch(self, obs: Any, action: Any, reward: Any, next_obs: Any, terminal: Any) -> None:
        """K transitions at once (rows in order, as K `add` calls would store them): numpy arrays
        for a host buffer, tensors (moved to the buffer's device) for a device buffer."""
        k = len(reward)
        if k > self.capacity:  # only the newest `capacity` rows survive, as with K adds
            obs, action, reward, next_obs, terminal = (x[k - self.capacity:] for x in (obs, action, reward, next_obs, terminal))
            self.added += k - self.capacity
            self.pos = (self.pos + k - self.capacity) % self.capacity
            k = self.capacity
        if self.device is not None:
            # row indices made on the device: no host-to-device copy (which would wait for the device)
            rows = (torch.arange(k, device=self.device) + self.pos) % self.capacity
            cols = {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs, "terminal": terminal}
            for name, v in cols.items():
                dst = getattr(self, name)
                dst.index_copy_(0, rows, torch.as_tensor(v).to(self.device, dst.dtype).reshape(k, *dst.shape[1:]))
        else:
            rows = (self.pos + np.arange(k)) % self.capacity
            self.obs[rows], self.action[rows], self.reward[rows] = obs, action, reward
            self.next_obs[rows], self.terminal[rows] = next_obs, terminal
        if self.mc_return is not None:
            self.mc_return[rows] = -np.inf
        self.pos = (self.pos + k) % self.capacity
        self.size = min(self.size + k, self.capacity)
        self.added += k

    def close_episodes(self, envs: Any, lengths: Any, stride: int, gamma: float) -> None:
        """Fill the Monte-Carlo returns-to-go of episodes that ended with the newest step (no-op
        without `returns_to_go`). Each step added `stride` rows, one per env in env order, so the
        episode of env `envs[j]` ends at row `pos - stride + envs[j]` and its `lengths[j]` transitions
        lie `stride` rows apart; a return-to-go is the discounted sum of the stored rewards to the
        episode's end, with no bootstrap at a time limit (as for the offline data). Rows the ring has
        overwritten since are left alone."""
        if self.mc_return is None:
            return
        dev = self.device or torch.device("cpu")
        last = (self.pos - stride + torch.as_tensor(envs, dtype=torch.int64).to(dev).reshape(-1)) % self.capacity
        if last.numel() == 0:
            return
        n = torch.as_tensor(lengths, dtype=torch.int64).to(dev).reshape(-1).clamp(max=self.capacity // stride)
        span = int(n.max())
        back = torch.arange(span, device=dev)  # 0 = the episode's last transition
        rows = (last[:, None] - stride * back[None]) % self.capacity
        valid = back[None] < n[:, None]
        reward = torch.as_tensor(self.reward).to(dev)[rows].to(torch.float64) * valid
        # mc[b] = sum over later-or-equal steps b' <= b of gamma^(b - b') r[b']: one matrix product
        gap = (back[None] - back[:, None]).to(torch.float64)
        discount = torch.where(gap >= 0, gamma ** gap.clamp(min=0), torch.zeros_like(gap))
        mc = (reward @ discount).to(torch.float32)
        dst = torch.from_numpy(self.mc_return) if self.device is None else self.mc_return
        dst[rows[valid]] = mc[valid]

    def _host(self, name: str) -> np.ndarray:
        v = getattr(self, name)
        return v[: self.size].cpu().numpy() if torch.is_tensor(v) else v[: self.size].copy()

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors of the filled rows, JSON-able counters + generator state): checkpointed as
        safetensors + JSON, so restoring a buffer never unpickles anything."""
        tensors = {k: torch.from_numpy(self._host(k)) for k in self.arrays}
        meta = {"capacity": self.capacity, "size": self.size, "pos": self.pos, "added": self.added,
                "rng": self.rng.bit_generator.state}
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        size = int(meta["size"])
        if int(meta["capacity"]) != self.capacity:
            raise ValueError(f"replay buffer capacity {meta['capacity']} in the checkpoint, {self.capacity} configured")
        for k in self.arrays:
            dst = getattr(self, k)
            if k == "mc_return" and k not in tensors:  # a checkpoint from before returns-to-go were kept: no bounds
                dst[:size] = -np.inf
                continue
            src = tensors[k]
            if tuple(src.shape) != (size, *dst.shape[1:]):
                raise ValueError(f"replay buffer {k!r}: checkpoint holds shape {tuple(src.shape)}, expected {(size, *dst.shape[1:])}")
            if torch.is_tensor(dst):
                dst[:size] = src.to(dst.device, dst.dtype)
            else:
                dst[:size] = src.numpy()
        self.size, self.pos, self.added = size, int(meta["pos"]), int(meta["added"])
        self.rng.bit_generator.state = meta["rng"]

    def sample(self, batch_size: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = self.rng.integers(0, self.size, size=batch_size)
        if self.device is None:
            out = transition_batch(self, idx, device)
            if self.mc_return is not None:
                out["mc_return"] = torch.as_tensor(self.mc_return[idx], device=device)
            return out
        rows = torch.as_tensor(idx, device=self.device)
        out = {"obs": self.obs[rows].to(device), "action": self.action[rows].to(device), "reward": self.reward[rows].to(device),
               "next_obs": self.next_obs[rows].to(device), "terminal": self.terminal[rows].to(device, torch.float32)}
        if self.mc_return is not None:
            out["mc_return"] = self.mc_return[rows].to(device)
        return out


def concat_batches(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = [k for k in a if k in b]
    return {k: torch.cat([a[k], b[k]], dim=0) for k in keys}
