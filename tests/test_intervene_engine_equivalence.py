"""`robolearn intervene` on the shared rollout engine records what its own loop recorded before
the move (commit a24c311): the pre-change recorder.py is taken from git and overlaid on a copy of
today's package, then both run the same scripted-operator and keyboard scenarios (RaC rule 2,
HG-DAgger, perturbations, re-record, quit keep/discard, pause and slow motion with a fake clock)
and must give identical stores array for array, metrics and operator messages. Slow (~1 min):
a policy is trained and every scenario runs twice, in subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "a24c311^"  # the last commit with intervene's own loop

SCENARIOS = r'''
import json, os, sys, pathlib
from robolearn.data.store import EpisodeStore
from robolearn.evaluation import load_any_policy
from robolearn.teleop.devices import KeyboardDevice, QueueKeySource
from robolearn.teleop.recorder import record_interventions
from robolearn.teleop.scripted_operator import FamiliarityModel, OperatorConfig, ScriptedOperator

prep, out = pathlib.Path(sys.argv[1]).resolve(), pathlib.Path(sys.argv[2])
out.mkdir(parents=True)
os.chdir(out)
policy, _ = load_any_policy(prep / "bc" / "policy")
fam = FamiliarityModel.from_store(EpisodeStore.open(prep / "demos.zarr"))

class Keys(QueueKeySource):
    def __init__(self, schedule):
        super().__init__(); self.schedule, self.calls = schedule, 0
    def drain(self):
        k = self.schedule.get(self.calls, []); self.calls += 1; return list(k)

class FakeClock:
    def __init__(self): self.now, self.sleeps = 0.0, []
    def clock(self): return self.now
    def sleep(self, s): self.sleeps.append(round(s, 6)); self.now += s

report = {}
def run(name, dev, n, **kw):
    said, fake = [], FakeClock()
    try:
        m = record_interventions(policy, "pick_place", dev, n, f"{name}.zarr", progress=False, say=said.append,
                                 clock=fake.clock, sleep=fake.sleep, **kw)
    except Exception as exc:
        m = {"error": f"{type(exc).__name__}: {exc}"}
    report[name] = {"metrics": m, "said": said, "sleeps": fake.sleeps}

run("rac", lambda sim: ScriptedOperator(sim.task, familiarity=fam, seed=0), 3, seed=100, terminate_after_intervention=True)
run("hg", lambda sim: ScriptedOperator(sim.task, config=OperatorConfig(recover=False, stall_steps=5, cooldown=2)), 2,
    seed=200, recovery=False)
run("perturb", lambda sim: ScriptedOperator(sim.task, familiarity=fam, seed=3), 2, seed=400, perturb=0.05)
run("budget", lambda sim: ScriptedOperator(sim.task, config=OperatorConfig(stall_steps=5)), 4, seed=500, max_operator_steps=5)
run("kb", KeyboardDevice(Keys({3: ["t"], 5: ["c"], 7: ["h"], 9: ["backspace"], 12: ["t"], 16: ["n"], 18: ["q"], 19: ["d"]})), 5, seed=7)
run("keep", KeyboardDevice(Keys({1: ["q"], 2: ["w"], 3: ["t"], 6: ["q"], 7: ["k"]})), 3, seed=3)
run("end0", KeyboardDevice(Keys({0: ["y"], 5: ["t"], 8: ["y"]})), 2, seed=11)
run("slow", KeyboardDevice(Keys({3: ["p"], 6: ["p"], 8: ["minus"], 10: ["y"]})), 1, realtime=True)
run("pause_quit", KeyboardDevice(Keys({2: ["t"], 4: ["p"], 6: ["q"], 7: ["k"]})), 2, seed=21, realtime=True,
    pause_on_takeover=True)
run("rerecord_limit", KeyboardDevice(Keys({i: ["backspace"] for i in range(1, 40, 3)})), 2, seed=5, max_rerecords=3)
run("time_limit", KeyboardDevice(Keys({})), 2, seed=30, task_overrides=["horizon=15"])
pathlib.Path("report.json").write_text(json.dumps(report, default=str))
'''


def _git_show(rev_path: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "show", rev_path], check=True, capture_output=True,
                              text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


@pytest.mark.slow
def test_engine_intervene_matches_the_pre_engine_loop(tmp_path):
    old_recorder = _git_show(f"{BEFORE}:robolearn/teleop/recorder.py")
    if old_recorder is None:
        pytest.skip("the pre-change commit is not in this checkout's git history")
    from robolearn.data.store import EpisodeStore
    from robolearn.tasks.collect import collect
    from robolearn.training import train

    old = tmp_path / "old"
    shutil.copytree(ROOT / "robolearn", old / "robolearn", ignore=shutil.ignore_patterns("__pycache__"))
    (old / "robolearn" / "teleop" / "recorder.py").write_text(old_recorder)
    for name in ("envs", "policies"):
        (old / name).symlink_to(ROOT / name)
    prep = tmp_path / "prep"
    collect("pick_place", episodes=6, out=prep / "demos.zarr", num_envs=3, seed=0, progress=False)
    train("bc", prep / "demos.zarr", task="pick_place", out=prep / "bc", wandb_mode="off", progress=False,
          overrides=["train.steps=30", "train.batch_size=32", "policy.hidden_dims=[32,32]", "train.lr=0.001",
                     "train.eval_episodes=0", "train.val_ratio=0.0", "train.device=cpu"])
    script = tmp_path / "scenarios.py"
    script.write_text(SCENARIOS)
    for side, path in (("before", old), ("after", ROOT)):
        env = {**os.environ, "PYTHONPATH": str(path), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, str(script), str(prep), str(tmp_path / side)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    before = json.loads((tmp_path / "before" / "report.json").read_text())
    after = json.loads((tmp_path / "after" / "report.json").read_text())
    assert "error" not in before["kb"]["metrics"], before["kb"]
    assert before["rerecord_limit"]["metrics"]["error"].startswith("RuntimeError: episode 0 was re-recorded 4 times")
    steps = 0
    for name in before:
        assert after[name] == before[name], name
        a, b = tmp_path / "before" / f"{name}.zarr", tmp_path / "after" / f"{name}.zarr"
        assert a.exists() == b.exists(), name
        if not a.exists():
            continue
        sa, sb = EpisodeStore.open(a), EpisodeStore.open(b)
        assert sorted(sa.features) == sorted(sb.features)
        for key in sa.features:
            x, y = sa.read(key), sb.read(key)
            assert x.dtype == y.dtype and np.array_equal(x, y), (name, key)
        for col in ("length", "success", "return", "collector", "seed", "intervention_count", "metadata"):
            assert np.array_equal(sa.column(col), sb.column(col)), (name, col)
        steps += sa.num_steps
    assert steps > 300  # the scenarios recorded real episodes
