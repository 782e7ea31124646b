"""A shallow (state, action) VAE: the embedding Behavior Retrieval scores transitions in.

As in the paper's released configuration (robomimic VAE): MLP encoder and decoder with hidden
widths [300, 400], a 14-dimensional latent, KL weight 1e-4, Adam at 1e-3. Inputs are the prior's
min-max-normalized [state, action] rows; the embedding of a transition is the encoder's mean.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from robolearn.nn.mlp import MLP


class TransitionVAE(nn.Module):
    def __init__(self, in_dim: int, latent_dim: int = 14, hidden_dims: list[int] | tuple[int, ...] = (300, 400)) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = MLP(in_dim, 2 * latent_dim, hidden_dims)
        self.decoder = MLP(latent_dim, in_dim, list(reversed(hidden_dims)))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 10.0)

    def loss(self, x: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, reconstruction MSE) of a batch, reparameterised."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = ((self.decoder(z) - x) ** 2).mean()
        kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(-1)).mean()
        return recon + kl_weight * kl, recon

    @torch.no_grad()
    def reconstruction_error(self, x: np.ndarray, batch: int = 8192) -> float:
        """Mean squared error of decoding the encoder's mean (deterministic)."""
        total = 0.0
        for s in range(0, len(x), batch):
            xb = torch.as_tensor(x[s : s + batch])
            total += float(((self.decoder(self.encode(xb)[0]) - xb) ** 2).mean(-1).sum())
        return total / max(len(x), 1)

    @torch.no_grad()
    def embed(self, x: np.ndarray, batch: int = 8192) -> np.ndarray:
        return np.concatenate([self.encode(torch.as_tensor(x[s : s + batch]))[0].numpy() for s in range(0, len(x), batch)])


def train_vae(x: np.ndarray, latent_dim: int = 14, hidden_dims: list[int] | tuple[int, ...] = (300, 400),
              kl_weight: float = 1e-4, epochs: float = 20.0, batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
              progress: bool = True) -> tuple[TransitionVAE, list[float]]:
    """Fit the VAE on rows `x` (N, D); returns it (eval mode) and the per-epoch reconstruction MSE."""
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = TransitionVAE(x.shape[1], latent_dim, hidden_dims)
        opt = torch.optim.Adam(vae.parameters(), lr=lr)
        data = torch.as_tensor(x, dtype=torch.float32)
        steps_per_epoch = max(1, len(x) // batch_size)
        steps = max(1, int(round(epochs * steps_per_epoch)))
        history: list[float] = []
        running = []
        for step in tqdm(range(steps), desc="train VAE", disable=not progress, dynamic_ncols=True):
            idx = torch.randint(len(data), (min(batch_size, len(data)),), generator=gen)
            loss, recon = vae.loss(data[idx], kl_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running.append(recon.item())
            if (step + 1) % steps_per_epoch == 0 or step + 1 == steps:
                history.append(float(np.mean(running)))
                running = []
    vae.eval()
    return vae, history
