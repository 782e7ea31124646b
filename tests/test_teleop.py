"""Teleop without hardware: the intervention state machine, devices fed by fake key/HID sources
(held keys, screen-relative directions, the quit prompt), the viewer's key ownership through a fake
viewer handle, smooth takeover, and the four intervention-aware training mixtures' frequencies and
weights. The real-window test is tests/test_teleop_window.py."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import numpy as np
import pytest

from robolearn.data.mixtures import SIRIUS_PRE_INTERVENTION_STEPS, mixture_weights
from robolearn.data.sampler import SequenceDataset
from robolearn.data.store import SOURCE_CODES, EpisodeStore, Feature
from robolearn.teleop.devices import (
    DEFAULT_VIEW, GRIP_KEYS, KEY_EVENTS, KEY_MOTION, OWNED_KEYS, DeviceContext, GamepadDevice, KeyboardDevice, Pose,
    QueueKeySource, ScreenView, SpaceMouseDevice, TerminalKeySource, ViewerKeySource, fixed_camera_view, pose_action,
)
from robolearn.teleop.session import InterventionSession, Mode, TeleopEvent as E



# ----------------------------------------------------------------------------------- session
def test_rac_cycle_with_hand_back_and_counts():
    s = InterventionSession()
    assert s.mode is Mode.AUTONOMOUS and s.count_step() == "policy"
    tr = s.apply([E.TAKEOVER])
    assert tr.engaged and tr.after is Mode.RECOVERY and s.intervention_count == 1
    assert s.count_step() == "recovery"
    tr = s.apply([E.CORRECT])
    assert not tr.engaged and tr.after is Mode.CORRECTION and s.count_step() == "correction"
    tr = s.apply([E.HAND_BACK])
    assert tr.handed_back and not tr.end and s.mode is Mode.AUTONOMOUS
    s.apply([E.TAKEOVER])  # a second intervention in the same episode
    assert s.intervention_count == 2 and s.mode is Mode.RECOVERY
    s.apply([E.TAKEOVER])  # pressing take-over again moves on to correcting
    assert s.mode is Mode.CORRECTION and s.intervention_count == 2
    assert s.steps == {Mode.AUTONOMOUS: 1, Mode.RECOVERY: 1, Mode.CORRECTION: 1} and s.operator_steps == 2


def test_rule2_hand_back_ends_episode_and_hg_dagger_skips_recovery():
    s = InterventionSession(terminate_after_intervention=True)
    s.apply([E.TAKEOVER, E.CORRECT])
    tr = s.apply([E.HAND_BACK])
    assert tr.end and tr.success is None and s.ended and s.mode is Mode.CORRECTION
    h = InterventionSession(recovery=False)
    assert h.apply([E.TAKEOVER]).after is Mode.CORRECTION and h.intervention_count == 1
    assert h.apply([E.CORRECT]).ignored == [E.CORRECT]


def test_events_meaningless_in_a_mode_are_ignored_and_first_ending_event_wins():
    s = InterventionSession()
    tr = s.apply([E.HAND_BACK, E.CORRECT])
    assert tr.ignored == [E.HAND_BACK, E.CORRECT] and s.mode is Mode.AUTONOMOUS and s.intervention_count == 0
    tr = s.apply([E.RERECORD, E.SUCCESS])
    assert tr.rerecord and not tr.end and tr.ignored == [E.SUCCESS]
    s.start_episode()
    tr = s.apply([E.TAKEOVER, E.FAILURE, E.QUIT])
    assert tr.engaged and tr.end and tr.success is False and not tr.quit
    s.start_episode()
    assert s.apply([E.QUIT]).quit and s.intervention_count == 0
    s.apply([E.TAKEOVER])
    tr = s.apply([E.HAND_BACK, E.TAKEOVER])  # back and forth in one batch: still engaged
    assert not tr.handed_back and tr.after is Mode.RECOVERY and s.intervention_count == 2


# ----------------------------------------------------------------------------------- devices
def fake_task(axes=("x", "y", "z", "yaw", "grip")):
    return SimpleNamespace(action_axes=axes, pos_scale=0.03, yaw_scale=0.25, grip_open=0.045)


def ctx(pose, mode=Mode.CORRECTION, task=None, dt=0.1, view=None, prompt=None):
    return DeviceContext(task=task or fake_task(), state=None, pose=pose, mode=mode, dt=dt, view=view, prompt=prompt)


def test_keyboard_takeover_is_smooth_and_keys_move_the_reference():
    keys = QueueKeySource()
    dev = KeyboardDevice(keys, speed=0.1)  # 0.1 m/s x 0.1 s control period: 1 cm per step
    robot = Pose(np.array([0.1, -0.05, 0.12]), yaw=0.3, grip=1.0)  # holding: fingers closed
    keys.push("up")  # pressed while the policy drives: must not move the new reference
    keys.push("t")
    events = dev.poll(ctx(robot, Mode.AUTONOMOUS))
    assert events == [E.TAKEOVER]
    dev.engage(robot)
    a = dev.action(ctx(robot))
    np.testing.assert_allclose(a, [0, 0, 0, 0, 1.0], atol=1e-6)  # hold pose, keep the grasp: no jump
    keys.push("up")  # a tap: one control step's worth, screen-relative (default view: up = +y)
    keys.push("page_up")
    keys.push("space")
    assert dev.poll(ctx(robot)) == []
    a = dev.action(ctx(robot))
    np.testing.assert_allclose(a[:3], [0, 0.01 / 0.03, 0.01 / 0.03], atol=1e-6)
    assert a[4] == -1.0  # grip toggled open
    for name, ev in [("c", E.CORRECT), ("h", E.HAND_BACK), ("y", E.SUCCESS), ("n", E.FAILURE), ("backspace", E.RERECORD),
                     ("q", E.QUIT), ("p", E.PAUSE), ("minus", E.SLOWER), ("equal", E.FASTER)]:
        keys.push(name)
        assert dev.poll(ctx(robot)) == [ev]


def test_held_key_moves_at_the_configured_speed_until_released():
    keys = QueueKeySource()
    dev = KeyboardDevice(keys, speed=0.05, yaw_speed=0.5)
    robot = Pose(np.zeros(3), 0.0, -1.0)
    dev.engage(robot)
    keys.push_event("d", True)  # held: every control step moves speed x dt
    moved = []
    for _ in range(5):
        dev.poll(ctx(robot, dt=0.2))
        dev.action(ctx(robot, dt=0.2))
        moved.append(dev.reference.pos.copy())
    np.testing.assert_allclose(np.diff([m[0] for m in moved]), 0.05 * 0.2, atol=1e-9)  # right = +x, 1 cm / step
    assert dev.held == {"d"} and dev.moving
    keys.push_event("d", False)
    dev.poll(ctx(robot, dt=0.2))
    before = dev.reference.pos.copy()
    dev.action(ctx(robot, dt=0.2))
    np.testing.assert_allclose(dev.reference.pos, before)  # released: stops
    keys.push_event("z", True)
    keys.push_event("z", True)  # a repeated press while held: no second effect
    dev.poll(ctx(robot, dt=0.1))
    dev.action(ctx(robot, dt=0.1))
    assert dev.reference.yaw == pytest.approx(0.05)
    # two keys at once (a diagonal) move at the same speed, not faster
    dev.engage(robot)
    keys.push_event("z", False)
    keys.push_event("w", True)
    keys.push_event("d", True)
    dev.poll(ctx(robot))
    dev.action(ctx(robot))
    assert np.linalg.norm(dev.reference.pos[:2]) == pytest.approx(0.05 * 0.1)
    with pytest.raises(ValueError, match="speeds must be > 0"):
        KeyboardDevice(keys, speed=0)


def test_directions_follow_the_view():
    keys = QueueKeySource()
    dev = KeyboardDevice(keys, speed=0.1)
    robot = Pose(np.zeros(3), 0.0, -1.0)
    # a camera looking along -x (azimuth 180), 45 degrees down: away = -x, right on screen = +y
    view = ScreenView.from_camera(np.array([-0.7071, 0, -0.7071]), np.array([-0.7071, 0, 0.7071]))
    np.testing.assert_allclose(view.forward, [-1, 0], atol=1e-6)
    np.testing.assert_allclose(view.right, [0, 1], atol=1e-6)
    for key, want in (("up", [-1, 0]), ("right", [0, 1]), ("left", [0, -1]), ("s", [1, 0])):
        dev.engage(robot)
        keys.push(key)
        dev.poll(ctx(robot, view=view))
        dev.action(ctx(robot, view=view))
        np.testing.assert_allclose(dev.reference.pos[:2], np.array(want) * 0.01, atol=1e-9)
    # straight down (push_t's front camera): screen up is the camera's up axis
    top = ScreenView.from_camera(np.array([0, 0, -1.0]), np.array([0, 1.0, 0]))
    np.testing.assert_allclose(top.forward, [0, 1]) and np.testing.assert_allclose(top.right, [1, 0])


def test_without_a_viewer_directions_are_the_front_cameras():
    """The documented fixed camera: every task's `front` camera, which looks along +y."""
    from robolearn.tasks.sim import TaskSim

    for task in ("push_cube", "push_t"):
        sim = TaskSim(task, num_envs=1)
        v = fixed_camera_view(sim.model)
        sim.close()
        np.testing.assert_allclose(v.forward, DEFAULT_VIEW.forward, atol=1e-3)
        np.testing.assert_allclose(v.right, DEFAULT_VIEW.right, atol=1e-3)


