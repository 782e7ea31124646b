"""The MuJoCo viewer window of `robolearn intervene`: env 0's state, an overlay with the run's
state and key hints, and a keyboard that belongs to the teleop device.

MuJoCo's viewer binds nearly every letter to a visualisation or render flag (`mujoco.mjVISSTRING`,
`mujoco.mjRNDSTRING`: t transparent, i inertia, c contact points, k skybox, ...), and calls
Python's `key_callback` only after those shortcuts ran, for presses only. So at the first key the
viewer takes over the window's GLFW key callback (the callback runs on the viewer's own thread, the
only place the window is known): keys of the teleop key map (`devices.OWNED_KEYS`) then go to the
device alone, as presses and releases (a held key moves continuously); every other key (Tab and
Shift+Tab for the panels, F-keys, [ ] cameras) and the mouse still reach MuJoCo. Whatever the
first key toggled is put back from a snapshot of the flags taken at launch. Where the takeover is
impossible (no `glfw` module, macOS's mjpython), each teleop key press restores the snapshot
instead and keys arrive as taps. The viewer's side panels start hidden, so the scene fills the
window, and the free camera starts at the task's `front` camera, the view the key map assumes.
"""

from __future__ import annotations

import ctypes
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from robolearn.teleop.devices import KEY_HINTS, OWNED_KEYS, ScreenView, ViewerKeySource, glfw_key_name
from robolearn.teleop.session import Mode

# MjvOption fields the viewer's shortcuts change (flags, group toggles 0-5, frame F6, label F7).
OPTION_FIELDS = ("flags", "geomgroup", "sitegroup", "jointgroup", "tendongroup", "actuatorgroup", "flexgroup",
                 "skingroup", "frame", "label")


# What the operator does next, per mode (the overlay's "next" row).
NEXT_STEP = {Mode.AUTONOMOUS: "watch; t takes over",
             Mode.RECOVERY: "back to a familiar state, then c",
             Mode.CORRECTION: "finish the sub-task, then h"}


@dataclass
class RunStatus:
    """What the overlay shows about the running episode."""

    mode: Mode
    grip_closed: bool
    episode: int  # 0-based
    episodes: int
    seed: int
    step: int
    horizon: int
    control_period: float
    interventions: int  # in this episode
    total_interventions: int  # in this run, this episode included
    slowmo: float = 1.0  # wall seconds per control period of task time
    prompt: str | None = None  # "paused" | "quit"
    steps_recorded: int = 0


def overlay_texts(st: RunStatus) -> list[tuple[int, int, str, str]]:
    """(font, grid position, left column, right column) blocks for the viewer's set_texts."""
    import mujoco

    left_s = (st.horizon - st.step) * st.control_period
    speed = "real time" if st.slowmo == 1 else (f"1/{st.slowmo:g} (slow motion)" if st.slowmo > 1 else f"{1 / st.slowmo:g}x")
    mode = st.mode.value.upper() + ("  (you drive)" if st.mode.operator else "  (policy drives)")
    labels = "mode\nnext\ngripper\nepisode\nstep\ntime left\ninterventions\nspeed"
    values = (f"{mode}\n{NEXT_STEP[st.mode]}\n{'closed' if st.grip_closed else 'open'}\n{st.episode + 1}/{st.episodes}  (seed {st.seed})\n"
              f"{st.step}/{st.horizon}  ({st.horizon - st.step} left)\n{left_s:.1f} s of task time"
              f" ({left_s * st.slowmo:.1f} s wall)\n{st.interventions} this episode, {st.total_interventions} in all\n{speed}")
    font, big = mujoco.mjtFont.mjFONT_NORMAL, mujoco.mjtFont.mjFONT_BIG
    grid = mujoco.mjtGridPos
    texts = [(font, grid.mjGRID_TOPLEFT, labels, values), (font, grid.mjGRID_BOTTOMLEFT, KEY_HINTS, "")]
    if st.prompt == "paused":
        texts.append((big, grid.mjGRID_TOPRIGHT, "PAUSED", "p or a motion key resumes"))
    elif st.prompt == "quit":
        texts.append((big, grid.mjGRID_TOPRIGHT, "QUIT?",
                      f"k keep ({st.steps_recorded} steps)\nd discard\nother key: go on"))
    return texts


