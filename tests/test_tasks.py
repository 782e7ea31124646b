"""Tasks, experts, envs, perturbations, state save/restore, rendering, collect."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import robolearn.tasks as T
from robolearn.tasks.base import EVENT, PERTURBATIONS, PRIMITIVES, SimulationError
from robolearn.tasks.collect import collect, replay
from robolearn.tasks.sim import TaskSim

TASK_NAMES = [n for n in T.task_names(plugins=False) if not T.get_spec(n).is_gym]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_check_env(name):
    env = T.make_env(name)
    check_env(env.unwrapped)
    env.close()


def test_gym_registration_and_image_obs():
    ids = T.register_gym_envs()
    assert "robolearn/PushCube-v0" in ids and T.register_gym_envs() == ids  # idempotent
    import gymnasium as gym

    env = gym.make("robolearn/PickPlace-v0", obs_mode="state+image", wrist_camera=True, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (84, 84, 3) and obs["image"].dtype == np.uint8
    assert obs["wrist_image"].shape == (84, 84, 3)
    assert env.render().shape == (256, 256, 3)
    # proprio: the gripper's own leading state entries (xyz, yaw, opening), no object pose
    assert obs["proprio"].shape == (5,) and env.observation_space.contains(obs)
    np.testing.assert_array_equal(obs["proprio"], obs["state"][:5])
    obs, *_ = env.step(env.action_space.sample())
    np.testing.assert_array_equal(obs["proprio"], obs["state"][:5])
    env.close()


@pytest.mark.parametrize("name", TASK_NAMES)
def test_proprio_is_the_robots_leading_state(name):
    """With images on, `proprio` repeats the robot-only prefix of `state`: it starts with the
    gripper (pusher) position and, where it has one, ends with the finger opening."""
    sim = TaskSim(name, num_envs=2, obs_mode="state+image", image_size=32)
    obs = sim.reset(seeds=[0, 1])
    d = sim.proprio_dim
    assert 0 < d < sim.obs_dim and obs["proprio"].shape == (2, d) and obs["proprio"].dtype == np.float32
    np.testing.assert_array_equal(obs["proprio"], obs["state"][:, :d])
    s = sim.read()
    n_pos = min(d, 3)
    grip = np.asarray(sim.task.grip_pos(s)[:, :n_pos], np.float32)
    np.testing.assert_allclose(obs["proprio"][:, :n_pos], grip, atol=1e-6)
    if d > 3:
        np.testing.assert_allclose(obs["proprio"][:, -1], np.asarray(sim.task.grip_width(s), np.float32), atol=1e-6)
    assert "proprio" not in TaskSim(name, num_envs=1).reset(seeds=[0])  # state-only obs are unchanged
    sim.close()


def test_image_store_carries_proprio_and_trains_a_vision_policy(tmp_path):
    """The camera + proprioception setting end to end: collect, train on [proprio] + [image], act."""
    from robolearn.data.store import EpisodeStore
    from robolearn.evaluation import evaluate_policy
    from robolearn.training import train
    from robolearn.checkpoint import load_policy

    out = tmp_path / "img.zarr"
    collect("pick_place", 2, out, image=True, seed=3, overrides=["image_size=32"], progress=False)
    store = EpisodeStore.open(out)
    assert store.features["obs/proprio"].shape == (5,)
    ep = store.get_episode(0)
    np.testing.assert_array_equal(ep["obs/proprio"], ep["obs/state"][:, :5])
    store.close()
    over = ["train.steps=3", "train.batch_size=4", "train.val_ratio=0.0", "policy.down_dims=[16,32]",
            "policy.diffusion_step_embed_dim=16", "policy.state_keys=[proprio]", "policy.image_keys=[image]",
            "policy.vision.crop_shape=[28,28]", "policy.vision.channels=[4,8]", "policy.vision.feature_dim=8"]
    run = train("diffusion", out, out=tmp_path / "run", overrides=over, wandb_mode="off", progress=False)
    policy = load_policy(run / "policy")
    assert policy.config.input_shapes == {"proprio": [5], "image": [32, 32, 3]}
    report = evaluate_policy(policy, "pick_place", 1, seed=5, task_overrides=["image_size=32", "horizon=10"],
                             progress=False)
    assert report["n"] == 1 and report["episodes"][0]["length"] == 10


def run_expert(name: str, seeds: list[int], noise: float = 0.0, **overrides) -> np.ndarray:
    """Batched expert rollouts (one env per seed); returns per-episode success."""
    sim = TaskSim(name, num_envs=len(seeds), **overrides)
    expert = T.make_expert(sim, noise=noise, seed=0)
    sim.reset(seeds=seeds)
    done = np.zeros(len(seeds), bool)
    success = np.zeros(len(seeds), bool)
    for _ in range(sim.cfg.horizon):
        action, prim = expert.act(sim.read())
        assert ((prim >= 0) & (prim < len(PRIMITIVES))).all()
        _, _, term, trunc, info = sim.step(action.numpy())
        success |= ~done & info["success"]
        done |= term | trunc
        if done.all():
            break
    sim.close()
    return success


@pytest.mark.parametrize("name", TASK_NAMES)
def test_expert_success_50_seeds(name):
    success = run_expert(name, list(range(50)))
    assert success.mean() >= 0.95, f"{name}: expert success {success.mean():.2f}"


def test_expert_recovers_from_perturbations():
    # pick_place with frequent shoves / forced gripper opening / bin moves, longer horizon.
    success = run_expert("pick_place", list(range(20)), perturb_rate=0.05, horizon=160)
    assert success.mean() >= 0.9


def test_sort_num_cubes_and_stages():
    sim = TaskSim("sort", num_envs=1, num_cubes=2, horizon=150)
    assert sim.obs_dim == 5 + 9 * 2
    expert = T.make_expert(sim, seed=0)
    sim.reset(seeds=[3])
    stages, prims = [], []
    for _ in range(150):
        a, p = expert.act(sim.read())
        _, _, term, _, info = sim.step(a.numpy())
        stages.append(int(info["stage"][0]))
        prims.append(int(p[0]))
        if term[0]:
            break
    assert term[0] and stages[-1] == 2
    assert sorted(set(stages)) == [0, 1, 2] and stages == sorted(stages)  # one stage per cube, in order
    assert {T.PRIM[k] for k in ("reach", "grasp", "transport", "release")} <= set(prims)


def test_expert_from_arbitrary_mid_episode_state():
    # Drive pick_place with random actions, then hand over to the expert: it must still finish.
    env = T.make_env("pick_place", horizon=200)
    env.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(15):
        env.step(rng.uniform(-1, 1, env.action_space.shape))
    expert = T.make_expert(env, seed=1)
    for _ in range(150):
        a, _ = expert.act(env.unwrapped.sim.read())
        _, _, term, trunc, info = env.step(a[0].numpy())
        if term or trunc:
            break
    assert info["success"]


def test_exact_replay_from_stored_states(tmp_path):
    from robolearn.data.store import EpisodeStore

    out = tmp_path / "pp.zarr"
    collect("pick_place", 3, out, num_envs=2, noise=0.2, perturb=0.1, seed=7, progress=False)
    store = EpisodeStore.open(out)
    sim = TaskSim("pick_place", num_envs=1)  # perturb_rate 0: perturbations come from the record
    n_events = 0
    for i in range(store.num_episodes):
        ep = store.get_episode(i)
        n_events += int(np.isin(ep["failure_event"], [1, 2, 3]).sum())
        states = replay(sim, ep["sim_state"], ep["action"], ep["failure_event"])
        np.testing.assert_array_equal(states, ep["sim_state"])
    assert n_events > 0
    # Without perturbations, replaying the actions alone from the first state is exact too.
    collect("push_cube", 1, tmp_path / "pc.zarr", noise=0.3, seed=1, progress=False)
    ep = EpisodeStore.open(tmp_path / "pc.zarr").get_episode(0)
    states = replay(TaskSim("push_cube"), ep["sim_state"], ep["action"])
    np.testing.assert_array_equal(states, ep["sim_state"])


def test_seeded_reset_reproduces_episode_with_perturbations():
    def rollout():
        env = T.make_env("push_cube", perturb_rate=0.2)
        obs, _ = env.reset(seed=11)
        rng = np.random.default_rng(3)
        traj, events = [obs["state"]], []
        for _ in range(30):
            obs, _, _, _, info = env.step(rng.uniform(-1, 1, 4))
            traj.append(obs["state"])
            events.append(info["failure_event"])
        return np.stack(traj), events

    (a, ea), (b, eb) = rollout(), rollout()
    np.testing.assert_array_equal(a, b)
    assert ea == eb and any(ea)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_save_restore_round_trip(name):
    env = T.make_env(name)
    env.reset(seed=2)
    rng = np.random.default_rng(0)
    for _ in range(5):
        env.step(rng.uniform(-1, 1, env.action_space.shape))
    saved = env.get_sim_state()
    actions = rng.uniform(-1, 1, (8, env.action_space.shape[0]))
    first = [env.step(a)[0]["state"] for a in actions]
    obs_restored = env.set_sim_state(saved)
    np.testing.assert_array_equal(env.get_sim_state(), saved)
    assert obs_restored["state"].shape == first[0].shape
    second = [env.step(a)[0]["state"] for a in actions]
    np.testing.assert_array_equal(np.stack(first), np.stack(second))
    # reset(options={"sim_state": ...}) restores too
    env.reset(seed=0, options={"sim_state": saved})
    np.testing.assert_array_equal(env.get_sim_state(), saved)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_rendering_non_constant(name):
    env = T.make_env(name, obs_mode="state+image")
    obs, _ = env.reset(seed=0)
    img = obs["image"]
    assert img.shape == (84, 84, 3) and img.dtype == np.uint8
    assert img.std() > 5 and len(np.unique(img.reshape(-1, 3), axis=0)) > 20
    obs2 = env.step(np.ones(env.action_space.shape))[0]
    assert np.abs(obs2["image"].astype(int) - img).sum() > 0  # the gripper moved in the picture


def test_perturbation_rate():
    rate, n, steps = 0.1, 16, 100
    sim = TaskSim("pick_place", num_envs=n, perturb_rate=rate, horizon=10_000, terminate_on_success=False)
    sim.reset(seeds=list(range(n)))
    counts = {k: 0 for k in PERTURBATIONS}
    total = 0
    for _ in range(steps):
        _, _, _, _, info = sim.step(np.zeros((n, sim.action_dim)))
        for code in info["failure_event"]:
            if 1 <= code <= 3:
                counts[T.FAILURE_EVENTS[code]] += 1
                total += 1
    # Binomial(1600, 0.1): mean 160, std 12
    assert abs(total / (n * steps) - rate) < 0.03
    assert all(c > 20 for c in counts.values())  # every kind occurs


def test_perturbations_change_state():
    for kind in ("nudge_object", "open_gripper", "shift_target"):
        env = T.make_env("pick_place", perturb_rate=1.0, perturb_kinds=[kind])
        env.reset(seed=4)
        before = env.get_sim_state()
        _, _, _, _, info = env.step(np.zeros(5))
        assert info["failure_event"] == EVENT[kind]
        assert not np.array_equal(before, env.get_sim_state())


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        T.make_env("nope")
    with pytest.raises(ValueError, match="unknown key"):
        T.make_env("push_cube", bogus=1)
    with pytest.raises(ValueError, match="unknown key.*num_cubes"):
        T.make_env("push_cube", num_cubes=2)
    with pytest.raises(ValueError, match="does not support perturbation"):
        T.make_env("push_t", perturb_kinds=["open_gripper"])
    with pytest.raises(ValueError, match="obs_mode"):
        T.make_env("push_cube", obs_mode="pixels")


def test_nan_action_refused_and_simulation_untouched():
    env = T.make_env("push_cube")
    env.reset(seed=0)
    env.step(np.zeros(4))
    before = env.get_sim_state()
    for bad in (np.array([np.nan, 0, 0, 0]), np.array([0, np.inf, 0, 0])):
        with pytest.raises(ValueError, match="NaN or inf"):
            env.step(bad)
        np.testing.assert_array_equal(env.get_sim_state(), before)
    obs, *_ = env.step(np.zeros(4))  # still usable
    assert np.isfinite(obs["state"]).all()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))


def test_unstable_simulation_raises():
    env = T.make_env("push_cube")
    env.reset(seed=0)
    state = env.get_sim_state()
    state[env.task.layout.state_slices["qvel"]] = 1e30
    env.set_sim_state(state)
    with pytest.raises(SimulationError, match="unstable"):
        env.step(np.zeros(4))


@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
def test_vector_env_autoreset(mode):
    venv = T.make_vector_env("push_cube", 3, autoreset_mode=mode, horizon=5)
    obs, info = venv.reset(seed=[10, 11, 12])
    assert obs["state"].shape == (3, 13) and info["sim_state"].shape[0] == 3
    zeros = np.zeros((3, 4), np.float32)
    for _ in range(4):
        obs, rew, term, trunc, info = venv.step(zeros)
    obs, rew, term, trunc, info = venv.step(zeros)
    assert trunc.all() and (info["t"] == 5).all() if mode == "NextStep" else True
    if mode == "SameStep":
        assert info["_final_obs"].all() and (info["t"] == 0).all()
        assert info["final_obs"]["state"].shape == (3, 13)
    else:
        obs, rew, term, trunc, info = venv.step(zeros)
        assert (info["t"] == 0).all() and (rew == 0).all() and not (term | trunc).any()
    venv.close()


def test_vector_env_matches_single_env():
    venv = T.make_vector_env("pick_place", 2, num_threads=2)
    vobs, _ = venv.reset(seed=[3, 4])
    env = T.make_env("pick_place")
    sobs, _ = env.reset(seed=4)
    np.testing.assert_array_equal(vobs["state"][1], sobs["state"])
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.uniform(-1, 1, (2, 5)).astype(np.float32)
        vobs = venv.step(a)[0]
        sobs = env.step(a[1])[0]
    np.testing.assert_array_equal(vobs["state"][1], sobs["state"])


def test_gym_mujoco_adapter():
    env = T.make_env("hopper")
    obs, info = env.reset(seed=0)
    assert obs["state"].dtype == np.float32 and info["success"] is False and info["stage"] == 0
    saved = env.get_sim_state()
    a = np.full(env.action_space.shape, 0.3)
    first = env.step(a)[0]["state"]
    env.set_sim_state(saved)
    np.testing.assert_array_equal(env.step(a)[0]["state"], first)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full(env.action_space.shape, np.nan))
    check_env(env.unwrapped, skip_render_check=True)


def test_task_functions_are_pure_torch():
    # The same task code runs on any backend: feed it arbitrary batched tensors directly.
    sim = TaskSim("push_t", num_envs=4)
    sim.reset(seeds=[0, 1, 2, 3])
    s = sim.read()
    fake = T.SimState(*(x.clone().to(torch.float32) for x in s))
    obs = sim.task.observe(fake)
    assert obs.shape == (4, 10) and obs.dtype == torch.float32
    assert sim.task.success(fake).dtype == torch.bool
    states = sim.task.sample_init(torch.Generator().manual_seed(0), 3)
    assert states.shape == (3, sim.backend.layout.state_size)


@pytest.mark.parametrize("name,relative", [(n, False) for n in TASK_NAMES] + [(n, True) for n in TASK_NAMES])
def test_host_numpy_path_matches_torch_path(name, relative):
    # TaskSim runs the task functions on numpy views of the C backend's buffers (array_ops); the
    # same functions on torch tensors must give the same results: the same bits for discrete
    # outputs, floats equal to rounding (numpy's and torch's cos/tanh/norm kernels may differ in
    # the last bit).
    def rollout(host: bool):
        sim = TaskSim(name, num_envs=3, perturb_rate=0.1, obs_relative=relative)
        sim._host = host
        out = [sim.reset(seeds=[0, 1, 2])["state"]]
        rng = np.random.default_rng(0)
        for _ in range(25):
            obs, rew, term, trunc, info = sim.step(rng.uniform(-1, 1, (3, sim.action_dim)))
            out += [obs["state"], rew, term, trunc, info["success"], info["stage"], info["failure_event"]]
        return out

    for a, b in zip(rollout(True), rollout(False)):
        assert a.dtype == b.dtype
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 if a.dtype == np.float32 else 1e-12)
        else:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["pick_place", "sort"])
def test_step_carry_matches_fresh_evaluation(name):
    """TaskSim hands the task values of the previous state (the carry: which cubes were held)
    instead of recomputing them. Through grasps, perturbations, resets and set_state of envs that
    hold a cube, the carry must always describe the current previous state, and every step's
    outputs must equal a fresh evaluation without a carry."""
    from robolearn.tasks.registry import expert_class

    sim = TaskSim(name, num_envs=3, perturb_rate=0.03, terminate_on_success=False, horizon=10**6)
    task = sim.task
    local = (lambda st: task.sensor(st, "cube_in_grip")) if name == "pick_place" else task.cubes_in_grip
    expert = expert_class(name)(task, 3, noise=0.05, seed=0)
    sim.reset(seeds=[0, 1, 2])
    expert.reset()
    start = sim.get_state()
    resets = restores = 0
    for t in range(200):
        held_now = task.holds(sim._prev, local(sim._prev)).reshape(3, -1).any(1)
        if held_now.any() and t % 7 == 0:  # drop the carry of an env that holds a cube
            if resets <= restores:
                sim.reset(torch.as_tensor(held_now), seeds=list(range(100 + t, 100 + t + int(held_now.sum()))))
                resets += 1
            else:
                sim.set_state(start)
                restores += 1
            expert.reset()
        if "held" in sim._carry:
            np.testing.assert_array_equal(sim._carry["held"], task.holds(sim._prev, local(sim._prev)))
        prev = sim._clone(sim._read_fast())
        action, _ = expert.act(sim.read())
        _, rew, _, _, info = sim.step(action.numpy())
        success, reward, stage, detected = task.evaluate(prev, sim._clone(sim._read_fast()))
        np.testing.assert_array_equal(info["success"], success)
        np.testing.assert_array_equal(info["stage"], stage)
        np.testing.assert_array_equal(rew, reward)
        injected = np.isin(info["failure_event"], [1, 2, 3])  # an injected event overrides detection
        np.testing.assert_array_equal(info["failure_event"][~injected], detected[~injected])
    assert resets >= 1 and restores >= 1


def _expected_relative(name: str, obs: np.ndarray, k: int = 2) -> np.ndarray:
    """The relative block computed independently from the absolute part of the observation."""
    if name == "push_cube":
        return np.concatenate([obs[:, 4:7] - obs[:, 0:3], obs[:, 11:13] - obs[:, 4:6]], -1)
    if name == "pick_place":
        return np.concatenate([obs[:, 5:8] - obs[:, 0:3], obs[:, 12:15] - obs[:, 5:8]], -1)
    if name == "push_t":
        return np.concatenate([obs[:, 2:4] - obs[:, 0:2], obs[:, 6:8] - obs[:, 2:4]], -1)
    blocks = []
    for i in range(k):  # sort
        cube, bin_xy = obs[:, 5 + 7 * i:8 + 7 * i], obs[:, 5 + 7 * k + 2 * i:7 + 7 * k + 2 * i]
        blocks += [cube - obs[:, 0:3], bin_xy - cube[:, :2]]
    return np.concatenate(blocks, -1)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_obs_relative_appends_differences_of_the_poses(name):
    """obs_relative keeps the pose observation as it was and appends object-relative vectors that
    equal the differences of those poses (computed here from the observation itself)."""
    extra = {"num_cubes": 2} if name == "sort" else {}
    plain = TaskSim(name, num_envs=2, **extra)
    rel = TaskSim(name, num_envs=2, obs_relative=True, **extra)
    assert rel.obs_dim == plain.obs_dim + rel.task.relative_dim
    rng = np.random.default_rng(0)
    o_plain, o_rel = plain.reset(seeds=[4, 5])["state"], rel.reset(seeds=[4, 5])["state"]
    for t in range(15):
        assert o_rel.shape == (2, rel.obs_dim)
        np.testing.assert_array_equal(o_rel[:, :plain.obs_dim], o_plain)  # the poses are unchanged
        np.testing.assert_allclose(o_rel[:, plain.obs_dim:], _expected_relative(name, o_plain.astype(np.float64)),
                                   atol=2e-5)
        action = rng.uniform(-1, 1, (2, plain.action_dim))
        o_plain, o_rel = plain.step(action)[0]["state"], rel.step(action)[0]["state"]
    env = T.make_env(name, obs_relative=True, **extra)
    assert env.observation_space["state"].shape == (rel.obs_dim,)


def test_sort_stage_columns_carry_the_relative_block():
    from robolearn.tasks.registry import build_task

    task = build_task("sort", {"num_cubes": 3, "obs_relative": True})
    cols = task.stage_obs_columns()
    assert all(len(c) == 14 + 5 for c in cols)
    assert cols[1][14:] == list(range(32 + 5, 32 + 10))  # cube 1's relative block
    every = task.stage_obs_columns(others=True)
    assert all(sorted(c) == list(range(task.obs_dim)) for c in every) and every[2][:19] == cols[2]


@pytest.mark.parametrize("gap, swaps", [(0.11, False), (0.08, True)])
def test_sort_expert_changes_grasp_faces_only_for_a_neighbour_in_the_fingers_way(gap, swaps):
    """Cube 0 at yaw 0 under a gripper at yaw 0: mode 0 grasps straight down (no turn) unless a
    neighbour sits along the open fingers' axis (y) within reach; then it turns to the other faces."""
    sim = TaskSim("sort", num_envs=1, num_cubes=2)
    task = sim.task
    states = task.sample_init(torch.Generator().manual_seed(0), 1)
    task.set_free_body(states, "cube0", torch.tensor([[0.0, -0.1, 0.02]]), torch.tensor([0.0]))
    task.set_free_body(states, "cube1", torch.tensor([[0.0, -0.1 + gap, 0.02]]), torch.tensor([0.0]))
    task.init_gripper(states, torch.tensor([[0.0, -0.1, 0.09]]), torch.tensor([0.0]))
    sim.reset(states=states)
    action, _ = T.make_expert(sim, seed=0, mode=0).act(sim.read())
    yaw_action = float(action[0, 3])
    assert (abs(yaw_action) > 0.9) if swaps else (abs(yaw_action) < 0.05)


