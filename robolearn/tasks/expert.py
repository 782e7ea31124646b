"""Scripted experts: closed-loop, batched torch state machines over privileged `SimState`.

An expert decides from the current state alone (plus a per-episode mode drawn at reset for
multimodality), so it can take over from any state mid-episode: after a perturbation, after a
policy's mistake, or from a stored `sim_state`. `act` returns normalized actions and the
`primitive` label (index into base.PRIMITIVES) of every env.
"""

from __future__ import annotations

import torch

from robolearn.tasks.base import SimState, Task


class Expert:
    """Base class; subclasses implement `policy(s) -> (action, primitive)` without noise."""

    num_modes: int = 1

    def __init__(self, task: Task, num_envs: int, noise: float = 0.0, seed: int | None = None,
                 mode: int | None = None):
        if noise < 0:
            raise ValueError(f"expert noise must be >= 0, got {noise}")
        if mode is not None and not 0 <= mode < self.num_modes:
            raise ValueError(f"expert mode must be in [0, {self.num_modes}) for task {task.name!r}, got {mode}")
        self.fixed_mode = mode  # None: draw a mode per episode (multimodal demos); else always this one
        self.task = task
        self.num_envs = num_envs
        self.noise = float(noise)
        self.gen = torch.Generator()
        self.gen.manual_seed(seed if seed is not None else torch.seed() % (2**31))
        self.mode = torch.zeros(num_envs, dtype=torch.int64)
        self.reset()

    def reset(self, mask: torch.Tensor | None = None) -> None:
        """New episode(s): redraw the per-episode mode (e.g. which side to push from)."""
        mask = torch.ones(self.num_envs, dtype=torch.bool) if mask is None else torch.as_tensor(mask, dtype=torch.bool)
        draw = torch.randint(self.num_modes, (self.num_envs,), generator=self.gen)
        if self.fixed_mode is not None:
            draw = torch.full_like(draw, self.fixed_mode)
        self.mode = torch.where(mask, draw, self.mode)
        self._reset_memory(mask)

    def _reset_memory(self, mask: torch.Tensor) -> None:
        """Subclasses with hysteresis state clear it here."""

    def act(self, s: SimState) -> tuple[torch.Tensor, torch.Tensor]:
        """(action (N, A) float32 in [-1, 1], primitive (N,) int32) for the current states."""
        action, prim = self.policy(s)
        # The noise-free action of the same state: DART-style labels (Laskey et al. 2017) for
        # demos whose executed actions are noisy (collect stores it as `expert_action`).
        self.last_clean_action = action.clamp(-1, 1).to(torch.float32)
        if self.noise > 0:
            action = action + self.noise * torch.randn(action.shape, generator=self.gen, dtype=action.dtype)
        return action.clamp(-1, 1).to(torch.float32), prim.to(torch.int32)

    def policy(self, s: SimState) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------------
    def move_action(self, s: SimState, target: torch.Tensor, speed: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Normalized xyz deltas towards target (N, 3), capped at `speed` (fraction of max step)."""
        delta = (target - self.task.grip_pos(s)) / self.task.pos_scale
        norm = delta.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        speed_t = torch.as_tensor(speed, dtype=delta.dtype)
        if speed_t.ndim == 1:
            speed_t = speed_t.unsqueeze(-1)
        return delta * torch.clamp(speed_t / norm, max=1.0)


def navigate_around(p: torch.Tensor, target: torch.Tensor, center: torch.Tensor, radius: torch.Tensor | float,
                    side: torch.Tensor, step: float = 0.6) -> torch.Tensor:
    """Next 2-D waypoint from p to target that stays outside a disc (an object not to bump).

    If the straight segment clears the disc the target itself is returned; otherwise a point
    further around the circle, in the direction `side` (+1 counter-clockwise, -1 clockwise)
    chosen per episode: the source of multimodal demonstrations.
    """
    r = torch.as_tensor(radius, dtype=p.dtype)
    d = target - p
    L2 = (d * d).sum(-1).clamp_min(1e-12)
    u = (((center - p) * d).sum(-1) / L2).clamp(0, 1)
    closest = p + u.unsqueeze(-1) * d
    blocked = (closest - center).norm(dim=-1) < r
    rel = p - center
    ang = torch.atan2(rel[:, 1], rel[:, 0])
    # Go the short way round unless that conflicts with the episode's side by little.
    tgt_ang = torch.atan2(target[:, 1] - center[:, 1], target[:, 0] - center[:, 0])
    diff = torch.remainder(tgt_ang - ang + torch.pi, 2 * torch.pi) - torch.pi
    direction = torch.where(diff.abs() > 2.6, side.to(p.dtype), torch.sign(diff))
    direction = torch.where(direction == 0, side.to(p.dtype), direction)
    rad = (r if r.ndim else r.expand_as(ang)) + 0.01
    nxt = ang + direction * torch.minimum(diff.abs(), torch.full_like(ang, step))
    way = center + torch.stack([torch.cos(nxt), torch.sin(nxt)], -1) * rad.unsqueeze(-1)
    return torch.where(blocked.unsqueeze(-1), way, target)
