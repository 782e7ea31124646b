"""`robolearn intervene`: deploy a policy, let an operator intervene, record every step.

Each step the device is polled, the session applies its events (AUTONOMOUS <-> RECOVERY ->
CORRECTION -> end | AUTONOMOUS), and the step is written with `source` = policy / recovery /
correction, the task stage of the observed state, the failure event, the expert primitive (operator
steps of the scripted operator) and the full `sim_state`. An episode is committed in one append
when it ends (task success, time limit, the operator's success/failure, or -- with
`--terminate-after-intervention`, RaC's rule 2 -- the end of an intervention), so a killed
recorder keeps every committed episode. Re-record discards the running episode and restarts it
from the same seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from robolearn.tasks.rollout import EndEpisodes, PolicyActor, StoreWriter
from robolearn.teleop.devices import DeviceContext, fixed_camera_view, robot_pose
from robolearn.teleop.session import RECORDER_EVENTS, InterventionSession, TeleopEvent
from robolearn.teleop.viewer import InterventionViewer

__all__ = ["InterventionViewer", "intervention_metrics", "record_interventions"]


# ----------------------------------------------------------------------------------- store
def intervention_features(sim: Any) -> dict[str, Any]:
    """Store features of recorded episodes: the same schema as `robolearn collect` writes."""
    from robolearn.tasks.collect import store_features

    return store_features(sim)


def open_output_store(path: str | Path, sim: Any, task: str) -> Any:
    """Append to an existing store of the same task (e.g. a copy of the demos), else create one."""
    from robolearn.tasks.collect import open_task_store

    return open_task_store(path, intervention_features(sim), sim, task)


# ----------------------------------------------------------------------------------- metrics
def intervention_metrics(store: Any, episodes: np.ndarray | list[int] | None = None) -> dict[str, float]:
    """Per-round numbers from a store's labels: intervention rate, recoveries per successful
    episode, recovery:correction step ratio, operator steps used."""
    from robolearn.data.store import SOURCE_CODES

    eps = np.arange(store.num_episodes) if episodes is None else np.asarray(episodes, dtype=np.int64)
    src = store.read("source", cache=False)
    starts, ends = store.episode_starts, store.episode_ends
    success = store.column("success").astype(bool)
    count = store.column("intervention_count").astype(int)
    per = {"policy": 0, "recovery": 0, "correction": 0, "demo": 0}
    recoveries = np.zeros(len(eps), int)
    for j, e in enumerate(eps):
        seg = src[starts[e]:ends[e]]
        for name in per:
            per[name] += int(np.sum(seg == SOURCE_CODES[name]))
        rec = seg == SOURCE_CODES["recovery"]
        recoveries[j] = int(np.sum(rec & ~np.concatenate([[False], rec[:-1]])))
    n = len(eps)
    succ = success[eps] if n else np.zeros(0, bool)
    operator = per["recovery"] + per["correction"]
    return {
        "episodes": n,
        "success_rate": float(succ.mean()) if n else 0.0,
        "intervention_rate": float((count[eps] > 0).mean()) if n else 0.0,
        "interventions_per_episode": float(count[eps].mean()) if n else 0.0,
        "recoveries_per_successful_episode": float(recoveries[succ].mean()) if succ.any() else 0.0,
        "recovery_steps": per["recovery"],
        "correction_steps": per["correction"],
        "policy_steps": per["policy"],
        "demo_steps": per["demo"],
        "operator_steps": operator,
        "recovery_correction_ratio": per["recovery"] / per["correction"] if per["correction"] else float("nan"),
        "autonomous_successes": int(np.sum(succ & (count[eps] == 0))) if n else 0,
    }


# ----------------------------------------------------------------------------------- loop
SLOWMO_RANGE = (0.25, 16.0)  # wall seconds per control period, as a factor of the period


class OperatorActor:
    """The rollout engine's actor for `robolearn intervene` (one env): each step it polls the
    device, applies the events to the session, and answers the policy's action (autonomous) or
    the operator's (recovery / correction), labelled in `last_source` / `last_primitive` -- or an
    `EndEpisodes` when the operator ends, re-records or quits the episode. A pause, a quit prompt
    and `pause_on_takeover` hold the simulation inside `act` (polling the device, redrawing the
    viewer) until the operator answers. Run-level state (slow motion, wall clock, messages) lives
    here; InterventionRecorder stores the steps."""

    def __init__(self, policy: Any, sim: Any, env: Any, device: Any, session: InterventionSession, viewer: Any,
                 episodes: int, realtime: bool, slowmo: float, pause_on_takeover: bool, say: Callable[[str], None],
                 clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.policy = PolicyActor(policy)
        self.sim, self.env, self.device, self.session, self.viewer = sim, env, device, session, viewer
        self.episodes, self.realtime, self.slowmo, self.pause_on_takeover = episodes, realtime, slowmo, pause_on_takeover
        self.say, self.clock, self.sleep = say, clock, sleep
        self.confirms_quit = bool(getattr(device, "confirms_quit", False))
        self.fixed_view = fixed_camera_view(sim.model)
        self.interventions_before = 0  # in committed episodes of this run
        self.quit_early = False
        self.last_source: list[str] = ["policy"]
        self.last_primitive = np.full(1, -1, np.int32)

    # -- per episode ------------------------------------------------------------------------------
    def reset(self, obs: dict[str, np.ndarray], rows: Any = None) -> None:
        self.episode, self.seed = int(self.env.slot_episode[0]), int(self.env.slot_seed[0])
        self.policy.reset(obs, None)  # one env: the whole history and policy
        self.device.reset_episode()
        self.session.start_episode()
        self.t = 0
        self.segments: list[dict[str, Any]] = []
        self.outcome: str | None = None
        self.quit_choice: TeleopEvent | None = None
        self.paused = False
        self.pending: list[TeleopEvent] = []
        self.next_tick = self.clock()
        self.say(f"episode {self.episode + 1}/{self.episodes} (seed {self.seed}): the policy drives; t takes over")

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        self.policy.observe(obs)

    @property
    def info(self) -> dict[str, Any]:
        """failure_event / stage / success / t of the observed state (its last step, or the reset)."""
        return {k: v[0] for k, v in self.env.status.items()}

    # -- per step ---------------------------------------------------------------------------------
    def act(self, obs: dict[str, np.ndarray]) -> Any:
        sim, session, device = self.sim, self.session, self.device
        while True:
            if self.paused:
                answer, self.pending = self.wait("paused", obs)
                self.paused = False
                self.next_tick = self.clock()
                if answer in (TeleopEvent.KEEP, TeleopEvent.DISCARD):
                    self.quit_choice = answer
                    return self._quit()
            s = sim.read()
            pose = robot_pose(sim.task, s)
            ctx = DeviceContext(task=sim.task, state=s, pose=pose, mode=session.mode, info=self.info, obs=obs,
                                episode=self.episode, dt=sim.control_period, view=self.view())
            events = self.pending + list(device.poll(ctx))
            self.pending = []
            for ev in events:
                if ev in (TeleopEvent.SLOWER, TeleopEvent.FASTER):
                    self.slowmo = _change_slowmo(self.slowmo, ev, self.say)
            if TeleopEvent.PAUSE in events:  # stand still; the other events apply after the pause
                self.paused = True
                self.pending = [e for e in events if e not in RECORDER_EVENTS]
                getattr(device, "hold_still", lambda: None)()
                continue
            events = [e for e in events if e not in RECORDER_EVENTS]
            if TeleopEvent.QUIT in events and self.confirms_quit:
                answer, _ = self.wait("quit", obs)
                self.next_tick = self.clock()
                if answer is TeleopEvent.RESUME:
                    events = [e for e in events if e is not TeleopEvent.QUIT]
                else:
                    self.quit_choice = answer
            tr = session.apply(events)
            if tr.quit:
                return self._quit()
            if tr.rerecord:
                self.outcome = "rerecord"
                self.say(f"re-recording episode {self.episode + 1} (seed {self.seed})")
                return EndEpisodes([0], discard=True, repeat=True)
            if tr.end:
                self.outcome = ("operator_success" if tr.success else
                                ("operator_failure" if tr.success is False else "intervention_end"))
                success = bool(self.info.get("success", False)) if tr.success is None else bool(tr.success)
                return EndEpisodes([0], success=[success])
            if tr.engaged:
                device.engage(pose)
                self.segments.append({"start": int(self.t), "reason": getattr(device, "last_reason", ""), "recovery": 0,
                                      "correction": 0, "_wall": self.clock()})
            if tr.handed_back:
                self.policy.policy.reset()  # re-plan from the state the operator left
                _close_segment(self.segments, self.clock)
            if tr.after is not tr.before:
                self.say(f"step {self.t}: {tr.after.value}" + (" (you drive)" if tr.after.operator else " (policy drives)"))
            if tr.engaged and self.pause_on_takeover and self.realtime:
                self.paused = True
                continue
            ctx.mode = session.mode
            if session.mode.operator:
                action = np.asarray(device.action(ctx), dtype=np.float32).reshape(-1)
                self.segments[-1][session.mode.value] += 1
                primitive = int(getattr(device, "last_primitive", -1))
            else:
                action = self.policy.act(obs)[0].astype(np.float32)
                primitive = _policy_primitive(self.policy.policy)
            if not np.all(np.isfinite(action)):
                raise RuntimeError(f"{session.mode.value} produced a non-finite action at step {self.t}")
            self.last_source = [session.count_step()]
            self.last_primitive = np.full(1, primitive, np.int32)
            return np.clip(action, -1.0, 1.0)[None]  # what the simulator executes is what gets stored

    def _quit(self) -> Any:
        """End the run; the running episode is kept only on the operator's KEEP."""
        self.quit_early = True
        return EndEpisodes([0], discard=self.quit_choice is not TeleopEvent.KEEP, stop=True)

    # -- the operator's view ----------------------------------------------------------------------
    def view(self) -> Any:
        viewer = self.viewer
        v = viewer.screen_view() if viewer is not None and hasattr(viewer, "screen_view") else None
        return v or self.fixed_view

    def show(self, pose: Any, prompt: str | None) -> None:
        if self.viewer is None:
            return
        from robolearn.teleop.viewer import RunStatus

        session, sim = self.session, self.sim
        self.viewer.update(sim.get_state()[0], RunStatus(
            mode=session.mode, grip_closed=pose.grip > 0, episode=self.episode, episodes=self.episodes, seed=self.seed,
            step=self.t, horizon=sim.cfg.horizon, control_period=sim.control_period,
            interventions=session.intervention_count,
            total_interventions=self.interventions_before + session.intervention_count, slowmo=self.slowmo,
            prompt=prompt, steps_recorded=self.t))

    def after_step(self) -> bool:
        """Redraw the viewer and keep the pace (realtime) after an executed step; False when the
        viewer window was closed (the run ends, the running episode is discarded)."""
        self.t += 1
        if self.viewer is not None:
            self.show(robot_pose(self.sim.task, self.sim.read()), None)
            if not self.viewer.running:
                self.quit_early = True
                self.say("the viewer window was closed")
                return False
        if self.realtime:
            self.next_tick += self.sim.control_period * self.slowmo
            now = self.clock()
            if self.next_tick > now:
                self.sleep(self.next_tick - now)
            elif now - self.next_tick > 0.25:  # fell behind (slow rendering): do not race to catch up
                self.next_tick = now
        return True

    def wait(self, prompt: str, obs: Any) -> tuple[TeleopEvent, list[TeleopEvent]]:
        """Poll the device while the simulation stands still until the prompt is answered.
        Paused: (RESUME, session events that ended the pause) or a quit answer (KEEP / DISCARD).
        Quit: KEEP, DISCARD or RESUME."""
        sim, device, say = self.sim, self.device, self.say
        if prompt == "quit":
            say(f"quit? k keeps episode {self.episode + 1} ({self.t} steps so far, stored as ended here), "
                "d discards it, any other key continues")
        else:
            say("paused: p (or a motion key) resumes")
        while True:
            pose = robot_pose(sim.task, sim.read())
            ctx = DeviceContext(task=sim.task, state=sim.read(), pose=pose, mode=self.session.mode, info=self.info,
                                obs=obs, episode=self.episode, dt=sim.control_period, view=self.view(), prompt=prompt)
            events = device.poll(ctx)
            getattr(device, "hold_still", lambda: None)()
            for i, ev in enumerate(events):
                if prompt == "quit" and ev in (TeleopEvent.KEEP, TeleopEvent.DISCARD, TeleopEvent.RESUME):
                    if ev is TeleopEvent.RESUME:
                        say("quit cancelled: continuing")
                    return ev, []
                if prompt == "paused":
                    if ev in (TeleopEvent.SLOWER, TeleopEvent.FASTER):
                        self.slowmo = _change_slowmo(self.slowmo, ev, say)
                    elif ev in (TeleopEvent.PAUSE, TeleopEvent.RESUME):
                        say("resumed")
                        return TeleopEvent.RESUME, [e for e in events[i + 1:] if e not in RECORDER_EVENTS]
                    elif ev is TeleopEvent.QUIT and self.confirms_quit:
                        answer, _ = self.wait("quit", obs)
                        if answer is not TeleopEvent.RESUME:
                            return answer, []
                        say("paused: p (or a motion key) resumes")
                    elif ev not in RECORDER_EVENTS:  # take over / correct / end ...: resume and apply it
                        say("resumed")
                        return TeleopEvent.RESUME, [e for e in events[i:] if e not in RECORDER_EVENTS]
            self.show(pose, prompt)
            if self.viewer is not None and not self.viewer.running:
                return TeleopEvent.DISCARD, []
            self.sleep(1 / 30)


