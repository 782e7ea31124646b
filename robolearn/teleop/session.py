"""The intervention state machine: AUTONOMOUS <-> RECOVERY -> CORRECTION -> (end | AUTONOMOUS).

Pure Python, no simulator: a device (human or scripted) emits `TeleopEvent`s, the session turns
them into mode changes and episode outcomes, and the recorder labels each step with the mode's
store source (policy / recovery / correction).

RaC (Hu et al., 2025): the operator takes over (TAKEOVER), first recovers to a familiar state
(RECOVERY), then corrects, i.e. finishes the current sub-task (CORRECT starts CORRECTION), and
hands back (HAND_BACK). With `terminate_after_intervention` (RaC's rule 2) the episode ends when
the intervention ends. With `recovery=False` a takeover goes straight to CORRECTION, the
HG-DAgger / IWR / Sirius protocol.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable


class TeleopEvent(str, enum.Enum):
    """What an operator can signal besides motion."""

    TAKEOVER = "takeover"  # autonomous -> recovery (or correction without a recovery phase)
    CORRECT = "correct"  # recovery done -> correction
    HAND_BACK = "hand_back"  # give control back to the policy (or end the episode, RaC rule 2)
    SUCCESS = "success"  # end the episode, labelled a success
    FAILURE = "failure"  # end the episode, labelled a failure
    RERECORD = "rerecord"  # discard this episode and record it again from the same seed
    QUIT = "quit"  # stop recording (a device that confirms quits asks keep / discard first)
    # Handled by the recorder, not the session (InterventionSession.apply ignores them):
    PAUSE = "pause"  # pause / resume the simulation
    SLOWER = "slower"  # slow motion: more wall time per control step
    FASTER = "faster"
    KEEP = "keep"  # quit prompt: commit the running episode, then quit
    DISCARD = "discard"  # quit prompt: drop the running episode, then quit
    RESUME = "resume"  # leave a pause or a quit prompt


RECORDER_EVENTS = frozenset({TeleopEvent.PAUSE, TeleopEvent.SLOWER, TeleopEvent.FASTER, TeleopEvent.KEEP,
                             TeleopEvent.DISCARD, TeleopEvent.RESUME})


class Mode(str, enum.Enum):
    AUTONOMOUS = "autonomous"
    RECOVERY = "recovery"
    CORRECTION = "correction"

    @property
    def source(self) -> str:
        """The store's per-step `source` label of steps taken in this mode."""
        return {"autonomous": "policy", "recovery": "recovery", "correction": "correction"}[self.value]

    @property
    def operator(self) -> bool:
        return self is not Mode.AUTONOMOUS


def advance_event(mode: Mode) -> TeleopEvent:
    """The event a single 'next phase' button means in `mode` (SpaceMouse/gamepad buttons)."""
    return {Mode.AUTONOMOUS: TeleopEvent.TAKEOVER, Mode.RECOVERY: TeleopEvent.CORRECT,
            Mode.CORRECTION: TeleopEvent.HAND_BACK}[mode]


@dataclass
class Transition:
    """What one batch of events did."""

    before: Mode
    after: Mode
    engaged: bool = False  # control passed from the policy to the operator (reset the device reference)
    handed_back: bool = False  # control passed back to the policy (reset its action queue)
    end: bool = False  # the episode is over: commit it with `success`
    success: bool | None = None  # None: let the task decide
    rerecord: bool = False  # discard the episode and restart it
    quit: bool = False  # stop recording
    ignored: list[TeleopEvent] = field(default_factory=list)  # events meaningless in the current mode


class InterventionSession:
    """Mode and per-episode intervention bookkeeping of one recorded episode at a time."""

    def __init__(self, terminate_after_intervention: bool = False, recovery: bool = True) -> None:
        self.terminate_after_intervention = bool(terminate_after_intervention)
        self.recovery = bool(recovery)
        self.start_episode()

    def start_episode(self) -> None:
        self.mode = Mode.AUTONOMOUS
        self.intervention_count = 0
        self.steps = {m: 0 for m in Mode}
        self.ended = False

    def apply(self, events: Iterable[TeleopEvent]) -> Transition:
        """Apply events in order; the first episode-ending event wins, later ones are ignored."""
        tr = Transition(before=self.mode, after=self.mode)
        for ev in events:
            ev = TeleopEvent(ev)
            if tr.end or tr.rerecord or tr.quit or ev in RECORDER_EVENTS:
                tr.ignored.append(ev)
                continue
            if ev is TeleopEvent.QUIT:
                tr.quit = True
            elif ev is TeleopEvent.RERECORD:
                tr.rerecord = True
            elif ev in (TeleopEvent.SUCCESS, TeleopEvent.FAILURE):
                tr.end, tr.success = True, ev is TeleopEvent.SUCCESS
            elif ev is TeleopEvent.TAKEOVER:
                if self.mode is Mode.AUTONOMOUS:
                    self.mode = Mode.RECOVERY if self.recovery else Mode.CORRECTION
                    self.intervention_count += 1
                    tr.engaged = True
                elif self.mode is Mode.RECOVERY:  # pressing "take over" again moves on to correcting
                    self.mode = Mode.CORRECTION
                else:
                    tr.ignored.append(ev)
            elif ev is TeleopEvent.CORRECT:
                if self.mode is Mode.RECOVERY:
                    self.mode = Mode.CORRECTION
                else:
                    tr.ignored.append(ev)
            elif ev is TeleopEvent.HAND_BACK:
                if self.mode.operator:
                    if self.terminate_after_intervention:
                        tr.end = True  # RaC rule 2: the episode ends when the intervention ends
                    else:
                        self.mode = Mode.AUTONOMOUS
                        tr.handed_back = True
                        tr.engaged = False
                else:
                    tr.ignored.append(ev)
        tr.after = self.mode
        if tr.handed_back and tr.after.operator:  # handed back and taken over again in one batch
            tr.handed_back = False
        if tr.end:
            self.ended = True
        return tr

    def count_step(self) -> str:
        """Count one step in the current mode; returns its `source` label."""
        self.steps[self.mode] += 1
        return self.mode.source

    @property
    def operator_steps(self) -> int:
        return self.steps[Mode.RECOVERY] + self.steps[Mode.CORRECTION]
