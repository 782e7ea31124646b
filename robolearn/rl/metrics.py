"""Continual-evaluation metrics for fine-tuning (De Lange et al., "Continual evaluation for
lifelong learning: identifying the stability gap", ICLR 2023), for one task fine-tuned online.

The policy is evaluated on fixed seeds every few env steps, giving a performance curve a(t)
(success rate on our tasks, mean return on gymnasium tasks), t = 0 being the pre-trained policy.

- min-ACC: the worst performance since fine-tuning started, min_{t' <= t} a(t'); reported at the
  end (and as a running curve: "worst-case success since the start of fine-tuning").
- WC-ACC: the paper's worst-case accuracy WC-ACC_k = (1/k) a_k + (1 - 1/k) min-ACC_{<k}. Here the
  offline (pre-trained) phase and the online phase are the k = 2 "tasks", so
  WC-ACC(t) = 0.5 a(t) + 0.5 min-ACC(t): high only if the policy is good now *and* never collapsed.
- windowed forgetting WF^w: the largest drop within any window of w env steps,
  max_t max_{t - w <= t' <= t} (a(t') - a(t)) (>= 0); captures a transient dip (stability gap)
  that final performance hides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def running_min(scores: Sequence[float]) -> np.ndarray:
    return np.minimum.accumulate(np.asarray(scores, np.float64))


def wc_acc_curve(scores: Sequence[float]) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    return 0.5 * s + 0.5 * running_min(s)


def windowed_forgetting(steps: Sequence[int], scores: Sequence[float], window: int) -> float:
    steps = np.asarray(steps, np.int64)
    s = np.asarray(scores, np.float64)
    if len(steps) != len(s):
        raise ValueError(f"{len(steps)} steps for {len(s)} scores")
    worst = 0.0
    for i in range(len(s)):
        inside = (steps >= steps[i] - window) & (steps <= steps[i])
        worst = max(worst, float(s[inside].max() - s[i]))
    return worst


def continual_metrics(steps: Sequence[int], scores: Sequence[float], window: int) -> dict[str, float]:
    if len(steps) != len(scores) or len(scores) == 0:
        raise ValueError("continual metrics need one score per evaluation step (and at least one)")
    s = np.asarray(scores, np.float64)
    mins = running_min(s)
    return {
        "initial": float(s[0]),
        "final": float(s[-1]),
        "best": float(s.max()),
        "min_acc": float(mins[-1]),
        "min_acc_step": int(np.asarray(steps)[int(np.argmin(s))]),
        "wc_acc": float(wc_acc_curve(s)[-1]),
        "windowed_forgetting": windowed_forgetting(steps, s, window),
        "window": int(window),
    }


def plot_curves(curves: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]], path: str | Path,
                ylabel: str, title: str, warmup: int | None = None) -> Path:
    """Learning curves (mean, shaded min..max over seeds when given) and their running minimum.

    `curves[label] = (steps, mean_scores, spread)` with spread None or (lo, hi) arrays stacked.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for i, (label, (steps, mean, spread)) in enumerate(curves.items()):
        color = f"C{i}"
        ax.plot(steps, mean, color=color, label=label)
        ax.plot(steps, running_min(mean), color=color, linestyle=":", linewidth=1)
        if spread is not None:
            lo, hi = spread
            ax.fill_between(steps, lo, hi, color=color, alpha=0.15, linewidth=0)
    if warmup:
        ax.axvline(warmup, color="gray", linestyle="--", linewidth=0.8)
        ax.text(warmup, ax.get_ylim()[1], " end of warm-up", va="top", fontsize=7, color="gray")
    ax.set_xlabel("online env steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, title="dotted: min-ACC (running min)", title_fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
