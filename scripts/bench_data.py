"""Data-loading benchmark: windows/s from the episode store vs an in-memory numpy gather.

(a) a 1M-step low-dim store and (b) a 20k-frame 84x84x3 image store; batch 256, To=2, T=16.
The ceiling gathers the same windows from arrays already in memory with precomputed indices.

    python scripts/bench_data.py --out docs/results/data_loading.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from robolearn.data.sampler import SequenceDataset, WeightedWindowSampler
from robolearn.data.schema import Feature
from robolearn.data.store import EpisodeStore


def build_store(path: Path, n_episodes: int, ep_len: int, image: bool, seed: int) -> EpisodeStore:
    rng = np.random.default_rng(seed)
    features = {"obs/state": Feature("float32", (20,), "obs"), "action": Feature("float32", (7,), "action")}
    if image:
        features["obs/image"] = Feature("uint8", (84, 84, 3), "obs")
    store = EpisodeStore.create(path, features, task="bench")
    for i in range(n_episodes):
        steps = {
            "obs/state": rng.normal(size=(ep_len, 20)).astype(np.float32),
            "action": rng.uniform(-1, 1, (ep_len, 7)).astype(np.float32),
        }
        if image:
            steps["obs/image"] = rng.integers(0, 256, (ep_len, 84, 84, 3), dtype=np.uint8)
        store.append_episode(steps, success=True, seed=i)
    return store


def time_it(fn, n_batches: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(n_batches):
        fn()
    return time.perf_counter() - t0


def bench(store: EpisodeStore, obs_keys: list[str], batch: int, n_batches: int, seed: int, preload: bool = False) -> dict[str, float]:
    ds = SequenceDataset(store, obs_keys, n_obs_steps=2, horizon=16, lazy_threshold=1 << 62 if preload else 4096)
    sampler = WeightedWindowSampler(np.ones(len(ds)), seed=seed)
    # ceiling: everything in memory, indices precomputed, plain fancy indexing
    arrays = {k: store.read(f"obs/{k}", cache=False) for k in obs_keys}
    actions = store.read("action", cache=False)
    draws = [sampler.next_batch(batch) for _ in range(n_batches + 1)]
    pre = [(ds._indices(w, 2)[0], ds._indices(w, 16)) for w in draws]
    it = iter(range(10**9))

    def ceiling():
        i = next(it) % len(pre)
        oi, (ai, pm) = pre[i]
        _ = {k: a[oi] for k, a in arrays.items()}, actions[ai], pm

    t_ceiling = time_it(ceiling, n_batches)
    it2 = iter(range(10**9))

    def ours():
        ds.get_batch(draws[next(it2) % len(draws)])

    t_ours = time_it(ours, n_batches)

    ds_batched = _BatchedView(ds)
    loader = torch.utils.data.DataLoader(
        ds_batched, batch_size=None, sampler=[draws[i % len(draws)] for i in range(n_batches + 4)], num_workers=2
    )
    iterator = iter(loader)
    for _ in range(4):
        next(iterator)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(iterator)
    t_loader = time.perf_counter() - t0
    n = batch * n_batches
    return {"ceiling": n / t_ceiling, "store": n / t_ours, "loader": n / t_loader}


class _BatchedView(torch.utils.data.Dataset):
    """DataLoader item = one whole batch of windows (indices in, torch batch out)."""

    def __init__(self, ds: SequenceDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return 1

    def __getitem__(self, windows):
        return self.ds.torch_batch(windows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lowdim-steps", type=int, default=1_000_000)
    ap.add_argument("--image-frames", type=int, default=20_000)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where to build the stores (default: a temp dir)")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_data_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        t0 = time.perf_counter()
        low = build_store(work / "lowdim.zarr", args.lowdim_steps // 1000, 1000, image=False, seed=args.seed)
        print(f"built low-dim store: {low.num_steps} steps in {time.perf_counter() - t0:.1f}s")
        r = bench(low, ["state"], 256, args.batches, args.seed)
        rows.append(("low-dim (state 20 + action 7)", low.num_steps, r))
        t0 = time.perf_counter()
        img = build_store(work / "image.zarr", args.image_frames // 200, 200, image=True, seed=args.seed)
        print(f"built image store: {img.num_steps} frames in {time.perf_counter() - t0:.1f}s")
        r = bench(img, ["state", "image"], 256, max(args.batches // 4, 10), args.seed)
        rows.append(("image 84x84x3 + state, lazy (chunk cache)", img.num_steps, r))
        r = bench(img, ["state", "image"], 256, max(args.batches // 4, 10), args.seed, preload=True)
        rows.append(("image 84x84x3 + state, preloaded in memory", img.num_steps, r))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        "| store | steps | in-memory ceiling (windows/s) | store `get_batch` (windows/s) | ratio to ceiling | DataLoader, 2 workers (windows/s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, steps, r in rows:
        lines.append(
            f"| {name} | {steps:,} | {r['ceiling']:,.0f} | {r['store']:,.0f} | {r['store'] / r['ceiling']:.2f}x | {r['loader']:,.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        cmd = "python scripts/bench_data.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k not in ("workdir",)
        )
        text = (
            "# Data loading\n\n"
            "Windows of To=2 observation steps and T=16 actions, batch 256, drawn uniformly at random. "
            "Images are uniform random bytes (worst case for compression: every lazy read decodes a "
            "~250 KB chunk). The DataLoader column feeds whole batches (one index list per item) "
            "through 2 worker processes, so it includes inter-process transfer.\n\n"
            f"- command: `{cmd}`\n- machine: {platform.processor() or platform.machine()}, "
            f"{__import__('os').cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}\n"
            f"- seed: {args.seed}\n- date: {dt.date.today().isoformat()}\n\n{table}\n"
        )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
