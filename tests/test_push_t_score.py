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
