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
    # episode A again (same seed): takeover at 2, failure at 6 (committed); episode B: quit at 1.
    sched = {3: ["t"], 5: ["c"], 7: ["h"], 9: ["r"], 12: ["t"], 16: ["n"], 18: ["q"]}
    keys = ScheduledKeys(sched)
    dev = KeyboardDevice(keys)
    m = record_interventions(policy, TASK, dev, 5, tmp_path / "kb.zarr", seed=7, progress=False)
    store = EpisodeStore.open(tmp_path / "kb.zarr")
    assert store.num_episodes == 1 and m["quit"]
    seq, ep = labels(store, 0)
    assert seq == "pp" + "rrrr"  # the re-recorded attempt is gone; this is the second attempt
    assert store.column("seed")[0] == 7 and not store.column("success")[0]
    assert store.episode_metadata(0)["outcome"] == "operator_failure"
    # smooth takeover: with no motion keys the operator holds the robot's pose and finger command
    first = ep["action"][2]
    np.testing.assert_allclose(first[:4], 0.0, atol=1e-6)
    assert first[4] == pytest.approx(float(np.clip(ep["action"][1][4], -1, 1)), abs=1e-4)  # the policy's last grip command


def test_viewer_overlay_through_a_fake_launcher(setup, tmp_path):
    root, demos, run, policy = setup
    texts = []

    class Handle:
        def lock(self):
            import contextlib

            return contextlib.nullcontext()

        def set_texts(self, t):
            texts.append(t[0][3])

        def sync(self):
            pass

        def is_running(self):
            return True

        def close(self):
            pass

    keys = ScheduledKeys({2: ["t"], 4: ["y"]})
    viewer = lambda sim: InterventionViewer(sim, launcher=lambda m, d, key_callback=None: Handle())  # noqa: E731
    record_interventions(policy, TASK, KeyboardDevice(keys), 1, tmp_path / "v.zarr", viewer=viewer, progress=False)
    assert texts[0].startswith("AUTONOMOUS\n1/1") and texts[-1].startswith("RECOVERY\n1/1\n1")
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


def test_cli_errors_are_one_line(setup, tmp_path, capsys):
    from robolearn.cli import main

    root, demos, run, policy = setup
    base = ["intervene", "--teleop", "scripted", "--out", str(tmp_path / "x.zarr")]
    assert main(base + ["--checkpoint", str(tmp_path / "nope"), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1
    assert main(base + ["--checkpoint", str(run), "--episodes", "0"]) == 2
    assert "--episodes must be >= 1" in capsys.readouterr().err
    assert main(base + ["--checkpoint", str(run), "--episodes", "1", "--task", "push_cube"]) == 2
    assert "15-dim states; task push_cube gives 13" in capsys.readouterr().err
    assert main(base + ["--checkpoint", str(run), "--episodes", "2", "--json", "--seed", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 2
