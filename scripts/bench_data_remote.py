"""Training reads from object storage vs local disk: low-dim windows/s, interleaved.

The same low-dim store (state 20 + action 7, built locally by scripts/bench_data.py's
`build_store`) is read from local disk and from an S3-compatible HTTP endpoint on 127.0.0.1
(moto's server, started here; the store is uploaded to it as is). Each repeat runs both sides in
alternating order: open the store (commit records and chunk checks), build the
`SequenceDataset` (To=2, T=16; low-dim arrays are loaded into memory), then draw `--batches`
batches of 256 uniformly random windows with `get_batch`. Reported: medians over repeats of the
one-time open + load seconds, the steady windows/s after loading, and windows/s end to end
(load included) for a run of `--batches` batches.

    python scripts/bench_data_remote.py --out docs/results/data_loading.md \
        --json docs/results/data_loading/remote_lowdim.json
    python scripts/bench_data_remote.py --table-from docs/results/data_loading/remote_lowdim.json \
        --out docs/results/data_loading.md      # regenerate the table from the raw records
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

BEGIN = "<!-- object-storage: written by scripts/bench_data_remote.py -->"
END = "<!-- /object-storage -->"


def one_side(location: str, batches: int, draws: list[np.ndarray]) -> dict[str, float]:
    from robolearn.data.sampler import SequenceDataset
    from robolearn.data.store import EpisodeStore

    t0 = time.perf_counter()
    store = EpisodeStore.open(location, mode="r")
    ds = SequenceDataset(store, ["state"], n_obs_steps=2, horizon=16)
    t_load = time.perf_counter() - t0
    ds.get_batch(draws[0])  # warm-up
    t1 = time.perf_counter()
    for i in range(batches):
        ds.get_batch(draws[1 + i])
    t_batches = time.perf_counter() - t1
    n = sum(len(d) for d in draws[1 : batches + 1])
    return {"load_s": t_load, "batches_s": t_batches, "windows": n,
            "steady_windows_per_s": n / t_batches, "end_to_end_windows_per_s": n / (t_load + t_batches)}


def run(args: argparse.Namespace) -> dict:
    from bench_data import build_store

    from robolearn.data.location import local_s3_server
    from robolearn.data.sampler import SequenceDataset, WeightedWindowSampler

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_remote_"))
    work.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    try:
        t0 = time.perf_counter()
        local = build_store(work / "lowdim.zarr", args.lowdim_steps // 1000, 1000, image=False, seed=args.seed)
        local.close()
        print(f"built local store: {args.lowdim_steps} steps in {time.perf_counter() - t0:.1f}s", flush=True)
        ds = SequenceDataset(str(work / "lowdim.zarr"), ["state"], n_obs_steps=2, horizon=16)
        sampler = WeightedWindowSampler(np.ones(len(ds)), seed=args.seed)
        draws = [sampler.next_batch(256) for _ in range(args.batches + 1)]
        del ds
        with local_s3_server(bucket="bench") as endpoint:
            import s3fs

            fs = s3fs.S3FileSystem()
            t0 = time.perf_counter()
            for path in sorted((work / "lowdim.zarr").rglob("*")):
                if path.is_file() and path.name != ".robolearn.lock":
                    fs.put_file(str(path), f"bench/lowdim.zarr/{path.relative_to(work / 'lowdim.zarr')}")
            upload_s = time.perf_counter() - t0
            print(f"uploaded to {endpoint} in {upload_s:.1f}s", flush=True)
            sides = {"local": str(work / "lowdim.zarr"), "s3": "s3://bench/lowdim.zarr"}
            for rep in range(args.repeats):
                order = ["local", "s3"] if rep % 2 == 0 else ["s3", "local"]
                for side in order:
                    rec = {"repeat": rep, "side": side, "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
                    rec.update(one_side(sides[side], args.batches, draws))
                    records.append(rec)
                    print(json.dumps(rec), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "command": "python scripts/bench_data_remote.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k in ("lowdim_steps", "batches", "repeats", "seed")),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "lowdim_steps": args.lowdim_steps, "batches": args.batches, "repeats": args.repeats, "seed": args.seed,
        "upload_s": upload_s, "endpoint": "moto server (python -m moto.server) on 127.0.0.1, s3fs client",
        "records": records,
    }


def table(result: dict) -> str:
    med = {}
    for side in ("local", "s3"):
        recs = [r for r in result["records"] if r["side"] == side]
        med[side] = {k: statistics.median(r[k] for r in recs) for k in ("load_s", "steady_windows_per_s", "end_to_end_windows_per_s")}
    loads = [" ".join(r["loadavg_before"]) for r in result["records"]]
    lines = [
        "## Object storage (S3) vs local disk, low-dim training windows",
        "",
        "The same low-dim store read from local disk and from an S3-compatible endpoint on this machine "
        f"({result['endpoint']}), sides interleaved in alternating order, medians over {result['repeats']} repeats. "
        "`open + load` opens the store (commit records, chunk listing) and builds the `SequenceDataset`, which "
        "loads low-dim arrays into memory; `steady` is `get_batch` windows/s after that (batch 256, To=2, T=16); "
        f"`end to end` counts the load in, for a run of {result['batches']} batches. A real training run draws "
        "thousands of batches, so its rate approaches the steady one. Compare the two sides (interleaved, same "
        "load) rather than these absolute rates with other tables: the load average says how busy the 2 cores were.",
        "",
        f"- command: `{result['command']}`",
        f"- machine: {result['machine']}",
        f"- load average (1/5/15 min) before each measurement: {loads[0]} ... {loads[-1]}",
        f"- seed: {result['seed']}; date: {result['date']}",
        f"- raw records: `docs/results/data_loading/remote_lowdim.json` (`--table-from` regenerates this table)",
        "",
        "| store | steps | open + load (s) | steady (windows/s) | end to end, "
        f"{result['batches']} batches (windows/s) |",
        "|---|---|---|---|---|",
    ]
    for side, name in (("local", "local disk"), ("s3", "S3 (moto on 127.0.0.1)")):
        m = med[side]
        lines.append(f"| {name} | {result['lowdim_steps']:,} | {m['load_s']:.2f} | {m['steady_windows_per_s']:,.0f} | {m['end_to_end_windows_per_s']:,.0f} |")
    s, l = med["s3"], med["local"]
    lines.append(f"| ratio S3 / local | | {s['load_s'] / l['load_s']:.1f}x slower | "
                 f"{s['steady_windows_per_s'] / l['steady_windows_per_s']:.2f}x | "
                 f"{s['end_to_end_windows_per_s'] / l['end_to_end_windows_per_s']:.2f}x |")
    return "\n".join(lines) + "\n"


def write_section(out: Path, section: str) -> None:
    """Replace (or append) this script's section of the results page, leaving the rest as it is."""
    text = out.read_text() if out.exists() else "# Data loading\n"
    block = f"{BEGIN}\n{section}{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lowdim-steps", type=int, default=1_000_000)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="write the raw records here")
    ap.add_argument("--table-from", default=None, help="only regenerate the table from a raw-records file")
    ap.add_argument("--out", default=None, help="results page to write the section into")
    args = ap.parse_args()
    if args.table_from:
        result = json.loads(Path(args.table_from).read_text())
    else:
        result = run(args)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    section = table(result)
    print(section)
    if args.out:
        write_section(Path(args.out), section)


if __name__ == "__main__":
    main()
