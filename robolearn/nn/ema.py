"""Exponential moving average of a model's weights with Diffusion Policy's warm-up schedule.

decay(step) = 1 - (1 + step / inv_gamma) ** -power, clipped to [min_decay, max_decay]: the average
follows the raw weights closely early in training (when they change fast) and smooths more and
more later. power=0.75 reaches 0.999 around 10k steps; power=2/3 around 30k steps.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps `self.model`, a frozen copy of a module whose parameters track an EMA of the original.

    Trainable floating-point parameters are averaged; everything else (frozen parameters, buffers
    such as normalizer stats) is copied as is, so the copy is always a complete, usable model.
    """

    def __init__(
        self,
        model: nn.Module,
        power: float = 0.75,
        inv_gamma: float = 1.0,
        min_decay: float = 0.0,
        max_decay: float = 0.9999,
        update_after_step: int = 0,
    ) -> None:
        if not 0.0 <= min_decay <= max_decay <= 1.0:
            raise ValueError(f"EMA needs 0 <= min_decay <= max_decay <= 1, got {min_decay}, {max_decay}")
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power = power
        self.inv_gamma = inv_gamma
        self.min_decay = min_decay
        self.max_decay = max_decay
        self.update_after_step = update_after_step
        self.num_updates = 0

    def decay(self, num_updates: int | None = None) -> float:
        """The decay applied at update number `num_updates` (default: the next update)."""
        step = max(0, (self.num_updates if num_updates is None else num_updates) - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        value = 1.0 - (1.0 + step / self.inv_gamma) ** -self.power
        return max(self.min_decay, min(value, self.max_decay))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of `model` (same architecture as the copy) into the average.

        One fused `_foreach_lerp_` over all averaged tensors: a per-tensor Python loop cost ~10% of a
        small diffusion policy's training step on CPU.
        """
        decay = self.decay()
        averaged, current, copied_to, copied_from = self._pairs(model)
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        for dst, src in zip(copied_to, copied_from):
            dst.copy_(src)
        source_buffers = dict(model.named_buffers())  # not cached: a buffer may be re-assigned
        for name, buffer in self.model.named_buffers():
            buffer.copy_(source_buffers[name])
        self.num_updates += 1

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], ...]:
        """(averaged parameters, their sources, copied parameters, their sources), cached per source
        model and its set of trainable parameters: parameters keep their identity across optimizer
        steps, load_state_dict and .to()."""
        # identity too: a replaced parameter (assign=True loads, a swapped submodule) invalidates the cache
        key = (model, tuple((id(p), p.requires_grad) for p in model.parameters()),
               tuple(id(p) for p in self.model.parameters()))
        if getattr(self, "_pairs_key", None) != key:
            source_params = dict(model.named_parameters())
            averaged, current, copied_to, copied_from = [], [], [], []
            for name, target in self.model.named_parameters():
                source = source_params[name]
                if source.requires_grad and target.dtype.is_floating_point:
                    averaged.append(target)
                    current.append(source)
                else:
                    copied_to.append(target)
                    copied_from.append(source)
            self._cached_pairs = (averaged, current, copied_to, copied_from)
            self._pairs_key = key
        return self._cached_pairs

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (what a checkpoint stores as the policy's weights)."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        """Restore the average and its update count (kept in checkpoint JSON) when resuming."""
        self.model.load_state_dict(state)
        self.num_updates = int(num_updates)
