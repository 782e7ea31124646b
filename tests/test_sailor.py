"""SAILOR components: world model, moment-matching reward, critic targets, the guarded residual planner, diagnostics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robolearn.sailor.configuration import CriticConfig, PlannerConfig, RewardConfig, SailorConfig, WorldModelConfig
from robolearn.sailor.critic import CriticEnsemble, CriticTrainer, lambda_return
from robolearn.sailor.diagnostics import auroc
from robolearn.sailor.planner import LatentScorer, plan_residual
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


class AnalyticScorer:
    """A stand-in for LatentScorer: score = -|total - target|^2 + noise_scale * (a draw of the uniforms)."""

    def __init__(self, target: torch.Tensor, noise_scale: float = 0.0, members: int = 3) -> None:
        self.target, self.noise_scale, self.members = target, noise_scale, members
        self.calls: list[torch.Tensor] = []

    def noise(self, particles, horizon, generator, per_candidate=None):
        shape = (particles, horizon, 1) + ((per_candidate,) if per_candidate else ()) + (2,)
        return torch.rand(shape, generator=generator)

    def member_scores(self, actions, uniform):
        self.calls.append(actions.clone())
        B, N = actions.shape[:2]
        true = -(actions - self.target).pow(2).sum((-1, -2))  # (B, N)
        if uniform.dim() == 4:  # shared: the same number for every candidate
            u = uniform.sum((1, 3)).T[:, None, :].expand(B, N, -1)  # (B, N, P)
        else:
            u = uniform.sum((1, 4)).permute(1, 2, 0)
        return (true[:, :, None] + self.noise_scale * u)[..., None].expand(B, N, u.shape[-1], self.members)


def test_planner_finds_a_real_gain_and_clips_the_residual():
    cfg = PlannerConfig(num_samples=128, iterations=6, num_elites=16, horizon=4, accept_margin_se=2.0)
    base = torch.zeros(3, 4, 2)
    gen = torch.Generator().manual_seed(0)
    result = plan_residual(base, AnalyticScorer(torch.tensor([0.15, -0.1])), cfg, gen)
    assert result.accepted.all() and (result.rescored_gain > 0.05).all()
    assert result.residual.abs().max() <= cfg.abs_residual + 1e-6
    assert (result.residual[..., 0].mean() - 0.15).abs() < 0.05 and (result.residual[..., 1].mean() + 0.1).abs() < 0.05
    far = plan_residual(base, AnalyticScorer(torch.tensor([0.9, -0.9])), cfg, gen)
    assert far.residual.abs().max() <= cfg.abs_residual + 1e-6 and far.residual[..., 0].mean() > 0.12


def test_base_plan_is_scored_in_every_iteration_and_guard_rejects_pure_noise():
    cfg = PlannerConfig(num_samples=32, iterations=3, num_elites=4, horizon=4, particles=2, check_particles=8)
    base = torch.full((2, 4, 2), 0.3)
    scorer = AnalyticScorer(torch.tensor([0.3, 0.3]), noise_scale=0.0)
    gen = torch.Generator().manual_seed(1)
    plan_residual(base, scorer, cfg, gen)
    for actions in scorer.calls[: cfg.iterations]:  # the search's calls: candidate 0 is the unchanged base plan
        assert torch.equal(actions[:, 0], base)
    # a score that is all noise: with common random numbers every candidate scores alike, nothing is accepted
    flat = AnalyticScorer(torch.tensor([0.0, 0.0]), noise_scale=1.0)
    flat.member_scores = lambda a, u, f=flat: AnalyticScorer.member_scores(f, torch.zeros_like(a), u)  # noqa: E731
    result = plan_residual(base, flat, cfg, gen)
    assert not result.accepted.any() and torch.equal(result.residual, torch.zeros_like(base))
    assert torch.equal(result.rescored_gain, torch.zeros(2))
    # unguarded and without common random numbers the same noise is executed
    loose = PlannerConfig(num_samples=32, iterations=3, num_elites=4, horizon=4, guard=False, common_random_numbers=False)
    assert plan_residual(base, flat, loose, gen).accepted.all()


def test_gripper_can_be_left_out_of_the_residual():
    cfg = PlannerConfig(num_samples=64, iterations=3, num_elites=8, horizon=4, residual_gripper=False, accept_margin_se=0.0)
    result = plan_residual(torch.zeros(2, 4, 3), AnalyticScorer(torch.tensor([0.1, 0.1, 0.2])), cfg, torch.Generator().manual_seed(0))
    assert result.accepted.all() and torch.equal(result.proposal[..., -1], torch.zeros(2, 4))
    assert result.proposal[..., :2].abs().max() > 0.05


def _random_heads(*modules: torch.nn.Module) -> None:
    """Give the zero-initialised output layers random weights, so scores depend on the latent."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                if p.abs().sum() == 0:
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def test_common_random_numbers_give_equal_candidates_equal_scores():
    torch.manual_seed(0)
    wm = WorldModel(TINY_WM, state_dim=3, action_dim=2)
    rm = RewardModel(RewardConfig(units=16), TINY_WM.feat_dim)
    critic = CriticEnsemble(CriticConfig(units=16, num_models=3), TINY_WM.feat_dim)
    _random_heads(rm, critic, wm)
    cfg = PlannerConfig(horizon=5)
    post, _ = wm.dynamics.observe(wm.embed(torch.randn(2, 3, 3)), torch.zeros(2, 3, 2), torch.tensor([[True, False, False]] * 2))
    scorer = LatentScorer(wm, rm, critic, {k: v[:, -1] for k, v in post.items()}, cfg)
    gen = torch.Generator().manual_seed(0)
    actions = torch.rand(2, 6, 5, 2, generator=gen) * 2 - 1
    actions[:, 4] = actions[:, 0]  # a candidate equal to the "base plan" (candidate 0)
    shared = scorer.member_scores(actions, scorer.noise(4, 5, gen))
    assert shared.shape == (2, 6, 4, 3)
    assert torch.equal(shared[:, 4], shared[:, 0])
    assert not torch.equal(shared[:, 1], shared[:, 0])
    # without common random numbers the two equal candidates get different scores
    own = scorer.member_scores(actions, scorer.noise(4, 5, gen, per_candidate=6))
    assert not torch.allclose(own[:, 4], own[:, 0])


