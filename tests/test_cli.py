"""The command line: fast one-line errors, one task-override flag, defaults in --help, choices in
errors, `python -m robolearn`, and DDP through `torchrun -m robolearn train` on 2 CPU processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl", "WANDB_MODE": "disabled"}


def robolearn(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robolearn", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd or ROOT)


# Commands that fail on bad input; each must answer with one line and exit code 2, fast.
FAILING = [
    ("unknown task", ["collect", "--task", "pick_plce", "--episodes", "1", "--out", "x.zarr"], "unknown task 'pick_plce'"),
    ("unknown task at train start", ["train", "--policy", "bc", "--data", "d.zarr", "--task", "pick_plce"], "unknown task"),
    ("unknown task at eval start", ["eval", "--checkpoint", "ckpt", "--task", "pick_plce"], "unknown task"),
    ("unknown task at sailor start", ["sailor", "--base", "b", "--demos", "d", "--task", "pick_plce", "--env-steps", "1"],
     "unknown task"),
    ("unknown task at offline start", ["offline", "--algo", "iql", "--data", "d.zarr", "--task", "pick_plce"], "unknown task"),
    ("unknown task at finetune start", ["finetune", "--checkpoint", "c", "--task", "pick_plce"], "unknown task"),
    ("unknown task at demo start", ["demo", "--task", "pick_plce"], "unknown task"),
    ("unknown task at intervene start", ["intervene", "--checkpoint", "c", "--teleop", "scripted", "--episodes", "1",
                                          "--out", "o.zarr", "--task", "pick_plce"], "unknown task"),
    ("misspelled policy", ["train", "--policy", "diffusoin", "--data", "d.zarr"], "choose from bc, diffusion"),
    ("missing checkpoint", ["eval", "--checkpoint", "/nonexistent/run"], "does not exist"),
    ("bad number", ["collect", "--task", "push_cube", "--episodes", "0", "--out", "x.zarr"], "must be >= 1"),
    ("bad choice", ["eval", "--checkpoint", "c", "--backend", "tpu"], "invalid choice: 'tpu' (choose from 'cpu', 'gpu', 'warp-cpu')"),
]


@pytest.mark.parametrize("name,args,message", FAILING, ids=[f[0] for f in FAILING])
def test_failing_commands_answer_with_one_line(name, args, message, tmp_path):
    r = robolearn(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert lines[0].startswith("robolearn")


def test_a_failing_command_answers_within_half_a_second(tmp_path):
    """The issue's bar: 0.5 s on a quiet box (lazy imports: no torch / mujoco before the arguments
    and the task name are checked). The best of 3 runs counts, so a busy shared CPU does not
    make it flaky; the import check below is exact."""
    for args in (["collect", "--task", "pick_plce", "--episodes", "1", "--out", "x.zarr"],
                 ["intervene", "--checkpoint", "c", "--teleop", "scripted", "--episodes", "1", "--out", "o.zarr",
                  "--task", "pick_plce"],
                 ["train", "--policy", "diffusoin", "--data", "d.zarr"],
                 ["eval", "--checkpoint", "/nonexistent/run", "--task", "push_cube"]):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            r = robolearn(*args, cwd=tmp_path)
            times.append(time.perf_counter() - t0)
            assert r.returncode == 2
        assert min(times) < 0.5, (args, times)
    code = ("import sys; from robolearn.cli import main\n"
            "rc = main(['eval', '--checkpoint', '/nonexistent/run', '--task', 'push_cube'])\n"
            "print(rc, sorted(m for m in ('torch', 'mujoco', 'gymnasium', 'zarr') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert out.stdout.split("\n")[0] == "2 []", out.stdout + out.stderr


def test_one_override_flag_and_defaults_in_help():
    for cmd in ("collect", "eval", "train", "sailor"):
        text = robolearn(cmd, "--help").stdout
        assert "--set KEY=VALUE" in text, cmd
        assert "--task-set" not in text and "--task-override" not in text, cmd
    text = robolearn("eval", "--help").stdout
    assert "(default: 50)" in text and "(default: cpu)" in text
    assert "(default: 1)" in robolearn("collect", "--help").stdout
    # the old names still parse (hidden, deprecated)
    r = robolearn("data", "rollout", "--help")
    assert "--set KEY=VALUE" in r.stdout and "--task-override" not in r.stdout


def test_python_dash_m_lists_tasks_including_a_module_class():
    r = robolearn("tasks", "push_cube", "examples.lift_task:Lift", "gym:Pendulum-v1")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert "(13,)" in rows["push_cube"] and "gripper" in rows["push_cube"]
    assert "(12,)" in rows["examples.lift_task:Lift"] and "yes" in rows["examples.lift_task:Lift"]
    assert "state-only" in rows["gym:Pendulum-v1"]


def test_torchrun_two_cpu_processes_with_gloo(tmp_path):
    """`torchrun --nproc_per_node 2 -m robolearn train`: two processes, gloo, one run directory."""
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not on PATH")
    r = robolearn("collect", "--task", "push_cube", "--episodes", "2", "--out", "d.zarr", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "robolearn", "train", "--policy", "bc",
                        "--data", "d.zarr", "--out", "run", "--wandb", "off", "train.steps=2", "train.log_every=1",
                        "train.val_ratio=0", "policy.hidden_dims=[16,16]"],
                       capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["world_size"] == 2
    assert (tmp_path / "run" / "policy" / "checkpoint.json").is_file()
    assert r.stdout.count("run directory:") == 1  # rank 0 reports