class InterventionRecorder(StoreWriter):
    """The engine hook that stores intervene's episodes: StoreWriter records each step (with the
    actor's source label and primitive); this commits an episode with its outcome, intervention
    segments and count, keeps or discards the running one on a quit, redraws and paces after each
    step (OperatorActor.after_step), and stops the run at the operator-step budget."""

    def __init__(self, store: Any, actor: OperatorActor, collector: str, terminate_after_intervention: bool,
                 recovery: bool, max_operator_steps: int | None, max_rerecords: int) -> None:
        super().__init__(store, source="policy", collector=collector)
        self.actor = actor
        self.terminate_after_intervention, self.recovery = terminate_after_intervention, recovery
        self.max_operator_steps, self.max_rerecords = max_operator_steps, max_rerecords
        self.committed_episodes = 0
        self.operator_used = 0
        self.rerecords = 0
        self.quit_report: dict[str, Any] | None = None

    def on_step(self, engine: Any, step: Any, pre_obs: Any, action: Any, pre_state: Any) -> None:
        super().on_step(engine, step, pre_obs, action, pre_state)
        if not self.actor.after_step():  # the viewer window was closed: drop the running episode, stop
            _close_segment(self.actor.segments, self.actor.clock)
            self._report_discarded(self.take_steps(0))
            engine.stop()

    def on_episode_discard(self, engine: Any, row: int, episode: int, seed: int) -> None:
        actor = self.actor
        _close_segment(actor.segments, actor.clock)
        steps = self.take_steps(row)
        if actor.quit_early:
            self._report_discarded(steps)
            return
        self.rerecords += 1  # a re-record: the engine replays the same seed
        if self.rerecords > self.max_rerecords:
            raise RuntimeError(f"episode {episode} was re-recorded {self.rerecords} times; giving up")

    def on_episode_end(self, engine: Any, row: int, episode: int, seed: int, step: Any) -> None:
        actor = self.actor
        if self.quit_report is not None:  # dropped already (the viewer closed at the episode's last step)
            return
        _close_segment(actor.segments, actor.clock)
        steps = self.take_steps(row)
        success = bool(step.info["success"][row])
        if actor.quit_early:  # a quit answered "keep"
            if steps is None:
                self._report_discarded(steps)
                return
            n = len(steps["action"])
            self._commit(steps, seed, success, "operator_quit")
            self.quit_report = {"action": "kept", "episode": episode, "steps": n, "success": success}
            actor.say(f"quit: kept episode {episode + 1} ({n} steps, stored as a {'success' if success else 'failure'})")
            return
        if steps is None:  # ended before the first step: nothing to store
            return
        session = actor.session
        outcome = actor.outcome or ("success" if success else "time_limit")
        self._commit(steps, seed, success, outcome)
        actor.interventions_before += session.intervention_count
        if actor.confirms_quit or actor.viewer is not None:
            actor.say(f"episode {episode + 1}/{actor.episodes} stored: {outcome}, {len(steps['action'])} steps, "
                      f"{session.intervention_count} intervention(s)")
        if self.max_operator_steps is not None and self.operator_used >= self.max_operator_steps:
            engine.stop()

    def _commit(self, steps: dict[str, np.ndarray], seed: int, success: bool, outcome: str) -> None:
        session = self.actor.session
        meta = {"outcome": outcome, "interventions": self.actor.segments, "operator_steps": session.operator_steps,
                "terminate_after_intervention": self.terminate_after_intervention, "recovery": self.recovery}
        self.store.append_episode(steps, success=success, collector=self.collector, seed=int(seed), metadata=meta,
                                  intervention_count=session.intervention_count)
        self.committed_episodes += 1
        self.operator_used += session.operator_steps

    def _report_discarded(self, steps: dict[str, np.ndarray] | None) -> None:
        actor = self.actor
        n = 0 if steps is None else len(steps["action"])
        self.quit_report = {"action": "discarded", "episode": actor.episode, "steps": n}
        actor.say(f"quit: discarded the running episode {actor.episode + 1} ({n} steps, not stored)")