def test_quit_prompt_answers_and_pause_resume_by_motion():
    keys = QueueKeySource()
    dev = KeyboardDevice(keys)
    robot = Pose(np.zeros(3), 0.0, -1.0)
    for name, ev in (("k", E.KEEP), ("d", E.DISCARD), ("q", E.DISCARD), ("escape", E.DISCARD), ("w", E.RESUME),
                     ("t", E.RESUME)):
        keys.push(name)
        assert dev.poll(ctx(robot, prompt="quit")) == [ev]
    keys.push("left")
    assert dev.poll(ctx(robot, prompt="paused")) == [E.RESUME]


def test_teleop_keys_that_are_mujoco_viewer_shortcuts_are_owned():
    """Nearly every teleop letter is also a MuJoCo 4.0 viewer shortcut (a render or visualisation
    flag): the viewer must keep all of them (OWNED_KEYS) away from MuJoCo."""
    import mujoco

    shortcuts = {row[2].lower() for row in (*mujoco.mjVISSTRING, *mujoco.mjRNDSTRING) if row[2]}
    teleop = {k for k in (*KEY_MOTION, *KEY_EVENTS, *GRIP_KEYS) if len(k) == 1}
    clash = teleop & shortcuts
    assert {"t", "c", "h", "w", "a", "s", "d", "r", "f", "z", "x", "g", "p"} <= clash  # why the viewer intercepts
    assert clash <= OWNED_KEYS and {"up", "space", "escape", "backspace", "minus", "equal", "k"} <= OWNED_KEYS


