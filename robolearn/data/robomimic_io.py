"""robomimic hdf5 <-> episode store, with h5py only (no robomimic dependency).

robomimic layout: `data/demo_N/{obs/*, next_obs/*, actions, rewards, dones, states}`, `data` attrs
`env_args` (JSON) and `total`, per-demo attr `num_samples` (and optional `model_file`), and
`mask/<filter_key>` holding lists of demo names. Every value survives a round trip: `next_obs` is
kept as per-step `next_obs/<key>` features, demo names and model files go into episode metadata,
filter keys become named episode masks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.data.schema import Feature
from robolearn.data.store import EpisodeStore, StoreError, staged_output


def _demo_order(names: list[str]) -> list[str]:
    def key(n: str) -> tuple[int, str]:
        m = re.search(r"(\d+)$", n)
        return (int(m.group(1)) if m else 1 << 62, n)

    return sorted(names, key=key)


def _attr_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def import_robomimic(src: str | Path, dst: str | Path, task: str | None = None) -> EpisodeStore:
    """Convert a robomimic hdf5 file into a new episode store.

    The store is built under a temporary name and renamed to `dst` only when every demo and mask
    made it: a bad demo or a full disk leaves nothing behind.
    """
    import h5py

    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"no robomimic file at {src}")
    try:
        f = h5py.File(src, "r")
    except OSError as exc:
        raise StoreError(f"{src} is not a readable hdf5 file: {str(exc).splitlines()[0]}") from None
    with f, staged_output(dst, [src]) as tmp:
        store = _import_into(f, src, tmp, task)
        store.close()
    return EpisodeStore.open(dst, mode="r")


def _import_into(f: Any, src: Path, dst: Path, task: str | None) -> EpisodeStore:
    import h5py

    if "data" not in f:
        raise StoreError(f"{src} has no 'data' group: not a robomimic dataset")
    data = f["data"]
    demos = _demo_order([k for k in data.keys() if isinstance(data[k], h5py.Group)])
    if not demos:
        raise StoreError(f"{src} holds no demos under 'data'")
    env_args_raw = data.attrs.get("env_args")
    env_args = json.loads(_attr_str(env_args_raw)) if env_args_raw is not None else {}
    first = data[demos[0]]
    for required in ("actions", "obs"):
        if required not in first:
            raise StoreError(f"{src}: demo {demos[0]} has no '{required}'")
    features: dict[str, Feature] = {}
    for key, ds in first["obs"].items():
        features[f"obs/{key}"] = Feature(ds.dtype.name, ds.shape[1:], "obs")
    if "next_obs" in first:
        for key, ds in first["next_obs"].items():
            features[f"next_obs/{key}"] = Feature(ds.dtype.name, ds.shape[1:], "aux")
    features["action"] = Feature(first["actions"].dtype.name, first["actions"].shape[1:], "action")
    if "rewards" in first:
        features["reward"] = Feature(first["rewards"].dtype.name, (), "reward")
    if "dones" in first:
        features["done"] = Feature(first["dones"].dtype.name, (), "done")
    if "states" in first:
        features["sim_state"] = Feature(first["states"].dtype.name, first["states"].shape[1:], "sim_state")
    task_name = task or str(env_args.get("env_name", "")) or src.stem
    store = EpisodeStore.create(dst, features, task=task_name, env_kwargs=env_args.get("env_kwargs", {}) or {})
    store.set_attr("robomimic_env_args", env_args)
    for name in demos:
        g = data[name]
        steps: dict[str, np.ndarray] = {"action": g["actions"][()]}
        for key in g["obs"]:
            steps[f"obs/{key}"] = g["obs"][key][()]
        if "next_obs" in g:
            for key in g["next_obs"]:
                steps[f"next_obs/{key}"] = g["next_obs"][key][()]
        if "rewards" in g:
            steps["reward"] = g["rewards"][()]
        if "dones" in g:
            steps["done"] = g["dones"][()]
        if "states" in g:
            steps["sim_state"] = g["states"][()]
        meta: dict[str, Any] = {"robomimic_demo": name, "attrs": {}}
        for k, v in g.attrs.items():
            if k == "num_samples":
                continue
            meta["attrs"][k] = _attr_str(v) if isinstance(v, (bytes, str)) else np.asarray(v).tolist()
        rewards = steps.get("reward")
        success = bool(np.any(np.asarray(rewards) > 0)) if rewards is not None else True
        store.append_episode(steps, success=success, collector="robomimic", seed=-1, metadata=meta)
    if "mask" in f:
        index = {name: i for i, name in enumerate(demos)}
        masks = {}
        for key in f["mask"]:
            names = [_attr_str(n) for n in f["mask"][key][()]]
            unknown = [n for n in names if n not in index]
            if unknown:
                raise StoreError(f"{src}: mask {key!r} names unknown demo {unknown[0]!r}")
            masks[key] = np.array([index[n] for n in names], dtype=np.int64)
        store.set_masks(masks)
    return store


# dtypes robomimic writes for the standard datasets when a store does not say otherwise
def export_robomimic(src: str | Path, dst: str | Path, overwrite: bool = False) -> int:
    """Write a store as a robomimic hdf5 file; returns the number of demos written.

    `next_obs` comes from stored `next_obs/*` features when present, else from the next step's
    observation (the last step repeats itself, as robomimic's own conversion scripts do). Written
    to a temporary file and renamed into place: a failure leaves nothing at `dst`.
    """
    store = src if isinstance(src, EpisodeStore) else EpisodeStore.open(src, mode="r")
    with staged_output(dst, [store.path], overwrite=overwrite, kind="file") as tmp:
        return _export_to(store, tmp)


def _export_to(store: EpisodeStore, tmp: Path) -> int:
    import h5py

    obs_keys = [k[4:] for k, f in store.features.items() if k.startswith("obs/")]
    next_keys = {k[9:] for k in store.features if k.startswith("next_obs/")}
    table = store.episode_table()
    names: list[str] = []
    with h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        env_args = store.attrs.get("robomimic_env_args") or {
            "env_name": store.task,
            "type": 0,
            "env_kwargs": store.env_kwargs,
        }
        data.attrs["env_args"] = json.dumps(env_args)
        total = 0
        for i in range(store.num_episodes):
            ep = store.get_episode(i)
            meta = json.loads(table["metadata"][i]) if table["metadata"][i] else {}
            name = meta.get("robomimic_demo", f"demo_{i}")
            names.append(name)
            g = data.create_group(name)
            n = len(ep["action"])
            g.attrs["num_samples"] = n
            for k, v in (meta.get("attrs") or {}).items():
                g.attrs[k] = v
            g.create_dataset("actions", data=ep["action"])
            g.create_dataset("rewards", data=ep["reward"])
            g.create_dataset("dones", data=ep["done"])
            if "sim_state" in ep:
                g.create_dataset("states", data=ep["sim_state"])
            for key in obs_keys:
                g.create_dataset(f"obs/{key}", data=ep[f"obs/{key}"])
                if key in next_keys:
                    nxt = ep[f"next_obs/{key}"]
                else:
                    o = ep[f"obs/{key}"]
                    nxt = np.concatenate([o[1:], o[-1:]], axis=0)
                g.create_dataset(f"next_obs/{key}", data=nxt)
            total += n
        data.attrs["total"] = total
        if store.mask_names():
            mask = f.create_group("mask")
            for key in store.mask_names():
                sel = np.flatnonzero(store.mask(key))
                mask.create_dataset(key, data=np.array([names[j] for j in sel], dtype="S"))
    return len(names)
