"""push_t like Diffusion Policy's PushT: absolute pusher-target actions, the paper's score, and an
expert whose action is a function of the state (what a policy can learn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robolearn.tasks.push_t import PushTExpert
from robolearn.tasks.sim import TaskSim


def _expert_states(action_mode: str, steps: int = 40) -> np.ndarray:
    sim = TaskSim("push_t", num_envs=2, action_mode=action_mode)
    expert = PushTExpert(sim.task, 2, seed=0)
    sim.reset(seeds=[3, 4])
    out = []
    for _ in range(steps):
        action, _ = expert.act(sim.read())
        sim.step(action.numpy())
        out.append(sim.get_state().copy())
    sim.close()
    return np.stack(out)


def test_absolute_actions_command_the_same_targets_as_deltas():
    delta, absolute = _expert_states("delta"), _expert_states("absolute")
    # same expert decisions through either action interface: the same motion up to float32 rounding
    assert np.abs(delta - absolute).max() < 1e-4  # positions and velocities
    with pytest.raises(ValueError, match="action_mode"):
        TaskSim("push_cube", action_mode="absolute")
    with pytest.raises(ValueError, match="action_mode"):
        TaskSim("push_t", action_mode="relative")


def test_expert_contact_is_a_function_of_the_state():
    sim = TaskSim("push_t", num_envs=4)
    expert = PushTExpert(sim.task, 4, seed=1)
    sim.reset(seeds=[0, 1, 2, 3])
    for _ in range(25):  # walk and push for a while, then ask a fresh expert (no history) at the same states
        action, _ = expert.act(sim.read())
        sim.step(action.numpy())
    _, _, contact = expert.decide(sim.read())
    fresh = PushTExpert(sim.task, 4, seed=2)
    fresh.mode = expert.mode.clone()
    _, _, again = fresh.decide(sim.read())
    assert torch.equal(contact, again)
    sim.close()


def test_score_is_the_max_over_the_episode_of_clipped_coverage():
    from robolearn.evaluation import evaluate_policy

    class Still(torch.nn.Module):
        class config:
            n_obs_steps, obs_keys = 1, ["state"]

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def select_action(self, obs):
            return torch.zeros(obs["state"].shape[0], 2)

        def reset(self, mask=None):
            pass

    report = evaluate_policy(Still(), "push_t", 3, seed=5, num_envs=3, task_overrides=["horizon=5"], progress=False)
    assert report["score_name"].startswith("max over the episode of clip(coverage / 0.95")
    # a still pusher leaves the block where it started: its score is the initial clipped coverage
    sim = TaskSim("push_t", num_envs=3, horizon=5)
    sim.reset(seeds=[5, 6, 7])
    start = sim.task.step_score(sim.read()).numpy()
    expected = []
    for _ in range(5):
        sim.step(np.zeros((3, 2)))
        expected.append(sim.task.step_score(sim.read()).numpy())
    np.testing.assert_allclose([e["score"] for e in report["episodes"]], np.max(expected, 0), atol=1e-9)
    np.testing.assert_allclose(np.max(expected, 0), start, atol=0.02)
    assert report["score"] == pytest.approx(np.mean(np.max(expected, 0)))
    sim.close()


def _script(name: str):
    import importlib.util
    import sys
    from pathlib import Path

    scripts = Path(__file__).resolve().parent.parent / "scripts"
    sys.path.insert(0, str(scripts))
    spec = importlib.util.spec_from_file_location(name, scripts / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_tables_keep_variants_and_candidates_apart():
    """push_t_results: state and image records pool separately (records without `variant` are state);
    demo_recipe: one pooled row per candidate."""
    push_t = _script("push_t_results")
    rec = dict(action_steps=8, n=10, successes=5, success_rate=0.5, score=0.9)
    rows = push_t.table([{**rec, "seed": 0}, {**rec, "seed": 1, "successes": 7, "success_rate": 0.7},
                         {**rec, "seed": 0, "variant": "image+proprio", "successes": 1, "success_rate": 0.1, "score": 0.4}]).splitlines()
    assert rows[2].startswith("| state | 8 | 2 | 20 | 0.600 |") and rows[3].startswith("| image+proprio | 8 | 1 | 10 | 0.100 |")
    recipe = _script("demo_recipe")
    base = dict(candidate="unet32", n=100, train_s=300.0, load_train_start=[1.0, 1.0, 1.0],
                overrides=["train.steps=8000", "train.seed=0", "train.eval_every=1000000", *recipe.UNET32])
    rows = recipe.table([{**base, "seed": s, "successes": k, "success_rate": k / 100} for s, k in ((0, 95), (1, 97), (2, 90))]).splitlines()
    assert rows[2].startswith("| unet32 | 200 | `policy.down_dims=[32,64,128]") and "| 3 | 300 | 0.940 |" in rows[2]
    assert recipe.selection_seed(2) == 202_000 and recipe.selection_seed(0) > 100_049  # not the demo's own eval seeds
