"""Small synthetic stores for data tests (each episode's values encode its index)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robolearn.data.store import EpisodeStore, Feature

FEATURES = {
    "obs/state": Feature("float32", (3,), "obs"),
    "obs/image": Feature("uint8", (8, 8, 3), "obs"),
    "action": Feature("float32", (2,), "action"),
    "sim_state": Feature("float64", (4,), "sim_state"),
    "primitive": Feature("int32", (), "aux"),
}


def make_episode(index: int, length: int, source: str | list[str] = "demo") -> dict[str, np.ndarray]:
    """Episode `index`: obs/state[t] = (index, t, index*1000+t), action[t] = (index, t)."""
    t = np.arange(length)
    return {
        "obs/state": np.stack([np.full(length, index), t, index * 1000 + t], axis=1).astype(np.float32),
        "obs/image": np.full((length, 8, 8, 3), index % 256, np.uint8) + (t % 7)[:, None, None, None].astype(np.uint8),
        "action": np.stack([np.full(length, index), t], axis=1).astype(np.float32),
        "reward": (t == length - 1).astype(np.float32),
        "done": t == length - 1,
        "source": source,
        "stage": (t * 3 // length).astype(np.int32),
        "sim_state": np.tile(np.arange(4, dtype=np.float64), (length, 1)) + index,
        "primitive": (t % 4).astype(np.int32),
    }


def make_store(path: Path, lengths: list[int], task: str = "toy") -> EpisodeStore:
    store = EpisodeStore.create(path, FEATURES, task=task, control_period=0.1)
    for i, n in enumerate(lengths):
        store.append_episode(make_episode(i, n), success=i % 2 == 0, collector="scripted", seed=i)
    return store


def make_sailor_base(root: Path, task: str, episodes: int, num_envs: int, steps: int, batch_size: int, warmup: int) -> Path:
    """Scripted demos in root/demos.zarr and a tiny chunked diffusion base policy in root/dp (what
    SAILOR tests wrap): horizon 12, 4 executed actions, a [16, 32] U-Net."""
    from robolearn.tasks.collect import collect
    from robolearn.training import train

    collect(task, episodes, root / "demos.zarr", num_envs=num_envs, progress=False)
    train("diffusion", root / "demos.zarr", out=root / "dp", wandb_mode="off", progress=False,
          overrides=[f"train.steps={steps}", f"train.batch_size={batch_size}", "policy.down_dims=[16,32]",
                     "policy.diffusion_step_embed_dim=16", f"train.lr_warmup_steps={warmup}", "train.val_ratio=0",
                     "policy.horizon=12", "policy.n_action_steps=4"])
    return root
