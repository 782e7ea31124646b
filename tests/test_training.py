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
    missing = subprocess.run([*cmd[:7], str(tmp_path / "nope.zarr"), *cmd[8:]], capture_output=True, text=True, timeout=300)
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
