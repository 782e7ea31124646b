"""ConditionalUnet1D: the temporal U-Net denoiser of Diffusion Policy (Chi et al., 2023).

It denoises an action sequence (B, T, Da) given a diffusion step and a global condition vector
(the encoded observation history). The condition reaches every residual block through FiLM:
a per-channel scale and bias computed from [step embedding, condition]. Convolutions run along
time, so T must be divisible by 2 ** (len(down_dims) - 1).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sinusoidal embedding of a (possibly fractional) diffusion step."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"sinusoidal embedding dim must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        args = t.float()[:, None] * freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        if out_channels % n_groups:
            raise ValueError(f"channels ({out_channels}) must be divisible by n_groups ({n_groups})")
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM conditioning in between and a residual connection.

    With `cond_predict_scale` the condition predicts a per-channel scale and bias (FiLM); without
    it only a bias is added (the ablation in the paper).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_dim: int,
        kernel_size: int = 5,
        n_groups: int = 8,
        cond_predict_scale: bool = True,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                Conv1dBlock(in_channels, out_channels, kernel_size, n_groups),
                Conv1dBlock(out_channels, out_channels, kernel_size, n_groups),
            ]
        )
        self.out_channels = out_channels
        self.cond_predict_scale = cond_predict_scale
        film_dim = out_channels * 2 if cond_predict_scale else out_channels
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, film_dim))
        self.residual_conv = (
            nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, T), cond: (B, cond_dim) -> (B, C_out, T)."""
        out = self.blocks[0](x)
        film = self.cond_encoder(cond).unsqueeze(-1)
        if self.cond_predict_scale:
            scale, bias = film.chunk(2, dim=1)
            out = scale * out + bias
        else:
            out = out + film
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """Temporal U-Net over (B, T, input_dim) sequences, FiLM-conditioned on step + global condition.

    Down path: per level two residual blocks then a strided conv (except the last level); middle:
    two residual blocks; up path mirrors the down path with skip connections.
    """

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int = 0,
        diffusion_step_embed_dim: int = 128,
        down_dims: Sequence[int] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        cond_predict_scale: bool = True,
    ) -> None:
        super().__init__()
        if not down_dims:
            raise ValueError("down_dims must list at least one channel width")
        self.input_dim = input_dim
        self.global_cond_dim = global_cond_dim
        self.num_levels = len(down_dims)
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(diffusion_step_embed_dim),
            nn.Linear(diffusion_step_embed_dim, diffusion_step_embed_dim * 4),
            nn.Mish(),
            nn.Linear(diffusion_step_embed_dim * 4, diffusion_step_embed_dim),
        )
        cond_dim = diffusion_step_embed_dim + global_cond_dim

        def res_block(cin: int, cout: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(cin, cout, cond_dim, kernel_size, n_groups, cond_predict_scale)

        widths = [input_dim, *down_dims]
        self.down_modules = nn.ModuleList()
        for level, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            is_last = level == len(down_dims) - 1
            self.down_modules.append(
                nn.ModuleList(
                    [
                        res_block(cin, cout),
                        res_block(cout, cout),
                        nn.Conv1d(cout, cout, 3, stride=2, padding=1) if not is_last else nn.Identity(),
                    ]
                )
            )
        mid = down_dims[-1]
        self.mid_modules = nn.ModuleList([res_block(mid, mid), res_block(mid, mid)])
        self.up_modules = nn.ModuleList()
        # Each up level consumes the skip of the matching down level (deepest first) and upsamples.
        for cout, cin in reversed(list(zip(down_dims[:-1], down_dims[1:]))):
            self.up_modules.append(
                nn.ModuleList(
                    [
                        res_block(cin * 2, cout),
                        res_block(cout, cout),
                        nn.ConvTranspose1d(cout, cout, 4, stride=2, padding=1),
                    ]
                )
            )
        self.final_conv = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], input_dim, 1),
        )

    @property
    def temporal_multiple(self) -> int:
        """Sequence lengths must be a multiple of this (one halving per extra level)."""
        return 2 ** (self.num_levels - 1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        global_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sample: (B, T, input_dim); timestep: (B,) or scalar; global_cond: (B, global_cond_dim)."""
        batch, horizon, _ = sample.shape
        if horizon % self.temporal_multiple:
            raise ValueError(f"sequence length {horizon} must be a multiple of {self.temporal_multiple}")
        steps = torch.as_tensor(timestep, device=sample.device)
        if steps.ndim == 0:
            steps = steps.expand(batch)
        cond = self.diffusion_step_encoder(steps)
        if self.global_cond_dim:
            if global_cond is None or global_cond.shape != (batch, self.global_cond_dim):
                got = None if global_cond is None else tuple(global_cond.shape)
                raise ValueError(f"global_cond must have shape ({batch}, {self.global_cond_dim}), got {got}")
            cond = torch.cat([cond, global_cond], dim=-1)

        x = sample.transpose(1, 2)
        skips = []
        for block_a, block_b, downsample in self.down_modules:
            x = block_b(block_a(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for block in self.mid_modules:
            x = block(x, cond)
        for block_a, block_b, upsample in self.up_modules:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(block_b(block_a(x, cond), cond))
        return self.final_conv(x).transpose(1, 2)
