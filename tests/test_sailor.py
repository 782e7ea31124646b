"""SAILOR components: world model, moment-matching reward, critic targets, residual planner, agent checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robolearn.sailor.configuration import CriticConfig, PlannerConfig, RewardConfig, SailorConfig, WorldModelConfig
from robolearn.sailor.critic import CriticEnsemble, CriticTrainer, lambda_return
from robolearn.sailor.planner import plan_residual
from robolearn.sailor.reward_model import RewardModel
from robolearn.sailor.world_model import WorldModel


TINY_WM = WorldModelConfig(deter=32, stoch=4, classes=4, hidden=32, units=32, batch_size=8, batch_length=8)


def _toy_batch(gen: torch.Generator, batch: int = 8, length: int = 8) -> dict[str, torch.Tensor]:
    """A point mass: s_{t+1} = s_t + 0.1 * a_t (2-D), episodes of random actions."""
    actions = torch.rand(batch, length, 2, generator=gen) * 2 - 1
    s = torch.rand(batch, 2, generator=gen) * 2 - 1
    states = []
    for t in range(length):
        states.append(s)
        s = (s + 0.1 * actions[:, t]).clamp(-1, 1)
    states = torch.stack(states, 1)
    prev = torch.cat([torch.zeros(batch, 1, 2), actions[:, :-1]], 1)
    is_first = torch.zeros(batch, length, dtype=torch.bool)
    is_first[:, 0] = True
    return {"state": states, "prev_action": prev, "is_first": is_first, "is_terminal": torch.zeros(batch, length)}


def test_world_model_loss_decreases_on_tiny_dataset():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    data = [_toy_batch(gen) for _ in range(4)]
    wm = WorldModel(TINY_WM, state_dim=2, action_dim=2)
    opt = torch.optim.Adam(wm.parameters(), lr=3e-3)
    losses = []
    for step in range(150):
        loss, post, metrics = wm.loss(data[step % 4])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(metrics["recon_loss"])
    assert post["deter"].shape == (8, 8, 32) and post["stoch"].shape == (8, 8, 4, 4)
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:10])
    # imagination gives (H+1, N, F) features
    start = {k: v[:, -1] for k, v in post.items()}
    feats = wm.imagine(start, torch.zeros(8, 5, 2))
    assert feats.shape == (6, 8, TINY_WM.feat_dim) and torch.isfinite(feats).all()


def test_reward_model_ranks_expert_above_random_states():
    torch.manual_seed(0)
    rm = RewardModel(RewardConfig(units=32, lr=1e-3), feat_dim=6)
    opt = torch.optim.Adam(rm.parameters(), lr=1e-3)
    expert_mean = torch.tensor([0.5, -0.5, 0.5, 0.0, 0.2, -0.2])
    for _ in range(50):
        expert = expert_mean + 0.05 * torch.randn(64, 6)
        learner = torch.rand(64, 6) * 2 - 1
        loss, metrics = rm.loss(learner, expert)
        opt.zero_grad()
        loss.backward()
        opt.step()
    expert = expert_mean + 0.05 * torch.randn(256, 6)
    random = torch.rand(256, 6) * 2 - 1
    with torch.no_grad():
        fe, fr = rm(expert), rm(random)
    auroc = (fe[:, None] > fr[None, :]).float().mean().item()
    assert auroc > 0.9 and metrics["rm_moment_gap"] > 0
    assert np.isfinite(metrics["rm_gp"])


def test_lambda_return_matches_hand_computation():
    r = torch.tensor([[1.0], [2.0]])
    v = torch.tensor([[0.5], [1.5], [3.0]])
    d = torch.tensor([[0.9], [0.9]])
    lam = 0.5
    r1 = 2.0 + 0.9 * (0.5 * 3.0 + 0.5 * 3.0)
    r0 = 1.0 + 0.9 * (0.5 * 1.5 + 0.5 * r1)
    out = lambda_return(r, v, d, lam)
    assert torch.allclose(out, torch.tensor([[r0], [r1]]))


def test_critic_learns_imagined_returns_and_ensemble_std():
    torch.manual_seed(0)
    critic = CriticEnsemble(CriticConfig(units=32, lr=3e-3, slow_target_fraction=0.1, discount=0.5, lam=1.0), feat_dim=3)
    trainer = CriticTrainer(critic)
    feats = torch.randn(4, 64, 3)  # H+1 = 4 states, 64 rollouts
    reward = torch.ones(4, 64)
    cont = torch.ones(4, 64)
    for _ in range(300):
        metrics = trainer.train_step(feats, reward, cont)
    # the true discounted return of constant reward 1 with gamma 0.5 tends to 2
    value = critic(feats[0]).mean().item()
    assert 1.0 < value < 2.5, value
    assert critic.std(feats[0]).shape == (64,) and metrics["critic_loss"] < 1.0


def test_planner_improves_analytic_reward_and_clips_residual():
    cfg = PlannerConfig(num_samples=128, iterations=6, num_elites=16, horizon=4)
    target = torch.tensor([0.15, -0.1])

    def score(total):  # (M, H, A): closer to target is better
        return -(total - target).pow(2).sum((-1, -2))

    base = torch.zeros(3, 4, 2)
    gen = torch.Generator().manual_seed(0)
    residual, best = plan_residual(base, score, cfg, gen)
    base_score = score(base)
    assert (best > base_score + 0.05).all()
    assert residual.abs().max() <= cfg.abs_residual + 1e-6
    # the residual is clipped: an unreachable target pins it at +-abs_residual
    far = torch.tensor([0.9, -0.9])
    residual, _ = plan_residual(base, lambda t: -(t - far).pow(2).sum((-1, -2)), cfg, gen)
    assert residual.abs().max() <= cfg.abs_residual + 1e-6
    assert residual[..., 0].mean() > 0.12 and residual[..., 1].mean() < -0.12
    # totals stay in the action box
    res, _ = plan_residual(torch.full((1, 4, 2), 0.95), lambda t: t.sum((-1, -2)), cfg, gen)
    assert res.abs().max() <= cfg.abs_residual + 1e-6


def test_planner_rejects_bad_shapes():
    with pytest.raises(ValueError, match="batch, horizon, action_dim"):
        plan_residual(torch.zeros(4, 2), lambda t: t.sum(), PlannerConfig())