def record_interventions(
    policy: Any,
    task: str,
    device: Any,
    episodes: int,
    out: str | Path,
    seed: int = 0,
    terminate_after_intervention: bool = False,
    recovery: bool = True,
    perturb: float | None = None,
    task_overrides: list[str] | None = None,
    collector: str | None = None,
    max_operator_steps: int | None = None,
    viewer: Any = None,
    realtime: bool = False,
    progress: bool = True,
    max_rerecords: int = 100,
    slowmo: float = 1.0,
    pause_on_takeover: bool = False,
    say: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Record `episodes` episodes (seeds seed, seed+1, ...); returns the round's metrics.

    `device` follows robolearn.teleop.devices.Device (or is a factory `sim -> device`); `viewer` is
    an InterventionViewer, a factory `sim -> viewer`, or None. `task_overrides` are `key=value`
    task settings (`robolearn intervene` passes the checkpoint's recorded ones, then `--set`).
    `max_operator_steps` stops after the episode in which the operator-step budget is reached.

    Time to act: with `realtime` each control step takes `slowmo` x the task's control period of
    wall time (the stored data keep the task's period; `-` / `=` change the factor while running);
    a PAUSE event (key `p`) stops the simulation until resumed, and `pause_on_takeover` pauses at
    every takeover. A QUIT from a device that `confirms_quit` asks whether to keep or discard the
    running episode; `say` receives every message meant for the operator (the terminal).

    The rollout is the shared engine's (robolearn.tasks.rollout): OperatorActor decides each
    step, InterventionRecorder stores it.
    """
    from robolearn.evaluation import task_config_for_policy
    from robolearn.tasks.rollout import FixedSeeds, HostBatch, RolloutEngine
    from robolearn.tasks.sim import TaskSim

    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if max_operator_steps is not None and max_operator_steps < 1:
        raise ValueError(f"--max-operator-steps must be >= 1, got {max_operator_steps}")
    if not SLOWMO_RANGE[0] <= slowmo <= SLOWMO_RANGE[1]:
        raise ValueError(f"--slowmo must be in [{SLOWMO_RANGE[0]}, {SLOWMO_RANGE[1]}], got {slowmo}")
    say = say or (lambda msg: None)
    cfg = task_config_for_policy(task, policy, perturb, task_overrides)
    sim = TaskSim(task, cfg=cfg, num_envs=1)
    if not hasattr(device, "poll"):  # a factory: build the device (and viewer) for this simulator
        device = device(sim)
    if viewer is not None and not hasattr(viewer, "update"):
        viewer = viewer(sim)
    _check_policy_fits(policy, sim, task)
    store = open_output_store(out, sim, task)
    first_new = store.num_episodes
    env = HostBatch(sim, FixedSeeds([seed + i for i in range(episodes)]))
    actor = OperatorActor(policy, sim, env, device, InterventionSession(terminate_after_intervention, recovery=recovery),
                          viewer, episodes, realtime, slowmo, pause_on_takeover, say, clock, sleep)
    recorder = InterventionRecorder(store, actor, collector or f"intervene:{device.name}", terminate_after_intervention,
                                    recovery, max_operator_steps, max_rerecords)
    engine = RolloutEngine(env, actor, hooks=[recorder], progress=progress, desc=f"intervene {task}")
    try:
        engine.run()
    finally:
        new = np.arange(first_new, store.num_episodes)
        metrics = intervention_metrics(store, new) if len(new) else intervention_metrics(store, [])
        store.close()
        sim.close()
        device.close()
        if viewer is not None:
            viewer.close()
    committed = recorder.committed_episodes
    metrics.update(task=task, store=str(out), seeds=[seed, seed + committed - 1] if committed else [],
                   quit=actor.quit_early, quit_episode=recorder.quit_report,
                   terminate_after_intervention=terminate_after_intervention, recovery=recovery,
                   task_overrides=list(task_overrides or []))
    return metrics


def _close_segment(segments: list[dict[str, Any]], clock: Callable[[], float]) -> None:
    """Record the open intervention's wall time (takeover to hand-back or episode end, pauses
    included): `seconds`, the operator's time per intervention."""
    if segments and "_wall" in segments[-1]:
        segments[-1]["seconds"] = round(clock() - segments[-1].pop("_wall"), 3)


def _policy_primitive(policy: Any) -> int:
    """The primitive a hierarchical policy is executing in env 0 (-1 for flat policies).

    Stored with the policy's own steps so that mixtures that train on robot steps (IWR, Sirius,
    RaC's autonomous successes) give them an action loss: the hierarchical loss skips -1 labels."""
    active = getattr(policy, "active_primitive", None)
    if active is None or len(active) == 0:
        return -1
    return int(active[0])


def _change_slowmo(slowmo: float, ev: TeleopEvent, say: Callable[[str], None]) -> float:
    """Halve or double the slow-motion factor within SLOWMO_RANGE."""
    lo, hi = SLOWMO_RANGE
    new = min(hi, slowmo * 2) if ev is TeleopEvent.SLOWER else max(lo, slowmo / 2)
    say(f"speed: {'real time' if new == 1 else (f'1/{new:g} (slow motion)' if new > 1 else f'{1 / new:g}x')}")
    return new


def _check_policy_fits(policy: Any, sim: Any, task: str) -> None:
    cfg = getattr(policy, "config", None)
    if cfg is None:
        return
    shapes = dict(getattr(cfg, "input_shapes", {}) or {})
    if "state" in shapes and list(shapes["state"]) != [sim.obs_dim]:
        raise ValueError(f"the policy reads {shapes['state'][0]}-dim states; task {task} gives {sim.obs_dim}")
    if getattr(cfg, "action_dim", sim.action_dim) not in (0, sim.action_dim):
        raise ValueError(f"the policy outputs {cfg.action_dim}-dim actions; task {task} takes {sim.action_dim}")


# ----------------------------------------------------------------------------------- CLI
def make_device(kind: str, task_obj: Any = None, familiarity: Any = None, viewer_keys: Any = None,
                recover: bool = True, seed: int = 0, speed: float = 0.1, yaw_speed: float = 1.0) -> Any:
    from robolearn.teleop import devices as dev

    if kind == "scripted":
        from robolearn.teleop.scripted_operator import OperatorConfig, ScriptedOperator

        return ScriptedOperator(task_obj, familiarity=familiarity, config=OperatorConfig(recover=recover), seed=seed)
    if kind == "keyboard":
        return dev.KeyboardDevice(viewer_keys if viewer_keys is not None else dev.TerminalKeySource(),
                                  speed=speed, yaw_speed=yaw_speed)
    if kind == "spacemouse":
        return dev.SpaceMouseDevice(keys=viewer_keys)
    if kind == "gamepad":
        return dev.GamepadDevice()
    raise ValueError(f"unknown teleop device {kind!r} (known: {', '.join(dev.TELEOP_DEVICES)})")


def _familiarity_source(checkpoint: str | Path, demos: str | None) -> Path | None:
    """--demos, else the store the checkpoint was trained on (its run.json)."""
    if demos:
        return Path(demos)
    from robolearn.evaluation import resolve_checkpoint

    ckpt = resolve_checkpoint(checkpoint)
    for run_json in (ckpt.parent / "run.json", ckpt.parent.parent / "run.json", ckpt.parent.parent.parent / "run.json"):
        if run_json.is_file():
            data = json.loads(run_json.read_text()).get("data")
            return Path(data) if data and Path(data).exists() else None
    return None


def _run(args: argparse.Namespace) -> int:
    from robolearn.evaluation import load_any_policy, task_overrides_from_meta
    from robolearn.teleop.devices import key_map_text

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if not (args.speed > 0 and args.yaw_speed > 0):
        raise ValueError(f"--speed and --yaw-speed must be > 0, got {args.speed} and {args.yaw_speed}")
    if not SLOWMO_RANGE[0] <= args.slowmo <= SLOWMO_RANGE[1]:
        raise ValueError(f"--slowmo must be in [{SLOWMO_RANGE[0]}, {SLOWMO_RANGE[1]}], got {args.slowmo}")
    policy, meta = load_any_policy(args.checkpoint)
    task = args.task or meta.get("task")
    if not task:
        raise ValueError("the checkpoint records no task: pass --task")
    # the task settings the policy was trained with (obs_relative, num_cubes, horizon, ...), then --set
    overrides = task_overrides_from_meta(meta, task) + list(args.task_overrides or [])
    familiarity = None
    if args.teleop == "scripted":
        from robolearn.data.store import EpisodeStore
        from robolearn.teleop.scripted_operator import FamiliarityModel

        src = _familiarity_source(args.checkpoint, args.demos)
        if src is not None:
            with EpisodeStore.open(src, mode="r") as demo_store:
                familiarity = FamiliarityModel.from_store(demo_store)
        else:
            print("intervene: no demo store found (pass --demos): drift detection is off", file=sys.stderr)
    human = args.teleop != "scripted"
    say = (lambda msg: print(f"intervene: {msg}", file=sys.stderr, flush=True)) if human else None  # noqa: E731
    keys = None
    viewer = None
    if args.viewer:
        from robolearn.teleop.devices import ViewerKeySource

        keys = ViewerKeySource()
        viewer = lambda sim: InterventionViewer(sim, keys=keys)  # noqa: E731
    if human:
        where = "in the viewer window" if args.viewer else "in this terminal"
        print(f"intervene: {args.teleop} teleop, keys {where} (directions are screen-relative: up = away from you):\n"
              f"{key_map_text()}", file=sys.stderr, flush=True)
    recover = not args.no_recovery
    device = lambda sim: make_device(args.teleop, sim.task, familiarity, viewer_keys=keys, recover=recover,  # noqa: E731
                                     seed=args.seed, speed=args.speed, yaw_speed=args.yaw_speed)
    metrics = record_interventions(
        policy, task, device, args.episodes, args.out, seed=args.seed,
        terminate_after_intervention=args.terminate_after_intervention, recovery=recover,
        perturb=args.perturb, task_overrides=overrides, max_operator_steps=args.max_operator_steps, viewer=viewer,
        realtime=human, progress=not args.json and not human, slowmo=args.slowmo,
        pause_on_takeover=args.pause_on_takeover, say=say,
    )
    if args.json:
        print(json.dumps(metrics))
        return 0
    quit_episode = metrics.get("quit_episode")
    if quit_episode:
        what = ("kept" if quit_episode["action"] == "kept" else "discarded (not stored)")
        print(f"quit during episode {quit_episode['episode'] + 1}: its {quit_episode['steps']} steps were {what}")
    print(f"recorded {metrics['episodes']} episode(s) into {args.out}")
    print("| episodes | success | intervention rate | recoveries / successful ep | recovery:correction steps | operator steps |")
    print("|---|---|---|---|---|---|")
    ratio = metrics["recovery_correction_ratio"]
    print(f"| {metrics['episodes']} | {metrics['success_rate']:.2f} | {metrics['intervention_rate']:.2f} | "
          f"{metrics['recoveries_per_successful_episode']:.2f} | {metrics['recovery_steps']}:{metrics['correction_steps']}"
          f"{'' if ratio != ratio else f' ({ratio:.2f})'} | {metrics['operator_steps']} |")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    from robolearn.teleop.devices import KEY_HELP, TELEOP_DEVICES

    parser.epilog = KEY_HELP
    parser.add_argument("--checkpoint", required=True, help="policy checkpoint or run directory")
    parser.add_argument("--task", help="task (default: the one recorded in the checkpoint)")
    parser.add_argument("--teleop", required=True, choices=TELEOP_DEVICES)
    from robolearn import validation

    parser.add_argument("--episodes", type=validation.episode_count, required=True)
    parser.add_argument("--out", required=True, help="episode store to append to (created if missing)")
    parser.add_argument("--set", dest="task_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="task config override, e.g. --set horizon=80 (repeatable); applied after the task "
                             "settings recorded in the checkpoint (obs_relative, num_cubes, horizon, ...)")
    parser.add_argument("--terminate-after-intervention", action="store_true",
                        help="end each episode when the first intervention ends (RaC rule 2)")
    parser.add_argument("--no-recovery", action="store_true",
                        help="take-overs go straight to correction (HG-DAgger/IWR/Sirius protocol)")
    parser.add_argument("--viewer", action="store_true", help="show env 0 in the MuJoCo viewer (keys go to the device)")
    parser.add_argument("--speed", type=validation.positive_float, default=0.1, help="keyboard: gripper speed while a motion key is held, m/s")
    parser.add_argument("--yaw-speed", type=validation.positive_float, default=1.0, help="keyboard: yaw rate while z / x is held, rad/s")
    parser.add_argument("--slowmo", type=validation.positive_float, default=1.0,
                        help="human devices: wall seconds per control period, as a factor (2 = half speed; "
                             "- / = change it while running); the stored data keep the task's control period")
    parser.add_argument("--pause-on-takeover", action="store_true",
                        help="human devices: pause at every takeover until p or a motion key")
    parser.add_argument("--seed", type=validation.seed, default=0, help="episode i uses seed SEED+i")
    parser.add_argument("--perturb", type=validation.probability, default=None, help="perturbation events per step")
    parser.add_argument("--demos", default=None, help="demo store for the scripted operator's familiarity model "
                        "(default: the checkpoint's training data)")
    parser.add_argument("--max-operator-steps", type=validation.non_negative_int, default=None,
                        help="stop after the episode in which this many operator steps were used")
    parser.add_argument("--json", action="store_true", help="print the round's metrics as one JSON object")
    parser.set_defaults(func=_run)
