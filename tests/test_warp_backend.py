"""MuJoCo Warp backend on Warp's CPU device: put_model, parity with MuJoCo C, masked resets,
overflow errors, device env + eval parity, and the `--backend gpu` error without CUDA.

Kernels are compiled once into Warp's kernel cache (~/.cache/warp/<version>, or WARP_CACHE_PATH)
and reused by later tests and runs; a cold cache adds roughly a minute of compilation.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from robolearn.tasks.backend import MujocoCBackend
from robolearn.tasks.base import SimulationError
from robolearn.tasks.registry import build_model, expert_class, load_task_config

try:
    import mujoco_warp  # noqa: F401
    import warp  # noqa: F401

    HAVE_WARP = True
except ImportError:
    HAVE_WARP = False

needs_warp = pytest.mark.skipif(not HAVE_WARP, reason="MuJoCo Warp not installed (extra 'gpu': pip install -e '.[gpu]')")

# Largest variant of each task (sort with its maximum of five cubes).
TASK_OVERRIDES = {"push_cube": [], "pick_place": [], "push_t": [], "sort": ["num_cubes=5"]}


def _model(name, overrides=()):
    cfg = load_task_config(name, list(overrides))
    cls, model = build_model(name, cfg)
    return cfg, cls, model


def test_importing_robolearn_does_not_import_warp():
    code = ("import sys, robolearn, robolearn.tasks, robolearn.evaluation, robolearn.tasks.warp_backend, "
            "robolearn.tasks.device_env; assert 'warp' not in sys.modules and 'mujoco_warp' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backend_gpu_without_cuda_is_a_clear_error(tmp_path):
    if HAVE_WARP:
        from robolearn.tasks.warp_backend import cuda_available

        if cuda_available():
            pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, "-m", "robolearn.cli", "eval", "--checkpoint", str(tmp_path),
                           "--backend", "gpu", "--episodes", "1"], capture_output=True, text=True)
    assert proc.returncode != 0
    msg = proc.stderr.strip().splitlines()[-1]
    assert ("CUDA device" in msg) if HAVE_WARP else ("gpu extra" in msg), msg
    assert "Traceback" not in proc.stderr or "WarpUnavailableError" in proc.stderr


@needs_warp
@pytest.mark.parametrize("name", list(TASK_OVERRIDES))
def test_every_task_loads_with_put_model(name):
    from robolearn.tasks.warp_backend import MujocoWarpBackend

    cfg, cls, model = _model(name, TASK_OVERRIDES[name])
    wb = MujocoWarpBackend(model, 2, device="cpu")
    task = cls(cfg, wb.layout)
    st = task.sample_init(torch.Generator().manual_seed(0), 2)
    wb.reset(torch.ones(2, dtype=torch.bool), st)
    # The state round-trips through mjw.set_state/get_state in the STATE_SPEC layout (float32).
    np.testing.assert_allclose(wb.get_state().numpy(), st.numpy(), atol=1e-6)
    wb.set_ctrl(task.action_to_ctrl(wb.read(), torch.zeros(2, task.action_dim)))
    wb.step(cfg.frame_skip)
    s = wb.read()
    assert s.qpos.shape == (2, model.nq) and s.sensordata.shape == (2, model.nsensordata)
    assert torch.isfinite(task.observe(s)).all()


# Worlds (of 16) whose object/gripper positions must stay within 1 mm of MuJoCo C for 50 control
# steps. Pushing a cube with the closed fingers is sensitive to solver round-off: MuJoCo C against
# itself with solver tolerance 1e-8 vs 1e-10 already exceeds 1 mm (up to 4 cm) in 3 of these 16
# worlds, and MJWarp (float32) does in about 4; every other task stays within 3e-5 m, except one
# sort world since the expert's finger-reach obstacle rule (commit 62f3064): cubes 13 cm apart, cube 0
# now grasped across the other face pair, 2.3e-2 m apart after 50 steps while success and reward
# agree (the neighbour stays > 10 cm from the fingers). MuJoCo C against itself leaves 1 mm in one
# sort world too when only the start state is rounded to float32 (scripts/parity_roundoff.py,
# docs/results/gpu.md), and that world 10 is the most tolerance-sensitive sort world on MuJoCo C.
MIN_WORLDS_WITHIN_1MM = {"push_cube": 11, "pick_place": 16, "push_t": 16, "sort": 15}


@needs_warp
@pytest.mark.parametrize("name", list(TASK_OVERRIDES))
def test_parity_with_mujoco_c(name):
    from robolearn.tasks.parity import compare_with_mujoco_c

    overrides = ["num_cubes=2"] if name == "sort" else []
    res = compare_with_mujoco_c(name, "warp-cpu", num_envs=16, steps=50, overrides=overrides)
    msg = f"{name}: max deviation per world {[f'{x:.1e}' for x in res['max_dev'].tolist()]}"
    assert res["within_1mm"] >= MIN_WORLDS_WITHIN_1MM[name], msg
    assert res["success_agree"] >= 0.99, msg
    assert res["reward_agree"] >= 0.99, msg


@needs_warp
def test_masked_reset_touches_only_selected_worlds_and_leaves_no_stale_solver_data():
    from robolearn.tasks.warp_backend import MujocoWarpBackend

    cfg, cls, model = _model("push_cube")
    N = 4
    wb = MujocoWarpBackend(model, N, device="cpu")
    task = cls(cfg, wb.layout)
    wb.reset(torch.ones(N, dtype=torch.bool), task.sample_init(torch.Generator().manual_seed(0), N))
    push = torch.tensor([[1.0, 0.5, -1.0, 1.0]]).repeat(N, 1)
    for _ in range(3):
        wb.set_ctrl(task.action_to_ctrl(wb.read(), push))
        wb.step(cfg.frame_skip)
    before = wb.get_state()
    mask = torch.tensor([True, False, True, False])
    new = task.sample_init(torch.Generator().manual_seed(7), 2)
    wb.reset(mask, new)
    after = wb.get_state()
    assert torch.equal(after[~mask], before[~mask])  # bit-identical: untouched worlds
    np.testing.assert_allclose(after[mask].numpy(), new.numpy(), atol=1e-6)  # incl. warm start, mocap, ctrl
    # A reset world continues exactly like a fresh backend started from the same state: nothing
    # stale (warm start, contacts, applied forces) survives the masked reset_data.
    fresh = MujocoWarpBackend(model, 2, device="cpu")
    fresh.reset(torch.ones(2, dtype=torch.bool), new)
    for _ in range(3):
        a = torch.tensor([[0.3, -0.2, -1.0, 1.0]]).repeat(N, 1)
        wb.set_ctrl(task.action_to_ctrl(wb.read(), a))
        fresh.set_ctrl(task.action_to_ctrl(fresh.read(), a[:2]))
        wb.step(cfg.frame_skip)
        fresh.step(cfg.frame_skip)
    np.testing.assert_allclose(wb.read().qpos[mask].numpy(), fresh.read().qpos.numpy(), atol=1e-6)
    # reset_where (device path) with a mask of nothing is a no-op.
    s0 = wb.get_state()
    wb.reset_where(torch.zeros(N, dtype=torch.bool), torch.zeros(N, wb.layout.state_size))
    assert torch.equal(wb.get_state(), s0)


@needs_warp
def test_reset_graph_every_step_does_not_change_the_trajectory():
    """The device env replays the masked-reset graph after every step (CUDA allows no conditional
    node around it), so an empty mask must leave the simulation bit-identical, sensors included."""
    from robolearn.tasks.warp_backend import MujocoWarpBackend

    cfg, cls, model = _model("pick_place")
    N = 3
    a, b = MujocoWarpBackend(model, N, device="cpu"), MujocoWarpBackend(model, N, device="cpu")
    task = cls(cfg, a.layout)
    init = task.sample_init(torch.Generator().manual_seed(3), N)
    for be in (a, b):
        be.reset(torch.ones(N, dtype=torch.bool), init)
    none, junk = torch.zeros(N, dtype=torch.bool), torch.full((N, a.layout.state_size), 5.0)
    expert = expert_class("pick_place")(task, N, noise=0.1, seed=0)
    for _ in range(20):  # reach, descend and grasp: contacts and warm starts in play
        action, _ = expert.act(a.read())
        for be in (a, b):
            be.set_ctrl(task.action_to_ctrl(be.read(), action))
            be.step(cfg.frame_skip)
        b.reset_where(none, junk)
        for x, y in zip(a.read(), b.read()):
            assert torch.equal(x, y)


@needs_warp
def test_contact_buffer_overflow_is_an_error():
    from robolearn.tasks.warp_backend import MujocoWarpBackend

    cfg, cls, model = _model("push_cube")
    wb = MujocoWarpBackend(model, 2, device="cpu", nconmax=1, njmax=64)  # a resting cube has 4 contacts
    task = cls(cfg, wb.layout)
    wb.reset(torch.ones(2, dtype=torch.bool), task.sample_init(torch.Generator().manual_seed(0), 2))
    with pytest.raises(SimulationError, match="overflow.*naconmax"):
        wb.step(cfg.frame_skip)
    wb2 = MujocoWarpBackend(model, 2, device="cpu", njmax=4)
    wb2.reset(torch.ones(2, dtype=torch.bool), task.sample_init(torch.Generator().manual_seed(0), 2))
    with pytest.raises(SimulationError, match="njmax"):
        wb2.step(cfg.frame_skip)


class ObsPushExpert:
    """push_cube's scripted expert driven from observations only (a closed-loop 'policy')."""

    def __init__(self):
        cfg, cls, model = _model("push_cube")
        from robolearn.tasks.base import ModelLayout

        self.layout = ModelLayout(model)
        self.task = cls(cfg, self.layout)
        self.expert_cls = expert_class("push_cube")

    def reset(self, env_mask=None):
        pass

    def select_action(self, obs):
        from robolearn.tasks.base import SimState

        o = obs["state"][:, -1].double().cpu()  # [grip xyz, width, cube xyz, cube quat, goal xy]
        n, L, t = o.shape[0], self.layout, self.task
        qpos = torch.zeros(n, L.nq, dtype=torch.float64)
        qpos[:, t.q_grip] = o[:, 0:3]
        sens = torch.zeros(n, L.nsensordata, dtype=torch.float64)
        sens[:, L.sensor["cube_pos"]] = o[:, 4:7]
        sens[:, L.sensor["goal_pos"].start:L.sensor["goal_pos"].start + 2] = o[:, 11:13]
        expert = self.expert_cls(t, n, seed=0)
        expert.mode = torch.full((n,), 1)  # one fixed mode: no dependence on reset order
        action, _ = expert.act(SimState(qpos, torch.zeros(n, L.nv), torch.zeros(n, L.nu), sens))
        return action.to(obs["state"].device)


