"""`robolearn data ...`: inspect and reshape episode stores."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from typing import Any

import numpy as np

from robolearn import validation


def _info(args: argparse.Namespace) -> int:
    from robolearn.data.store import EpisodeStore
    from robolearn.retrieval.store_io import retrieval_summary

    store = EpisodeStore.open(args.path, mode="r")
    success = store.column("success").astype(bool)
    info: dict[str, Any] = {
        "path": str(store.path),
        "task": store.task,
        "episodes": store.num_episodes,
        "steps": store.num_steps,
        "features": {k: {"shape": list(f.shape), "dtype": f.dtype, "role": f.role} for k, f in store.features.items()},
        "sources": store.source_counts(),
        "success_rate": float(success.mean()) if len(success) else None,
        "masks": {name: int(m.sum()) for name, m in store.masks.items()},
        "collectors": {str(c): int(n) for c, n in zip(*np.unique(store.column("collector"), return_counts=True))} if store.num_episodes else {},
        "interventions": int(store.column("intervention_count").sum()),
        "control_period": store.control_period,
        "schema_version": store.attrs.get("schema_version"),
        "retrieval": retrieval_summary(store),  # `data retrieve` outputs: mask, weights, scores
    }
    if args.json:
        print(json.dumps(info))
        return 0
    lengths = store.episode_lengths
    print(f"{info['path']}  task={info['task'] or '-'}  schema v{info['schema_version']}")
    print(f"episodes {info['episodes']}  steps {info['steps']}", end="")
    if len(lengths):
        print(f"  length min/mean/max {lengths.min()}/{lengths.mean():.1f}/{lengths.max()}", end="")
    print()
    if info["success_rate"] is not None:
        print(f"success rate {info['success_rate']:.3f}  interventions {info['interventions']}")
    print("features:")
    for key, f in info["features"].items():
        print(f"  {key:<24} {f['dtype']:<8} {tuple(f['shape'])!s:<16} {f['role']}")
    print("steps per source: " + ", ".join(f"{k}={v}" for k, v in info["sources"].items()))
    if info["collectors"]:
        print("episodes per collector: " + ", ".join(f"{k or '-'}={v}" for k, v in info["collectors"].items()))
    print("masks: " + (", ".join(f"{k} ({v} episodes)" for k, v in info["masks"].items()) or "none"))
    if info.get("retrieval"):
        print(info["retrieval"])
    return 0


def _merge(args: argparse.Namespace) -> int:
    from robolearn.data.store import merge_stores

    out = merge_stores(args.out, args.inputs)
    print(f"wrote {out.path}: {out.num_episodes} episodes, {out.num_steps} steps")
    return 0


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _filter(args: argparse.Namespace) -> int:
    from robolearn.data.store import EpisodeStore, copy_store, staged_output

    src = EpisodeStore.open(args.input, mode="r")
    idx = src.select(source=args.source, success=args.success, task=args.task, mask=args.mask)
    with staged_output(args.output, [args.input]) as tmp:  # a failure leaves nothing at OUTPUT
        out = copy_store(src, tmp, idx)
        n_steps = out.num_steps
        out.close()
    print(f"kept {len(idx)} of {src.num_episodes} episodes -> {args.output} ({n_steps} steps)")
    return 0


def _split(args: argparse.Namespace) -> int:
    from robolearn.data.sampler import split_episodes
    from robolearn.data.store import EpisodeStore, StoreError

    if args.train_name == args.val_name:
        raise StoreError(f"--train-name and --val-name are both {args.train_name!r}")
    store = EpisodeStore.open(args.path, mode="a")
    train, val = split_episodes(store.num_episodes, args.val_ratio, args.seed)
    store.set_masks({args.train_name: train, args.val_name: val})  # both or neither
    store.close()
    print(f"masks {args.train_name!r}: {len(train)} episodes, {args.val_name!r}: {len(val)} episodes (seed {args.seed})")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from robolearn.data.normalizer import compute_stats, save_stats
    from robolearn.data.store import EpisodeStore

    store = EpisodeStore.open(args.path, mode="a")
    keys = args.keys or [k for k, f in store.features.items() if f.role in ("obs", "action") and np.prod(f.shape or (1,)) <= 4096]
    stats = compute_stats(store, keys)
    save_stats(store, stats)
    store.close()
    for key, s in stats.items():
        print(f"{key}: min {np.round(s['min'], 3).tolist()} max {np.round(s['max'], 3).tolist()}")
    return 0


def _import_robomimic(args: argparse.Namespace) -> int:
    from robolearn.data.robomimic_io import import_robomimic

    store = import_robomimic(args.input, args.output, task=args.task)
    print(f"imported {store.num_episodes} demos ({store.num_steps} steps) -> {store.path}")
    return 0


def _export_robomimic(args: argparse.Namespace) -> int:
    from robolearn.data.robomimic_io import export_robomimic

    n = export_robomimic(args.input, args.output, overwrite=args.overwrite)
    print(f"exported {n} demos -> {args.output}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Exit 0 when every committed episode reads back intact, 1 with a report when not."""
    from robolearn.data.store import StoreIntegrityError, verify_store

    try:
        report = verify_store(args.path)
    except StoreIntegrityError as exc:  # not even the commit records are readable
        report = {"path": str(args.path), "ok": False, "problems": [str(exc)], "damaged_episodes": [], "episodes": None,
                  "healthy_episodes": None, "uncommitted": {}, "quarantine": [], "checksummed": None}
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "damage"}))
        return 0 if report["ok"] else 1
    status = "ok" if report["ok"] else "DAMAGED"
    print(f"{report['path']}: {status}: {report['healthy_episodes']} of {report['episodes']} episodes healthy"
          + ("" if report.get("checksummed", True) else " (written before chunk checksums: a corrupted or deleted chunk may read unseen as data or zeros)"))
    for line in report["problems"]:
        print(f"  {line}")
    unc = report.get("uncommitted") or {}
    if unc.get("steps") or unc.get("column_rows") or unc.get("marker"):
        print(f"  uncommitted tail (a killed writer's, not damage): {unc['steps']} steps, {unc['column_rows']} column rows")
    for q in report["quarantine"]:
        print(f"  quarantine {q['dir']}: {len(q.get('quarantined_episodes', []))} episodes, "
              f"{len(q.get('step_ranges', []))} step ranges, {len(q.get('moved_chunks', []))} chunks")
    if not report["ok"]:
        print(f"  run `robolearn data repair {report['path']}` to move the damage into the store's quarantine")
    return 0 if report["ok"] else 1