class FakeHandle:
    """mujoco.viewer's Handle as far as InterventionViewer uses it; `press` plays MuJoCo's shortcut."""

    def __init__(self, model, key_callback):
        import contextlib

        import mujoco

        self.opt, self.cam, self.key_callback = mujoco.MjvOption(), mujoco.MjvCamera(), key_callback
        self.user_scn = None
        self.texts, self._lock = [], contextlib.nullcontext

    def press(self, letter):
        import mujoco

        for i, row in enumerate(mujoco.mjVISSTRING):
            if row[2] == letter.upper():
                self.opt.flags[i] = 1 - self.opt.flags[i]
        self.key_callback(ord(letter.upper()))

    def lock(self):
        return self._lock()

    def set_texts(self, t):
        self.texts.append(t)

    def sync(self):
        pass

    def is_running(self):
        return True

    def close(self):
        pass


def test_viewer_without_key_interception_restores_the_flags_a_teleop_key_toggled():
    from robolearn.tasks.sim import TaskSim
    from robolearn.teleop.viewer import InterventionViewer, RunStatus

    sim = TaskSim("push_cube", num_envs=1)
    keys = ViewerKeySource()
    made = {}

    def launcher(m, d, key_callback=None, show_left_ui=True, show_right_ui=True):
        assert not show_left_ui and not show_right_ui  # panels start hidden: the scene fills the window
        made["h"] = FakeHandle(m, key_callback)
        return made["h"]

    viewer = InterventionViewer(sim, keys=keys, launcher=launcher)
    viewer._intercept_failed = True  # as where GLFW's key callback cannot be taken over
    handle = made["h"]
    handle.press("t")  # MuJoCo turns on transparency, then calls the key callback
    assert viewer.flags_changed() == ["flags"] and keys.drain() == ["t"]
    status = RunStatus(mode=Mode.RECOVERY, grip_closed=True, episode=0, episodes=3, seed=5, step=10, horizon=60,
                       control_period=0.1, interventions=1, total_interventions=2)
    viewer.update(sim.get_state()[0], status)
    assert viewer.flags_changed() == []
    handle.key_callback(258)  # Tab (not a teleop key): MuJoCo's, nothing restored or queued
    assert keys.drain() == []
    # the free camera starts at the front camera: screen up = +y, right = +x
    v = viewer.screen_view()
    np.testing.assert_allclose(v.forward, [0, 1], atol=1e-6)
    np.testing.assert_allclose(v.right, [1, 0], atol=1e-6)
    viewer.close()
    sim.close()


