"""A virtual X display for driving the real viewer window without a person: Xvfb, keys sent with
xdotool, screenshots with ImageMagick's `import`. Used by tests/test_teleop_window.py and
docs/results/teleop/operator_session.py; `bash scripts/setup.sh` installs the three tools where it
runs as root with apt-get.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

TOOLS = ("Xvfb", "xdotool", "import")


def missing_tools() -> list[str]:
    """The X tools that are not installed (empty: a virtual display can be driven here)."""
    return [t for t in TOOLS if shutil.which(t) is None]


class VirtualDisplay:
    """Xvfb on a free display number (`-displayfd`); `env` is os.environ with DISPLAY set."""

    def __init__(self, size: tuple[int, int] = (1280, 1024)) -> None:
        if missing_tools():
            raise RuntimeError(f"a virtual display needs {', '.join(missing_tools())} (apt-get install xvfb xdotool imagemagick)")
        read, write = os.pipe()
        self.proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", f"{size[0]}x{size[1]}x24",
                                      "-nolisten", "tcp"], pass_fds=(write,), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(write)
        number = b""
        deadline = time.time() + 20
        while not number.endswith(b"\n") and time.time() < deadline:
            chunk = os.read(read, 16)
            if not chunk:
                break
            number += chunk
        os.close(read)
        if not number.strip():
            self.close()
            raise RuntimeError("Xvfb did not start")
        self.display = f":{int(number)}"
        self.env = {**os.environ, "DISPLAY": self.display}

    def run(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=30)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def find_window(self, name: str, timeout: float = 60.0, proc: Any = None) -> str:
        """The id of the first visible window whose title contains `name` (waits for it)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            ids = self.run("xdotool", "search", "--onlyvisible", "--name", name, check=False).split()
            if ids:
                return ids[0]
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the process exited ({proc.returncode}) before its window {name!r} appeared")
            time.sleep(0.2)
        raise TimeoutError(f"no window {name!r} within {timeout:.0f} s")

    def focus(self, window: str) -> None:
        self.run("xdotool", "windowfocus", "--sync", window, check=False)

    def key(self, *keys: str) -> None:
        """Press and release each key (X keysyms: t, Up, space, Return, ...)."""
        self.run("xdotool", "key", "--delay", "60", *keys)

    def hold(self, key: str, seconds: float) -> None:
        """Hold a key down for `seconds` (the window gets one press and one release)."""
        self.run("xdotool", "keydown", key)
        time.sleep(seconds)
        self.run("xdotool", "keyup", key)

    def screenshot(self, window: str, path: str | Path) -> np.ndarray:
        """Capture the window to a PNG; returns it as an (H, W, 3) uint8 array."""
        from PIL import Image

        self.run("import", "-window", window, str(path))
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __enter__(self) -> "VirtualDisplay":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def scene_region(image: np.ndarray) -> np.ndarray:
    """The middle of the window (the 3D scene away from the overlay text in its corners)."""
    h, w = image.shape[:2]
    return image[h // 4: 3 * h // 4, w // 4: 3 * w // 4]


def image_stats(image: np.ndarray) -> dict[str, float]:
    """Mean brightness, the fraction of near-black pixels and the mean colour of the scene region:
    a toggled render flag (wireframe, transparency, hidden static bodies, fog) changes them."""
    region = scene_region(image).astype(np.float32)
    gray = region.mean(axis=2)
    return {"mean": float(gray.mean()), "dark_fraction": float((gray < 20).mean()),
            "r": float(region[..., 0].mean()), "g": float(region[..., 1].mean()), "b": float(region[..., 2].mean())}