def test_open_loop_error_and_auroc():
    wm = WorldModel(TINY_WM, state_dim=2, action_dim=2)
    still = torch.full((3, 10, 2), 0.5)
    model, const = wm.open_loop_error(still, torch.zeros(3, 10, 2), context=4, horizon=6)
    assert model.shape == const.shape == (6,) and torch.equal(const, torch.zeros(6)) and (model > 0).all()
    assert auroc(np.array([3.0, 2.0]), np.array([1.0, 0.0])) == 1.0
    assert auroc(np.array([1.0, 0.0]), np.array([3.0, 2.0])) == 0.0
    assert auroc(np.array([1.0, 2.0]), np.array([1.0, 0.0])) == 0.875  # one tie counts half


def test_planner_rejects_bad_shapes():
    with pytest.raises(ValueError, match="batch, horizon, action_dim"):
        plan_residual(torch.zeros(4, 2), AnalyticScorer(torch.zeros(2)), PlannerConfig())


def test_experiment_table_pools_records_and_bench_table(tmp_path):
    """scripts/sailor_experiment.py --table and scripts/bench_sailor.py --table read their raw records."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    rows = [{"kind": "eval", "name": "DP (50 demos)", "seed": s, "n": 100, "successes": k, "success_rate": k / 100,
             "mean_return": 2.0} for s, k in ((0, 40), (1, 50))]
    rows.append({"kind": "eval", "name": "SAILOR guarded (50 demos)", "seed": 0, "n": 100, "successes": 45,
                 "success_rate": 0.45, "mean_return": 3.0, "planner_accept_frac": 0.25})
    rows.append({"kind": "auroc", "name": "dp_failures", "seed": 0, "auroc": 0.8, "demo_states": 10, "failed_states": 20,
                 "failed_episodes": 3, "of_episodes": 5, "mean_r_demo": 0.1, "mean_r_failed": -0.1})
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, str(root / "scripts" / "sailor_experiment.py"), "--table", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| DP (50 demos) | 2 | 0.450 (90/200) | [0.38, 0.52] | s0: 0.40, s1: 0.50 | 2.00 | - |" in proc.stdout, proc.stdout
    assert "| SAILOR guarded (50 demos) | 1 | 0.450 (45/100) |" in proc.stdout and "| 0.25 |" in proc.stdout
    assert "AUROC (seed 0): 0.800" in proc.stdout
    bench = {"date": "d", "machine": "m", "load_average_before": [1, 1, 1], "load_average_after": [1, 1, 1], "repeats": 3,
             "results": {"decision": {"median_ms": 12.34, "p10_ms": 10.0, "p90_ms": 15.0}}}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    proc = subprocess.run([sys.executable, str(root / "scripts" / "bench_sailor.py"), "--table", str(tmp_path / "bench.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "| decision | - | 12.3 [10.0, 15.0] |" in proc.stdout, proc.stdout + proc.stderr


def test_progress_table_from_run_metrics():
    """scripts/sailor_experiment.py --progress: one row per phase, in-loop evaluations where they ran."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "sailor_experiment.py"
    spec = importlib.util.spec_from_file_location("sailor_experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.progress_table([
        {"phase": "warmstart", "env_step": 4000, "model_updates": 6000, "collect_episodes": 58, "collect_success_rate": 0.379,
         "wm_err_ratio": 0.17, "rm_auroc": 0.962},
        {"phase": "round", "round": 0, "env_step": 6000, "model_updates": 9000, "planner_accept_frac": 0.317,
         "eval_planner_success_rate": 0.45, "eval_base_success_rate": 0.4},
    ]).splitlines()
    assert rows[2].startswith("| warm start (0-4,000) | 6,000 | 58 | 0.379 |") and rows[2].endswith("| 0.170 | 0.962 | - |")
    assert rows[3].startswith("| round 0 (4,000-6,000) | 9,000 |") and "| 0.317 |" in rows[3] and rows[3].endswith("| 0.45 / 0.40 |")