def _repair(args: argparse.Namespace) -> int:
    from robolearn.data.store import repair_store

    result = repair_store(args.path)
    if not result["changed"]:
        print(f"{result['path']}: nothing to repair ({result['kept']} episodes)")
        return 0
    print(f"{result['path']}: kept {result['kept']} episodes, quarantined {result['quarantined']} episodes and "
          f"{result.get('uncommitted_steps', 0)} uncommitted steps; nothing deleted, listed in {result['manifest']}")
    return 0


def _mix(args: argparse.Namespace) -> int:
    """`data mix` built in a temporary store and renamed into place: a failure leaves nothing, an
    input is never the output, --overwrite replaces only a store."""
    from robolearn.data.store import staged_output
    from robolearn.rl.cli import _mix as build_mix

    out = args.out
    with staged_output(out, [args.good, *list(args.bad if isinstance(args.bad, list) else [args.bad])], overwrite=args.overwrite) as tmp:
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            rc = build_mix(argparse.Namespace(**{**vars(args), "out": str(tmp), "overwrite": False}))
    print(text.getvalue().replace(str(tmp), str(out)), end="")
    return rc


def _import_lerobot(args: argparse.Namespace) -> int:
    from robolearn.data.lerobot_io import import_lerobot

    store = import_lerobot(args.input, args.output, task=args.task)
    print(f"imported {store.num_episodes} episodes ({store.num_steps} steps) -> {store.path}")
    return 0


def _export_lerobot(args: argparse.Namespace) -> int:
    from robolearn.data.lerobot_io import export_lerobot

    info = export_lerobot(args.input, args.output, fps=args.fps, vcodec=args.vcodec, crf=args.crf,
                          robot_type=args.robot_type, overwrite=args.overwrite)
    print(f"exported {info['total_episodes']} episodes ({info['total_frames']} frames, {info['fps']} fps) -> {args.output}")
    return 0


