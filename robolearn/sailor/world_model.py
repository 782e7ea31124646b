"""Latent world model for state observations: an RSSM (DreamerV3-style, as in the official code).

Deterministic state h (GRU), discrete stochastic state z (`stoch` categoricals of `classes`
classes, 1% uniform mix, straight-through samples). The posterior sees an MLP embedding of the
normalized state; the prior predicts z from h alone. Heads on the feature [z, h]: a decoder that
reconstructs the (normalized, symlog) state and a continuation head (Bernoulli of not-terminal).
KL balancing with free bits: dyn_scale * KL(sg(post) || prior) + rep_scale * KL(post || sg(prior)),
each clipped below at `kl_free` nats.

Convention: `action[t]` is the action taken at step t (the store's); the transition into step t
uses `prev_action[t] = action[t-1]` (zero at the first step of an episode).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robolearn.sailor.configuration import WorldModelConfig

State = dict[str, torch.Tensor]  # deter (B, D), stoch (B, S, C) one-hot, logit (B, S, C)


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def mlp(in_dim: int, out_dim: int, units: int, layers: int, out_scale: float = 1.0) -> nn.Sequential:
    """Linear -> LayerNorm -> SiLU blocks, then a linear output (scaled init; 0 gives a zero head)."""
    mods: list[nn.Module] = []
    prev = in_dim
    for _ in range(layers):
        mods += [nn.Linear(prev, units, bias=False), nn.LayerNorm(units), nn.SiLU()]
        prev = units
    out = nn.Linear(prev, out_dim)
    with torch.no_grad():
        out.weight.mul_(out_scale)
        out.bias.zero_()
    mods.append(out)
    return nn.Sequential(*mods)


class RSSM(nn.Module):
    def __init__(self, cfg: WorldModelConfig, embed_dim: int, action_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.stoch, self.classes, self.deter = cfg.stoch, cfg.classes, cfg.deter
        flat = cfg.stoch * cfg.classes
        self.img_in = nn.Sequential(nn.Linear(flat + action_dim, cfg.hidden, bias=False), nn.LayerNorm(cfg.hidden), nn.SiLU())
        self.cell = nn.GRUCell(cfg.hidden, cfg.deter)
        self.img_out = nn.Sequential(nn.Linear(cfg.deter, cfg.hidden, bias=False), nn.LayerNorm(cfg.hidden), nn.SiLU(),
                                     nn.Linear(cfg.hidden, flat))
        self.obs_out = nn.Sequential(nn.Linear(cfg.deter + embed_dim, cfg.hidden, bias=False), nn.LayerNorm(cfg.hidden),
                                     nn.SiLU(), nn.Linear(cfg.hidden, flat))
        self.init_deter = nn.Parameter(torch.zeros(cfg.deter))  # learned initial state

    # -- distributions ---------------------------------------------------------------------------
    def _probs(self, logit: torch.Tensor) -> torch.Tensor:
        probs = logit.softmax(-1)
        return (1 - self.cfg.unimix) * probs + self.cfg.unimix / self.classes

    def _sample(self, logit: torch.Tensor, sample: bool = True, uniform: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """One-hot samples (straight-through). `uniform` (..., stoch) in [0, 1): inverse-CDF sampling
        with these numbers, so candidates given the same numbers share their latent draws (common
        random numbers); otherwise multinomial draws from `generator` (None: torch's global RNG)."""
        probs = self._probs(logit)
        if uniform is not None:
            cdf = probs.detach().cumsum(-1)
            idx = (cdf < uniform.unsqueeze(-1)).sum(-1).clamp(max=self.classes - 1)
        elif sample:
            idx = torch.multinomial(probs.reshape(-1, self.classes), 1, generator=generator).reshape(probs.shape[:-1])
        else:
            idx = probs.argmax(-1)
        onehot = F.one_hot(idx, self.classes).to(probs.dtype)
        return onehot + probs - probs.detach()  # straight-through gradients

    def _logit(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.reshape(*raw.shape[:-1], self.stoch, self.classes)

    # -- steps -----------------------------------------------------------------------------------
    def initial(self, batch: int, device: torch.device | None = None) -> State:
        deter = torch.tanh(self.init_deter).expand(batch, -1)
        if device is not None:
            deter = deter.to(device)
        logit = self._logit(self.img_out(deter))
        return {"deter": deter, "stoch": self._sample(logit, sample=False), "logit": logit}

    def img_step(self, state: State, action: torch.Tensor, sample: bool = True, uniform: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> State:
        x = self.img_in(torch.cat([state["stoch"].flatten(-2), action], -1))
        deter = self.cell(x, state["deter"])
        logit = self._logit(self.img_out(deter))
        return {"deter": deter, "stoch": self._sample(logit, sample, uniform, generator), "logit": logit}

    def obs_step(self, state: State | None, prev_action: torch.Tensor, embed: torch.Tensor,
                 is_first: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None) -> tuple[State, State]:
        """(posterior, prior) for one step; rows with is_first restart from the initial state."""
        batch = embed.shape[0]
        init = self.initial(batch, embed.device)
        first = is_first.to(embed.dtype).reshape(batch, 1)
        if state is None:
            state, prev_action = init, torch.zeros_like(prev_action)
        else:
            state = {k: v * (1 - first.reshape(-1, *([1] * (v.dim() - 1)))) + init[k] * first.reshape(-1, *([1] * (v.dim() - 1)))
                     for k, v in state.items()}
            prev_action = prev_action * (1 - first)
        prior = self.img_step(state, prev_action, sample, generator=generator)
        logit = self._logit(self.obs_out(torch.cat([prior["deter"], embed], -1)))
        post = {"deter": prior["deter"], "stoch": self._sample(logit, sample, generator=generator), "logit": logit}
        return post, prior

    def observe(self, embed: torch.Tensor, prev_action: torch.Tensor, is_first: torch.Tensor,
                state: State | None = None) -> tuple[State, State]:
        """Posteriors and priors over a (B, L, ...) sequence, stacked as (B, L, ...)."""
        posts, priors = [], []
        for t in range(embed.shape[1]):
            state, prior = self.obs_step(state, prev_action[:, t], embed[:, t], is_first[:, t])
            posts.append(state)
            priors.append(prior)
        stack = lambda seq: {k: torch.stack([s[k] for s in seq], 1) for k in seq[0]}  # noqa: E731
        return stack(posts), stack(priors)

    @staticmethod
    def feat(state: State) -> torch.Tensor:
        return torch.cat([state["stoch"].flatten(-2), state["deter"]], -1)

    def kl_loss(self, post: State, prior: State) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss (B, L), dyn KL, rep KL) with free bits, summed over the categorical variables."""

        def kl(lhs: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
            p, q = self._probs(lhs), self._probs(rhs)
            return (p * (p.log() - q.log())).sum(-1).sum(-1)

        dyn = kl(post["logit"].detach(), prior["logit"])
        rep = kl(post["logit"], prior["logit"].detach())
        free = self.cfg.kl_free
        loss = self.cfg.dyn_scale * dyn.clamp(min=free) + self.cfg.rep_scale * rep.clamp(min=free)
        return loss, dyn, rep


class WorldModel(nn.Module):
    """Encoder + RSSM + decoder + continuation head over normalized state observations."""

    def __init__(self, cfg: WorldModelConfig, state_dim: int, action_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.state_dim, self.action_dim = state_dim, action_dim
        self.encoder = mlp(state_dim, cfg.units, cfg.units, cfg.mlp_layers)
        self.dynamics = RSSM(cfg, cfg.units, action_dim)
        self.decoder = mlp(cfg.feat_dim, state_dim, cfg.units, cfg.mlp_layers)
        self.cont = mlp(cfg.feat_dim, 1, cfg.units, cfg.mlp_layers)

    @property
    def feat_dim(self) -> int:
        return self.cfg.feat_dim

    def embed(self, state: torch.Tensor) -> torch.Tensor:
        return self.encoder(symlog(state))

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, State, dict[str, float]]:
        """batch: state (B, L, Ds) normalized, prev_action (B, L, A), is_first (B, L), is_terminal (B, L).

        Returns (scalar loss, detached posteriors (B, L, ...), metrics).
        """
        embed = self.embed(batch["state"])
        post, prior = self.dynamics.observe(embed, batch["prev_action"], batch["is_first"])
        kl, dyn, rep = self.dynamics.kl_loss(post, prior)
        feat = self.dynamics.feat(post)
        recon = (self.decoder(feat) - symlog(batch["state"])).pow(2).sum(-1)
        cont_target = 1.0 - batch["is_terminal"].to(feat.dtype)
        cont = F.binary_cross_entropy_with_logits(self.cont(feat).squeeze(-1), cont_target, reduction="none")
        loss = (recon + self.cfg.cont_scale * cont + kl).mean()
        metrics = {"wm_loss": loss.item(), "recon_loss": recon.mean().item(), "cont_loss": cont.mean().item(),
                   "kl_dyn": dyn.mean().item(), "kl_rep": rep.mean().item()}
        return loss, {k: v.detach() for k, v in post.items()}, metrics

    def cont_prob(self, feat: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.cont(feat).squeeze(-1))

    @torch.no_grad()
    def imagine(self, start: State, actions: torch.Tensor, uniform: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Features (H+1, N, F) of the start state and the H states reached by actions (N, H, A).

        uniform (H, N, stoch): the random numbers of each step's latent draw (common random
        numbers); otherwise draws from `generator`."""
        feats = [self.dynamics.feat(start)]
        state = start
        for k in range(actions.shape[1]):
            state = self.dynamics.img_step(state, actions[:, k], uniform=None if uniform is None else uniform[k],
                                           generator=generator)
            feats.append(self.dynamics.feat(state))
        return torch.stack(feats, 0)

    @torch.no_grad()
    def open_loop_error(self, state: torch.Tensor, prev_action: torch.Tensor, context: int,
                        horizon: int, per_window: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """k-step prediction error on windows, next to the constant-state ("nothing moves") predictor.

        state (B, context + horizon, Ds) normalized, prev_action (B, context + horizon, A) (the
        store's convention: prev_action[t] = action[t-1]; each window starts an episode segment).
        The posterior filters the first `context` states; the model then imagines `horizon` steps
        with the recorded actions (latent mode, no sampling) and decodes them. Returns per-k mean
        squared errors (horizon,) of the model and of repeating the last observed state, both in
        the decoder's symlog space; with `per_window`, (B, horizon) errors, one row per window."""
        b, length = state.shape[:2]
        if length != context + horizon or context < 1:
            raise ValueError(f"windows must hold context + horizon = {context + horizon} steps, got {length}")
        first = torch.zeros(b, length, dtype=torch.bool, device=state.device)
        first[:, 0] = True
        embed = self.embed(state[:, :context])
        latent = None
        for t in range(context):
            latent, _ = self.dynamics.obs_step(latent, prev_action[:, t], embed[:, t], first[:, t], sample=False)
        target = symlog(state[:, context:])
        last = symlog(state[:, context - 1])
        model_err, const_err = [], []
        for k in range(horizon):
            latent = self.dynamics.img_step(latent, prev_action[:, context + k], sample=False)
            pred = self.decoder(self.dynamics.feat(latent))
            model_err.append((pred - target[:, k]).pow(2).mean(dim=-1))
            const_err.append((last - target[:, k]).pow(2).mean(dim=-1))
        model_err, const_err = torch.stack(model_err, dim=1), torch.stack(const_err, dim=1)
        if per_window:
            return model_err, const_err
        return model_err.mean(dim=0), const_err.mean(dim=0)


def flatten_state(state: State) -> State:
    """(B, L, ...) -> (B*L, ...)."""
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in state.items()}


def repeat_state(state: State, n: int) -> State:
    """(B, ...) -> (B*n, ...), each row repeated n times consecutively."""
    return {k: v.repeat_interleave(n, 0) for k, v in state.items()}


def select_rows(state: State, rows: Any) -> State:
    return {k: v[rows] for k, v in state.items()}
