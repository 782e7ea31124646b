"""Teleoperation devices: an action plus events (take over, hand back, success, ...) per step.

Every device follows one protocol (`Device`):

    events = device.poll(ctx)      # read inputs; returns TeleopEvents (motion is buffered)
    device.engage(pose)            # operator takes control: the reference starts at the robot's pose
    action = device.action(ctx)    # normalized task action while the operator is in control

Human devices move a *reference pose* (gripper xyz, yaw, grip command) and command the robot
towards it. `engage` sets the reference to the robot's current pose (and the current finger
command), so a takeover never jumps: with no input, the first operator action holds position.

Inputs are injectable so everything is testable without hardware: `KeyboardDevice` reads key
presses and releases from a key source (`ViewerKeySource` fed by the MuJoCo viewer window, see
robolearn.teleop.viewer, `TerminalKeySource` reading a terminal, or `QueueKeySource` in tests);
`SpaceMouseDevice` and `GamepadDevice` read from a `reader` callable (pyspacemouse / pygame by
default, imported lazily; the `teleop` extra installs pyspacemouse and hidapi).
"""

from __future__ import annotations

import math
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from robolearn.teleop.session import Mode, TeleopEvent, advance_event


# ----------------------------------------------------------------------------------- poses
@dataclass
class Pose:
    """Gripper pose and finger command: pos (3,) metres, yaw radians, grip in [-1 open, +1 closed]."""

    pos: np.ndarray
    yaw: float = 0.0
    grip: float = -1.0

    def copy(self) -> "Pose":
        return Pose(np.array(self.pos, dtype=np.float64), float(self.yaw), float(self.grip))


def robot_pose(task: Any, s: Any, env: int = 0) -> Pose:
    """The robot's current pose from simulator arrays; grip is the current finger *command*."""
    pos = task.grip_pos(s)[env].detach().cpu().numpy().astype(np.float64)
    yaw = float(task.grip_yaw(s)[env])
    opening = float(s.ctrl[env, task.a_fl])
    grip = float(np.clip(1.0 - 2.0 * opening / task.grip_open, -1.0, 1.0))
    return Pose(pos, yaw, grip)


def pose_action(task: Any, target: Pose, current: Pose, speed: float = 1.0) -> np.ndarray:
    """Normalized action (task.action_axes order) moving `current` towards `target`."""
    delta = (np.asarray(target.pos) - np.asarray(current.pos)) / task.pos_scale
    norm = float(np.linalg.norm(delta))
    if norm > speed:
        delta = delta * (speed / norm)
    dyaw = (target.yaw - current.yaw + math.pi) % (2 * math.pi) - math.pi
    values = {"x": delta[0], "y": delta[1], "z": delta[2], "yaw": dyaw / task.yaw_scale, "grip": target.grip}
    return np.clip(np.array([values[a] for a in task.action_axes], dtype=np.float32), -1.0, 1.0)


@dataclass
class DeviceContext:
    """What a device may look at each step. `state` is privileged (scripted operator only)."""

    task: Any
    state: Any  # SimState with one row (the recorded env)
    pose: Pose
    mode: Mode
    info: dict[str, Any] = field(default_factory=dict)  # failure_event, stage, success, t of the last step
    obs: dict[str, np.ndarray] | None = None
    episode: int = 0
    dt: float = 0.1  # the task's control period, seconds per step (velocity-style devices)
    view: "ScreenView | None" = None  # the operator's view (screen-relative keys); None: DEFAULT_VIEW
    prompt: str | None = None  # "paused" or "quit" while the recorder waits for the operator


class Device(Protocol):
    name: str

    def reset_episode(self) -> None: ...

    def poll(self, ctx: DeviceContext) -> list[TeleopEvent]: ...

    def engage(self, pose: Pose) -> None: ...

    def action(self, ctx: DeviceContext) -> np.ndarray: ...

    def close(self) -> None: ...