def test_readiness_statistics_resist_one_bad_window():
    """world_model_check reports the pooled ratio and the median of per-window ratios: one window
    whose imagination blows up moves the first past 1, not the second (docs/results/sailor.md)."""
    from robolearn.sailor.diagnostics import world_model_check

    wm = WorldModel(TINY_WM, state_dim=2, action_dim=2)
    windows = torch.rand(5, 10, 2)
    per_model, per_const = wm.open_loop_error(windows, torch.zeros(5, 10, 2), 4, 6, per_window=True)
    pooled_model, pooled_const = wm.open_loop_error(windows, torch.zeros(5, 10, 2), 4, 6)
    assert per_model.shape == per_const.shape == (5, 6)
    torch.testing.assert_close(per_model.mean(dim=0), pooled_model)
    torch.testing.assert_close(per_const.mean(dim=0), pooled_const)

    class Stub:  # a world model with 9 good windows (ratio 0.1) and one bad one (ratio 30)
        device = torch.device("cpu")

        class world_model:  # noqa: N801
            @staticmethod
            def open_loop_error(state, prev_action, context, horizon, per_window=False):
                const = torch.full((10, horizon), 0.1)
                model = torch.full((10, horizon), 0.01)
                model[3] = 3.0
                return model, const

    check = world_model_check(Stub(), np.zeros((10, 10, 2), np.float32), np.zeros((10, 10, 2), np.float32), 4, 6, lambda s: s)
    assert check["wm_err_ratio"] > 1 and check["wm_err_ratio_median"] == pytest.approx(0.1)
    from robolearn.config import ConfigError
    from robolearn.sailor.configuration import load_sailor_config

    assert load_sailor_config(None, ["loop.ready_statistic=median"]).loop.ready_statistic == "median"
    with pytest.raises(ConfigError, match="ready_statistic"):
        load_sailor_config(None, ["loop.ready_statistic=max"])