def test_reference_cannot_run_away_from_a_blocked_robot():
    keys = QueueKeySource()
    dev = KeyboardDevice(keys, speed=0.5)  # 5 cm per step
    robot = Pose(np.zeros(3), 0.0, -1.0)
    dev.engage(robot)
    for _ in range(5):
        keys.push("down")
        dev.poll(ctx(robot))
        dev.action(ctx(robot))
    assert np.linalg.norm(dev.reference.pos - robot.pos) <= dev.max_lead + 1e-9
    # held down onto the table (the robot cannot follow), then away: the planar command still gets through
    dev = KeyboardDevice(keys, speed=0.1)
    dev.engage(robot)
    keys.push_event("f", True)
    for _ in range(10):
        dev.poll(ctx(robot))
        dev.action(ctx(robot))
    assert dev.reference.pos[2] == pytest.approx(-dev.max_lead_z)
    keys.push_event("w", True)
    dev.poll(ctx(robot))
    a = dev.action(ctx(robot))
    assert a[1] == pytest.approx(0.01 / 0.03, abs=1e-6) and a[2] == pytest.approx(-dev.max_lead_z / 0.03, abs=1e-6)


def test_pose_action_follows_task_axes():
    t = fake_task(("x", "y", "z", "grip"))
    a = pose_action(t, Pose(np.array([0.01, 0, 0]), 1.0, 1.0), Pose(np.zeros(3), 0.0, -1.0))
    np.testing.assert_allclose(a, [1 / 3, 0, 0, 1.0], atol=1e-6)
    far = pose_action(t, Pose(np.array([1.0, 0, 0]), 0, -1), Pose(np.zeros(3), 0, -1))
    assert far[0] == pytest.approx(1.0)


def test_viewer_key_callback_maps_glfw_codes():
    src = ViewerKeySource()
    for code in (84, 265, 32, 257, 256, 45, 61, 9999):  # T, up, space, enter, escape, -, =, unknown
        src.callback(code)
    assert src.drain() == ["t", "up", "space", "enter", "escape", "minus", "equal"] and src.drain() == []
    src.glfw_event(87, 1)  # raw GLFW: W pressed, repeated (ignored), released
    src.glfw_event(87, 2)
    src.glfw_event(87, 0)
    assert src.drain() == [("w", "down"), ("w", "up")]


def test_terminal_key_source_reads_keys_and_arrow_escapes_from_a_pipe():
    r, w = os.pipe()
    src = TerminalKeySource(fd=r, raw=False)
    os.write(w, b"t\x1b[Ah x")
    deadline = time.time() + 5
    got: list[str] = []
    while len(got) < 5 and time.time() < deadline:
        got += src.drain()
        time.sleep(0.01)
    src.close()
    os.close(w)
    assert got == ["t", "up", "h", "space", "x"]