class InterventionViewer:
    """MuJoCo passive viewer of env 0 with the run's overlay; teleop keys go to `keys`."""

    def __init__(self, sim: Any, keys: ViewerKeySource | None = None, launcher: Callable[..., Any] | None = None) -> None:
        import mujoco

        if launcher is None:
            import mujoco.viewer

            launcher = mujoco.viewer.launch_passive
        self.mujoco = mujoco
        self.keys = keys
        self.model = sim.model
        self.data = mujoco.MjData(sim.model)
        self._intercepted: tuple[Any, Any, Any] | None = None  # (window, our callback, MuJoCo's callback)
        self._intercept_failed = False
        self._restore = 0  # viewer syncs left to put the launch-time flags back
        before = set(threading.enumerate())
        try:
            self.handle = launcher(self.model, self.data, key_callback=self._on_viewer_key,
                                   show_left_ui=False, show_right_ui=False)
        except Exception as exc:  # no display, no GLFW
            raise RuntimeError(f"--viewer could not open a window ({exc}); run without --viewer or set DISPLAY") from None
        # the viewer's own thread: close() waits for it, since GLFW terminating at interpreter exit
        # while that thread still destroys its window crashes the process (MuJoCo 4.0, Linux)
        self._threads = [t for t in set(threading.enumerate()) - before if "_launch_internal" in t.name]
        self._snapshot = self._read_flags()
        self._camera_scene = mujoco.MjvScene(self.model, maxgeom=1)
        self._start_camera()

    # ------------------------------------------------------------------------------- keys
    def _on_viewer_key(self, keycode: int) -> None:
        """MuJoCo's key_callback (viewer thread, presses only, after MuJoCo's shortcuts ran)."""
        name = glfw_key_name(int(keycode))
        if name not in OWNED_KEYS:
            return
        if self._intercepted is None and not self._intercept_failed:
            self._intercept_keys()
        self._restore = 2  # MuJoCo already applied its shortcut for this key: undo it
        if self.keys is not None:
            if self._intercepted is not None:
                self.keys.push_event(name, True)  # its release reaches our callback
            else:
                self.keys.push(name)

    def _intercept_keys(self) -> None:
        try:
            import glfw

            window = glfw.get_current_context()
            if not window:
                raise RuntimeError("no current GLFW window")
            previous: list[Any] = []

            def on_key(win: Any, key: int, scancode: int, action: int, mods: int) -> None:
                try:
                    if glfw_key_name(key) in OWNED_KEYS and not mods & (glfw.MOD_CONTROL | glfw.MOD_ALT | glfw.MOD_SUPER):
                        if self.keys is not None:
                            self.keys.glfw_event(key, action)
                        return
                    if previous and ctypes.cast(previous[0], ctypes.c_void_p).value:
                        previous[0](win, key, scancode, action, mods)
                except Exception:  # never raise into GLFW
                    pass

            callback = glfw._GLFWkeyfun(on_key)
            previous.append(glfw._glfw.glfwSetKeyCallback(window, callback))
            self._intercepted = (window, callback, previous[0])
        except Exception:
            self._intercept_failed = True

    @property
    def intercepting(self) -> bool:
        """Teleop keys reach only the device (not MuJoCo's shortcuts)."""
        return self._intercepted is not None

    # ------------------------------------------------------------------------------- flags
    def _read_flags(self) -> dict[str, Any]:
        opt = getattr(self.handle, "opt", None)
        snap: dict[str, Any] = {}
        if opt is not None:
            for name in OPTION_FIELDS:
                if hasattr(opt, name):
                    value = getattr(opt, name)
                    snap[name] = np.array(value).copy() if isinstance(value, np.ndarray) else value
        scn = getattr(self.handle, "user_scn", None)
        if scn is not None:
            snap["scene"] = np.array(scn.flags).copy()
        return snap

    def flags_changed(self) -> list[str]:
        """Names of the visualisation / render flags that differ from launch (tests, diagnostics)."""
        now = self._read_flags()
        return [k for k, v in self._snapshot.items() if not np.array_equal(np.asarray(now[k]), np.asarray(v))]

    def _restore_flags(self) -> None:
        opt = getattr(self.handle, "opt", None)
        for name, value in self._snapshot.items():
            if name == "scene":
                self.handle.user_scn.flags[:] = value
            elif isinstance(value, np.ndarray):
                getattr(opt, name)[:] = value
            else:
                setattr(opt, name, value)

    # ------------------------------------------------------------------------------- camera
    def _start_camera(self) -> None:
        """Free camera along the task's `front` camera axis, looking at the table where the axis meets it."""
        m = self.mujoco
        cam = getattr(self.handle, "cam", None)
        front = m.mj_name2id(self.model, m.mjtObj.mjOBJ_CAMERA, "front")
        if cam is None or front < 0:
            return
        mat = np.zeros(9)
        m.mju_quat2Mat(mat, np.asarray(self.model.cam_quat[front], np.float64))
        forward = -mat.reshape(3, 3)[:, 2]
        pos = np.asarray(self.model.cam_pos[front], np.float64)
        dist = -pos[2] / forward[2] if forward[2] < -1e-3 else 0.8
        with self.handle.lock():
            cam.type = m.mjtCamera.mjCAMERA_FREE
            cam.lookat[:] = pos + dist * forward
            cam.distance = 0.8 * dist  # a little closer than the camera: the workspace fills more of the window
            cam.azimuth = math.degrees(math.atan2(forward[1], forward[0]))
            cam.elevation = math.degrees(math.asin(max(-1.0, min(1.0, forward[2]))))

    def screen_view(self) -> ScreenView | None:
        """The current camera's screen directions (follows the operator's mouse)."""
        cam = getattr(self.handle, "cam", None)
        if cam is None:
            return None
        with self.handle.lock():
            self.mujoco.mjv_updateCamera(self.model, self.data, cam, self._camera_scene)
            gl = self._camera_scene.camera[0]
            return ScreenView.from_camera(np.array(gl.forward), np.array(gl.up))

    # ------------------------------------------------------------------------------- frames
    def update(self, state: np.ndarray, status: RunStatus) -> None:
        from robolearn.tasks.base import STATE_SPEC

        m = self.mujoco
        with self.handle.lock():
            m.mj_setState(self.model, self.data, np.asarray(state, np.float64), STATE_SPEC)
            m.mj_forward(self.model, self.data)
            if self._restore > 0:
                self._restore_flags()
                self._restore -= 1
        self.handle.set_texts(overlay_texts(status))
        self.handle.sync()

    @property
    def running(self) -> bool:
        return bool(self.handle.is_running())

    def close(self) -> None:
        if self._intercepted is not None and self.running:
            try:
                import glfw

                window, _, previous = self._intercepted
                with self.handle.lock():
                    glfw._glfw.glfwSetKeyCallback(window, previous)
            except Exception:
                pass
        self.handle.close()
        for thread in self._threads:
            thread.join(timeout=10)
