"""Failure injection: random perturbation events that push episodes out of distribution.

Each control step, every env independently fires one event with probability `rate`; the kind is
drawn uniformly from `kinds` (default: all the task supports). An event is an instantaneous edit of
the full physics state (velocity shove on an object, fingers snapped open, goal/bin moved), so it
is recorded in `sim_state` and in `failure_event`, and draws come from the env's seeded generator:
reset(seed) + the same actions reproduces an episode including its perturbations.
"""

from __future__ import annotations

import torch

from robolearn.tasks.base import EVENT, PERTURBATIONS, SimState, Task


class Perturber:
    """Draws and applies perturbation events for a batch of envs."""

    def __init__(self, task: Task, rate: float, kinds: list[str] | tuple[str, ...] | None = None):
        kinds = tuple(kinds) if kinds else task.perturbations
        for k in kinds:
            if k not in PERTURBATIONS:
                raise ValueError(f"unknown perturbation {k!r} (known: {', '.join(PERTURBATIONS)})")
            if k not in task.perturbations:
                raise ValueError(f"task {task.name!r} does not support perturbation {k!r}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"perturbation rate must be in [0, 1], got {rate}")
        if rate > 0 and not kinds:
            raise ValueError(f"task {task.name!r} supports no perturbations")
        self.task = task
        self.rate = float(rate)
        self.kinds = kinds

    def draw(self, gens: list[torch.Generator]) -> list[str | None]:
        """One draw per env (always consumed, so the random stream does not depend on outcomes)."""
        out: list[str | None] = []
        for g in gens:
            u = torch.rand((), generator=g, dtype=torch.float64).item()
            k = int(torch.randint(len(self.kinds) or 1, (), generator=g).item())
            out.append(self.kinds[k] if (self.rate > 0 and u < self.rate and self.kinds) else None)
        return out

    def apply(self, kind: str, states: torch.Tensor, s: SimState, gen: torch.Generator) -> torch.Tensor:
        """Edited copy of `states` (1, state_size) for one env."""
        return self.task.perturb(kind, states.clone(), s, gen)

    @staticmethod
    def code(kind: str | None) -> int:
        return 0 if kind is None else EVENT[kind]