class ReferenceDevice:
    """Base of human devices: integrates motion input into a reference pose, commands towards it."""

    name = "device"
    max_lead = 0.06  # metres the reference may run ahead of a blocked robot (horizontally)
    max_lead_z = 0.02  # vertically: pressing down onto the table must not swallow the horizontal command

    def __init__(self) -> None:
        self.reference: Pose | None = None
        self._motion = np.zeros(4)  # pending dx, dy, dz (m), dyaw (rad)
        self._toggle_grip = False

    def reset_episode(self) -> None:
        self.reference = None
        self._motion[:] = 0
        self._toggle_grip = False

    def engage(self, pose: Pose) -> None:
        self.reference = pose.copy()
        self._motion[:] = 0  # input given before the takeover must not move the new reference
        self._toggle_grip = False

    def action(self, ctx: DeviceContext) -> np.ndarray:
        if self.reference is None:
            self.engage(ctx.pose)
        ref = self.reference
        assert ref is not None
        ref.pos = ref.pos + self._motion[:3]
        lead = ref.pos - ctx.pose.pos
        n = float(np.linalg.norm(lead[:2]))
        if n > self.max_lead:
            lead[:2] *= self.max_lead / n
        lead[2] = float(np.clip(lead[2], -self.max_lead_z, self.max_lead_z))
        ref.pos = ctx.pose.pos + lead
        ref.yaw += float(self._motion[3])
        if self._toggle_grip:
            ref.grip = -1.0 if ref.grip > 0 else 1.0
        self._motion[:] = 0
        self._toggle_grip = False
        return pose_action(ctx.task, ref, ctx.pose)

    def hold_still(self) -> None:
        """Drop motion input received while the simulation does not advance (paused)."""
        self._motion[:] = 0

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------- keyboard
# GLFW key codes (what the MuJoCo viewer's key events carry) -> key names.
GLFW_NAMES = {32: "space", 45: "minus", 61: "equal", 256: "escape", 257: "enter", 259: "backspace", 262: "right",
              263: "left", 264: "down", 265: "up", 266: "page_up", 267: "page_down", 335: "enter"}


def glfw_key_name(code: int) -> str | None:
    if code in GLFW_NAMES:
        return GLFW_NAMES[code]
    if 65 <= code <= 90 or 48 <= code <= 57:
        return chr(code).lower()
    return None


# key name -> screen-relative motion (forward = away from the viewer, right, up, yaw left), in
# units of the device's speeds.
KEY_MOTION = {
    "up": (1, 0, 0, 0), "w": (1, 0, 0, 0), "down": (-1, 0, 0, 0), "s": (-1, 0, 0, 0),
    "right": (0, 1, 0, 0), "d": (0, 1, 0, 0), "left": (0, -1, 0, 0), "a": (0, -1, 0, 0),
    "page_up": (0, 0, 1, 0), "r": (0, 0, 1, 0), "page_down": (0, 0, -1, 0), "f": (0, 0, -1, 0),
    "z": (0, 0, 0, 1), "x": (0, 0, 0, -1),
}
KEY_EVENTS = {
    "t": TeleopEvent.TAKEOVER, "c": TeleopEvent.CORRECT, "h": TeleopEvent.HAND_BACK,
    "y": TeleopEvent.SUCCESS, "enter": TeleopEvent.SUCCESS, "n": TeleopEvent.FAILURE,
    "backspace": TeleopEvent.RERECORD, "q": TeleopEvent.QUIT, "escape": TeleopEvent.QUIT,
    "p": TeleopEvent.PAUSE, "minus": TeleopEvent.SLOWER, "equal": TeleopEvent.FASTER,
}
GRIP_KEYS = ("space", "g")
# After `q`, the next key answers: k keeps the running episode, d (or q / escape again) discards
# it; any other key cancels the quit.
QUIT_ANSWERS = {"k": TeleopEvent.KEEP, "d": TeleopEvent.DISCARD, "q": TeleopEvent.DISCARD,
                "escape": TeleopEvent.DISCARD}
