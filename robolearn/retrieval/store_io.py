"""The merged retrieval store: target episodes, then prior episodes, plus what retrieval decided.

Per-step columns added to the store's features (role aux):
  `retrieved` (bool): a prior step the method kept (False on target steps);
  `retrieval_score` (float32): the method's score of each prior step (NaN on target steps);
  `retrieval_weight` (float32): the sampling weight `data.mix=retrieval` trains with. Target
  steps share `target_share` of the mass, retrieved prior steps the rest, uniformly within each
  group (Behavior Retrieval draws every batch half from the target data, half from the
  retrieved data); other steps 0. Weights are scaled to mean 1 over the steps they keep.
Episode masks: `retrieval_target`, `retrieval_prior`, `retrieved` (prior episodes with at least
one retrieved step), and `train` (all) / `valid` (none) so training uses every target demo.
Root attribute `retrieval`: method, rule, counts, fraction, timing, source paths.
The store is built in a temporary sibling and published by one rename when complete (staged_output).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from robolearn.data.schema import Feature
from robolearn.data.store import EpisodeStore
from robolearn.retrieval.core import RetrievalError

RETRIEVAL_FEATURES = {
    "retrieved": Feature("bool", (), "aux"),
    "retrieval_score": Feature("float32", (), "aux"),
    "retrieval_weight": Feature("float32", (), "aux"),
}


def retrieval_weights(n_target: int, mask: np.ndarray, target_share: float) -> tuple[np.ndarray, np.ndarray]:
    """(target step weights, prior step weights), mean 1 over the kept steps."""
    n_ret = int(mask.sum())
    w_t = np.full(n_target, target_share / max(n_target, 1))
    w_p = np.where(mask, (1.0 - target_share) / max(n_ret, 1), 0.0)
    kept = n_target + n_ret
    scale = kept / (w_t.sum() + w_p.sum())
    return (w_t * scale).astype(np.float32), (w_p * scale).astype(np.float32)


def _merged_features(prior: EpisodeStore, target: EpisodeStore) -> dict[str, Feature]:
    feats = dict(target.features)
    for key, f in prior.features.items():
        if key in feats and feats[key] != f:
            raise RetrievalError(f"feature {key!r} differs between prior ({f}) and target ({feats[key]})")
        if key not in feats:
            if f.role not in ("aux", "sim_state"):
                raise RetrievalError(f"the prior has {f.role} feature {key!r} that the target lacks (different task layout)")
            feats[key] = f
    for key, f in list(feats.items()):
        if key not in prior.features and f.role not in ("aux", "sim_state"):
            raise RetrievalError(f"the target has {f.role} feature {key!r} that the prior lacks (different task layout)")
    clash = sorted(set(feats) & set(RETRIEVAL_FEATURES))
    if clash:
        raise RetrievalError(f"an input store already holds {', '.join(clash)} (it is a retrieval output; retrieve from the original stores)")
    feats.update(RETRIEVAL_FEATURES)
    return feats


def write_retrieval_store(out: str | Path, prior: EpisodeStore, target: EpisodeStore, mask: np.ndarray,
                          scores: np.ndarray, info: dict[str, Any], target_share: float = 0.5,
                          overwrite: bool = False, progress: bool = True) -> EpisodeStore:
    """Write target + prior with the retrieval columns to `out` atomically; returns it opened read-only."""
    from robolearn.data.store import staged_output

    out = Path(out)
    if len(mask) != prior.num_steps or len(scores) != prior.num_steps:
        raise RetrievalError(f"mask/scores have {len(mask)}/{len(scores)} entries for {prior.num_steps} prior steps")
    feats = _merged_features(prior, target)
    w_t, w_p = retrieval_weights(target.num_steps, mask, target_share)
    # the data CLI's convention: built in a temporary sibling, published by one rename on success
    with staged_output(out, [prior.path, target.path], overwrite=overwrite) as tmp:
        dst = EpisodeStore.create(tmp, dict(feats), task=target.task or prior.task, env_kwargs=target.env_kwargs,
                                  control_period=target.control_period)
        try:
            _write_episodes(dst, prior, target, mask, scores, w_t, w_p, progress)
            n_t, n_p = target.num_episodes, prior.num_episodes
            is_target = np.concatenate([np.ones(n_t, bool), np.zeros(n_p, bool)])
            ep_hit = _episodes_hit(prior.episode_lengths, mask)
            for name, value in (("retrieval_target", is_target), ("retrieval_prior", ~is_target),
                                ("retrieved", np.concatenate([np.zeros(n_t, bool), ep_hit])),
                                ("train", np.ones(n_t + n_p, bool)), ("valid", np.zeros(n_t + n_p, bool))):
                dst.set_mask(name, value)
            dst.set_attr("retrieval", {**info, "prior": str(prior.path), "target": str(target.path),
                                       "target_share": target_share, "retrieved_episodes": int(ep_hit.sum())})
        finally:
            dst.close()
    return EpisodeStore.open(out, mode="r")


def _episodes_hit(lengths: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per episode: does it hold at least one selected step."""
    ep_of_step = np.repeat(np.arange(len(lengths)), lengths)
    hit = np.zeros(len(lengths), bool)
    hit[ep_of_step[mask.astype(bool)]] = True
    return hit


