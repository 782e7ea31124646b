"""SAILOR on a real task: exact base execution, the readiness gate, the loop end to end, exact
resume after a kill, and the CLI's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from robolearn.checkpoint import load_checkpoint, load_policy, save_policy
from robolearn.data.store import EpisodeStore
from robolearn.evaluation import evaluate_policy, load_any_policy
from robolearn.sailor.agent import SailorPolicy
from robolearn.sailor.configuration import SailorConfig, load_sailor_config
from robolearn.sailor.loop import SailorTrainer, resume_sailor, run_sailor


TINY = [
    "agent.world_model.deter=32", "agent.world_model.stoch=4", "agent.world_model.classes=4", "agent.world_model.hidden=32",
    "agent.world_model.units=32", "agent.world_model.batch_size=8", "agent.world_model.batch_length=8",
    "agent.reward.units=32", "agent.reward.update_every=2", "agent.critic.units=32", "agent.critic.num_models=3",
    "agent.planner.num_samples=16", "agent.planner.num_elites=4", "agent.planner.iterations=2", "agent.planner.horizon=6",
    "agent.planner.accept_margin_se=0", "agent.critic.imag_horizon=5", "loop.num_envs=4", "loop.min_env_steps_per_round=60",
    "loop.rounds_train_ratio=0.2", "loop.warmstart_train_ratio=0.2", "loop.eval_every_round=2", "loop.eval_episodes=4",
    "loop.update_dp_every=1", "loop.n_dp_train_itrs=5", "loop.dp_batch_size=16", "loop.n_traj_to_relabel_per_round=4",
    "loop.num_buffer_transitions=150", "loop.max_episode_steps=20", "loop.require_ready=false", "loop.dp_after_win=false",
    "loop.holdout_demo_fraction=0.3",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from helpers_data import make_sailor_base

    return make_sailor_base(tmp_path_factory.mktemp("sailor"), "pick_place", episodes=6, num_envs=3, steps=20,
                            batch_size=16, warmup=2)


class Recorder(nn.Module):
    """Passes a policy through evaluation and records every action it returns."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.config = policy.config
        self.actions: list[torch.Tensor] = []

    def select_action(self, obs):
        action = self.policy.select_action(obs)
        self.actions.append(action.clone())
        return action

    def reset(self, env_mask=None):
        self.policy.reset(env_mask)


def _agent(base_dir, ready: bool, **planner) -> SailorPolicy:
    dp = load_policy(base_dir / "dp" / "policy")
    cfg = load_sailor_config(None, [o for o in TINY if o.startswith("agent.")] +
                             [f"agent.planner.{k}={v}" for k, v in planner.items()]).agent
    agent = SailorPolicy(SailorConfig(**{**cfg.__dict__, "base": dp.config}), dp.normalizer)
    agent.base.load_state_dict(dp.state_dict())
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # untrained but not flat: zero-initialised heads get random weights, so scores differ
        for m in (agent.reward_model, agent.critic):
            for p in m.parameters():
                if p.abs().sum() == 0:
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    agent.planner_ready.fill_(ready)
    return agent.eval()


def _rollouts(policy) -> tuple[dict, torch.Tensor]:
    rec = Recorder(policy)
    report = evaluate_policy(rec, "pick_place", episodes=3, num_envs=2, seed=7, perturb=0.05, progress=False)
    return report, torch.cat(rec.actions)