# Every key the keyboard device reads: in the viewer these never reach MuJoCo's own shortcuts.
OWNED_KEYS = frozenset(KEY_MOTION) | frozenset(KEY_EVENTS) | frozenset(GRIP_KEYS) | frozenset(QUIT_ANSWERS)

KEY_MAP = (  # (keys, what they do): the terminal help, `--help` and docs/results/teleop.md
    ("t", "take over from the policy (in recovery: start correcting)"),
    ("c", "recovery done: start correcting (finish the current sub-task)"),
    ("h", "hand back to the policy"),
    ("arrows, w a s d", "move while held, screen-relative: up = away from you, right = right on screen"),
    ("page up / page down, r / f", "move up / down while held"),
    ("z / x", "rotate the gripper (yaw) left / right while held"),
    ("space, g", "close / open the gripper (toggle)"),
    ("y, enter", "end the episode as a success"),
    ("n", "end the episode as a failure"),
    ("backspace", "discard this episode and record it again (same seed)"),
    ("p", "pause / resume (a motion key also resumes)"),
    ("- / =", "slower / faster (slow motion; stored data keep the task's control period)"),
    ("q, escape", "quit: then k keeps the running episode, d discards it, any other key continues"),
)
KEY_HELP = "keys: " + "; ".join(f"{k}: {w}" for k, w in KEY_MAP)
KEY_HINTS = ("t take over  c correct  h hand back  space grip  p pause  -/= speed\n"
             "arrows/wasd move  r/f up/down  z/x yaw  y success  n failure  bksp redo  q quit")


def key_map_text() -> str:
    """The key map as an aligned two-column block (printed to the terminal at start)."""
    width = max(len(k) for k, _ in KEY_MAP)
    return "\n".join(f"  {k:<{width}}  {w}" for k, w in KEY_MAP)


@dataclass
class ScreenView:
    """Horizontal directions of the operator's view, unit xy vectors in the world frame: `forward`
    (screen up: away from the viewer) and `right` (right on screen)."""

    forward: np.ndarray
    right: np.ndarray

    @classmethod
    def from_camera(cls, forward: np.ndarray, up: np.ndarray) -> "ScreenView":
        """From a camera's forward and up axes (world frame). Looking straight down, screen up is
        the camera's up axis."""
        forward, up = np.asarray(forward, np.float64), np.asarray(up, np.float64)
        fwd = forward[:2] if np.linalg.norm(forward[:2]) > 0.2 else up[:2]
        right = np.cross(forward, up)[:2]
        if np.linalg.norm(fwd) < 1e-9 or np.linalg.norm(right) < 1e-9:
            return DEFAULT_VIEW
        return cls(fwd / np.linalg.norm(fwd), right / np.linalg.norm(right))


# The tasks' `front` camera (what `collect --image` records) looks along +y: away is +y, right +x.
DEFAULT_VIEW = ScreenView(np.array([0.0, 1.0]), np.array([1.0, 0.0]))


def fixed_camera_view(model: Any, camera: str = "front") -> ScreenView:
    """The view of one of the model's fixed cameras (keyboard teleop without a viewer window)."""
    import mujoco

    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if cam < 0:
        return DEFAULT_VIEW
    quat = np.asarray(model.cam_quat[cam], np.float64)
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, quat)
    mat = mat.reshape(3, 3)  # columns: camera x (right), y (up), z (backwards)
    return ScreenView.from_camera(-mat[:, 2], mat[:, 1])


