"""Where the top-10% cut's episodes start, against the other successful episodes of the same mix.

On push_cube the return of an expert episode depends on its start (a cube near the goal is pushed in sooner and
then earns the success reward for longer), so filtering by return can also filter the starts. Prints a table and
writes offline_to_online/topk_starts.json:

    python scripts/topk_starts.py --mixes data/o2o/push_cube_mix0.05.zarr data/o2o/push_cube_mix0.5.zarr
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

# push_cube observation with obs_relative=true: gripper xyz, width, cube xyz, cube quat, goal xy, cube - gripper, goal - cube xy
CUBE_MINUS_GRIPPER, GOAL_MINUS_CUBE_XY = slice(13, 16), slice(16, 18)


def starts(path: str, top: float = 0.1) -> list[dict]:
    from robolearn.data.store import EpisodeStore
    from robolearn.rl.replay import transitions_from_store
    from robolearn.rl.weighting import transition_probs

    store = EpisodeStore.open(path)
    tr = transitions_from_store(store)
    ret, s0 = np.asarray(tr.episode_return), np.asarray(tr.initial_obs)
    success = store.column("success").astype(bool)[np.asarray(tr.store_episode)]  # per episode of `tr`
    cut = np.unique(np.asarray(tr.episode)[transition_probs("topk", tr.episode, ret, topk=top) > 0])  # the sampler's own cut
    rest = np.setdiff1d(np.where(success)[0], cut)
    rows = []
    for name, idx in (("top-10% cut", cut), ("successful episodes outside the cut", rest)):
        goal = np.linalg.norm(s0[idx, GOAL_MINUS_CUBE_XY], axis=1)
        reach = np.linalg.norm(s0[idx, CUBE_MINUS_GRIPPER], axis=1)
        rows.append({"mix": Path(path).name, "group": name, "episodes": int(len(idx)), "successful": int(success[idx].sum()),
                     "return_median": float(np.median(ret[idx])) if len(idx) else None,
                     "goal_cube_start_median": float(np.median(goal)) if len(idx) else None,
                     "goal_cube_start_p10_p90": [float(np.percentile(goal, 10)), float(np.percentile(goal, 90))] if len(idx) else None,
                     "gripper_cube_start_median": float(np.median(reach)) if len(idx) else None})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixes", nargs="+", required=True)
    ap.add_argument("--out", default="docs/results/offline_to_online/topk_starts.json")
    a = ap.parse_args()
    rows = [r for m in a.mixes for r in starts(m)]
    print("| mix | group | n | successful | median return | goal-cube distance at start: median [p10, p90] | gripper-cube at start: median |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["episodes"]:
            lo, hi = r["goal_cube_start_p10_p90"]
            print(f"| {r['mix']} | {r['group']} | {r['episodes']} | {r['successful']} | {r['return_median']:.1f} | "
                  f"{r['goal_cube_start_median']:.3f} [{lo:.3f}, {hi:.3f}] | {r['gripper_cube_start_median']:.3f} |")
    tmp = Path(a.out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
