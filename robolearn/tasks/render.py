"""Offscreen rendering of task scenes (EGL: robolearn.tasks sets MUJOCO_GL=egl unless already set).

Shadows and reflections are switched off: at 84x84 they add cost and no information.
"""

from __future__ import annotations

import mujoco
import numpy as np


class ImageRenderer:
    """Renders fixed cameras of a batch of MjData into uint8 (N, H, W, 3) arrays."""

    def __init__(self, model: mujoco.MjModel, size: int = 84, cameras: tuple[str, ...] = ("front",)):
        for cam in cameras:
            if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam) < 0:
                raise ValueError(f"model has no camera named {cam!r}")
        self.model = model
        self.size = size
        self.cameras = cameras
        self._renderer = mujoco.Renderer(model, size, size)
        self._option = mujoco.MjvOption()
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._scratch: mujoco.MjData | None = None

    def render(self, datas: list[mujoco.MjData]) -> dict[str, np.ndarray]:
        """One image per camera per data (kinematics of each data must be current)."""
        out = {cam: np.empty((len(datas), self.size, self.size, 3), np.uint8) for cam in self.cameras}
        for i, d in enumerate(datas):
            for cam in self.cameras:
                self._renderer.update_scene(d, cam, self._option)
                self._renderer.render(out=out[cam][i])
        return out

    def render_states(self, states: np.ndarray, spec: int) -> dict[str, np.ndarray]:
        """Render from full state vectors (for backends whose data is not a CPU MjData)."""
        if self._scratch is None:
            self._scratch = mujoco.MjData(self.model)
        datas = []
        for st in np.asarray(states, np.float64):
            d = mujoco.MjData(self.model) if len(states) > 1 else self._scratch
            mujoco.mj_setState(self.model, d, st, spec)
            mujoco.mj_kinematics(self.model, d)
            mujoco.mj_camlight(self.model, d)  # camera and light poses: without them the frame is black
            datas.append(d)
        return self.render(datas)

    def close(self) -> None:
        self._renderer.close()
