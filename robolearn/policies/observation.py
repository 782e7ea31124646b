"""Observation history -> one conditioning vector, shared by every policy (and high-level heads)."""

from __future__ import annotations

import math

import torch
from torch import nn

from robolearn.nn.vision import ImageEncoder
from robolearn.policies.configuration import PolicyConfig


class ObservationEncoder(nn.Module):
    """{name: (B, To, ...)} -> (B, To * per_step_dim).

    State observations are expected already normalized (the policy owns the normalizer) and are
    flattened per step; every image key gets its own ImageEncoder (cameras see different things).
    Steps are concatenated in time order, as Diffusion Policy's global condition.
    """

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        config.require_features()
        self.state_keys = list(config.state_keys)
        self.image_keys = list(config.image_keys)
        self.n_obs_steps = config.n_obs_steps
        self.state_shapes = {k: tuple(config.input_shapes[k]) for k in self.state_keys}
        self.image_encoders = nn.ModuleDict(
            {
                key: ImageEncoder(
                    config.input_shapes[key],
                    config.vision.crop_shape,
                    config.vision.channels,
                    config.vision.num_keypoints,
                    config.vision.feature_dim,
                )
                for key in self.image_keys
            }
        )
        state_dim = sum(math.prod(s) for s in self.state_shapes.values())
        image_dim = config.vision.feature_dim * len(self.image_keys)
        self.step_dim = state_dim + image_dim
        self.out_dim = self.n_obs_steps * self.step_dim

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for key in self.state_keys:
            x = _require(obs, key, self.n_obs_steps, self.state_shapes[key])
            parts.append(x.reshape(x.shape[0], self.n_obs_steps, -1).float())
        for key, encoder in self.image_encoders.items():
            x = _require(obs, key, self.n_obs_steps, encoder.image_shape)
            batch = x.shape[0]
            features = encoder(x.reshape(batch * self.n_obs_steps, *x.shape[2:]))
            parts.append(features.reshape(batch, self.n_obs_steps, -1))
        return torch.cat(parts, dim=-1).flatten(1)


def _require(obs: dict[str, torch.Tensor], key: str, n_steps: int, shape: tuple[int, ...]) -> torch.Tensor:
    if key not in obs:
        raise KeyError(f"observation {key!r} is missing (got: {', '.join(obs)})")
    x = obs[key]
    if x.ndim != 2 + len(shape) or x.shape[1] != n_steps or tuple(x.shape[2:]) != shape:
        raise ValueError(f"observation {key!r} must have shape (B, {n_steps}, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
    return x