def test_zero_residual_and_unready_agents_act_exactly_as_the_base(base, tmp_path, capsys):
    from robolearn.cli import main

    base_report, base_actions = _rollouts(load_policy(base / "dp" / "policy"))
    zero = _agent(base, ready=True, abs_residual=0.0)
    report, actions = _rollouts(zero)
    assert zero.stats.decisions > 0 and zero.stats.accepted == 0
    assert torch.equal(actions, base_actions)
    assert [(e["success"], e["return"]) for e in report["episodes"]] == [(e["success"], e["return"]) for e in base_report["episodes"]]
    unready = _agent(base, ready=False)
    assert torch.equal(_rollouts(unready)[1], base_actions) and unready.stats.decisions == 0
    # the test can fail: the same agent, ready and allowed a residual, acts differently
    ready = _agent(base, ready=True)
    assert not torch.equal(_rollouts(ready)[1], base_actions) and ready.stats.accepted > 0
    # `robolearn eval` on a saved zero-residual agent gives the base's success and return on the same seeds
    save_policy(zero, tmp_path / "agent", task="pick_place")
    args = ["--task", "pick_place", "--episodes", "2", "--num-envs", "2", "--seed", "7", "--perturb", "0.05", "--json"]
    out = []
    for ckpt in (tmp_path / "agent", base / "dp"):
        capsys.readouterr()
        assert main(["eval", "--checkpoint", str(ckpt), *args]) == 0
        rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        out.append((rep["successes"], rep["mean_return"], [e["return"] for e in rep["episodes"]]))
    assert out[0] == out[1]


def test_loop_runs_end_to_end_with_diagnostics(base, tmp_path):
    run = run_sailor(base / "dp", base / "demos.zarr", "pick_place", 240, out=tmp_path / "run", overrides=TINY,
                     perturb=0.05, wandb_mode="off", progress=False)
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    phases = [r["phase"] for r in records]
    assert phases[0] == "warmstart" and phases[-1] == "final" and phases.count("round") >= 3
    assert records[-1]["env_step"] == 240 and records[-1]["cut_episodes"] <= 4
    assert any("dp_loss" in r for r in records) and any("rm_gp" in r for r in records)
    assert all(r.get("replay_steps", 0) <= 150 + 60 for r in records)
    rounds = [r for r in records if r["phase"] == "round"]
    for r in rounds:  # diagnostics of every round
        assert len(r["wm_kstep_err"]) == len(r["const_kstep_err"]) == 6 and r["wm_check_split"] == "heldout"
        assert {"planner_accept_frac", "planner_predicted_gain", "planner_rescored_gain", "planner_decisions"} <= set(r)
    assert json.loads((run / "diagnostics.json").read_text())["wm_kstep_err"]
    # the replay is an ordinary store of policy episodes with the chunk of each step's decision
    store = EpisodeStore.open(run / "replay.zarr")
    assert store.num_steps == records[-1]["env_step"] and store.source_counts()["policy"] == store.num_steps
    assert store.features["base_action"].shape == (12, 5)
    ep = store.get_episode(0, ["base_action", "chunk_offset"])
    assert np.array_equal(ep["chunk_offset"], np.arange(len(ep["chunk_offset"])) % 4)
    assert np.array_equal(ep["base_action"][1], ep["base_action"][0]) and not np.array_equal(ep["base_action"][4], ep["base_action"][0])
    assert 0 < store.mask("replay").sum() < store.num_episodes
    agent, meta = load_any_policy(run)
    assert agent.name == "sailor" and meta["sailor"]["final"] and meta["task"] == "pick_place"
    assert evaluate_policy(agent, "pick_place", episodes=2, num_envs=2, progress=False)["n"] == 2
    assert load_policy(run / "base_policy").name == "diffusion"


def test_readiness_gate_keeps_the_planner_off(base, tmp_path):
    overrides = [o for o in TINY if not o.startswith("loop.require_ready")] + ["loop.ready_ratio=0.001", "loop.eval_episodes=0"]
    run = run_sailor(base / "dp", base / "demos.zarr", "pick_place", 120, out=tmp_path / "gate", overrides=overrides,
                     wandb_mode="off", progress=False)
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r.get("planner_ready") is False for r in records if "planner_ready" in r)
    assert all(r.get("planner_decisions", 0) == 0 for r in records)
    store = EpisodeStore.open(run / "replay.zarr")
    assert not np.abs(store.read("residual")).any()


