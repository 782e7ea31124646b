"""SAILOR end to end on a real task: warm start, planner rounds, trimming, expert iteration, eval, CLI errors."""

from __future__ import annotations

import json
import pytest

from robolearn.checkpoint import load_policy
from robolearn.data.store import EpisodeStore
from robolearn.evaluation import evaluate_policy, load_any_policy
from robolearn.sailor.loop import run_sailor


TINY = [
    "agent.world_model.deter=32", "agent.world_model.stoch=4", "agent.world_model.classes=4", "agent.world_model.hidden=32",
    "agent.world_model.units=32", "agent.world_model.batch_size=8", "agent.world_model.batch_length=8",
    "agent.reward.units=32", "agent.reward.update_every=2", "agent.critic.units=32", "agent.critic.num_models=3",
    "agent.planner.num_samples=16", "agent.planner.num_elites=4", "agent.planner.iterations=2", "agent.planner.horizon=6",
    "agent.critic.imag_horizon=5", "loop.num_envs=4", "loop.min_env_steps_per_round=60", "loop.rounds_train_ratio=0.2",
    "loop.warmstart_train_ratio=0.2", "loop.eval_every_round=2", "loop.eval_episodes=4", "loop.update_dp_every=1",
    "loop.n_dp_train_itrs=5", "loop.dp_batch_size=16", "loop.n_traj_to_relabel_per_round=4", "loop.num_buffer_transitions=150",
    "loop.max_episode_steps=20",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from robolearn.tasks.collect import collect
    from robolearn.training import train

    root = tmp_path_factory.mktemp("sailor")
    collect("pick_place", 4, root / "demos.zarr", num_envs=4, progress=False)
    train("diffusion", root / "demos.zarr", out=root / "dp", wandb_mode="off", progress=False,
          overrides=["train.steps=20", "train.batch_size=16", "policy.down_dims=[16,32]", "policy.diffusion_step_embed_dim=16",
                     "train.lr_warmup_steps=2", "train.val_ratio=0", "policy.horizon=12"])
    return root


def test_loop_runs_end_to_end_and_eval_loads_the_agent(base, tmp_path):
    run = run_sailor(base / "dp", base / "demos.zarr", "pick_place", 300, out=tmp_path / "run", overrides=TINY,
                     perturb=0.05, wandb_mode="off", progress=False)
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    phases = [r["phase"] for r in records]
    assert phases[0] == "warmstart" and phases[-1] == "final" and phases.count("round") >= 3
    assert records[-1]["env_step"] == 300 and records[-1]["cut_episodes"] <= 4
    assert any("dp_loss" in r for r in records) and any("rm_gp" in r for r in records)
    assert all(r.get("replay_steps", 0) <= 150 + 60 for r in records)
    # the replay is an ordinary store of policy episodes with the base chunks; trimming is a mask
    store = EpisodeStore.open(run / "replay.zarr")
    assert store.num_steps == records[-1]["env_step"] and store.source_counts()["policy"] == store.num_steps
    assert store.features["base_action"].shape == (12, 5)
    assert 0 < store.mask("replay").sum() < store.num_episodes
    # `robolearn eval` loads the planner-augmented agent; the distilled base is a plain diffusion checkpoint
    agent, meta = load_any_policy(run)
    assert agent.name == "sailor" and meta["sailor"]["final"] and meta["task"] == "pick_place"
    report = evaluate_policy(agent, "pick_place", episodes=2, num_envs=2, progress=False)
    assert report["n"] == 2
    assert load_policy(run / "base_policy").name == "diffusion"


def test_cli_runs_and_reports_bad_input(base, tmp_path, capsys):
    from robolearn.cli import main

    args = ["sailor", "--base", str(base / "dp"), "--demos", str(base / "demos.zarr"), "--task", "pick_place", "--wandb", "off",
            "--no-progress"]
    assert main([*args, "--env-steps", "40", "--out", str(tmp_path / "cli"), *TINY, "loop.eval_episodes=0"]) == 0
    assert (tmp_path / "cli" / "policy" / "checkpoint.json").is_file()
    assert main([*args, "--env-steps", "40", "--out", str(tmp_path / "cli")]) == 2  # finished runs are not overwritten
    for extra, message in [
        (["--env-steps", "40", "agent.planner.num_sampels=3"], "num_sampels"),
        (["--env-steps", "0"], "--env-steps"),
        (["--env-steps", "10", "agent.planner.horizon=16"], "planner.horizon"),
        (["--env-steps", "10", "--task", "bogus"], "unknown task"),
    ]:
        capsys.readouterr()
        assert main([*args, "--out", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    args[2] = str(tmp_path / "nope")
    assert main([*args, "--env-steps", "10", "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
