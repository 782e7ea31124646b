"""`robolearn train`: exact resume, CLI end to end, DDP launch (2 CPU processes), clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from helpers_data import make_store
from robolearn.checkpoint import load_policy
from robolearn.config import ConfigError
from robolearn.training import read_metrics, train

TINY_DIFFUSION = [
    "train.batch_size=16", "train.log_every=1", "train.eval_every=10", "train.save_every=10", "train.val_ratio=0.2",
    "policy.down_dims=[16,32]", "policy.diffusion_step_embed_dim=16", "train.lr_warmup_steps=2",
]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "toy.zarr"
    make_store(path, [30, 40, 35, 50, 45]).close()
    return path


def test_resume_reproduces_the_uninterrupted_loss_curve(toy, tmp_path):
    full = train("diffusion", toy, out=tmp_path / "full", overrides=["train.steps=20", *TINY_DIFFUSION], wandb_mode="off", progress=False)
    # simulate an interruption right after the step-10 checkpoint
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "last")
    shutil.copytree(cut / "checkpoints" / "step_0000010", cut / "checkpoints" / "last")
    resumed = train(None, None, resume=cut, wandb_mode="off", progress=False)
    a, b = read_metrics(full), read_metrics(resumed)
    assert [m["step"] for m in a] == list(range(1, 21))
    assert a == b  # bit-identical losses, learning rates and validation losses
    pa, pb = load_policy(full / "policy"), load_policy(resumed / "policy")
    for (ka, va), (kb, vb) in zip(pa.state_dict().items(), pb.state_dict().items()):
        assert ka == kb and (va == vb).all(), ka


def test_cli_end_to_end_and_errors(toy, tmp_path):
    cmd = [sys.executable, "-m", "robolearn.cli", "train", "--policy", "bc", "--data", str(toy), "--out", str(tmp_path / "bc"),
           "--wandb", "off", "train.steps=5", "train.batch_size=8", "policy.hidden_dims=[32,32]"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "bc" / "policy" / "model.safetensors").is_file()
    cfg = (tmp_path / "bc" / "config.yaml").read_text()
    assert "hidden_dims:\n  - 32\n  - 32" in cfg
    bad = subprocess.run(cmd[:-1] + ["policy.hiden_dims=[3]"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown key" in bad.stderr and "hiden_dims" in bad.stderr
    # a fresh --out: the first run's directory now exists and an existing --out is refused before the data is opened
    missing = subprocess.run([*cmd[:7], str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "bc_missing"), *cmd[10:]],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no episode store" in missing.stderr
    with pytest.raises(ConfigError, match="data.mix"):
        train("bc", toy, out=tmp_path / "x", overrides=["data.mix=bogus"], wandb_mode="off", progress=False)


def test_ddp_launch_with_two_cpu_processes(toy, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "-m", "robolearn.training",
           "--policy", "bc", "--data", str(toy), "--out", str(tmp_path / "ddp"), "--wandb", "off",
           "train.steps=4", "train.batch_size=8", "policy.hidden_dims=[32,32]", "train.num_workers=0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["world_size"] == 2
    assert len(read_metrics(tmp_path / "ddp")) >= 1
    load_policy(tmp_path / "ddp" / "policy")


def test_training_on_expert_action_labels(tmp_path):
    """data.action_key=expert_action imitates the stored noise-free labels (DART), normalized by
    their own statistics, and saying it for a store without the column is a clear error."""
    import numpy as np
    import torch

    from helpers_data import FEATURES, make_episode
    from robolearn.data.store import EpisodeStore, Feature

    path = tmp_path / "dart.zarr"
    store = EpisodeStore.create(path, {**FEATURES, "expert_action": Feature("float32", (2,), "aux")}, task="toy",
                                control_period=0.1)
    for i in range(4):
        ep = make_episode(i, 30)
        ep["expert_action"] = np.tile(np.float32([0.25, -0.5]), (30, 1))  # the label: constant
        ep["action"] = ep["action"] * 0.01  # what ran: something else
        store.append_episode(ep, success=True, collector="scripted", seed=i)
    store.close()
    over = ["train.steps=300", "train.batch_size=32", "train.lr=0.003", "policy.hidden_dims=[32,32]",
            "policy.state_keys=[state]", "policy.image_keys=[]", "train.val_ratio=0.0"]
    run = train("bc", path, out=tmp_path / "dart", overrides=[*over, "data.action_key=expert_action"],
                wandb_mode="off", progress=False)
    policy = load_policy(run / "policy")
    policy.reset()
    state = torch.tensor([[[1.0, 3.0, 1003.0]]])
    with torch.no_grad():
        act = policy.select_action({"state": state})
    np.testing.assert_allclose(act[0].numpy(), [0.25, -0.5], atol=0.05)
    make_store(tmp_path / "plain.zarr", [30, 30]).close()
    with pytest.raises(ValueError, match="data.action_key=expert_action.*no such column"):
        train("bc", tmp_path / "plain.zarr", out=tmp_path / "y", overrides=[*over, "data.action_key=expert_action"],
              wandb_mode="off", progress=False)


def test_background_batches_give_the_same_training_as_inline_ones(toy, tmp_path):
    runs = [train("diffusion", toy, out=tmp_path / f"w{w}", overrides=["train.steps=12", f"train.num_workers={w}", *TINY_DIFFUSION],
                  wandb_mode="off", progress=False) for w in (0, 2)]
    assert read_metrics(runs[0]) == read_metrics(runs[1])  # same batches in the same order
    with pytest.raises(ValueError, match="num_workers"):
        train("diffusion", toy, out=tmp_path / "bad", overrides=["train.steps=2", "train.num_workers=-1", *TINY_DIFFUSION],
              wandb_mode="off", progress=False)


def test_demo_reports_stages_and_resumes(tmp_path):
    """A tiny demo end to end, then --resume: finished stages are not redone, the report keeps
    every session's seconds and load average; an existing directory is refused without --resume."""
    from robolearn.demo import run_demo

    tiny = ["policy.down_dims=[16,32]", "policy.diffusion_step_embed_dim=16", "train.batch_size=8", "train.save_every=2"]
    out = tmp_path / "demo"
    run_demo(episodes=2, steps=4, eval_episodes=1, num_envs=1, out=out, extra_overrides=tiny, progress=False)
    state = json.loads((out / "demo.json").read_text())
    assert all(state["stages"][s]["done"] for s in ("collect", "train", "evaluate"))
    assert state["result"]["n"] == 1 and len(state["result"]["ci95"]) == 2
    assert state["settings"]["task_overrides"] == ["obs_relative=true"]
    report = (out / "README.md").read_text()
    assert "95% CI (Wilson)" in report and "load average" in report and "| train |" in report
    # interrupted after training: pretend the evaluation never ran, then resume
    state["stages"].pop("evaluate")
    (out / "demo.json").write_text(json.dumps(state))
    policy_mtime = (out / "train" / "policy" / "checkpoint.json").stat().st_mtime
    run_demo(out=out, resume=True, progress=False)
    again = json.loads((out / "demo.json").read_text())
    assert len(again["stages"]["train"]["sessions"]) == 1  # not retrained
    assert (out / "train" / "policy" / "checkpoint.json").stat().st_mtime == policy_mtime
    assert again["stages"]["evaluate"]["done"] and again["result"] == state["result"]  # same seeds, same result
    with pytest.raises(FileExistsError, match="--resume"):
        run_demo(episodes=2, steps=4, eval_episodes=1, num_envs=1, out=out, progress=False)
    bad = subprocess.run([sys.executable, "-m", "robolearn.cli", "demo", "--resume", str(out), "--steps", "9"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--resume continues" in bad.stderr


@pytest.mark.parametrize("preset", ["diffusion_small", "hierarchical_small"])
def test_train_by_preset_name(toy, tmp_path, preset):
    """`train --policy diffusion_small` (the README's CPU preset) trains the policy its YAML names."""
    tiny = TINY_DIFFUSION if preset == "diffusion_small" else ["train.batch_size=16"]
    run = train(preset, toy, out=tmp_path / preset, overrides=["train.steps=2", *tiny], wandb_mode="off", progress=False)
    assert (run / "policy" / "model.safetensors").is_file()
    assert load_policy(run / "policy").__class__.__name__.lower().startswith(preset.removesuffix("_small"))
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["policy"] == preset.removesuffix("_small") and run_json["preset"] == preset
