"""`robolearn intervene` end to end: scripted-operator episodes and their per-step labels, a keyboard
session driven by a fake key source (re-record, hand-back, quit, smooth takeover), the viewer overlay
through a fake launcher, training on the recorded data with every mixture, and a SIGKILLed
recorder that keeps its committed episodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from robolearn.data.store import SOURCE_CODES, EpisodeStore
from robolearn.evaluation import load_any_policy
from robolearn.tasks.collect import collect
from robolearn.teleop.devices import KeyboardDevice, QueueKeySource
from robolearn.teleop.recorder import InterventionViewer, intervention_metrics, record_interventions
from robolearn.teleop.scripted_operator import FamiliarityModel, OperatorConfig, ScriptedOperator
from robolearn.teleop.session import Mode
from robolearn.training import train

TASK = "pick_place"
CODES = {v: k for k, v in SOURCE_CODES.items()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("intervene")
    demos = root / "demos.zarr"
    collect(TASK, episodes=6, out=demos, num_envs=3, seed=0, progress=False)
    run = train("bc", demos, task=TASK, out=root / "bc", wandb_mode="off", progress=False,
                overrides=["train.steps=30", "train.batch_size=32", "policy.hidden_dims=[32,32]", "train.lr=0.001",
                           "train.eval_episodes=0", "train.val_ratio=0.0", "train.device=cpu"])
    policy, _ = load_any_policy(run / "policy")
    return root, demos, run, policy


def labels(store, i):
    ep = store.get_episode(i, ["source", "stage", "obs/state", "action", "failure_event", "primitive"])
    return "".join(CODES[c][0] for c in ep["source"]), ep


def test_scripted_rac_episode_labels_and_rule2(setup, tmp_path):
    root, demos, run, policy = setup
    fam = FamiliarityModel.from_store(EpisodeStore.open(demos))
    out = tmp_path / "rac.zarr"
    operators = []

    def make(sim):
        operators.append(ScriptedOperator(sim.task, familiarity=fam, seed=0))
        return operators[-1]

    m = record_interventions(policy, TASK, make, 3, out, seed=100, terminate_after_intervention=True, progress=False)
    store = EpisodeStore.open(out)
    assert np.abs(store.read("action")).max() <= 1.0  # the executed (clamped) actions, not raw policy outputs
    assert store.num_episodes == 3 and m["episodes"] == 3 and m["intervention_rate"] > 0 and m["recovery_steps"] > 0
    import re

    from robolearn.tasks.sim import TaskSim

    sim = TaskSim(TASK, num_envs=1)
    for i in range(3):
        seq, ep = labels(store, i)
        meta = store.episode_metadata(i)
        n_int = int(store.column("intervention_count")[i])
        # policy steps, then (RaC) one recovery segment and one correction segment, then the end
        assert re.fullmatch(r"p*(r+c+)?", seq), seq
        assert n_int == (1 if "r" in seq else 0) == len(meta["interventions"])
        if n_int:
            assert meta["outcome"] == "intervention_end" or meta["outcome"] == "success"
            seg = meta["interventions"][0]
            assert seg["recovery"] == seq.count("r") and seg["correction"] == seq.count("c")
            # a recovery is a motion: recorded operator actions move the gripper
            rec = ep["action"][np.array(list(seq)) == "r"]
            assert np.abs(rec[:, :3]).max() > 0.05
            assert np.all(ep["primitive"][np.array(list(seq)) == "p"] == -1)
        # stage labels are the task's stage of the observed state
        st = store.get_episode(i, ["sim_state"])["sim_state"]
        for t in (0, len(seq) - 1):
            sim.set_state(st[t:t + 1])
            assert sim.status()["stage"][0] == ep["stage"][t]
        assert store.column("collector")[i] == "intervene:scripted"
    assert m["operator_steps"] == sum(labels(store, i)[0].count("r") + labels(store, i)[0].count("c") for i in range(3))
    assert m == {**m, **intervention_metrics(store)}


def test_hg_dagger_protocol_hands_back_and_continues(setup, tmp_path):
    root, demos, run, policy = setup
    cfg = OperatorConfig(recover=False, stall_steps=5, cooldown=2)
    m = record_interventions(policy, TASK, lambda sim: ScriptedOperator(sim.task, config=cfg), 2, tmp_path / "hg.zarr",
                             seed=200, recovery=False, progress=False)
    store = EpisodeStore.open(tmp_path / "hg.zarr")
    seqs = [labels(store, i)[0] for i in range(store.num_episodes)]
    assert all("r" not in s for s in seqs) and m["recovery_steps"] == 0
    assert any("c" in s for s in seqs)
    # after a hand-back the policy drives again within the same episode (no rule 2)
    import re

    assert any(re.search(r"c+p+", s) for s in seqs), seqs


class ScheduledKeys(QueueKeySource):
    """Keys delivered at given poll counts (one poll per control step)."""

    def __init__(self, schedule: dict[int, list[str]]):
        super().__init__()
        self.schedule, self.calls = schedule, 0

    def drain(self):
        keys = self.schedule.get(self.calls, [])
        self.calls += 1
        return list(keys)


def test_keyboard_session_rerecord_hand_back_quit_and_smooth_takeover(setup, tmp_path):
    root, demos, run, policy = setup
    # episode A: takeover at step 3, correction at 5, hand back at 7, re-record at 9 (discarded);
    # episode A again (same seed): takeover at 2, failure at 6 (committed); episode B: quit at 1,
    # answered "d": discard the running episode.
    sched = {3: ["t"], 5: ["c"], 7: ["h"], 9: ["backspace"], 12: ["t"], 16: ["n"], 18: ["q"], 19: ["d"]}
    keys = ScheduledKeys(sched)
    dev = KeyboardDevice(keys)
    said = []
    m = record_interventions(policy, TASK, dev, 5, tmp_path / "kb.zarr", seed=7, progress=False, say=said.append)
    store = EpisodeStore.open(tmp_path / "kb.zarr")
    assert store.num_episodes == 1 and m["quit"]
    assert m["quit_episode"] == {"action": "discarded", "episode": 1, "steps": 1}
    assert any(x.startswith("quit? k keeps episode 2") for x in said)
    assert "quit: discarded the running episode 2 (1 steps, not stored)" in said
    seq, ep = labels(store, 0)
    assert seq == "pp" + "rrrr"  # the re-recorded attempt is gone; this is the second attempt
    assert store.column("seed")[0] == 7 and not store.column("success")[0]
    assert store.episode_metadata(0)["outcome"] == "operator_failure"
    # smooth takeover: with no motion keys the operator holds the robot's pose and finger command
    first = ep["action"][2]
    np.testing.assert_allclose(first[:4], 0.0, atol=1e-6)
    assert first[4] == pytest.approx(float(np.clip(ep["action"][1][4], -1, 1)), abs=1e-4)  # the policy's last grip command


def test_quit_can_keep_the_running_episode_or_be_cancelled(setup, tmp_path):
    root, demos, run, policy = setup
    # q at step 1, then w: cancelled (w does not move anything: the policy drives); takeover at 2,
    # q at 5 and k: the 5 steps are kept, labelled by the task (a failure here), and recording stops
    keys = ScheduledKeys({1: ["q"], 2: ["w"], 3: ["t"], 6: ["q"], 7: ["k"]})
    said = []
    m = record_interventions(policy, TASK, KeyboardDevice(keys), 3, tmp_path / "keep.zarr", seed=3, progress=False,
                             say=said.append)
    store = EpisodeStore.open(tmp_path / "keep.zarr")
    assert store.num_episodes == 1 and m["quit"] and m["episodes"] == 1
    assert labels(store, 0)[0] == "pp" + "rrr"
    assert store.episode_metadata(0)["outcome"] == "operator_quit" and not store.column("success")[0]
    assert m["quit_episode"] == {"action": "kept", "episode": 0, "steps": 5, "success": False}
    assert "quit cancelled: continuing" in said and "quit: kept episode 1 (5 steps, stored as a failure)" in said


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def clock(self):
        return self.now

    def sleep(self, s):
        self.sleeps.append(round(s, 6))
        self.now += s


def test_pause_and_slow_motion_keep_the_control_period(setup, tmp_path):
    root, demos, run, policy = setup
    # pause at the 4th poll, resume 3 polls later; '-' at step 4 doubles the wall time per step
    keys = ScheduledKeys({3: ["p"], 6: ["p"], 8: ["minus"], 10: ["y"]})
    fake = FakeClock()
    record_interventions(policy, TASK, KeyboardDevice(keys), 1, tmp_path / "slow.zarr", progress=False, realtime=True,
                         clock=fake.clock, sleep=fake.sleep)
    store = EpisodeStore.open(tmp_path / "slow.zarr")
    assert store.episode_lengths.tolist() == [6]  # polls while paused advance nothing
    period = store.control_period
    assert period == pytest.approx(0.1)  # recorded data keep the task's control period
    want = [period] * 3 + [1 / 30] * 2 + [period, 2 * period, 2 * period]
    np.testing.assert_allclose(fake.sleeps, want, atol=1e-6)
    # --slowmo 4 from the start; pause at takeover until a motion key
    keys = ScheduledKeys({2: ["t"], 4: ["up"], 6: ["y"]})
    fake = FakeClock()
    said = []
    record_interventions(policy, TASK, KeyboardDevice(keys), 1, tmp_path / "pause.zarr", progress=False, realtime=True,
                         slowmo=4, pause_on_takeover=True, clock=fake.clock, sleep=fake.sleep, say=said.append)
    store = EpisodeStore.open(tmp_path / "pause.zarr")
    assert labels(store, 0)[0] == "ppr"
    np.testing.assert_allclose(fake.sleeps, [4 * period] * 2 + [1 / 30] + [4 * period], atol=1e-6)
    assert said[:4] == ["episode 1/1 (seed 0): the policy drives; t takes over", "step 2: recovery (you drive)",
                        "paused: p (or a motion key) resumes", "resumed"]
    # the operator's time per intervention: takeover to the end, the pause included
    seg = store.episode_metadata(0)["interventions"][0]
    assert seg["seconds"] == pytest.approx(1 / 30 + 4 * period, abs=1e-3)
    with pytest.raises(ValueError, match="--slowmo must be in"):
        record_interventions(policy, TASK, KeyboardDevice(keys), 1, tmp_path / "x.zarr", slowmo=100)


def test_viewer_overlay_through_a_fake_launcher(setup, tmp_path):
    root, demos, run, policy = setup
    texts = []

    class Handle:
        def lock(self):
            import contextlib

            return contextlib.nullcontext()

        def set_texts(self, t):
            texts.append(t)

        def sync(self):
            pass

        def is_running(self):
            return True

        def close(self):
            pass

    keys = ScheduledKeys({2: ["t"], 4: ["y"]})
    viewer = lambda sim: InterventionViewer(sim, launcher=lambda m, d, **kw: Handle())  # noqa: E731
    record_interventions(policy, TASK, KeyboardDevice(keys), 1, tmp_path / "v.zarr", viewer=viewer, progress=False)
    labels_col, first = texts[0][0][2], texts[0][0][3]
    assert labels_col.split("\n") == ["mode", "next", "gripper", "episode", "step", "time left", "interventions", "speed"]
    first = first.split("\n")
    assert first[0] == "AUTONOMOUS  (policy drives)" and first[1] == "watch; t takes over"
    assert first[2:5] == ["open", "1/1  (seed 0)", "1/80  (79 left)"]
    last = texts[-1][0][3].split("\n")
    assert last[0] == "RECOVERY  (you drive)" and last[1] == "back to a familiar state, then c"
    assert last[4] == "4/80  (76 left)" and last[6] == "1 this episode, 1 in all"
    assert last[5] == "7.6 s of task time (7.6 s wall)" and last[7] == "real time"
    assert "t take over" in texts[-1][1][2] and "q quit" in texts[-1][1][2]  # key hints at the bottom
    store = EpisodeStore.open(tmp_path / "v.zarr")
    assert store.column("success")[0] and store.episode_metadata(0)["outcome"] == "operator_success"


def test_every_mixture_trains_on_recorded_interventions(setup, tmp_path):
    root, demos, run, policy = setup
    import shutil

    data = tmp_path / "data.zarr"
    shutil.copytree(demos, data)
    record_interventions(policy, TASK, lambda sim: ScriptedOperator(sim.task, config=OperatorConfig(stall_steps=5)), 2, data,
                         seed=300, terminate_after_intervention=True, progress=False)
    store = EpisodeStore.open(data)
    assert store.num_episodes == 8 and store.source_counts()["recovery"] > 0
    for mix in ("rac", "hg_dagger", "iwr", "sirius"):
        out = train("bc", data, out=tmp_path / mix, wandb_mode="off", progress=False,
                    overrides=[f"data.mix={mix}", "train.steps=2", "train.batch_size=8", "policy.hidden_dims=[8]",
                               "train.val_ratio=0.0", "train.device=cpu"])
        assert (out / "policy" / "checkpoint.json").is_file()


def test_killed_intervene_keeps_committed_episodes(setup, tmp_path):
    root, demos, run, policy = setup
    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "robolearn.cli", "intervene", "--checkpoint", str(run), "--teleop", "scripted",
           "--episodes", "500", "--out", str(out), "--seed", "1000", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        n = 0
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            if out.exists():
                try:
                    n = EpisodeStore.open(out).num_episodes
                except Exception:
                    continue
                if n >= 3:
                    break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    store = EpisodeStore.open(out, mode="a")  # a writer repairs any uncommitted tail
    assert store.num_episodes >= 3
    lengths = store.episode_lengths
    assert lengths.sum() == store.num_steps == len(store.read("source"))
    for i in range(store.num_episodes):
        assert store.column("seed")[i] == 1000 + i
        meta = store.episode_metadata(i)
        assert meta["operator_steps"] == int(np.isin(store.get_episode(i, ["source"])["source"], [2, 3]).sum())
    store.close()


def test_intervene_applies_the_checkpoints_task_settings_and_set(tmp_path, capsys):
    """A checkpoint trained on obs_relative push_cube data (18-dim states) runs under intervene;
    --set KEY=VALUE applies after the recorded settings."""
    from robolearn.cli import main

    demos = tmp_path / "rel.zarr"
    collect("push_cube", episodes=4, out=demos, num_envs=2, seed=0, progress=False, overrides=["obs_relative=true"])
    run = train("bc", demos, task="push_cube", out=tmp_path / "bc_rel", wandb_mode="off", progress=False,
                overrides=["train.steps=5", "train.batch_size=16", "policy.hidden_dims=[16]", "train.eval_episodes=0",
                           "train.val_ratio=0.0", "train.device=cpu"])
    out = tmp_path / "rel_int.zarr"
    base = ["intervene", "--checkpoint", str(run), "--teleop", "scripted", "--episodes", "2", "--out", str(out),
            "--demos", str(demos), "--json"]
    assert main(base + ["--set", "horizon=12"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert "obs_relative=true" in m["task_overrides"] and m["task_overrides"][-1] == "horizon=12"
    store = EpisodeStore.open(out)
    assert store.features["obs/state"].shape == (18,) and store.num_episodes == 2
    assert store.episode_lengths.max() <= 12 and store.env_kwargs["obs_relative"] is True
    assert main(base[:-3] + ["--out", str(tmp_path / "x.zarr"), "--set", "obs_relative=false"]) == 2
    err = capsys.readouterr().err
    assert "18-dim states; task push_cube gives 13" in err and len(err.strip().splitlines()) == 1
    assert main(base[:-3] + ["--out", str(tmp_path / "y.zarr"), "--set", "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def cli(args):
    """robolearn.cli.main's exit code, also where argparse rejects an argument (SystemExit)."""
    from robolearn.cli import main

    try:
        return main(args)
    except SystemExit as exc:
        return exc.code


def test_cli_errors_are_one_line(setup, tmp_path, capsys):
    main = cli
    root, demos, run, policy = setup
    base = ["intervene", "--teleop", "scripted", "--out", str(tmp_path / "x.zarr")]
    assert main(base + ["--checkpoint", str(tmp_path / "nope"), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1
    assert main(base + ["--checkpoint", str(run), "--episodes", "0"]) == 2
    err = capsys.readouterr().err
    assert "--episodes" in err and "must be >= 1" in err and len(err.strip().splitlines()) == 1
    for flag in ("--slowmo", "--speed"):
        assert main(base + ["--checkpoint", str(run), "--episodes", "1", "--teleop", "keyboard", flag, "0"]) == 2
        err = capsys.readouterr().err
        assert flag in err and len(err.strip().splitlines()) == 1
    assert main(base + ["--checkpoint", str(run), "--episodes", "1", "--task", "push_cube"]) == 2
    assert "15-dim states; task push_cube gives 13" in capsys.readouterr().err
    assert main(base + ["--checkpoint", str(run), "--episodes", "2", "--json", "--seed", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 2
