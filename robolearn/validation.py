"""Shared validators for command-line numbers and config values.

argparse `type=` functions reject NaN, infinities, negatives, zero where it means nothing and
absurd sizes (e.g. `--num-envs 1000000000`) with one line, before any work starts.
`check_config_values` applies the same rules to a typed config (YAML + overrides, or a
checkpoint's JSON) by field name. Light imports only: the CLI parses arguments with these
before it loads torch or MuJoCo.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable

MAX_ENVS = 65536  # the GPU benchmarks run 32k worlds; a CPU MjData per env makes more absurd
MAX_EPISODES = 10_000_000
MAX_STEPS = 10**10
MAX_SEED = 2**31 - 1
MAX_WIDTH = 65536  # one layer's width / a channel count
MAX_INT = 2**40


def _number(text: str, kind: type) -> Any:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def int_in(lo: int | None = None, hi: int | None = None, what: str = "") -> Callable[[str], int]:
    """argparse type: an integer in [lo, hi] (either bound optional)."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if lo is not None and value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}{what}, got {value}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"must be <= {hi}{what}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def float_in(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number in the interval given (bounds optional, open or closed)."""

    def parse(text: str) -> float:
        value = _number(text, float)
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo:g}, got {text}")
        if hi is not None and (value >= hi if hi_open else value > hi):
            raise argparse.ArgumentTypeError(f"must be {'<' if hi_open else '<='} {hi:g}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


positive_int = int_in(1, MAX_INT)
non_negative_int = int_in(0, MAX_INT)
num_envs = int_in(1, MAX_ENVS, " (envs stepped as one batch)")
episode_count = int_in(1, MAX_EPISODES)
step_count = int_in(1, MAX_STEPS)
seed = int_in(0, MAX_SEED)
non_negative_float = float_in(0.0)
positive_float = float_in(0.0, lo_open=True)
probability = float_in(0.0, 1.0)  # [0, 1], e.g. a per-step event rate or a mixing ratio
open_fraction = float_in(0.0, 1.0, lo_open=True, hi_open=True)  # (0, 1), e.g. a validation split


# ------------------------------------------------------------------------------------ configs
# Field-name rules for config values (dataclass fields at any depth; list entries inherit).
POSITIVE = {
    "steps", "batch_size", "lr", "horizon", "n_obs_steps", "n_action_steps", "num_train_timesteps",
    "num_inference_steps", "log_every", "eval_every", "save_every", "num_envs", "hidden_dims", "down_dims",
    "channels", "feature_dim", "num_keypoints", "kernel_size", "n_groups", "gmm_num_modes",
    "diffusion_step_embed_dim", "ema_power", "frame_skip", "env_steps", "utd", "num_samples",
}
NON_NEGATIVE = {
    "weight_decay", "dropout", "lr_warmup_steps", "seed", "num_workers", "grad_clip_norm", "val_ratio",
    "eval_episodes", "gmm_min_std", "beta_start", "beta_end", "warmup", "perturb_rate", "noise",
}
FRACTION = {"dropout", "val_ratio", "ema_max_decay", "betas"}  # within [0, 1]
WIDTHS = {"hidden_dims", "down_dims", "channels", "feature_dim", "num_keypoints", "diffusion_step_embed_dim"}


def _check_number(value: float | int, name: str, where: str) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} must be a finite number, got {value}"
    if abs(value) > MAX_INT:
        return f"{where} = {value} is absurdly large"
    if name in POSITIVE and value <= 0:
        return f"{where} must be > 0, got {value}"
    if name in NON_NEGATIVE and value < 0:
        return f"{where} must be >= 0, got {value}"
    if name in FRACTION and not 0 <= value <= 1:
        return f"{where} must lie in [0, 1], got {value}"
    if name in WIDTHS and value > MAX_WIDTH:
        return f"{where} = {value} exceeds the limit of {MAX_WIDTH} for a layer width"
    return None


def config_problems(cfg: Any, where: str = "config") -> list[str]:
    """Every value of a config dataclass (or mapping) that breaks the rules above, one line each."""
    import dataclasses  # here, not at the top: the argument parsers above must import fast

    found: list[str] = []

    def walk(value: Any, name: str, path: str) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name), f.name, f"{path}.{f.name}")
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k), f"{path}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, name, f"{path}[{i}]")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = _check_number(value, name, path)
            if problem:
                found.append(problem)

    walk(cfg, "", where)
    return found


def check_config_values(cfg: Any, where: str = "config") -> None:
    """Raise ValueError (one line) on the first value a config must not hold."""
    problems = config_problems(cfg, where)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(problems[0] + more)
