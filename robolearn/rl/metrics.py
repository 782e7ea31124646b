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
- stability gap: its depth is the largest drop below the reference level a_ref (the pre-fine-tuning
  policy, a(0) by default), max(0, a_ref - min_t a(t)); its time to recover is the number of steps
  from the first evaluation below a_ref to the first evaluation after the deepest point that is
  back at a_ref or above (None if the curve never gets back; 0 if it never dropped).

`continual_record` bundles these for one curve; `write_continual` writes the JSON + PNG that
`robolearn offline` and `robolearn finetune` both produce (continual.json, continual.png).
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


def stability_gap(steps: Sequence[int], scores: Sequence[float], reference: float | None = None) -> dict[str, float | int | None]:
    """Depth of the largest drop below `reference` (default: the first score) and the time to recover."""
    steps_a = np.asarray(steps, np.int64)
    s = np.asarray(scores, np.float64)
    if len(steps_a) != len(s) or len(s) == 0:
        raise ValueError("the stability gap needs one score per evaluation step (and at least one)")
    ref = float(s[0] if reference is None else reference)
    low = int(np.argmin(s))
    depth = max(0.0, ref - float(s[low]))
    below = np.flatnonzero(s < ref)
    if depth == 0.0 or len(below) == 0:
        return {"reference": ref, "gap_depth": 0.0, "gap_step": None, "gap_start_step": None,
                "recovered_step": None, "time_to_recover": 0}
    back = [i for i in range(low + 1, len(s)) if s[i] >= ref]
    recovered = int(steps_a[back[0]]) if back else None
    start = int(steps_a[below[0]])
    return {"reference": ref, "gap_depth": depth, "gap_step": int(steps_a[low]), "gap_start_step": start,
            "recovered_step": recovered, "time_to_recover": None if recovered is None else recovered - start}


def continual_metrics(steps: Sequence[int], scores: Sequence[float], window: int,
                      reference: float | None = None) -> dict[str, float | int | None]:
    if len(steps) != len(scores) or len(scores) == 0:
        raise ValueError("continual metrics need one score per evaluation step (and at least one)")
    s = np.asarray(scores, np.float64)
    mins = running_min(s)
    return {**stability_gap(steps, s, reference),
        "initial": float(s[0]),
        "final": float(s[-1]),
        "best": float(s.max()),
        "min_acc": float(mins[-1]),
        "min_acc_step": int(np.asarray(steps)[int(np.argmin(s))]),
        "wc_acc": float(wc_acc_curve(s)[-1]),
        "windowed_forgetting": windowed_forgetting(steps, s, window),
        "window": int(window),
    }


def continual_record(history: Sequence[dict], window: int, score_name: str, **extra: object) -> dict:
    """The summary both RL commands write: evaluation history (dicts with step, score, success,
    return) plus its continual metrics; `extra` adds run facts (task, algo, ...)."""
    out: dict = {**extra, "score": score_name, "history": list(history)}
    if history:
        out["metrics"] = continual_metrics([h["step"] for h in history], [h["score"] for h in history], window)
    return out


def write_continual(run_dir: str | Path, record: dict, label: str, title: str, xlabel: str, warmup: int | None = None) -> None:
    """`run_dir`/continual.json (atomic) and continual.png (the curve with its running minimum and
    the pre-fine-tuning level) from a `continual_record`."""
    import json
    import os

    run_dir = Path(run_dir)
    tmp = run_dir / "continual.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, run_dir / "continual.json")
    hist = record.get("history") or []
    if hist:
        steps = [h["step"] for h in hist]
        scores = [h["score"] for h in hist]
        plot_curves({label: (steps, scores, None)}, run_dir / "continual.png", record["score"], title,
                    warmup=warmup, xlabel=xlabel, reference=record["metrics"]["reference"])


def plot_curves(curves: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]], path: str | Path,
                ylabel: str, title: str, warmup: int | None = None, xlabel: str = "online env steps",
                reference: float | None = None) -> Path:
    """Learning curves (mean, shaded min..max over seeds when given) and their running minimum.

    `curves[label] = (steps, mean_scores, spread)` with spread None or (lo, hi) arrays stacked.
    """
    import textwrap

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
    if reference is not None:
        ax.axhline(reference, color="k", linestyle="--", linewidth=0.7, label="level at step 0 (reference)")
    if warmup:
        ax.axvline(warmup, color="gray", linestyle="--", linewidth=0.8)
        ax.text(warmup, ax.get_ylim()[1], " end of warm-up", va="top", fontsize=7, color="gray")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(textwrap.fill(title, 90), fontsize=8)  # studies' titles list their overrides: wrap, never crop
    ax.legend(fontsize=8, title="dotted: min-ACC (running min)", title_fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
