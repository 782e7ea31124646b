"""Data-loading benchmark: windows/s from the episode store vs an in-memory numpy gather.

(a) a 1M-step low-dim store and (b) a 20k-frame 84x84x3 image store; batch 256, To=2, T=16.
The ceiling gathers the same windows from arrays already in memory with precomputed indices.

    python scripts/bench_data.py --out docs/results/data_loading.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import sys
import time
from pathlib import Path
from typing import Any

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


# ----------------------------------------------------------------------------------- image path
class ReferenceInMemorySampler:
    """diffusion_policy's data path, re-implemented for comparison: every array read into memory
    first (ReplayBuffer.copy_from_path), then one Python `sample_sequence` per window (slice the
    episode's rows, repeat the edge rows as padding), per-window dicts of tensors, default_collate.
    Generous to the reference: observation keys read only the To observation frames (its
    key_first_k) and images stay uint8, where DP's PushT image dataset samples all T frames and
    converts them to float / 255."""

    def __init__(self, store: EpisodeStore, windows: SequenceDataset, obs_keys: list[str]) -> None:
        self.obs_keys, self.To, self.T = obs_keys, windows.n_obs_steps, windows.horizon
        self.arrays = {k: store.read(f"obs/{k}", cache=False) for k in obs_keys}
        self.arrays["action"] = store.read("action", cache=False)
        # the same windows as ours, as DP's (buffer_start, buffer_end, sample_start, sample_end)
        start = windows.win_start
        self.buffer_start = np.maximum(start, windows.ep_lo)
        self.buffer_end = np.minimum(start + self.T, windows.ep_hi)
        self.sample_start = self.buffer_start - start
        self.sample_end = self.sample_start + (self.buffer_end - self.buffer_start)

    def _sequence(self, key: str, i: int, length: int) -> np.ndarray:
        arr = self.arrays[key]
        b0, b1 = int(self.buffer_start[i]), int(self.buffer_end[i])
        s0, s1 = int(self.sample_start[i]), int(self.sample_end[i])
        if length < self.T:  # key_first_k: only the first `length` rows of the window
            b1, s1 = min(b1, b0 + max(length - s0, 0)), min(s1, length)
        sample = arr[b0:b1]
        if s0 == 0 and s1 == length:
            return sample
        data = np.zeros((length, *arr.shape[1:]), dtype=arr.dtype)
        if s0 > 0:
            data[:s0] = sample[0]
        if s1 < length:
            data[s1:] = sample[-1]
        data[s0:s1] = sample[: s1 - s0]
        return data

    def item(self, i: int) -> dict[str, Any]:
        obs = {k: torch.from_numpy(np.ascontiguousarray(self._sequence(k, i, self.To))) for k in self.obs_keys}
        return {"obs": obs, "action": torch.from_numpy(np.ascontiguousarray(self._sequence("action", i, self.T)))}

    def batch(self, windows: np.ndarray) -> dict[str, Any]:
        return torch.utils.data.default_collate([self.item(int(i)) for i in windows])


def _cumulative(make, draws: list[np.ndarray]) -> tuple[list[float], Any]:
    """Seconds from construction (make) to the end of each batch."""
    t0 = time.perf_counter()
    fetch, keep = make()
    times = []
    for w in draws:
        fetch(w)
        times.append(time.perf_counter() - t0)
    return times, keep


def bench_image_path(store: EpisodeStore, batch: int, n_batches: int, warm_batches: int, repeats: int, seed: int
                     ) -> list[dict[str, Any]]:
    """Cold start (time from construction to batch k, every side starting from the store on
    disk) and warm throughput of: the reference's in-memory sampler, our lazily loading dataset
    (chunk cache warmed in the background), the same through BatchPrefetcher (2 threads), and the
    ceiling (arrays in memory, precomputed indices, one fancy index each). Sides interleaved in
    every repeat, their order rotated."""
    from robolearn.data.sampler import BatchPrefetcher

    keys = ["state", "image"]
    probe = SequenceDataset(store, keys, n_obs_steps=2, horizon=16, image_cache_bytes=0)
    sampler = WeightedWindowSampler(np.ones(len(probe)), seed=seed)
    draws = [sampler.next_batch(batch) for _ in range(n_batches)]
    warm_draws = [sampler.next_batch(batch) for _ in range(warm_batches)]

    def reference():
        ref = ReferenceInMemorySampler(store, probe, keys)
        return ref.batch, ref

    def lazy():
        ds = SequenceDataset(store, keys, n_obs_steps=2, horizon=16)
        ds.warm_cache()
        return ds.torch_batch, ds

    def lazy_prefetch():
        ds = SequenceDataset(store, keys, n_obs_steps=2, horizon=16)
        ds.warm_cache()
        pre = BatchPrefetcher(ds, WeightedWindowSampler(np.ones(len(ds)), seed=seed), batch, num_workers=2)
        return (lambda w: pre.next()), (ds, pre)

    def ceiling():
        arrays = {k: store.read(f"obs/{k}", cache=False) for k in keys}
        actions = store.read("action", cache=False)

        def fetch(w):
            act_idx, pad = probe._indices(w, 16)
            obs_idx = act_idx[:, :2]
            return {k: torch.from_numpy(a[obs_idx]) for k, a in arrays.items()}, torch.from_numpy(actions[act_idx]), pad
        return fetch, None

    sides = {"reference in-memory sampler": reference, "ours, lazy": lazy, "ours, lazy + prefetch (2 threads)": lazy_prefetch,
             "ceiling (in memory, one gather)": ceiling}
    names = list(sides)
    records = []
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            load = list(os.getloadavg())
            times, keep = _cumulative(sides[name], draws)
            rec = {"side": name, "repeat": r, "loadavg": load, "batch": batch,
                   "cumulative_s": [round(t, 5) for t in times]}
            # warm: what a batch costs once everything is in memory (the cache fully decoded)
            if name.startswith("ours"):
                ds = keep[0] if isinstance(keep, tuple) else keep
                ds.warm_cache(background=False)
                if ds._warmer is not None:
                    ds._warmer.join()
                t0 = time.perf_counter()
                if isinstance(keep, tuple):
                    for _ in warm_draws:
                        keep[1].next()
                else:
                    for w in warm_draws:
                        ds.torch_batch(w)
                rec["warm_windows_per_s"] = batch * len(warm_draws) / (time.perf_counter() - t0)
                if isinstance(keep, tuple):
                    keep[1].close()
                ds.close()
            elif name.startswith("reference"):
                t0 = time.perf_counter()
                for w in warm_draws:
                    keep.batch(w)
                rec["warm_windows_per_s"] = batch * len(warm_draws) / (time.perf_counter() - t0)
            else:
                fetch, _ = ceiling()
                t0 = time.perf_counter()
                for w in warm_draws:
                    fetch(w)
                rec["warm_windows_per_s"] = batch * len(warm_draws) / (time.perf_counter() - t0)
            records.append(rec)
            print(json.dumps({k: v for k, v in rec.items() if k != "cumulative_s"}
                             | {"first_batch_s": rec["cumulative_s"][0], "all_batches_s": rec["cumulative_s"][-1]}), flush=True)
            del keep
    return records


IMAGE_MARK = ("<!-- image-path:start (scripts/bench_data.py --image-path) -->", "<!-- image-path:end -->")


def image_path_table(result: dict[str, Any]) -> str:
    """Markdown of the image-path benchmark from its raw records (medians over repeats)."""
    recs, batch = result["records"], result["batch"]
    sides = list(dict.fromkeys(r["side"] for r in recs))
    ks = [k for k in (1, 5, 20) if k <= result["batches"]] + [result["batches"]]

    def rate(side: str, k: int) -> float:  # windows/s over the first k batches, from construction
        return float(np.median([batch * k / r["cumulative_s"][k - 1] for r in recs if r["side"] == side]))

    def warm(side: str) -> float:
        return float(np.median([r["warm_windows_per_s"] for r in recs if r["side"] == side]))

    ref, ceil = sides[0], sides[-1]
    head = "| side | " + " | ".join(f"first {k} batch{'es' if k > 1 else ''} (windows/s)" for k in ks) + \
        " | warm (windows/s) | vs reference, first 1 / 20 / all batches | warm vs ceiling |"
    lines = [head, "|" + "---|" * (len(ks) + 4)]
    for side in sides:
        vs_ref = " / ".join(f"{rate(side, k) / rate(ref, k):.2f}x" for k in ks if k in (1, 20, result["batches"]))
        lines.append(f"| {side} | " + " | ".join(f"{rate(side, k):,.0f}" for k in ks) +
                     f" | {warm(side):,.0f} | {vs_ref} | {warm(side) / warm(ceil):.2f}x |")
    loads = [r["loadavg"][0] for r in recs]
    ours = sides[1]
    strict = (f"Without the reference's start-up (its per-batch rate once loaded, {warm(ref):,.0f} windows/s), "
              f"{ours} reaches {rate(ours, 1) / warm(ref):.2f}x of it over its first batch, "
              f"{rate(ours, min(20, result['batches'])) / warm(ref):.2f}x over the first {min(20, result['batches'])} and "
              f"{rate(ours, result['batches']) / warm(ref):.2f}x over all {result['batches']} (cold: each first batch "
              f"decodes the ~{batch} chunks its windows touch, {result['chunk_frames']} frames each, random bytes).")
    return "\n".join([
        IMAGE_MARK[0],
        "## Image data path: cold start and warm (lazy loading vs the reference's in-memory sampler)",
        "",
        f"{result['frames']:,} frames of 84x84x3 uniform random bytes + state 20 + action 7, {result['chunks']} image "
        f"chunks of {result['chunk_frames']} frames; batch {batch}, To=2, T=16, the same {result['batches']} random batches "
        f"for every side, {result['repeats']} repeats, sides interleaved (order rotated each repeat), medians. "
        "\"first k batches\" counts from the moment the side is constructed on the store on disk, so it includes "
        "what each side does before its first batch (the reference and the ceiling read the whole store into memory; "
        "ours starts decoding in a background thread and decodes what a batch misses itself). Warm: per-batch cost once "
        "everything is in memory. Reference = diffusion_policy's sampler re-implemented (per-window Python "
        "slicing and padding, default_collate), generous: it reads only the To observation frames and keeps images uint8. The image rows of the "
        "table at the top of this page were measured before this cache (one zarr read and a Python loop per chunk).",
        "",
        f"- command: `{result['command']}`",
        f"- machine: {result['machine']}; load average (1 min) during the sides: {min(loads):.1f}-{max(loads):.1f} "
        "(a shared box: other jobs ran)",
        f"- seed: {result['seed']}; date: {result['date']}; raw records: `docs/results/data_loading/image_path.json` "
        "(`python scripts/bench_data.py --image-table docs/results/data_loading/image_path.json` regenerates this table)",
        "",
        *lines,
        "",
        strict,
        IMAGE_MARK[1],
    ])


def write_image_section(path: Path, section: str) -> None:
    """Replace (or append) only the image-path section of the results page; the rest stays."""
    old = path.read_text() if path.exists() else "# Data loading\n"
    if IMAGE_MARK[0] in old and IMAGE_MARK[1] in old:
        a, b = old.index(IMAGE_MARK[0]), old.index(IMAGE_MARK[1]) + len(IMAGE_MARK[1])
        new = old[:a] + section + old[b:]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


def run_image_path(args: argparse.Namespace, work: Path) -> None:
    t0 = time.perf_counter()
    img = build_store(work / "image.zarr", args.image_frames // 200, 200, image=True, seed=args.seed)
    print(f"built image store: {img.num_steps} frames in {time.perf_counter() - t0:.1f}s", flush=True)
    arr = img.array("obs/image")
    records = bench_image_path(img, 256, args.image_batches, args.image_warm_batches, args.repeats, args.seed)
    result = {"command": "python " + " ".join(sys.argv), "date": dt.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
                         f"{platform.python_version()}, torch {torch.__version__}, torch threads {torch.get_num_threads()}",
              "seed": args.seed, "frames": img.num_steps, "chunk_frames": int(arr.chunks[0]),
              "chunks": -(-int(arr.shape[0]) // int(arr.chunks[0])), "batch": 256, "batches": args.image_batches,
              "warm_batches": args.image_warm_batches, "repeats": args.repeats, "records": records}
    if args.image_json:
        Path(args.image_json).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.image_json).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, args.image_json)
    section = image_path_table(result)
    print(section)
    if args.out:
        write_image_section(Path(args.out), section)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lowdim-steps", type=int, default=1_000_000)
    ap.add_argument("--image-frames", type=int, default=20_000)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where to build the stores (default: a temp dir)")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--image-path", action="store_true",
                    help="only the image data-path benchmark (cold start + warm vs the reference sampler and the ceiling); "
                         "--out then replaces only its section of the page")
    ap.add_argument("--image-batches", type=int, default=30)
    ap.add_argument("--image-warm-batches", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image-json", default=None, help="--image-path: write the raw records here")
    ap.add_argument("--image-table", default=None, metavar="JSON", help="print the image-path table from raw records and exit")
    args = ap.parse_args()
    if args.image_table:
        print(image_path_table(json.loads(Path(args.image_table).read_text())))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_data_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.image_path:
        try:
            run_image_path(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
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
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        old = out.read_text() if out.exists() else ""
        marker = "<!-- object-storage"  # scripts/bench_data_remote.py's section stays
        out.write_text(text + ("\n" + old[old.index(marker):] if marker in old else ""))


if __name__ == "__main__":
    main()
