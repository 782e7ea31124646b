"""The real viewer window: `robolearn intervene --teleop keyboard --viewer` on a virtual X display
(Xvfb, MUJOCO_GL=glfw), keys sent to the window with xdotool, screenshots with ImageMagick's
`import`. Checks that teleop keys (most of them MuJoCo viewer shortcuts) leave the scene rendered
as before, that a key MuJoCo keeps (0: geom group 0) still reaches the viewer, and that the store's
recovery / correction labels and actions match the keys held. Skipped where Xvfb, xdotool, import
or glfw are missing (`bash scripts/setup.sh` installs the X tools when run as root)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from robolearn.data.store import SOURCE_CODES, EpisodeStore
from robolearn.teleop.virtual_display import VirtualDisplay, image_stats, missing_tools

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())} (see scripts/setup.sh)")
CODES = {v: k for k, v in SOURCE_CODES.items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pytest.importorskip("glfw")
    pytest.importorskip("PIL")
    from robolearn.tasks.collect import collect
    from robolearn.training import train

    root = tmp_path_factory.mktemp("window")
    demos = root / "demos.zarr"
    collect("push_cube", episodes=4, out=demos, num_envs=2, seed=0, progress=False, overrides=["obs_relative=true"])
    return train("bc", demos, task="push_cube", out=root / "bc", wandb_mode="off", progress=False,
                 overrides=["train.steps=5", "train.batch_size=16", "policy.hidden_dims=[16]", "train.eval_episodes=0",
                            "train.val_ratio=0.0", "train.device=cpu"])


def test_keyboard_teleop_in_a_real_viewer_window(checkpoint, tmp_path):
    out = tmp_path / "window.zarr"
    with VirtualDisplay() as x:
        cmd = [sys.executable, "-m", "robolearn.cli", "intervene", "--checkpoint", str(checkpoint), "--teleop", "keyboard",
               "--viewer", "--episodes", "1", "--out", str(out), "--slowmo", "3", "--set", "horizon=300"]
        proc = subprocess.Popen(cmd, env={**x.env, "MUJOCO_GL": "glfw", "OMP_NUM_THREADS": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
        reader.start()
        try:
            window = x.find_window("MuJoCo", proc=proc)
            x.focus(window)
            deadline = time.time() + 60
            while not any(line.startswith("intervene: episode 1/1 (seed 0)") for line in lines):
                assert proc.poll() is None and time.time() < deadline, "".join(lines)[-2000:]
                time.sleep(0.1)
            time.sleep(1.5)  # a few autonomous steps
            before = image_stats(x.screenshot(window, tmp_path / "autonomous.png"))
            # the very first key reaches MuJoCo's shortcut (w: wireframe, a render flag) before the
            # viewer takes the keys over; the viewer puts the flag back
            x.key("w")
            time.sleep(0.5)
            x.key("t")  # take over: recovery
            time.sleep(0.4)
            x.hold("d", 1.5)  # right on screen: +x with the starting camera
            time.sleep(0.4)
            x.key("c")  # correction
            time.sleep(0.4)
            x.hold("w", 1.5)  # away from the viewer: +y
            x.key("space")  # grip toggle
            time.sleep(1.0)
            after = image_stats(x.screenshot(window, tmp_path / "correction.png"))
            x.key("0")  # not a teleop key: MuJoCo hides geom group 0 (the check below can fail)
            time.sleep(1.0)
            hidden = image_stats(x.screenshot(window, tmp_path / "hidden.png"))
            x.key("y")  # success: the only episode ends, the command exits
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=10)
    stderr = "".join(lines)
    assert proc.returncode == 0, stderr[-2000:]
    assert "space, g" in stderr and "episode 1/1 stored: operator_success" in stderr  # key map printed at start
    # the scene renders as before the teleop keys (w t c d space are all MuJoCo flag shortcuts) ...
    assert before["mean"] > 60 and abs(after["mean"] - before["mean"]) < 0.1 * before["mean"], (before, after)
    assert abs(after["dark_fraction"] - before["dark_fraction"]) < 0.05, (before, after)
    # ... while a key MuJoCo keeps does change it: the comparison detects a toggled flag
    assert abs(hidden["mean"] - before["mean"]) > 0.2 * before["mean"], (before, hidden)

    store = EpisodeStore.open(out)
    ep = store.get_episode(0, ["source", "action"])
    seq = "".join(CODES[c][0] for c in ep["source"])
    assert re.fullmatch(r"p+r+c+", seq), seq
    assert store.column("intervention_count").tolist() == [1] and store.column("success").tolist() == [True]
    seg = store.episode_metadata(0)["interventions"][0]
    assert seg["recovery"] == seq.count("r") and seg["correction"] == seq.count("c") and seg["seconds"] > 3
    act = ep["action"]
    rec, cor = act[np.array(list(seq)) == "r"], act[np.array(list(seq)) == "c"]
    moving = rec[np.abs(rec[:, :2]).max(1) > 0.05]
    assert len(moving) >= 2 and np.all(moving[:, 0] > 0.05) and np.all(np.abs(moving[:, 1]) < 0.3 * moving[:, 0]), rec
    moving = cor[np.abs(cor[:, :2]).max(1) > 0.05]
    assert len(moving) >= 2 and np.all(moving[:, 1] > 0.05), cor
    assert np.all(np.abs(act[:, 2][np.array(list(seq)) != "p"]) < 0.01)  # no up/down key was sent
    assert abs(cor[-1, 3]) == 1 and np.sign(cor[-1, 3]) == -np.sign(rec[0, 3])  # space toggled the grip once
