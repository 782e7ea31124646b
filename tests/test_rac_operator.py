"""The faithful scripted operator: failure predictors (not imperfection) trigger takeovers, RaC's
recovery rewinds to a pose this rollout visited, the correction finishes the current sub-task, and
control returns to the policy (or the episode ends); HG-DAgger corrects at the same trigger."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from robolearn.data.store import SOURCE_CODES, EpisodeStore
from robolearn.tasks.base import EVENT
from robolearn.tasks.sim import TaskSim
from robolearn.teleop.devices import DeviceContext, Pose, robot_pose
from robolearn.teleop.recorder import record_interventions
from robolearn.teleop.scripted_operator import OperatorConfig, ScriptedOperator, VisitedPose, rewind_waypoint
from robolearn.teleop.session import Mode, TeleopEvent

TASK = "pick_place"
CODES = {v: k[0] for k, v in SOURCE_CODES.items()}


@pytest.fixture()
def sim():
    s = TaskSim(TASK, num_envs=1)
    s.reset(seeds=[3])
    yield s
    s.close()


def ctx_of(sim, grip: float = -1.0, event: str = "none", mode: Mode = Mode.AUTONOMOUS) -> DeviceContext:
    s = sim.read()
    pose = robot_pose(sim.task, s)
    pose.grip = grip
    return DeviceContext(task=sim.task, state=s, pose=pose, mode=mode, info={"failure_event": EVENT[event]})


def test_a_perturbation_alone_is_no_reason_to_take_over(sim):
    op = ScriptedOperator(sim.task, config=OperatorConfig(stall_steps=50))
    assert op.poll(ctx_of(sim)) == []
    assert op.poll(ctx_of(sim, event="nudge_object")) == []  # nudged cube, nothing held: the policy may cope
    assert op.poll(ctx_of(sim, event="shift_target")) == []


@pytest.mark.parametrize("event", ["object_dropped", "object_out_of_reach"])
def test_the_object_leaving_the_gripper_triggers(sim, event):
    op = ScriptedOperator(sim.task)
    op.poll(ctx_of(sim))
    assert op.poll(ctx_of(sim, event=event)) == [TeleopEvent.TAKEOVER] and op.last_reason == event


def test_a_grasp_closing_on_nothing_triggers(sim):
    op = ScriptedOperator(sim.task, config=OperatorConfig(stall_steps=50))
    assert op.poll(ctx_of(sim, grip=-1.0)) == []
    # the gripper starts well above the cube: closing now closes on nothing
    assert op.poll(ctx_of(sim, grip=1.0)) == [TeleopEvent.TAKEOVER] and op.last_reason == "grasp_on_nothing"


def test_a_stall_triggers_after_stall_steps(sim):
    op = ScriptedOperator(sim.task, config=OperatorConfig(stall_steps=3))
    polls = [op.poll(ctx_of(sim)) for _ in range(5)]
    assert polls[:3] == [[], [], []] and polls[3] == [TeleopEvent.TAKEOVER] and op.last_reason == "stall"


def test_rewind_picks_an_earlier_pose_of_this_rollout_with_the_same_holding_state(sim):
    op = ScriptedOperator(sim.task, config=OperatorConfig(rewind_steps=2))
    p = lambda x, grip: Pose(np.array([x, 0.0, 0.1]), 0.0, grip)  # noqa: E731
    op.visited = [VisitedPose(p(0.0, -1), False, True), VisitedPose(p(0.1, -1), False, True),
                  VisitedPose(p(0.2, 1), True, True), VisitedPose(p(0.3, 1), True, True),
                  VisitedPose(p(0.4, 1), True, True), VisitedPose(p(0.5, -1), False, True)]
    # not holding now (dropped): the latest open-finger pose at least 2 steps back is x = 0.1
    t = op._choose_rewind(held=False)
    assert t.pos[0] == pytest.approx(0.1) and t.grip == -1.0 and op.rewind_steps_back == 4
    # holding now: the latest held pose at least 2 steps back is x = 0.3
    assert op._choose_rewind(held=True).pos[0] == pytest.approx(0.3)
    # familiar poses are preferred
    op.visited[1].familiar = False
    assert op._choose_rewind(held=False).pos[0] == pytest.approx(0.0)


def test_rewind_waypoints_go_up_across_and_down():
    low, far = np.array([0.0, 0.0, 0.03]), np.array([0.2, 0.0, 0.05])
    assert np.allclose(rewind_waypoint(low, far, 0.09), [0.0, 0.0, 0.09])
    assert np.allclose(rewind_waypoint(np.array([0.0, 0.0, 0.09]), far, 0.09), [0.2, 0.0, 0.09])
    assert np.allclose(rewind_waypoint(np.array([0.2, 0.0, 0.09]), far, 0.09), far)


class CloseAtOnce:
    """A policy that descends a little with the fingers closing from its third step on, wherever the
    cube is: a grasp on nothing the operator must catch."""

    class config:  # noqa: N801
        n_obs_steps = 1
        obs_keys = ["state"]

    def __init__(self):
        self.t = 0

    def reset(self, mask=None):
        self.t = 0

    def select_action(self, obs):
        self.t += 1
        a = torch.zeros(1, 5)
        a[0, 2] = -0.3
        a[0, 4] = 1.0 if self.t >= 3 else -1.0
        return a


@pytest.mark.parametrize("terminate", [True, False])
def test_rac_rewinds_to_a_visited_pose_then_corrects_the_sub_task(tmp_path, terminate):
    ops = []

    def make(sim):
        ops.append(ScriptedOperator(sim.task, config=OperatorConfig(rewind_steps=1, max_interventions=1), seed=0))
        return ops[-1]

    out = tmp_path / "rac.zarr"
    m = record_interventions(CloseAtOnce(), TASK, make, 1, out, seed=5, terminate_after_intervention=terminate,
                             recovery=True, progress=False)
    store = EpisodeStore.open(out)
    ep = store.get_episode(0, ["source", "stage", "obs/state", "sim_state"])
    seq = "".join(CODES[c] for c in ep["source"])
    assert re.fullmatch(r"p+r+c+" + ("" if terminate else r"p*"), seq), seq
    meta = store.episode_metadata(0)
    assert meta["interventions"][0]["reason"] == "grasp_on_nothing"
    op = ops[-1]
    # the rewind target is a pose of this rollout from before the trigger
    first_r = seq.index("r")
    sim = TaskSim(TASK, num_envs=1)
    visited = []
    for t in range(first_r):
        sim.set_state(ep["sim_state"][t:t + 1])
        visited.append(robot_pose(sim.task, sim.read()).pos)
    assert min(np.linalg.norm(v - op.rewind_target.pos) for v in visited) < 1e-9
    # the recovery ends at (or near) that pose; the correction ends when the sub-task (grasp) is done
    first_c = seq.index("c")
    sim.set_state(ep["sim_state"][first_c:first_c + 1])
    assert np.linalg.norm(robot_pose(sim.task, sim.read()).pos - op.rewind_target.pos) < 0.03
    last_c = seq.rindex("c")
    assert ep["stage"][first_c] == 0
    if not terminate:  # handed back right after the grasp: the policy drives again
        assert ep["stage"][last_c + 1] == 1 and seq[last_c + 1] == "p"
    sim.close()
    assert m["operator_steps"] == seq.count("r") + seq.count("c")


def test_hg_dagger_corrects_at_the_same_trigger_without_rewinding(tmp_path):
    seqs = {}
    for recover in (True, False):
        out = tmp_path / f"{recover}.zarr"
        record_interventions(CloseAtOnce(), TASK, lambda sim, r=recover: ScriptedOperator(
            sim.task, config=OperatorConfig(recover=r, max_interventions=1), seed=0), 1, out, seed=5,
            recovery=recover, progress=False)
        st = EpisodeStore.open(out)
        seqs[recover] = "".join(CODES[c] for c in st.get_episode(0, ["source"])["source"])
    assert "r" not in seqs[False] and "c" in seqs[False]
    assert seqs[True].index("r") == seqs[False].index("c")  # same takeover step


class CloseAtOnceHierarchical(CloseAtOnce):
    """CloseAtOnce reporting the primitive it executes, like the hierarchical policy does."""

    @property
    def active_primitive(self):
        return torch.tensor([3])


@pytest.mark.parametrize("policy, label", [(CloseAtOnce, -1), (CloseAtOnceHierarchical, 3)])
def test_policy_steps_carry_the_primitive_the_policy_executes(tmp_path, policy, label):
    """IWR, Sirius and RaC's autonomous successes train on robot steps: a hierarchical policy's
    loss skips steps labelled -1, so they must carry its own primitive; flat policies have none."""
    out = tmp_path / "prim.zarr"
    record_interventions(policy(), TASK, lambda sim: ScriptedOperator(
        sim.task, config=OperatorConfig(recover=False, max_interventions=1), seed=0), 1, out, seed=5,
        recovery=False, progress=False)
    ep = EpisodeStore.open(out).get_episode(0, ["source", "primitive"])
    robot = ep["source"] == SOURCE_CODES["policy"]
    assert robot.any() and (~robot).any()
    assert set(ep["primitive"][robot].tolist()) == {label}
    assert (ep["primitive"][~robot] >= 0).all()  # the operator's steps carry the expert's labels


def test_a_rewind_while_holding_is_labelled_transport(sim):
    from robolearn.tasks.base import PRIM

    for held, want in ((False, "reach"), (True, "transport")):
        op = ScriptedOperator(sim.task, config=OperatorConfig(rewind_steps=0), seed=0)
        op.visited.append(VisitedPose(robot_pose(sim.task, sim.read()), held, True))
        op._prev_held = held
        op.action(ctx_of(sim, grip=1.0 if held else -1.0, mode=Mode.RECOVERY))
        assert op.last_primitive == PRIM[want]