def _write_episodes(dst: EpisodeStore, prior: EpisodeStore, target: EpisodeStore, mask: np.ndarray, scores: np.ndarray,
                    w_t: np.ndarray, w_p: np.ndarray, progress: bool) -> None:
    """Target episodes, then prior episodes, each with its retrieval columns."""
    bar = tqdm(total=target.num_episodes + prior.num_episodes, desc="write retrieval store", unit="ep",
               disable=not progress, dynamic_ncols=True)
    for src, step_w, step_mask, step_score in (
        (target, w_t, np.zeros(target.num_steps, bool), np.full(target.num_steps, np.nan, np.float32)),
        (prior, w_p, mask.astype(bool), scores.astype(np.float32)),
    ):
        table = src.episode_table()
        cols = {k: src.read(k, cache=False) for k in src.features}
        for i, (lo, hi) in enumerate(zip(src.episode_starts, src.episode_ends)):
            steps = {k: v[lo:hi] for k, v in cols.items()}
            steps.update(retrieved=step_mask[lo:hi], retrieval_score=step_score[lo:hi], retrieval_weight=step_w[lo:hi])
            meta = json.loads(table["metadata"][i]) if table["metadata"][i] else None
            dst.append_episode(steps, success=bool(table["success"][i]), collector=str(table["collector"][i]),
                               task=str(table["task"][i]), seed=int(table["seed"][i]), metadata=meta,
                               intervention_count=int(table["intervention_count"][i]))
            bar.update(1)
    bar.close()


def rewrite_retrieval(path: str | Path, mask: np.ndarray, scores: np.ndarray, info: dict[str, Any],
                      target_share: float = 0.5) -> None:
    """Replace the retrieval columns, masks and attrs of an existing retrieval store in place.

    For experiments that try many retrievals on one (prior, target) pair: copying a written store
    and rewriting three columns is much faster than writing every episode again. Not atomic: run
    it on a copy (a crash leaves a store whose retrieval columns must be rewritten).
    """
    store = EpisodeStore.open(path, mode="a")
    try:
        r = store.attrs.get("retrieval")
        if not r:
            raise RetrievalError(f"{path} is not a retrieval store")
        is_target = store.mask("retrieval_target")
        n_target_steps = int(store.episode_lengths[is_target].sum())
        n_prior = store.num_steps - n_target_steps
        if is_target[len(np.flatnonzero(is_target)):].any() or len(mask) != n_prior or len(scores) != n_prior:
            raise RetrievalError(f"{path}: expected target episodes first and {n_prior} prior steps, got {len(mask)}")
        w_t, w_p = retrieval_weights(n_target_steps, mask, target_share)
        store.array("retrieved")[n_target_steps:store.num_steps] = mask.astype(bool)
        store.array("retrieval_score")[n_target_steps:store.num_steps] = scores.astype(np.float32)
        store.array("retrieval_weight")[: store.num_steps] = np.concatenate([w_t, w_p])
        n_t = int(is_target.sum())
        ep_hit = _episodes_hit(store.episode_lengths[n_t:], mask)
        store.set_mask("retrieved", np.concatenate([np.zeros(n_t, bool), ep_hit]))
        store.set_attr("retrieval", {**info, "prior": r.get("prior"), "target": r.get("target"),
                                     "target_share": target_share, "retrieved_episodes": int(ep_hit.sum())})
    finally:
        store.close()


def retrieval_summary(store: EpisodeStore) -> str | None:
    """One line for `robolearn data info` on a retrieval store (None for other stores)."""
    r = store.attrs.get("retrieval")
    if not r:
        return None
    w = store.read("retrieval_weight", cache=False) if "retrieval_weight" in store.features else None
    line = (f"retrieval: method {r.get('method')} {r.get('rule')}, {r.get('retrieved_steps')} of {r.get('prior_steps')} "
            f"prior steps retrieved ({100 * float(r.get('fraction_retrieved', 0)):.1f}%, {r.get('retrieved_episodes')} episodes), "
            f"target {r.get('target_steps')} steps at share {r.get('target_share')}")
    if w is not None:
        line += f"; per-step weights (retrieval_weight) nonzero on {int((w > 0).sum())} steps, max {float(w.max()):.3g}"
    return line