class QueueKeySource:
    """Thread-safe queue of key input; `push*` from any thread, `drain` from the control loop.

    An item is a key name (a tap: pressed, and released before the next poll, as a terminal
    reports keys) or a (name, "down" | "up") pair (a window reports presses and releases)."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def push(self, name: str) -> None:
        self._q.put(name)

    def push_event(self, name: str, down: bool) -> None:
        self._q.put((name, "down" if down else "up"))

    def drain(self) -> list[Any]:
        out = []
        while True:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        pass


class ViewerKeySource(QueueKeySource):
    """Keys of the MuJoCo viewer window. `callback` is launch_passive's key_callback (presses
    only, after MuJoCo's own shortcuts ran); `glfw_event` receives raw GLFW key events once the
    viewer intercepts the window's keys (see robolearn.teleop.viewer)."""

    def callback(self, keycode: int) -> None:
        name = glfw_key_name(int(keycode))
        if name is not None:
            self.push(name)

    def glfw_event(self, keycode: int, action: int) -> None:
        """GLFW action 1 press, 0 release, 2 repeat (ignored: held keys are tracked by down/up)."""
        name = glfw_key_name(int(keycode))
        if name is not None and action in (0, 1):
            self.push_event(name, action == 1)


class TerminalKeySource(QueueKeySource):
    """Keys typed in a terminal (cbreak mode), read by a daemon thread. `fd` defaults to stdin.

    A terminal reports presses only: each is a tap; a held key arrives as the terminal's
    auto-repeat, a stream of taps."""

    ESCAPES = {"\x1b[A": "up", "\x1b[B": "down", "\x1b[C": "right", "\x1b[D": "left",
               "\x1b[5~": "page_up", "\x1b[6~": "page_down"}
    CHARS = {" ": "space", "\n": "enter", "\r": "enter", "\x7f": "backspace", "-": "minus", "=": "equal", "+": "equal"}

    def __init__(self, fd: int | None = None, raw: bool | None = None) -> None:
        super().__init__()
        import sys

        self.fd = sys.stdin.fileno() if fd is None else fd
        raw = os.isatty(self.fd) if raw is None else raw
        if fd is None and not os.isatty(self.fd):
            raise ValueError("keyboard teleop without --viewer needs an interactive terminal (stdin is not a tty)")
        self._old = None
        if raw:
            import termios
            import tty

            self._old = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending = ""
        while not self._stop:
            try:
                ch = os.read(self.fd, 1).decode(errors="ignore")
            except OSError:
                return
            if ch == "":
                return
            pending += ch
            if pending.startswith("\x1b"):
                if pending in self.ESCAPES:
                    self.push(self.ESCAPES[pending])
                    pending = ""
                elif not any(e.startswith(pending) for e in self.ESCAPES):
                    self.push("escape")  # a lone escape is seen when the next key arrives
                    pending = "" if len(pending) == 1 else pending[1:]
                    if pending and not pending.startswith("\x1b"):
                        self._push_char(pending)
                        pending = ""
                continue
            self._push_char(pending)
            pending = ""

    def _push_char(self, ch: str) -> None:
        self.push(self.CHARS.get(ch, ch.lower()))

    def close(self) -> None:
        self._stop = True
        if self._old is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._old)
            self._old = None


def key_press_events(items: list[Any], prompt: str | None = None) -> list[TeleopEvent]:
    """Events of the key presses among a key source's items (motion and grip keys aside): the
    phase / episode / pause keys, or the answers to a quit prompt."""
    events = []
    for item in items:
        name, kind = (item, "tap") if isinstance(item, str) else item
        if kind == "up":
            continue
        if prompt == "quit":
            events.append(QUIT_ANSWERS.get(name, TeleopEvent.RESUME))
        elif name in KEY_EVENTS:
            events.append(KEY_EVENTS[name])
    return events