def test_sort_horizon_scales_with_num_cubes():
    assert T.load_task_config("sort").horizon == 200  # K = 3
    assert T.load_task_config("sort", {"num_cubes": 5}).horizon == 400
    assert T.load_task_config("sort", ["num_cubes=4"]).horizon == 300
    assert T.load_task_config("sort", {"num_cubes": 2}).horizon == 200
    assert T.load_task_config("sort", ["num_cubes=5", "horizon=250"]).horizon == 250  # explicit wins


def test_push_t_coverage():
    from robolearn.tasks.push_t import coverage

    goal = torch.tensor([[0.0, 0.0, 0.7]], dtype=torch.float64)
    assert coverage(goal, goal).item() == 1.0
    shifted = goal + torch.tensor([[0.2, 0.0, 0.0]], dtype=torch.float64)
    assert coverage(shifted, goal).item() == 0.0
    small = goal + torch.tensor([[0.003, 0.0, 0.0]], dtype=torch.float64)
    assert 0.9 < coverage(small, goal).item() < 1.0


def test_push_t_coverage_is_the_two_rectangle_test():
    """coverage's merged inside test counts exactly the goal points inside the bar or the stem,
    on torch and on numpy, for random poses around the goal."""
    from robolearn.tasks.push_t import GOAL_POINTS, coverage, inside_t, to_local, to_world

    gen = torch.Generator().manual_seed(0)
    n = 400
    goal = torch.tensor([[0.0, 0.0, 0.7]], dtype=torch.float64).repeat(n, 1)
    pose = goal + (torch.rand(n, 3, generator=gen, dtype=torch.float64) - 0.5) * torch.tensor([0.1, 0.1, 2.0])
    expected = inside_t(to_local(to_world(GOAL_POINTS, goal), pose)).double().mean(-1)
    assert ((expected > 0) & (expected < 1)).sum() > n // 2  # mostly partial overlaps
    assert torch.equal(coverage(pose, goal), expected)
    assert np.array_equal(coverage(pose.numpy(), goal.numpy()), expected.numpy())
    # one env on the host takes the scalar-transform path (the single gym env): same counts
    one_by_one = np.concatenate([coverage(pose[i:i + 1].numpy(), goal[i:i + 1].numpy()) for i in range(n)])
    assert np.array_equal(one_by_one, expected.numpy())


