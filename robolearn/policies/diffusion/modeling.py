"""Diffusion Policy: denoise an action chunk conditioned on the encoded observation history.

Training adds DDPM noise to normalized action chunks and regresses the noise with a
ConditionalUnet1D (FiLM-conditioned on the observation features); inference runs DDIM for a few
steps from Gaussian noise. diffusers is imported when a policy is built, not when this module is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robolearn.data.normalizer import Normalizer
from robolearn.nn.unet1d import ConditionalUnet1D
from robolearn.policies.base import Batch, Policy
from robolearn.policies.diffusion.configuration import DiffusionConfig
from robolearn.policies.observation import ObservationEncoder


class DiffusionPolicy(Policy):
    """`cond_dim` > 0 appends an extra conditioning vector (e.g. a primitive one-hot) to the
    U-Net's global condition."""

    name = "diffusion"

    def __init__(self, config: DiffusionConfig, normalizer: Normalizer, cond_dim: int = 0) -> None:
        super().__init__(config, normalizer)
        from diffusers import DDIMScheduler, DDPMScheduler

        self.config: DiffusionConfig = config
        self.cond_dim = cond_dim
        self.obs_encoder = ObservationEncoder(config)
        self.unet = ConditionalUnet1D(
            input_dim=config.action_dim,
            global_cond_dim=self.obs_encoder.out_dim + cond_dim,
            diffusion_step_embed_dim=config.diffusion_step_embed_dim,
            down_dims=config.down_dims,
            kernel_size=config.kernel_size,
            n_groups=config.n_groups,
            cond_predict_scale=config.cond_predict_scale,
        )
        schedule = dict(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            beta_start=config.beta_start,
            beta_end=config.beta_end,
            prediction_type=config.prediction_type,
            clip_sample=config.clip_sample,
            clip_sample_range=config.clip_sample_range,
        )
        self.train_scheduler = DDPMScheduler(**schedule)
        self.inference_scheduler = DDIMScheduler(**schedule, set_alpha_to_one=True, steps_offset=0)

    def compute_loss(self, batch: Batch, cond: torch.Tensor | None = None) -> torch.Tensor:
        actions = self.normalized_actions(batch)
        global_cond = self.encode_with_cond(batch["obs"], cond)
        noise = torch.randn_like(actions)
        timesteps = torch.randint(0, self.config.num_train_timesteps, (actions.shape[0],), device=actions.device)
        noisy = self.train_scheduler.add_noise(actions, noise, timesteps)
        prediction = self.unet(noisy, timesteps, global_cond)
        target = noise if self.config.prediction_type == "epsilon" else actions
        return F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2))

    @torch.no_grad()
    def predict_action(
        self,
        obs: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DDIM sampling; pass a seeded generator (on the policy's device) for reproducible chunks."""
        global_cond = self.encode_with_cond(obs, cond)
        shape = (global_cond.shape[0], self.config.horizon, self.config.action_dim)
        sample = torch.randn(shape, generator=generator, device=global_cond.device, dtype=global_cond.dtype)
        scheduler = self.inference_scheduler
        scheduler.set_timesteps(self.config.num_inference_steps, device=global_cond.device)
        for t in scheduler.timesteps:
            model_output = self.unet(sample, t, global_cond)
            sample = scheduler.step(model_output, t, sample, generator=generator).prev_sample
        return self.unnormalize_actions(sample)