class KeyboardDevice(ReferenceDevice):
    """Keyboard teleop, velocity style: while a motion key is held the reference moves at `speed`
    m/s (z too; `yaw_speed` rad/s) at the control rate, and a tap moves it one control step's worth.

    Directions are screen-relative through `ctx.view` (the viewer camera; without a viewer the
    task's `front` camera, see `fixed_camera_view`). Diagonals (two keys) move at `speed` too.
    """

    name = "keyboard"
    confirms_quit = True  # `q` asks keep / discard (see QUIT_ANSWERS)

    def __init__(self, source: Any, speed: float = 0.1, yaw_speed: float = 1.0) -> None:
        super().__init__()
        if not (speed > 0 and yaw_speed > 0):
            raise ValueError(f"keyboard speeds must be > 0, got speed={speed}, yaw_speed={yaw_speed}")
        self.source = source
        self.speed = float(speed)
        self.yaw_speed = float(yaw_speed)
        self.held: set[str] = set()
        self._tapped: set[str] = set()

    def reset_episode(self) -> None:
        super().reset_episode()
        self._tapped.clear()  # keys still physically held stay held

    def engage(self, pose: Pose) -> None:
        super().engage(pose)
        self._tapped.clear()  # taps before the takeover do not move the new reference (held keys do)

    def poll(self, ctx: DeviceContext) -> list[TeleopEvent]:
        events = []
        for item in self.source.drain():
            name, kind = (item, "tap") if isinstance(item, str) else item
            if kind == "up":
                self.held.discard(name)
                continue
            if kind == "down":
                if name in self.held:  # a repeated press without a release in between
                    continue
                self.held.add(name)
            if ctx.prompt == "quit":
                events.append(QUIT_ANSWERS.get(name, TeleopEvent.RESUME))
            elif name in KEY_EVENTS:
                events.append(KEY_EVENTS[name])
            elif name in KEY_MOTION:
                self._tapped.add(name)
                if ctx.prompt == "paused":
                    events.append(TeleopEvent.RESUME)
            elif name in GRIP_KEYS:
                self._toggle_grip = not self._toggle_grip
        return events

    @property
    def moving(self) -> bool:
        return bool((self.held | self._tapped) & KEY_MOTION.keys())

    def hold_still(self) -> None:
        super().hold_still()
        self._tapped.clear()

    def action(self, ctx: DeviceContext) -> np.ndarray:
        keys = (self.held | self._tapped) & KEY_MOTION.keys()
        d = np.clip(np.sum([KEY_MOTION[k] for k in keys], axis=0), -1, 1) if keys else np.zeros(4)
        view = ctx.view or DEFAULT_VIEW
        planar = d[0] * view.forward + d[1] * view.right
        n = float(np.linalg.norm(planar))
        if n > 1.0:
            planar = planar / n
        self._motion += np.concatenate([planar * self.speed, [d[2] * self.speed, d[3] * self.yaw_speed]]) * ctx.dt
        self._tapped.clear()
        return super().action(ctx)

    def close(self) -> None:
        self.source.close()


# ----------------------------------------------------------------------------------- SpaceMouse
class SpaceMouseDevice(ReferenceDevice):
    """3Dconnexion SpaceMouse: translation/yaw axes are velocities of the reference.

    Button 0 toggles the gripper; button 1 advances the phase (take over -> correct -> hand back).
    Success / failure / re-record / quit come from an optional keyboard `keys` source.
    `reader()` returns an object with x, y, z, yaw in [-1, 1] and a `buttons` list; by default
    pyspacemouse (`pip install robolearn[teleop]`).
    """

    name = "spacemouse"

    def __init__(self, reader: Callable[[], Any] | None = None, keys: Any = None, speed: float = 0.02,
                 yaw_speed: float = 0.2, deadzone: float = 0.1) -> None:
        super().__init__()
        if reader is None:
            try:
                import pyspacemouse  # type: ignore[import-not-found]
            except ImportError:
                raise RuntimeError("SpaceMouse teleop needs the teleop extra: pip install 'robolearn[teleop]'") from None
            if not pyspacemouse.open():
                raise RuntimeError("no SpaceMouse found (check the USB connection and hidraw permissions)")
            reader = pyspacemouse.read
        self.reader = reader
        self.keys = keys
        self.speed, self.yaw_speed, self.deadzone = float(speed), float(yaw_speed), float(deadzone)
        self._buttons: list[int] = []
        self.confirms_quit = keys is not None  # `q` on the keyboard asks keep / discard

    def _dz(self, v: float) -> float:
        return 0.0 if abs(v) < self.deadzone else float(np.clip(v, -1, 1))

    def poll(self, ctx: DeviceContext) -> list[TeleopEvent]:
        st = self.reader()
        events: list[TeleopEvent] = []
        self._motion += np.array([self._dz(st.y) * self.speed, -self._dz(st.x) * self.speed,
                                  self._dz(st.z) * self.speed, self._dz(st.yaw) * self.yaw_speed])
        buttons = list(getattr(st, "buttons", []) or [])
        pressed = [i for i, b in enumerate(buttons) if b and not (i < len(self._buttons) and self._buttons[i])]
        self._buttons = buttons
        if 0 in pressed:
            self._toggle_grip = not self._toggle_grip
        if 1 in pressed:
            events.append(advance_event(ctx.mode))
        if self.keys is not None:
            events += key_press_events(self.keys.drain(), ctx.prompt)
        return events

    def close(self) -> None:
        if self.keys is not None:
            self.keys.close()


