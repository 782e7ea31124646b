"""How well operator-labelled actions agree with the demos' actions at nearby states.

For each labelled step of one class (recovery, correction, robot) in a round's training store, the
nearest demo step (Euclidean, in the demo states' standardised coordinates, same task stage and same
primitive label) is found, and the cosine between the two actions' translation parts (dims 0-2) is
taken; the demo-vs-demo baseline pairs each of a sample of demo steps with its nearest demo step of
another episode. A deterministic (MSE) low level averages labels that disagree at similar inputs.

    python docs/results/interventions/action_agreement.py runs/rac19/seed0/rac_r1/data.zarr [more stores] \
        --out docs/results/interventions/action_agreement.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


def agreement(path: Path, sample: int = 2000, seed: int = 0) -> dict:
    from robolearn.data.store import SOURCE_CODES, EpisodeStore

    st = EpisodeStore.open(path)
    obs, act = st.read("obs/state").astype(np.float64), st.read("action").astype(np.float64)
    src, stage, prim = st.read("source"), st.read("stage"), st.read("primitive")
    ep = np.repeat(np.arange(st.num_episodes), st.episode_lengths)
    demo = np.flatnonzero(src == SOURCE_CODES["demo"])
    mu, sd = obs[demo].mean(0), np.maximum(obs[demo].std(0), 1e-2)  # floor: dims constant in clean demos
    z = (obs - mu) / sd
    rng = np.random.default_rng(seed)
    out = {"store": str(path)}
    classes = {name: np.flatnonzero(src == SOURCE_CODES[name]) for name in ("recovery", "correction", "policy")}
    classes["demo"] = rng.choice(demo, size=min(sample, len(demo)), replace=False)
    for name, idx in classes.items():
        cos, dist = [], []
        for i in idx:
            cand = demo[(stage[demo] == stage[i]) & (prim[demo] == prim[i]) & (ep[demo] != ep[i])]
            if len(cand) == 0 or prim[i] < 0:
                continue
            j = cand[np.argmin(((z[cand] - z[i]) ** 2).sum(1))]
            a, b = act[i, :3], act[j, :3]
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            if na < 1e-6 or nb < 1e-6:
                continue
            cos.append(float(a @ b / (na * nb)))
            dist.append(float(np.sqrt(((z[j] - z[i]) ** 2).sum())))
        out[name] = {"steps": int(len(idx)), "paired": len(cos), "mean_cosine": float(np.mean(cos)) if cos else None,
                     "share_negative_cosine": float(np.mean([1.0 if c < 0 else 0.0 for c in cos])) if cos else None,
                     "median_state_distance": float(np.median(dist)) if dist else None}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stores", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    missing = [s for s in a.stores if not s.exists()]
    if missing:
        print(f"action_agreement: {missing[0]} not found", file=sys.stderr)
        return 2
    rows = [agreement(s) for s in a.stores]
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, a.out)
    print("| store | class | steps | paired | mean cosine (translation) | share < 0 | median state distance |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for name in ("demo", "correction", "recovery", "policy"):
            c = r[name]
            fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            print(f"| {Path(r['store']).parent.parent.name}/{Path(r['store']).parent.name} | {name} | {c['steps']} | {c['paired']} | "
                  f"{fmt(c['mean_cosine'])} | {fmt(c['share_negative_cosine'])} | {fmt(c['median_state_distance'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
