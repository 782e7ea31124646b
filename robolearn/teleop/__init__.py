"""Human-in-the-loop data collection: teleop devices, a scripted operator, the intervention
state machine and `robolearn intervene` (see robolearn.teleop.recorder)."""

from robolearn.teleop.session import InterventionSession, Mode, TeleopEvent

__all__ = ["InterventionSession", "Mode", "TeleopEvent"]
