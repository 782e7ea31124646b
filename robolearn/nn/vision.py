"""Small image encoder for visuomotor policies, in plain torch (no torchvision).

Follows Diffusion Policy's vision recipe at a smaller scale: a ResNet-style conv trunk with
GroupNorm instead of BatchNorm (BatchNorm's running stats interact badly with EMA weights and
tiny batches), a SpatialSoftmax head that turns feature maps into 2-D keypoints, and random-crop
augmentation in training with a deterministic center crop at evaluation.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResidualBlock2d(nn.Module):
    """ResNet basic block (two 3x3 convs) with GroupNorm; strided when the resolution drops."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _group_norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _group_norm(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SpatialSoftmax(nn.Module):
    """Feature map (N, C, H, W) -> K keypoints (N, K, 2): the softmax-weighted mean image coordinate.

    A 1x1 conv first maps C channels to K keypoint maps (Levine et al. 2016; robomimic). Coordinates
    lie in [-1, 1] (x along width, y along height).
    """

    def __init__(self, in_channels: int, num_keypoints: int = 32, temperature: float = 1.0) -> None:
        super().__init__()
        self.keypoint_conv = nn.Conv2d(in_channels, num_keypoints, 1)
        self.num_keypoints = num_keypoints
        self.temperature = temperature

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, _, h, w = features.shape
        logits = self.keypoint_conv(features).flatten(2) / self.temperature  # (N, K, H*W)
        attention = logits.softmax(dim=-1)
        ys = torch.linspace(-1.0, 1.0, h, device=features.device, dtype=attention.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=features.device, dtype=attention.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)  # (H*W, 2)
        return attention @ grid


def crop_images(images: torch.Tensor, crop_shape: Sequence[int], random: bool) -> torch.Tensor:
    """Crop (N, C, H, W) to crop_shape: a random window per image, or the center window.

    Random offsets come from torch's global generator, so seeding torch reproduces them.
    """
    n, _, h, w = images.shape
    ch, cw = int(crop_shape[0]), int(crop_shape[1])
    if ch > h or cw > w:
        raise ValueError(f"crop {ch}x{cw} is larger than the image {h}x{w}")
    if (ch, cw) == (h, w):
        return images
    if not random:
        top, left = (h - ch) // 2, (w - cw) // 2
        return images[:, :, top : top + ch, left : left + cw]
    top = torch.randint(0, h - ch + 1, (n,), device=images.device)
    left = torch.randint(0, w - cw + 1, (n,), device=images.device)
    rows = (top[:, None] + torch.arange(ch, device=images.device))[:, :, None]  # (N, ch, 1)
    cols = (left[:, None] + torch.arange(cw, device=images.device))[:, None, :]  # (N, 1, cw)
    batch = torch.arange(n, device=images.device)[:, None, None]
    # Advanced indexing puts the indexed dims first: (N, ch, cw, C).
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


class ImageEncoder(nn.Module):
    """uint8 HWC images (N, H, W, 3) -> feature vectors (N, feature_dim).

    Pixels are scaled to [0, 1] here (the normalizer leaves images alone), cropped (randomly in
    training mode, centered in eval mode), passed through the conv trunk and SpatialSoftmax.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        crop_shape: Sequence[int] | None = None,
        channels: Sequence[int] = (32, 64, 128),
        num_keypoints: int = 32,
        feature_dim: int = 64,
    ) -> None:
        super().__init__()
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), got {tuple(image_shape)}")
        if not channels:
            raise ValueError("the image encoder needs at least one conv stage")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.crop_shape = tuple(int(s) for s in (crop_shape or self.image_shape[:2]))
        in_channels = self.image_shape[2]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False), _group_norm(channels[0]), nn.ReLU()
        )
        stages = []
        prev = channels[0]
        for width in channels:
            stages.append(ResidualBlock2d(prev, width, stride=2))
            prev = width
        self.trunk = nn.Sequential(*stages)
        self.keypoints = SpatialSoftmax(prev, num_keypoints)
        self.project = nn.Sequential(nn.Linear(num_keypoints * 2, feature_dim), nn.ReLU())
        self.feature_dim = feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1:] != self.image_shape:
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, self.image_shape))}), got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float() / 255.0
        x = crop_images(x, self.crop_shape, random=self.training)
        x = self.trunk(self.stem(x))
        return self.project(self.keypoints(x).flatten(1))
