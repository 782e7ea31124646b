"""The public task API: registry, entry points, module:Class names, per-task configs, plain-torch
tasks, robots as parts, gymnasium envs by id, and the example task of docs/tasks.md end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import robolearn.tasks as T
from robolearn.tasks import registry
from robolearn.tasks.sim import TaskSim

ROOT = Path(__file__).resolve().parent.parent
LIFT = "examples.lift_task:Lift"


@pytest.fixture(autouse=True)
def _importable_examples(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))


def test_importing_the_task_api_loads_neither_torch_nor_mujoco():
    code = ("import sys, robolearn.tasks as T; T.check_task('push_cube'); T.task_names(); "
            "print(any(m in sys.modules for m in ('torch', 'mujoco')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_names_say_what_is_known():
    with pytest.raises(T.UnknownTaskError, match=r"unknown task 'pick_plce' \(known: push_cube, pick_place"):
        T.get_spec("pick_plce")
    with pytest.raises(T.UnknownTaskError, match="no module named 'no_such_pkg'"):
        T.get_spec("no_such_pkg.mod:Task")
    with pytest.raises(T.UnknownTaskError, match="has no attribute 'Nope'"):
        T.get_spec("examples.lift_task:Nope")
    with pytest.raises(T.UnknownTaskError, match="did you mean: gym:Pendulum-v1"):
        T.get_spec("gym:Pendulum-v9")


def test_register_by_name_and_class_and_replace():
    spec = T.register("lift_test", LIFT)
    try:
        assert T.get_spec("lift_test") is spec
        assert spec.task_class().__name__ == "Lift" and spec.expert_class().__name__ == "LiftExpert"
        with pytest.raises(ValueError, match="already registered"):
            T.register("lift_test", "examples.lift_task:LiftExpert")
        T.register("lift_test", LIFT, description="again", replace=True)
        assert T.get_spec("lift_test").description == "again"
        cfg = T.load_task_config("lift_test")
        assert cfg.task == "lift_test" and cfg.lift_height == 0.10
    finally:
        T.unregister("lift_test")
    assert "lift_test" not in T.task_names(plugins=False)


def test_entry_point_plugins_load_lazily_and_broken_ones_are_skipped(tmp_path, monkeypatch, capsys):
    dist = tmp_path / "robolearn_lift_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: robolearn-lift-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[robolearn.tasks]\nep_lift = examples.lift_task:Lift\n"
                                           "ep_broken = no_such_module_xyz:Task\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_PLUGINS_SCANNED", False)
    try:
        assert T.get_spec("ep_lift").task_class().__name__ == "Lift"
        names = T.task_names()
        assert "ep_lift" in names and "ep_broken" not in names
        assert "skipped task plugin 'ep_broken'" in capsys.readouterr().err
    finally:
        T.unregister("ep_lift")


def test_config_class_and_yaml_travel_with_the_task(tmp_path, monkeypatch):
    cfg = T.load_task_config(LIFT, ["lift_height=0.15", "robot=arm"])
    assert type(cfg).__name__ == "LiftConfig" and cfg.lift_height == 0.15 and cfg.horizon == 80
    with pytest.raises(ValueError, match="unknown key.*nope"):
        T.load_task_config(LIFT, ["nope=1"])
    with pytest.raises(ValueError, match="lift_height must be in"):
        T.load_task_config(LIFT, {"lift_height": 0.5})
    with pytest.raises(ValueError, match="runs with robot"):
        TaskSim("pick_place", robot="arm")  # pick_place declares the gripper only
    # A task in a user package with its YAML of defaults beside the module.
    pkg = tmp_path / "my_tasks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "hover.py").write_text(textwrap.dedent('''
        from examples.lift_task import Lift

        class Hover(Lift):
            config_yaml = "hover.yaml"
    '''))
    (pkg / "hover.yaml").write_text("horizon: 33\nlift_height: 0.2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = T.load_task_config("my_tasks.hover:Hover", ["horizon=40"])
    assert (cfg.horizon, cfg.lift_height, cfg.task) == (40, 0.2, "my_tasks.hover:Hover")
    sort = T.load_task_config("sort", ["num_cubes=5"])
    assert type(sort).__name__ == "SortConfig" and sort.horizon == 400 and "num_cubes" in sort.structural_fields


def test_a_plain_torch_task_gets_torch_tensors_on_the_cpu_backend():
    from examples.lift_task import Lift

    seen = []

    class Checked(Lift):
        def observe(self, s):
            seen.append(all(torch.is_tensor(x) for x in s))
            return super().observe(s)

    T.register("lift_checked", Checked, replace=True)
    try:
        sim = TaskSim("lift_checked", num_envs=2)
        assert not sim._host  # the numpy fast path is only for tasks declaring numpy_host_path
        sim.reset(seeds=[0, 1])
        obs, *_ = sim.step(np.zeros((2, 5)))
        assert seen and all(seen) and obs["state"].shape == (2, 12)
        sim.close()
    finally:
        T.unregister("lift_checked")


@pytest.mark.parametrize("task,robot", [(LIFT, "gripper"), (LIFT, "arm"), ("push_cube", "arm")])
def test_scripted_expert_succeeds_with_either_robot(task, robot):
    sim = TaskSim(task, num_envs=4, robot=robot)
    expert = T.make_expert(sim, seed=0)
    sim.reset(seeds=[10, 11, 12, 13])
    expert.reset()
    success, done = np.zeros(4, bool), np.zeros(4, bool)
    while not done.all():
        action, _ = expert.act(sim.read())
        _, _, term, trunc, info = sim.step(action.numpy())
        success |= info["success"] & ~done
        done |= term | trunc
    assert success.sum() >= 3, (task, robot, success)
    assert sim.task.robot.name == robot
    if robot == "arm":
        assert sim.task.layout.nu == 7 and "arm_elbow" in sim.task.layout.qpos_adr
    sim.close()


def test_arm_inverse_kinematics_reaches_its_targets():
    sim = TaskSim("push_cube", num_envs=1, robot="arm")
    arm, task = sim.task.robot, sim.task
    targets = torch.tensor([[0.1, -0.1, 0.05], [-0.2, 0.15, 0.12], [0.0, 0.2, 0.03]], dtype=torch.float64)
    yaws = torch.tensor([0.3, -0.5, 1.0], dtype=torch.float64)
    states = task.base_states(3)
    task.init_gripper(states, targets, yaws)
    for i in range(3):
        sim.set_state(states[i:i + 1].numpy())
        s = sim.read()
        np.testing.assert_allclose(arm.ee_pos(s)[0].numpy(), targets[i].numpy(), atol=1e-6)
        np.testing.assert_allclose(float(arm.ee_yaw(s)[0]), float(yaws[i]), atol=1e-6)
    # the same IK on numpy arrays (host fast path) and torch agrees
    q_t = arm.inverse_kinematics(targets, yaws)
    q_n = arm.inverse_kinematics(targets.numpy(), yaws.numpy())
    for a, b in zip(q_t, q_n):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-12)
    sim.close()


def test_check_env_accepts_the_example_and_catches_a_broken_task():
    T.check_env(LIFT)
    from examples.lift_task import Lift

    class Broken(Lift):
        def sample_init(self, gen, n):
            torch.rand(1)  # draws from the global RNG: resets are not reproducible
            states = super().sample_init(gen, n)
            col = self.layout.state_slices["qpos"].start + self.layout.qpos_adr["cube"]
            states[:, col] += torch.rand(n, dtype=states.dtype) * 0.05
            return states

    T.register("lift_broken", Broken, replace=True)
    try:
        with pytest.raises(AssertionError, match="[Dd]eterministic|twice"):  # gymnasium or robolearn check
            T.check_env("lift_broken")
    finally:
        T.unregister("lift_broken")


def test_gym_ids_mujoco_with_state_and_others_state_only():
    from robolearn.evaluation import evaluate_policy
    from robolearn.tasks.gym_adapter import GymTaskError, make_gym_task

    class Zero(torch.nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.dim = dim

        def select_action(self, obs):
            return torch.zeros(obs["state"].shape[0], self.dim)

        def reset(self, mask=None):
            pass

    report = evaluate_policy(Zero(1), "gym:Pendulum-v1", 2, seed=0, num_envs=2, progress=False,
                             task_overrides=["max_episode_steps=20"])
    assert report["n"] == 2 and all(e["length"] == 20 for e in report["episodes"])
    env = make_gym_task("gym:Pendulum-v1")
    obs, info = env.reset(seed=0)
    assert obs["state"].shape == (3,) and "sim_state" not in info and not env.mujoco
    with pytest.raises(GymTaskError, match="not a MuJoCo env: get_sim_state does not apply"):
        env.get_sim_state()
    env.close()
    hopper = make_gym_task("gym:Hopper-v5")
    _, info = hopper.reset(seed=1)
    state = hopper.get_sim_state()
    obs1, *_ = hopper.step(np.zeros(3))
    hopper.set_sim_state(state)
    obs2, *_ = hopper.step(np.zeros(3))
    np.testing.assert_array_equal(obs1["state"], obs2["state"])
    hopper.close()
    with pytest.raises(GymTaskError, match="not a Box"):
        make_gym_task("gym:CartPole-v1")
    with pytest.raises(ValueError, match="no scripted expert"):
        from robolearn.tasks.collect import collect

        collect("gym:Pendulum-v1", 1, "unused.zarr")


def test_example_task_collect_train_eval_host_and_warp(tmp_path):
    """docs/tasks.md's example, as a user runs it: collect -> train -> eval through the CLI on a
    fresh process each time (the task is named as package.module:Class)."""
    pytest.importorskip("mujoco_warp")
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl", "WANDB_MODE": "disabled"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "robolearn", *a], cwd=tmp_path, env=env,  # noqa: E731
                                    capture_output=True, text=True)
    r = run("collect", "--task", LIFT, "--episodes", "4", "--num-envs", "2", "--out", "lift.zarr", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "success rate 1.000" in r.stdout
    r = run("train", "--policy", "bc", "--data", "lift.zarr", "--task", LIFT, "--out", "run", "--wandb", "off",
            "train.steps=20", "train.log_every=10", "train.val_ratio=0", "train.eval_episodes=0", "policy.hidden_dims=[32,32]")
    assert r.returncode == 0, r.stderr
    reports = {}
    for backend in ("cpu", "warp-cpu"):
        r = run("eval", "--checkpoint", "run", "--episodes", "2", "--num-envs", "2", "--backend", backend, "--json",
                "--set", "horizon=10")
        assert r.returncode == 0, r.stderr
        reports[backend] = json.loads(r.stdout)
    for backend, rep in reports.items():
        assert rep["task"] == LIFT and rep["n"] == 2 and all(e["length"] == 10 for e in rep["episodes"]), backend


def _policy_fn(state: np.ndarray) -> np.ndarray:
    """A deterministic closed-loop actor: head for the cube, fingers closed."""
    grip, cube = state[:, 0:3], state[:, 4:7]
    move = np.clip((cube - grip) / 0.03, -1, 1)
    return np.concatenate([move, np.ones((len(state), 1))], 1)


def _reference_collect(sim, seeds_from, n_steps, max_len, state):
    """SAILOR's collector loop as it was written by hand (persistent envs, seeds from a counter,
    truncation at max_len): the behaviour persistent_rollout must reproduce."""
    if "obs" not in state:
        state["seeds"] = [seeds_from() for _ in range(sim.num_envs)]
        state["obs"] = sim.reset(seeds=state["seeds"])
        state["bufs"] = [[] for _ in range(sim.num_envs)]
    episodes = []
    for _ in range(n_steps):
        act = _policy_fn(state["obs"]["state"])
        obs, reward, term, trunc, info = sim.step(act)
        trunc = trunc | (sim.t.numpy() >= max_len)
        for i in range(sim.num_envs):
            state["bufs"][i].append((act[i].round(12).tolist(), float(reward[i])))
        finished = np.flatnonzero(term | trunc)
        for i in finished:
            episodes.append((state["seeds"][i], state["bufs"][i], bool(info["success"][i])))
            state["bufs"][i] = []
            state["seeds"][i] = seeds_from()
        if len(finished):
            mask = np.zeros(sim.num_envs, bool)
            mask[finished] = True
            new = sim.reset(torch.as_tensor(mask), seeds=[state["seeds"][i] for i in finished])
            obs = {k: np.where(mask[:, None], new[k], v) for k, v in obs.items()}
        state["obs"] = obs
    return episodes


def test_persistent_rollout_reproduces_a_hand_written_collector_and_resumes_exactly():
    from robolearn.tasks.rollout import CallbackHook, FunctionActor, persistent_rollout

    def counter(start):
        c = [start]

        def nxt():
            c[0] += 1
            return c[0]
        return nxt

    ref_sim = TaskSim("push_cube", num_envs=3)
    nxt, st = counter(100), {}
    reference = _reference_collect(ref_sim, nxt, 6, 7, st) + _reference_collect(ref_sim, nxt, 11, 7, st)

    def collector(sim, next_seed):
        bufs, episodes = [[] for _ in range(sim.num_envs)], []

        def on_step(step, pre_obs, action):
            for i in range(sim.num_envs):
                bufs[i].append((action[i].round(12).tolist(), float(step.reward[i])))

        def on_end(row, seed, success):
            episodes.append((seed, bufs[row], success))
            bufs[row] = []

        engine = persistent_rollout(sim, FunctionActor(_policy_fn), next_seed, [CallbackHook(on_step, on_end)],
                                    max_episode_steps=7)
        return engine, bufs, episodes

    sim = TaskSim("push_cube", num_envs=3)
    engine, bufs, episodes = collector(sim, counter(100))
    engine.run(max_steps=6)
    engine.run(max_steps=11)
    assert episodes == reference and len(episodes) >= 4

    # kill after 6 steps, restore into a fresh simulator, continue: the same episodes
    sim_a = TaskSim("push_cube", num_envs=3)
    nxt_a = counter(100)
    engine_a, bufs_a, episodes_a = collector(sim_a, nxt_a)
    engine_a.run(max_steps=6)
    snapshot = (sim_a.get_state(), [int(s) for s in engine_a.env.slot_seed], engine_a.env.length.copy(),
                sim_a.t.clone(), {k: v.copy() for k, v in engine_a.obs.items()}, [list(b) for b in bufs_a], nxt_a())
    states, seeds, lengths, t, obs, saved_bufs, next_counter = snapshot
    sim_b = TaskSim("push_cube", num_envs=3)
    sim_b.reset(seeds=seeds)
    sim_b.set_state(states)
    sim_b.t[:] = t
    engine_b, bufs_b, episodes_b = collector(sim_b, counter(next_counter - 1))
    bufs_b[:] = saved_bufs
    engine_b.resume(obs, seeds, lengths)
    engine_b.run(max_steps=11)
    assert episodes_a + episodes_b == reference