def _view(args: argparse.Namespace) -> int:
    from robolearn.data.viewer import run_view_cli

    return run_view_cli(args)


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser("info", help="episodes, steps, features, sources, success rate, masks")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_info)

    p = sub.add_parser("verify", help="full scan: every episode readable, records consistent, checksums match (exit 1 if not)")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_verify)

    p = sub.add_parser("repair", help="move damaged, inconsistent and uncommitted pieces into the store's quarantine (never deletes)")
    p.add_argument("path")
    p.set_defaults(func=_repair)

    p = sub.add_parser("merge", help="concatenate stores with identical features")
    p.add_argument("out")
    p.add_argument("inputs", nargs="+")
    p.set_defaults(func=_merge)

    p = sub.add_parser("filter", help="copy the episodes matching every filter into a new store")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--source", nargs="+", help="keep episodes with steps of these sources")
    p.add_argument("--success", type=_parse_bool, help="true or false")
    p.add_argument("--mask", nargs="+", help="keep episodes in these named masks")
    p.add_argument("--task")
    p.set_defaults(func=_filter)

    p = sub.add_parser("split", help="write train/validation episode masks")
    p.add_argument("path")
    p.add_argument("--val-ratio", type=validation.open_fraction, required=True, help="fraction of episodes for validation, in (0, 1)")
    p.add_argument("--seed", type=validation.seed, default=0)
    p.add_argument("--train-name", default="train")
    p.add_argument("--val-name", default="valid")
    p.set_defaults(func=_split)

    p = sub.add_parser("stats", help="compute exact normalization stats and save them in the store")
    p.add_argument("path")
    p.add_argument("--keys", nargs="+")
    p.set_defaults(func=_stats)

    p = sub.add_parser("import-robomimic", help="robomimic hdf5 -> episode store")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--task")
    p.set_defaults(func=_import_robomimic)

    p = sub.add_parser("export-robomimic", help="episode store -> robomimic hdf5")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_export_robomimic)

    p = sub.add_parser("import-lerobot", help="LeRobot v3 dataset directory -> episode store")
    p.add_argument("input", help="LeRobot dataset root (holds meta/info.json)")
    p.add_argument("output")
    p.add_argument("--task", help="store task name (default: the dataset's single task string)")
    p.set_defaults(func=_import_lerobot)

    p = sub.add_parser("export-lerobot", help="episode store -> LeRobot v3 dataset directory (parquet + mp4 + meta)")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--fps", type=validation.int_in(1, 1000), help="frames per second (default: 1 / the store's control period)")
    p.add_argument("--vcodec", default="libsvtav1", help="ffmpeg video encoder for camera images (LeRobot's default AV1)")
    p.add_argument("--crf", type=validation.int_in(0, 63), default=30, help="video quality (lower = better, larger)")
    p.add_argument("--robot-type", default=None, help="info.json robot_type")
    p.add_argument("--overwrite", action="store_true", help="replace an existing LeRobot dataset at OUTPUT")
    p.set_defaults(func=_export_lerobot)

    p = sub.add_parser("view", help="replay episodes (from sim states or stored images) with source/stage/reward overlay")
    p.add_argument("path")
    p.add_argument("--episode", type=validation.non_negative_int, nargs="+", required=True, help="episode index; several play as a grid")
    p.add_argument("--out", help="mp4 to write (default STORE_epI.mp4 in the current directory)")
    p.add_argument("--from", dest="source_mode", choices=["auto", "states", "images"], default="auto",
                   help="render stored sim states, or show stored camera images (auto: states when the store has them)")
    p.add_argument("--camera", default="front", help="camera to render, or obs/<camera> images to show")
    p.add_argument("--size", type=validation.int_in(16, 4096), default=256, help="scene size in pixels")
    p.add_argument("--cols", type=validation.int_in(1, 64), help="grid columns (default: square-ish)")
    p.add_argument("--every", type=validation.positive_int, default=1, help="show every k-th step")
    p.add_argument("--fps", type=validation.float_in(0.0, 1000.0, lo_open=True), help="playback rate (default: the store's control rate)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--rerun", action="store_true", help="stream to a rerun viewer (needs rerun-sdk)")
    p.add_argument("--rerun-save", help="save a rerun .rrd recording instead of streaming (needs rerun-sdk)")
    p.set_defaults(func=_view)

    from robolearn.retrieval.cli import register_retrieve  # retrieve (behaviour retrieval)

    register_retrieve(sub)

    from robolearn.rl.cli import register_data_actions  # mix, rollout (offline RL datasets)

    register_data_actions(sub)
    sub.choices["mix"].set_defaults(func=_mix)  # staged: atomic output, never onto an input