def test_spacemouse_with_a_fake_hid_reader():
    states = iter([
        SimpleNamespace(x=0.0, y=0.0, z=0.0, yaw=0.0, buttons=[0, 1]),  # button 1 pressed: advance
        SimpleNamespace(x=0.0, y=0.0, z=0.0, yaw=0.0, buttons=[0, 1]),  # still held: no new event
        SimpleNamespace(x=0.5, y=1.0, z=0.05, yaw=0.0, buttons=[1, 0]),  # button 0: grip toggle
    ])
    keys = QueueKeySource()
    dev = SpaceMouseDevice(reader=lambda: next(states), keys=keys, speed=0.02)
    robot = Pose(np.zeros(3), 0.0, -1.0)
    assert dev.poll(ctx(robot, Mode.AUTONOMOUS)) == [E.TAKEOVER]
    dev.engage(robot)
    assert dev.poll(ctx(robot, Mode.RECOVERY)) == []
    keys.push("y")
    assert dev.poll(ctx(robot, Mode.RECOVERY)) == [E.SUCCESS]
    a = dev.action(ctx(robot))
    np.testing.assert_allclose(a[:3], [0.02 / 0.03, -0.01 / 0.03, 0.0], atol=1e-6)  # z inside the deadzone
    assert a[4] == 1.0


def test_spacemouse_without_the_driver_is_a_one_line_error():
    try:
        import pyspacemouse  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="teleop extra"):
            SpaceMouseDevice()
    else:
        pytest.skip("pyspacemouse is installed")


def test_gamepad_with_a_fake_reader():
    frames = iter([{"axes": {"ly": -1.0}, "buttons": {"b"}}, {"axes": {}, "buttons": {"b", "y"}}])
    dev = GamepadDevice(reader=lambda: next(frames), speed=0.03)
    robot = Pose(np.zeros(3), 0.0, -1.0)
    assert dev.poll(ctx(robot, Mode.RECOVERY)) == [E.CORRECT]
    dev.engage(robot)
    assert dev.poll(ctx(robot, Mode.CORRECTION)) == [E.SUCCESS]  # b still held: no second advance


# ----------------------------------------------------------------------------------- mixtures
# Episodes (sources per step, success): a demo, an autonomous success, an autonomous failure,
# an intervened episode that succeeded, an intervened one that failed.
EPISODES = [
    (["demo"] * 10, True),
    (["policy"] * 8, True),
    (["policy"] * 8, False),
    (["policy"] * 20 + ["recovery"] * 4 + ["correction"] * 6, True),
    (["policy"] * 5 + ["correction"] * 5 + ["policy"] * 3, False),
]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    path = tmp_path_factory.mktemp("mix") / "mix.zarr"
    store = EpisodeStore.create(path, {"obs/state": Feature("float32", (2,), "obs"), "action": Feature("float32", (2,), "action")})
    for src, ok in EPISODES:
        n = len(src)
        store.append_episode({"obs/state": np.zeros((n, 2), np.float32), "action": np.zeros((n, 2), np.float32), "source": src}, success=ok)
    store.close()
    return EpisodeStore.open(path)


def _names(store):
    inv = {v: k for k, v in SOURCE_CODES.items()}
    return np.array([inv[c] for c in store.read("source")])


def test_rac_and_hg_dagger_keep_the_right_steps(mixed):
    src = _names(mixed)
    ep = np.repeat(np.arange(mixed.num_episodes), mixed.episode_lengths)
    assert mixed.column("intervention_count").tolist() == [0, 0, 0, 1, 1]
    rac = mixture_weights(mixed, "rac", np.arange(5)).sampling > 0
    want = (src != "policy") | (ep == 1)  # policy steps only from the autonomous success
    np.testing.assert_array_equal(rac, want)
    hg = mixture_weights(mixed, "hg_dagger", np.arange(5)).sampling > 0
    np.testing.assert_array_equal(hg, src != "policy")
    corr = mixture_weights(mixed, "corrections", np.arange(5)).sampling > 0
    np.testing.assert_array_equal(corr, np.isin(src, ["demo", "correction"]))
    # restricted to a split: other episodes are never sampled
    part = mixture_weights(mixed, "rac", np.array([0, 3])).sampling > 0
    np.testing.assert_array_equal(part, (np.isin(ep, [0, 3])) & (src != "policy"))