@needs_warp
def test_eval_through_warp_matches_mujoco_c_for_a_scripted_expert():
    from robolearn.evaluation import evaluate_policy

    kw = dict(episodes=8, seed=100, num_envs=4, progress=False)
    c = evaluate_policy(ObsPushExpert(), "push_cube", **kw)
    w = evaluate_policy(ObsPushExpert(), "push_cube", backend="warp-cpu", **kw)
    assert c["seeds"] == w["seeds"] == list(range(100, 108))
    assert c["success_rate"] >= 0.5  # the expert works at all
    assert w["success_rate"] == c["success_rate"], ([e["success"] for e in c["episodes"]], [e["success"] for e in w["episodes"]])
    assert w["backend"] == "warp-cpu" and w["n"] == 8


@needs_warp
def test_device_env_autoreset_cycles_episodes_on_device():
    from robolearn.tasks.device_env import DeviceVectorEnv

    env = DeviceVectorEnv("push_cube", 3, backend="warp-cpu", overrides=["horizon=2"])
    env.set_episodes([5, 6, 7, 8])
    obs = env.reset()
    assert obs.shape == (3, env.obs_dim) and obs.device == env.device
    assert env.slot_episode.tolist() == [0, 1, 2]
    zero = torch.zeros(3, env.action_dim)
    _, r, term, trunc, info = env.step(zero)
    assert not info["done"].any()
    _, r, term, trunc, info = env.step(zero)  # horizon 2: all truncate; env 0 takes episode 3
    assert info["done"].all() and info["episode"].tolist() == [0, 1, 2]
    assert env.slot_episode.tolist() == [3, -1, -1] and env.t.tolist() == [0, 0, 0]
    # the restarted env holds episode 3's (seed 8) initial state
    from robolearn.tasks.sim import TaskSim

    ref = TaskSim("push_cube", num_envs=1)
    ref_obs = ref.reset(seeds=[8])["state"][0]
    np.testing.assert_allclose(env.observe()[0].numpy(), ref_obs, atol=1e-5)
    env.check()


@needs_warp
def test_the_arm_robot_runs_on_warp_like_on_mujoco_c(monkeypatch):
    """The arm's end-effector controller (closed-form IK in array ops) on MuJoCo Warp: the lift
    example with the arm tracks MuJoCo C within 1 mm in every world (measured 0.05 mm)."""
    from pathlib import Path

    from robolearn.tasks.parity import compare_with_mujoco_c

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    res = compare_with_mujoco_c("examples.lift_task:Lift", "warp-cpu", num_envs=4, steps=25, overrides=["robot=arm"])
    assert res["within_1mm"] == 4, res["max_dev"]
    assert res["success_agree"] == 1.0 and res["reward_agree"] == 1.0
