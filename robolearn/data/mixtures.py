"""Dataset mixtures for learning from demonstrations plus interventions.

Each mixture turns the store's per-step `source` labels and per-episode outcomes into two per-step
arrays: which steps may be sampled and how often (sampling weights), and how much each sampled
step counts in the loss (loss weights). Every policy's training uses them through the sampler.

- `all`: every step of the training episodes, uniformly.
- `rac` (RaC, Hu et al. 2025): demos + recovery + correction segments; the robot's autonomous
  steps only from fully autonomous successes.
- `hg_dagger` (Kelly et al. 2019): only operator-labelled steps (demos, recovery, correction).
- `corrections`: demos and correction steps only (no recovery, no robot steps): trained on RaC's
  recordings it measures what the recovery segments add.
- `iwr` (Mandlekar et al. 2020): every step; intervention steps are sampled to make up half of each
  batch.
- `sirius` (Liu et al. 2022): every step, uniformly sampled, with class loss weights giving the
  classes these shares of the loss mass: interventions 0.5, the 15 robot steps before each takeover
  0.002, demos their true share of the data, the other robot steps the rest. When the demos' true
  share does not fit beside the interventions' half (a base trained on many demos), the demos get
  what is left (1 - 0.5 - 0.002) and the other robot steps none: the interventions' half is the
  method's point. Weights are rescaled to mean 1 over the data; `Mixture.shares` holds the
  realised shares.
- `retrieval` (Behavior Retrieval, Du et al. 2023): a store written by `robolearn data retrieve`;
  steps are sampled by its per-step `retrieval_weight` column (target demos and retrieved prior
  steps, by default half of each batch each; `--target-share` at retrieval time sets it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robolearn.data.store import SOURCE_CODES, EpisodeStore

MIXTURES = ("all", "rac", "hg_dagger", "corrections", "iwr", "sirius", "retrieval")
SIRIUS_PRE_INTERVENTION_STEPS = 15


@dataclass
class Mixture:
    """Episodes to draw windows from, plus optional per-step sampling and loss weights."""

    episodes: np.ndarray
    sampling: np.ndarray | None  # (num_steps,) relative sampling weight per anchor step
    loss_weights: np.ndarray | None  # (num_steps,) per-step loss weight (mean 1 over kept steps)
    shares: dict[str, float] | None = None  # share of the loss mass per step class (demo, intervention, ...)

    def window_sampling_weights(self, dataset) -> np.ndarray:
        """Per-window sampling weights for a SequenceDataset built over `episodes`."""
        if self.sampling is None:
            return np.ones(len(dataset), np.float64)
        w = self.sampling[dataset.anchor].astype(np.float64)
        if w.sum() <= 0:
            raise ValueError("the chosen mixture keeps no training steps")
        return w


def _step_episode(store: EpisodeStore) -> np.ndarray:
    return np.repeat(np.arange(store.num_episodes), store.episode_lengths)


def _pre_intervention(source: np.ndarray, starts: np.ndarray, ends: np.ndarray, k: int) -> np.ndarray:
    """Robot (policy) steps among the k steps before each takeover, per episode."""
    policy = source == SOURCE_CODES["policy"]
    operator = (source == SOURCE_CODES["recovery"]) | (source == SOURCE_CODES["correction"])
    out = np.zeros(len(source), bool)
    for lo, hi in zip(starts, ends):
        op = operator[lo:hi]
        takeovers = np.flatnonzero(op & ~np.concatenate([[False], op[:-1]]))
        for t in takeovers:
            a = max(0, t - k)
            out[lo + a : lo + t] |= policy[lo + a : lo + t]
    return out


def mixture_weights(store: EpisodeStore, mix: str, episodes: np.ndarray) -> Mixture:
    """Build the `mix` mixture restricted to `episodes` (e.g. the training split)."""
    if mix not in MIXTURES:
        raise ValueError(f"unknown mixture {mix!r} (known: {', '.join(MIXTURES)})")
    episodes = np.asarray(episodes, dtype=np.int64)
    if mix == "all":
        return Mixture(episodes, None, None)
    source = store.read("source")
    in_split = np.zeros(store.num_episodes, bool)
    in_split[episodes] = True
    step_ep = _step_episode(store)
    keep_ep = in_split[step_ep]
    if mix == "retrieval":
        if "retrieval_weight" not in store.features:
            raise ValueError(f"data.mix=retrieval: {store.path} has no retrieval_weight column (write it with `robolearn data retrieve`)")
        return Mixture(episodes, np.where(keep_ep, store.read("retrieval_weight").astype(np.float64), 0.0), None)
    demo = source == SOURCE_CODES["demo"]
    policy = source == SOURCE_CODES["policy"]
    correction = source == SOURCE_CODES["correction"]
    intervention = (source == SOURCE_CODES["recovery"]) | correction
    classes = {"demo": demo, "intervention": intervention, "robot": policy}
    if mix in ("rac", "hg_dagger", "corrections"):
        keep = demo | (correction if mix == "corrections" else intervention)
        if mix == "rac":
            success = store.column("success").astype(bool)
            autonomous = store.column("intervention_count") == 0
            keep |= policy & (success & autonomous)[step_ep]
        sampling = (keep & keep_ep).astype(np.float64)
        return Mixture(episodes, sampling, None, _shares(sampling, classes))
    if mix == "iwr":
        kept = keep_ep
        n_int = int((intervention & kept).sum())
        n_other = int((~intervention & kept).sum())
        sampling = kept.astype(np.float64)
        if n_int and n_other:
            sampling[intervention & kept] = 0.5 / n_int
            sampling[~intervention & kept] = 0.5 / n_other
        return Mixture(episodes, sampling, None, _shares(sampling, classes))
    # sirius
    pre = _pre_intervention(source, store.episode_starts, store.episode_ends, SIRIUS_PRE_INTERVENTION_STEPS)
    robot = policy & ~pre
    kept = keep_ep
    n = max(int(kept.sum()), 1)
    ratio = {name: float((m & kept).sum()) / n for name, m in (("demo", demo), ("int", intervention), ("pre", pre), ("robot", robot))}
    target = {"int": 0.5 if ratio["int"] else 0.0, "pre": 0.002 if ratio["pre"] else 0.0}
    target["demo"] = min(ratio["demo"], 1.0 - target["int"] - target["pre"])
    target["robot"] = max(1.0 - target["int"] - target["pre"] - target["demo"], 0.0) if ratio["robot"] else 0.0
    weights = np.zeros(len(source), np.float64)
    for name, m in (("demo", demo), ("int", intervention), ("pre", pre), ("robot", robot)):
        if ratio[name] > 0:
            weights[m] = target[name] / ratio[name]
    weights[~kept] = 0.0
    mean = weights[kept].mean() if kept.any() else 1.0
    if mean <= 0:
        raise ValueError("sirius weights are all zero for this data")
    shares = _shares(weights * kept, {**classes, "pre_intervention": pre, "robot": robot})
    return Mixture(episodes, kept.astype(np.float64), (weights / mean).astype(np.float32), shares)


def _shares(mass: np.ndarray, classes: dict[str, np.ndarray]) -> dict[str, float]:
    """Each class's fraction of the total per-step mass (sampling probability x loss weight)."""
    total = float(mass.sum())
    return {name: (float(mass[m].sum()) / total if total > 0 else 0.0) for name, m in classes.items()}