def test_collect_appends_and_keeps_committed_episodes(tmp_path, monkeypatch):
    from robolearn.data.store import EpisodeStore

    out = tmp_path / "s.zarr"
    summary = collect("sort", 2, out, num_envs=2, seed=0, overrides=["num_cubes=2", "horizon=150"], progress=False)
    assert summary["episodes"] == 2
    collect("sort", 1, out, seed=2, overrides=["num_cubes=2", "horizon=150"], progress=False)
    store = EpisodeStore.open(out)
    assert store.num_episodes == 3 and store.task == "sort"
    ep = store.get_episode(0)
    assert set(ep) >= {"obs/state", "action", "reward", "done", "source", "stage", "primitive", "sim_state",
                       "failure_event"}
    assert ep["done"][-1] and not ep["done"][:-1].any()
    assert ep["action"].dtype == np.float32 and np.abs(ep["action"]).max() <= 1
    assert (ep["primitive"] >= 0).all() and ep["stage"][0] == 0
    assert (store.column("collector") == "scripted").all()
    # Interrupt during the 3rd episode's commit: the 2 committed before survive.
    orig = EpisodeStore.append_episode
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return orig(self, *a, **k)

    monkeypatch.setattr(EpisodeStore, "append_episode", flaky)
    with pytest.raises(KeyboardInterrupt):
        collect("push_cube", 5, tmp_path / "i.zarr", seed=0, progress=False)
    monkeypatch.setattr(EpisodeStore, "append_episode", orig)
    assert EpisodeStore.open(tmp_path / "i.zarr").num_episodes == 2
    with pytest.raises(ValueError, match="holds task"):
        collect("push_cube", 1, out, progress=False)