# ----------------------------------------------------------------------------------- gamepad
class GamepadDevice(ReferenceDevice):
    """Gamepad (optional, pygame): left stick x/y, right stick y = z, triggers = yaw.

    `reader()` returns {"axes": {"lx", "ly", "rx", "ry", "lt", "rt"}: [-1, 1], "buttons": set of
    names}: "a" grip toggle, "b" advance the phase, "y" success, "x" failure, "back" re-record,
    "start" quit.
    """

    name = "gamepad"
    BUTTON_EVENTS = {"y": TeleopEvent.SUCCESS, "x": TeleopEvent.FAILURE, "back": TeleopEvent.RERECORD,
                     "start": TeleopEvent.QUIT}

    def __init__(self, reader: Callable[[], dict[str, Any]] | None = None, speed: float = 0.02,
                 yaw_speed: float = 0.2, deadzone: float = 0.15) -> None:
        super().__init__()
        self.reader = reader if reader is not None else _pygame_reader()
        self.speed, self.yaw_speed, self.deadzone = float(speed), float(yaw_speed), float(deadzone)
        self._held: set[str] = set()

    def poll(self, ctx: DeviceContext) -> list[TeleopEvent]:
        st = self.reader()
        ax = {k: (0.0 if abs(v) < self.deadzone else float(np.clip(v, -1, 1))) for k, v in st.get("axes", {}).items()}
        self._motion += np.array([-ax.get("ly", 0.0) * self.speed, -ax.get("lx", 0.0) * self.speed,
                                  -ax.get("ry", 0.0) * self.speed,
                                  (ax.get("lt", 0.0) - ax.get("rt", 0.0)) * 0.5 * self.yaw_speed])
        buttons = set(st.get("buttons", ()))
        pressed = buttons - self._held
        self._held = buttons
        events = [self.BUTTON_EVENTS[b] for b in sorted(pressed) if b in self.BUTTON_EVENTS]
        if "a" in pressed:
            self._toggle_grip = not self._toggle_grip
        if "b" in pressed:
            events.insert(0, advance_event(ctx.mode))
        return events


def _pygame_reader() -> Callable[[], dict[str, Any]]:
    try:
        import pygame  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError("gamepad teleop needs pygame: pip install pygame") from None
    pygame.init()
    pygame.joystick.init()
    if pygame.joystick.get_count() == 0:
        raise RuntimeError("no gamepad found")
    js = pygame.joystick.Joystick(0)
    js.init()
    names = ["a", "b", "x", "y", "lb", "rb", "back", "start"]

    def read() -> dict[str, Any]:
        pygame.event.pump()
        axes = [js.get_axis(i) for i in range(js.get_numaxes())] + [0.0] * 6
        return {"axes": dict(zip(["lx", "ly", "lt", "rx", "ry", "rt"], axes)),
                "buttons": {n for i, n in enumerate(names) if i < js.get_numbuttons() and js.get_button(i)}}

    return read


TELEOP_DEVICES = ("keyboard", "spacemouse", "gamepad", "scripted")