@pytest.mark.slow
def test_resume_after_a_kill_reproduces_the_uninterrupted_run(base, tmp_path):
    kw = dict(perturb=0.05, wandb_mode="off", progress=False)
    full = run_sailor(base / "dp", base / "demos.zarr", "pick_place", 240, out=tmp_path / "full", overrides=TINY, **kw)
    trainer = SailorTrainer(load_sailor_config(None, TINY), base / "dp", base / "demos.zarr", "pick_place", 240,
                            tmp_path / "killed", **kw)
    trainer.run(stop_after_checkpoints=4)  # after round 0: envs mid-episode, replay, optimizers, RNGs in flight
    trainer.collect(40, "planner")  # work after the last checkpoint, lost in the "kill"
    trainer.model_update()
    trainer.replay_store.close()
    del trainer
    resumed = resume_sailor(tmp_path / "killed", wandb_mode="off", progress=False)

    def records(run):
        return [{k: v for k, v in json.loads(ln).items() if k != "wall_s"} for ln in (run / "metrics.jsonl").read_text().splitlines()]

    assert records(resumed) == records(full)
    a, b = EpisodeStore.open(full / "replay.zarr"), EpisodeStore.open(resumed / "replay.zarr")
    assert a.num_episodes == b.num_episodes and np.array_equal(a.read("action"), b.read("action"))
    wa, _ = load_checkpoint(full / "policy")
    wb, _ = load_checkpoint(resumed / "policy")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cli_runs_resumes_and_reports_bad_input(base, tmp_path, capsys):
    from robolearn.cli import main

    args = ["sailor", "--base", str(base / "dp"), "--demos", str(base / "demos.zarr"), "--task", "pick_place", "--wandb", "off",
            "--no-progress"]
    assert main([*args, "--env-steps", "40", "--out", str(tmp_path / "cli"), *TINY, "loop.eval_episodes=0"]) == 0
    assert (tmp_path / "cli" / "policy" / "checkpoint.json").is_file()
    capsys.readouterr()
    assert main([*args, "--env-steps", "40", "--out", str(tmp_path / "cli")]) == 2  # finished runs are not overwritten
    assert "finished" in capsys.readouterr().err
    # a started (killed) run is not restarted over its replay store: it is resumed
    started = SailorTrainer(load_sailor_config(None, TINY), base / "dp", base / "demos.zarr", "pick_place", 40,
                            tmp_path / "started", wandb_mode="off", progress=False)
    # the readiness check reads held-out demos; the same check on the training demos (overfitting) on request
    held, train = started.check_windows(), started.check_windows("train")
    assert held[0] == "heldout" and held[1] is started.heldout and train[0] == "train" and train[1] is started.expert.episodes
    assert len(held[1]) > 0 and len(train[1]) > 0 and held[2].shape[1:] == train[2].shape[1:]
    with pytest.raises(ValueError, match="split"):
        started.check_windows("test")
    started.replay_store.close()
    assert main([*args, "--env-steps", "40", "--out", str(tmp_path / "started"), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["sailor", "--resume", str(tmp_path / "started"), "--wandb", "off", "--no-progress"]) == 0
    assert (tmp_path / "started" / "policy" / "checkpoint.json").is_file()
    for extra, message in [
        (["--env-steps", "40", "agent.planner.num_sampels=3"], "num_sampels"),
        (["--env-steps", "10", "agent.planner.horizon=16"], "planner.horizon"),
        (["--env-steps", "10", "agent.planner.horizon=2"], "executed chunk"),
        (["--env-steps", "10", "--task", "bogus"], "unknown task"),
    ]:
        capsys.readouterr()
        assert main([*args, "--out", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    for argv, message in [(["sailor", "--resume", str(tmp_path / "nope")], "no such run"),
                          (["sailor", "--resume", str(tmp_path / "cli")], "already finished"),
                          (["sailor", "--task", "pick_place"], "--base")]:
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    args[2] = str(tmp_path / "nope")
    assert main([*args, "--env-steps", "10", "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