def test_cli_tasks_and_collect(tmp_path, capsys):
    from robolearn.cli import main

    assert main(["tasks"]) == 0
    text = capsys.readouterr().out
    assert "push_t" in text and "hopper" in text
    out = tmp_path / "c.zarr"
    assert main(["collect", "--task", "push_cube", "--episodes", "2", "--out", str(out), "--image",
                 "--no-progress", "--perturb", "0.1", "--noise", "0.1", "--seed", "3"]) == 0
    from robolearn.data.store import EpisodeStore

    ep = EpisodeStore.open(out).get_episode(1)
    assert ep["obs/image"].shape[1:] == (84, 84, 3)
    assert main(["collect", "--task", "nope", "--episodes", "1", "--out", str(tmp_path / "x")]) == 2
    assert main(["collect", "--task", "sort", "--episodes", "1", "--out", str(tmp_path / "y"),
                 "--set", "bogus=1"]) == 2


def test_expert_mode_can_be_fixed_for_unimodal_demos():
    sim = TaskSim("sort", num_envs=6, num_cubes=1)
    assert T.make_expert(sim, seed=0).num_modes == 2
    fixed = T.make_expert(sim, seed=0, mode=1)
    for _ in range(3):
        fixed.reset()
        assert fixed.mode.tolist() == [1] * 6
    with pytest.raises(ValueError, match="expert mode must be in"):
        T.make_expert(sim, mode=2)


