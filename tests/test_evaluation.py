"""`robolearn eval`: Wilson intervals, seeded determinism, rollouts saved to a store, CLI, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from robolearn.data.store import EpisodeStore
from robolearn.evaluation import evaluate_policy, load_any_policy, resolve_checkpoint, wilson_interval
from robolearn.tasks.collect import collect
from robolearn.training import train


def test_wilson_interval_reference_values():
    # reference values (Wilson score interval, z = 1.96)
    lo, hi = wilson_interval(8, 10)
    assert abs(lo - 0.4902) < 1e-3 and abs(hi - 0.9433) < 1e-3
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    lo, hi = wilson_interval(50, 100)
    assert abs(lo - 0.4038) < 1e-3 and abs(hi - 0.5962) < 1e-3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    collect("push_cube", episodes=6, out=root / "demos.zarr", num_envs=3, seed=0, progress=False)
    run = train("diffusion", root / "demos.zarr", task="push_cube", out=root / "run", wandb_mode="off", progress=False,
                overrides=["train.steps=30", "train.batch_size=32", "policy.down_dims=[16,32]",
                           "policy.diffusion_step_embed_dim=16", "train.val_ratio=0.2"])
    return root, run


def test_same_seed_gives_identical_results_and_saved_rollouts(trained, tmp_path):
    _, run = trained
    policy, meta = load_any_policy(run)
    assert meta["task"] == "push_cube"
    a = evaluate_policy(policy, "push_cube", 4, seed=7, num_envs=2, progress=False, save=tmp_path / "roll.zarr")
    b = evaluate_policy(policy, "push_cube", 4, seed=7, num_envs=2, progress=False)
    assert a["episodes"] == b["episodes"]
    assert a["seeds"] == [7, 8, 9, 10] and a["n"] == 4
    assert set(a) >= {"n", "success_rate", "ci95", "mean_return", "episodes", "failure_events_per_episode", "recoveries_per_episode"}
    store = EpisodeStore.open(tmp_path / "roll.zarr")
    assert store.num_episodes == 4 and store.source_counts()["policy"] == store.num_steps
    assert sorted(store.column("seed").tolist()) == [7, 8, 9, 10]
    lengths = {r["seed"]: r["length"] for r in a["episodes"]}
    for i in range(4):
        assert store.episode_lengths[i] == lengths[int(store.column("seed")[i])]


def test_perturbations_are_counted(trained):
    _, run = trained
    policy, _ = load_any_policy(run)
    r = evaluate_policy(policy, "push_cube", 2, seed=0, num_envs=2, perturb=0.2, progress=False)
    assert r["failure_events_per_episode"] > 0 and r["perturb"] == 0.2


def test_cli_json_video_and_errors(trained, tmp_path):
    _, run = trained
    cmd = [sys.executable, "-m", "robolearn.cli", "eval", "--checkpoint", str(run), "--episodes", "2", "--num-envs", "2", "--json",
           "--video", "1", "--video-dir", str(tmp_path / "v")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["n"] == 2 and len(report["ci95"]) == 2 and len(report["episodes"]) == 2
    import imageio.v3 as iio

    frames = iio.imread(tmp_path / "v" / "episode_0000.mp4")
    assert frames.ndim == 4 and frames.shape[0] > 1 and frames.mean() > 40 and frames.std() > 10  # a lit scene, not black
    bad = subprocess.run([sys.executable, "-m", "robolearn.cli", "eval", "--checkpoint", str(tmp_path / "nope"), "--episodes", "1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    wrong_task = subprocess.run([*cmd[:6], "--task", "no_such_task", "--episodes", "1"], capture_output=True, text=True, timeout=120)
    assert wrong_task.returncode == 2 and "unknown task" in wrong_task.stderr
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path)


def test_eval_uses_the_training_data_task_structure(trained):
    from robolearn.checkpoint import read_meta
    from robolearn.evaluation import task_overrides_from_meta

    _, run = trained
    meta = read_meta(resolve_checkpoint(run))
    assert meta["task_config"]["task"] == "push_cube"  # recorded from the store at training time
    overrides = task_overrides_from_meta(meta, "push_cube")
    assert "horizon=60" in overrides and not any(o.startswith("perturb") for o in overrides)
    assert "obs_relative=false" in overrides  # the observation layout the policy was trained on
    assert task_overrides_from_meta({"task_config": {"task": "sort", "num_cubes": 2}}, "sort") == ["num_cubes=2"]
    assert task_overrides_from_meta({"task_config": {"task": "sort", "num_cubes": 2}}, "push_cube") == []


def test_gymnasium_tasks_evaluate_through_the_same_loop():
    class RandomPolicy:
        class config:
            n_obs_steps = 1
            obs_keys = ["state"]

        def select_action(self, obs):
            return torch.rand(obs["state"].shape[0], 3) * 2 - 1

        def reset(self, env_mask=None):
            pass

    a = evaluate_policy(RandomPolicy(), "hopper", 3, seed=5, num_envs=2, progress=False)
    b = evaluate_policy(RandomPolicy(), "hopper", 3, seed=5, num_envs=2, progress=False)
    assert a["n"] == 3 and a["seeds"] == [5, 6, 7] and a["episodes"] == b["episodes"]
    assert all(r["length"] > 0 for r in a["episodes"]) and a["success_rate"] == 0.0
    with pytest.raises(ValueError, match="supports no --perturb"):
        evaluate_policy(RandomPolicy(), "hopper", 1, perturb=0.1, progress=False)


def test_action_steps_override(trained):
    from robolearn.evaluation import set_action_steps

    _, run = trained
    policy, _ = load_any_policy(run)
    set_action_steps(policy, 2)
    assert policy.config.n_action_steps == 2
    r = evaluate_policy(policy, "push_cube", 2, seed=0, num_envs=2, progress=False)
    assert r["n"] == 2
    with pytest.raises(ValueError, match="--action-steps must be in"):
        set_action_steps(policy, 99)


def test_pool_evaluations_sums_episodes_not_rates():
    from robolearn.evaluation import pool_evaluations, wilson_interval

    k, n, ci = pool_evaluations([{"successes": 10, "n": 100}, {"successes": 30, "n": 50}])
    assert (k, n) == (40, 150) and ci == wilson_interval(40, 150)  # 0.267 pooled, not the 0.35 mean of rates
    assert pool_evaluations([]) == (0, 0, (0.0, 1.0))


def test_retry_counter_counts_going_back_without_stage_progress():
    """A retry is the high level returning to an earlier primitive while the task's stage has not
    advanced since the primitive it leaves was chosen; starting the next object is not one."""
    import numpy as np
    import torch

    from robolearn.evaluation import _RetryCounter

    counter = _RetryCounter(2, np.array([0, 0]))
    # env 0: reach, grasp, transport, (cube dropped: stage stays 0) grasp again -> one retry
    # env 1: reach, grasp, transport, release, (stage advanced to 1) reach the next cube -> none
    for prims, stages in [((0, 0), (0, 0)), ((1, 1), (0, 0)), ((2, 2), (0, 0)), ((1, 3), (0, 0)), ((1, 0), (0, 1))]:
        counter.stage[:] = stages
        counter.update(torch.tensor(prims))
    assert counter.count.tolist() == [1, 0]
    counter.restart(np.array([0]), np.array([2, 2]))
    counter.update(torch.tensor([0, 0]))  # a restarted env's first choice is not a switch
    assert counter.count.tolist() == [0, 0]
