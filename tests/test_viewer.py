"""Dataset viewer: offscreen replay from stored sim states, overlay that follows a recorded takeover."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from helpers_data import make_store
from robolearn.data.schema import Feature
from robolearn.data.store import EpisodeStore
from robolearn.data.viewer import HEADER_HEIGHT, SOURCE_COLORS, TIMELINE_HEIGHT, EpisodeView

TAKEOVER = 6
LENGTH = 10


@pytest.fixture(scope="module")
def takeover_store(tmp_path_factory):
    """push_cube driven by random actions; the operator takes over (correction) at step TAKEOVER."""
    from robolearn.tasks.sim import TaskSim

    sim = TaskSim("push_cube", num_envs=1)
    sim.reset(seeds=[0])
    path = tmp_path_factory.mktemp("view") / "takeover.zarr"
    feats = {"obs/state": Feature("float32", (sim.obs_dim,), "obs"), "action": Feature("float32", (sim.action_dim,), "action"),
             "sim_state": Feature("float64", (sim.backend.layout.state_size,), "sim_state")}
    store = EpisodeStore.create(path, feats, task=sim.cfg.task, env_kwargs=dataclasses.asdict(sim.cfg), control_period=sim.control_period)
    rng = np.random.default_rng(0)
    states, actions, obs = [], [], []
    for _ in range(LENGTH):
        states.append(sim.get_state()[0])
        a = np.tile([1.0, 0.0, 0.0, 0.0], (1, 1))[:, : sim.action_dim] + rng.normal(0, 0.1, (1, sim.action_dim))
        actions.append(a[0])
        o, *_ = sim.step(a.clip(-1, 1))
        obs.append(o["state"][0])
    sim.close()
    store.append_episode({
        "obs/state": np.array(obs, np.float32), "action": np.array(actions, np.float32), "sim_state": np.array(states),
        "source": ["policy"] * TAKEOVER + ["correction"] * (LENGTH - TAKEOVER),
        "stage": np.array([0] * 8 + [1] * 2, np.int32), "reward": np.linspace(0, 1, LENGTH).astype(np.float32),
    }, success=True)
    store.close()
    return path


def test_overlay_follows_the_takeover(takeover_store, tmp_path):
    store = EpisodeStore.open(takeover_store)
    view = EpisodeView(store, 0, size=96)
    assert view.mode == "states"
    frames = {t: view.frame(t) for t in (0, TAKEOVER - 2, TAKEOVER - 1, TAKEOVER, LENGTH - 1)}
    view.close()
    for t, f in frames.items():
        assert f.shape == (HEADER_HEIGHT + 96 + TIMELINE_HEIGHT, 96, 3)
        corner = tuple(int(c) for c in f[HEADER_HEIGHT - 2, 94])  # header background, clear of the text
        assert corner == SOURCE_COLORS["policy" if t < TAKEOVER else "correction"], t
    # the header's text and colour change at the takeover, not between two policy steps' backgrounds
    header = {t: f[:HEADER_HEIGHT] for t, f in frames.items()}
    bg_before = (header[TAKEOVER - 2] == header[TAKEOVER - 1]).all(axis=-1).mean()
    bg_at = (header[TAKEOVER - 1] == header[TAKEOVER]).all(axis=-1).mean()
    assert bg_before > 0.9 and bg_at < 0.1
    # the scene is rendered (not blank) and shows the pusher moving
    scene0 = frames[0][HEADER_HEIGHT:HEADER_HEIGHT + 96].astype(int)
    scene_end = frames[LENGTH - 1][HEADER_HEIGHT:HEADER_HEIGHT + 96].astype(int)
    assert scene0.std() > 10 and np.abs(scene0 - scene_end).mean() > 0.05
    # the timeline shows both sources, the takeover at 60% of the width
    strip = frames[0][-TIMELINE_HEIGHT + 2]
    x_takeover = int(96 * TAKEOVER / LENGTH)
    assert tuple(strip[x_takeover - 3]) == SOURCE_COLORS["policy"] and tuple(strip[x_takeover + 3]) == SOURCE_COLORS["correction"]
    from PIL import Image

    Image.fromarray(np.concatenate([frames[TAKEOVER - 1], frames[TAKEOVER]], axis=1)).save(tmp_path / "takeover.png")


def test_cli_writes_grid_video_and_rejects_bad_input(takeover_store, tmp_path, capsys):
    import imageio_ffmpeg

    from robolearn.cli import main

    run = ["data", "view", str(takeover_store)]
    out = tmp_path / "grid.mp4"
    assert main(run + ["--episode", "0", "0", "--size", "64", "--out", str(out)]) == 0
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    assert meta["size"] == (2 * 64, HEADER_HEIGHT + 64 + TIMELINE_HEIGHT) and sum(1 for _ in reader) == LENGTH
    capsys.readouterr()
    assert main(run + ["--episode", "0", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err  # nothing overwritten unless asked
    assert main(run + ["--episode", "3", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "out of range" in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()


def test_stored_images_when_no_renderable_state(tmp_path):
    store = make_store(tmp_path / "toy.zarr", [5, 3])  # task 'toy' is no registered scene: show obs/image
    view = EpisodeView(store, 1, size=16, camera="image")
    assert view.mode == "images"
    f = view.frame(2)
    assert f[HEADER_HEIGHT + 8, 8].tolist() == [1 + 2] * 3  # episode 1's image value at t=2, upscaled
    grid_frames = list(__import__("robolearn.data.viewer", fromlist=["iter_frames"]).iter_frames(
        [EpisodeView(store, 0, size=16, camera="image"), view], cols=2))
    assert len(grid_frames) == 5 and grid_frames[0].shape[1] == 32
    with pytest.raises(ValueError, match="no camera images"):
        EpisodeView(store, 0, camera="front", mode="images")


def test_rerun_recording(takeover_store, tmp_path):
    pytest.importorskip("rerun")
    out = tmp_path / "episode.rrd"
    r = subprocess.run([sys.executable, "-m", "robolearn.cli", "data", "view", str(takeover_store), "--episode", "0",
                        "--size", "48", "--rerun-save", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 5000