def test_iwr_samples_interventions_half_the_time(mixed):
    mix = mixture_weights(mixed, "iwr", np.arange(5))
    ds = SequenceDataset(mixed, ["state"], n_obs_steps=1, horizon=1)
    w = mix.window_sampling_weights(ds)
    src = _names(mixed)[ds.anchor]
    p = w / w.sum()
    assert p[np.isin(src, ["recovery", "correction"])].sum() == pytest.approx(0.5)
    assert np.all(w > 0)  # IWR keeps every sample
    # empirical frequency through the sampler the trainer uses
    from robolearn.data.sampler import WeightedWindowSampler

    draws = WeightedWindowSampler(w, seed=0).next_batch(20000)
    assert abs(np.isin(src[draws], ["recovery", "correction"]).mean() - 0.5) < 0.02
    assert mix.loss_weights is None


def test_sirius_class_weights(mixed):
    mix = mixture_weights(mixed, "sirius", np.arange(5))
    src = _names(mixed)
    n = len(src)
    starts = mixed.episode_starts
    pre = np.zeros(n, bool)
    for e, t in ((3, 20), (4, 5)):  # takeovers at these episode steps
        lo = starts[e] + max(0, t - SIRIUS_PRE_INTERVENTION_STEPS)
        pre[lo:starts[e] + t] = True
    intv = np.isin(src, ["recovery", "correction"])
    demo = src == "demo"
    robot = (src == "policy") & ~pre
    r = {k: m.mean() for k, m in (("demo", demo), ("int", intv), ("pre", pre), ("robot", robot))}
    raw = np.zeros(n)
    raw[demo] = 1.0
    raw[intv] = 0.5 / r["int"]
    raw[pre] = 0.002 / r["pre"]
    raw[robot] = (1 - r["demo"] - 0.5 - 0.002) / r["robot"]
    # class masses: interventions 0.5, pre-intervention 0.002, demos their share, robot the rest
    assert raw[intv].sum() / n == pytest.approx(0.5) and raw[pre].sum() / n == pytest.approx(0.002)
    np.testing.assert_allclose(mix.loss_weights, raw / raw.mean(), rtol=1e-5)
    assert mix.loss_weights.mean() == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_array_equal(mix.sampling, np.ones(n))  # sampled uniformly
    # the 15 robot steps before the takeover at step 20 of episode 3 are steps 5..19
    assert pre[starts[3] + 5] and pre[starts[3] + 19] and not pre[starts[3] + 4]
    assert mix.loss_weights[starts[3] + 5] < mix.loss_weights[starts[3] + 4] < mix.loss_weights[starts[3] + 20]


def test_sirius_keeps_the_interventions_half_when_demos_dominate(tmp_path):
    """A base trained on many demos: the demos' true share (here 0.9) does not fit beside the
    interventions' 0.5, so demos get what is left and the other robot steps nothing."""
    path = tmp_path / "many_demos.zarr"
    store = EpisodeStore.create(path, {"obs/state": Feature("float32", (2,), "obs"), "action": Feature("float32", (2,), "action")})
    episodes = [(["demo"] * 90, True), (["policy"] * 25 + ["correction"] * 5, True)]
    for src, ok in episodes:
        n = len(src)
        store.append_episode({"obs/state": np.zeros((n, 2), np.float32), "action": np.zeros((n, 2), np.float32), "source": src}, success=ok)
    store.close()
    st = EpisodeStore.open(path)
    mix = mixture_weights(st, "sirius", np.arange(2))
    src = _names(st)
    w = mix.loss_weights / mix.loss_weights.sum()
    assert w[src == "correction"].sum() == pytest.approx(0.5, rel=1e-5)
    assert w[src == "demo"].sum() == pytest.approx(0.498, rel=1e-5)
    robot = src == "policy"
    pre = np.zeros(len(src), bool)
    pre[90 + 25 - SIRIUS_PRE_INTERVENTION_STEPS:90 + 25] = True
    assert w[pre].sum() == pytest.approx(0.002, rel=1e-4)
    assert w[robot & ~pre].sum() == pytest.approx(0.0, abs=1e-9)
    assert mix.shares == pytest.approx({"demo": 0.498, "intervention": 0.5, "pre_intervention": 0.002, "robot": 0.0}, abs=1e-6)
    # the rac / hg_dagger / iwr mixtures report their realised sampling shares too
    iwr = mixture_weights(st, "iwr", np.arange(2)).shares
    assert iwr["intervention"] == pytest.approx(0.5) and iwr["demo"] + iwr["robot"] == pytest.approx(0.5)