def test_noisy_collection_stores_the_noise_free_expert_action(tmp_path):
    """DART-style labels: `action` is what ran (replays exactly), `expert_action` what the expert
    meant in the same state, and the two differ by the injected noise only."""
    from robolearn.data.store import EpisodeStore
    from robolearn.tasks.base import SimState

    collect("push_cube", 2, tmp_path / "n.zarr", num_envs=2, noise=0.3, seed=4, progress=False)
    store = EpisodeStore.open(tmp_path / "n.zarr")
    ep = store.get_episode(0)
    assert "expert_action" in store.features
    diff = np.abs(ep["action"] - ep["expert_action"])
    assert diff.mean() > 0.05  # noisy execution
    # the label is the noise-free expert along the executed trajectory (same mode, same memory)
    from robolearn.tasks.registry import expert_class

    sim = TaskSim("push_cube")
    expert = expert_class("push_cube")(sim.task, 1, noise=0.0, seed=0)
    expert.mode = torch.full((1,), int(store.episode_metadata(0)["expert_mode"]))
    sim.set_state(ep["sim_state"][0][None])
    for t in range(len(ep["action"])):
        clean, _ = expert.act(sim.read())
        np.testing.assert_allclose(clean[0].numpy(), ep["expert_action"][t], atol=1e-6)
        if t + 1 < len(ep["action"]):
            sim.step(ep["action"][t][None].astype(np.float64))
    np.testing.assert_array_equal(replay(sim, ep["sim_state"], ep["action"]), ep["sim_state"])
    # noise-free collection keeps the old layout (no extra column)
    collect("push_cube", 1, tmp_path / "c.zarr", seed=4, progress=False)
    assert "expert_action" not in EpisodeStore.open(tmp_path / "c.zarr").features
