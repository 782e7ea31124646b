"""Look at a dataset: replay stored episodes with who was acting, stage and reward drawn on top.

Frames come from the episode's stored `sim_state` (the task's scene re-rendered offscreen, so any
camera and size) or, for stores without states, from its stored camera images. Each frame gets a
header coloured by the step's source (demo / policy / recovery / correction) with step, stage,
reward and return, and a timeline strip of the whole episode's sources with the current step
marked, so an operator's takeover shows as a colour change. Several episodes play side by side
in a grid. With rerun-sdk installed the same data can be streamed to a rerun viewer or saved as
an .rrd recording.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from robolearn.data.store import SOURCES, EpisodeStore, StoreError

SOURCE_COLORS: dict[str, tuple[int, int, int]] = {
    "demo": (46, 139, 87),
    "policy": (52, 101, 164),
    "recovery": (230, 145, 30),
    "correction": (204, 40, 40),
}
HEADER_HEIGHT = 44
TIMELINE_HEIGHT = 10


@dataclasses.dataclass(frozen=True)
class StepLabel:
    """What the overlay shows for one step."""

    episode: int
    step: int
    length: int
    source: str
    stage: int
    reward: float
    episode_return: float


class EpisodeView:
    """Lazily rendered frames and labels of one stored episode."""

    def __init__(self, store: EpisodeStore, episode: int, size: int = 256, camera: str = "front", mode: str = "auto") -> None:
        n = store.num_episodes
        if not -n <= episode < n:
            raise StoreError(f"episode {episode} out of range (store has {n})")
        self.episode = episode % n
        keys = [k for k in ("source", "stage", "reward") if k in store.features]
        data = store.get_episode(self.episode, keys)
        self.length = int(store.episode_lengths[self.episode])
        self.sources = data["source"].astype(np.int64) if "source" in data else np.zeros(self.length, np.int64)
        self.stages = data["stage"].astype(np.int64) if "stage" in data else np.full(self.length, -1)
        self.rewards = data["reward"].astype(np.float64) if "reward" in data else np.zeros(self.length)
        self.returns = np.cumsum(self.rewards)
        self.size = size
        self.mode = resolve_mode(store, camera, mode)
        self._renderer = None
        if self.mode == "states":
            self._states = store.get_episode(self.episode, ["sim_state"])["sim_state"]
            self._renderer, self._spec = _scene_renderer(store, size, camera)
        else:
            self._images = store.get_episode(self.episode, [f"obs/{camera}"])[f"obs/{camera}"]

    def label(self, t: int) -> StepLabel:
        return StepLabel(self.episode, t, self.length, SOURCES[int(self.sources[t])], int(self.stages[t]),
                         float(self.rewards[t]), float(self.returns[t]))

    def scene(self, t: int) -> np.ndarray:
        """The (size, size, 3) picture of step t, without overlay."""
        if self.mode == "states":
            state = self._states[t]
            if not np.all(np.isfinite(state)):
                return np.zeros((self.size, self.size, 3), np.uint8)  # a step without a recorded state
            return self._renderer.render_states(state[None], self._spec)[self._camera_key()][0]
        return _resize_nearest(self._images[t], self.size)

    def _camera_key(self) -> str:
        return self._renderer.cameras[0]

    def frame(self, t: int) -> np.ndarray:
        """Scene of step t with the overlay."""
        return draw_overlay(self.scene(t), self.label(t), self.sources)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def resolve_mode(store: EpisodeStore, camera: str, mode: str = "auto") -> str:
    """'states' (re-render stored sim states) or 'images' (stored camera frames)."""
    if mode not in ("auto", "states", "images"):
        raise ValueError(f"mode must be auto, states or images, got {mode!r}")
    has_states = "sim_state" in store.features and _known_task(store.task)
    image_key = f"obs/{camera}"
    feat = store.features.get(image_key)
    has_images = feat is not None and feat.dtype == "uint8" and len(feat.shape) == 3 and feat.shape[-1] == 3
    if mode == "states" and not has_states:
        raise StoreError(f"{store.path} has no sim_state of a known task ({store.task or 'none'}) to render from; use --from images")
    if mode == "images" and not has_images:
        cams = [k[4:] for k, f in store.features.items() if k.startswith("obs/") and len(f.shape) == 3]
        raise StoreError(f"{store.path} has no camera images {image_key!r} (cameras: {', '.join(cams) or 'none'})")
    if mode != "auto":
        return mode
    if has_states:
        return "states"
    if has_images:
        return "images"
    cams = [k[4:] for k, f in store.features.items() if k.startswith("obs/") and len(f.shape) == 3]
    hint = f"; pass --camera with one of {', '.join(cams)}" if cams else ""
    raise StoreError(f"{store.path} has neither sim_state with a task nor camera images {image_key!r} to show{hint}")


def _known_task(name: str) -> bool:
    if not name:
        return False
    from robolearn.tasks.registry import check_task

    try:
        spec = check_task(name)
    except ValueError:  # UnknownTaskError
        return False
    return not getattr(spec, "is_gym", False)


def _scene_renderer(store: EpisodeStore, size: int, camera: str):
    """An offscreen renderer of the store's task scene, built from its recorded task config."""
    from robolearn.tasks.base import STATE_SPEC
    from robolearn.tasks.registry import build_model, load_task_config
    from robolearn.tasks.render import ImageRenderer

    task = store.task
    default = load_task_config(task)
    names = {f.name for f in dataclasses.fields(default)}
    recorded = {k: v for k, v in store.env_kwargs.items() if k in names and k != "task"}
    try:
        cfg = load_task_config(task, recorded)
    except (ValueError, TypeError, KeyError):
        cfg = default  # a config recorded by another version: the default scene
    _, model = build_model(task, cfg)
    import mujoco

    state_size = mujoco.mj_stateSize(model, STATE_SPEC)
    have = store.features["sim_state"].shape[0]
    if have != state_size:
        raise StoreError(f"{store.path}: sim_state has {have} values but the {task!r} scene needs {state_size}; use --from images")
    try:
        renderer = ImageRenderer(model, size, (camera,))
    except ValueError as exc:
        raise StoreError(f"task {task!r}: {exc}") from None
    return renderer, STATE_SPEC


def _resize_nearest(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    rows = (np.arange(size) * h // size).clip(0, h - 1)
    cols = (np.arange(size) * w // size).clip(0, w - 1)
    return image[rows][:, cols]


_FONT_CACHE: dict[int, Any] = {}


def _font(px: int):
    from PIL import ImageFont

    if px not in _FONT_CACHE:
        try:
            _FONT_CACHE[px] = ImageFont.load_default(size=px)
        except TypeError:  # Pillow < 10.1: fixed-size bitmap font
            _FONT_CACHE[px] = ImageFont.load_default()
    return _FONT_CACHE[px]


def draw_overlay(scene: np.ndarray, label: StepLabel, sources: np.ndarray) -> np.ndarray:
    """Header (source colour, step, stage, reward) above the scene and a source timeline below."""
    from PIL import Image, ImageDraw

    h, w = scene.shape[:2]
    canvas = Image.new("RGB", (w, HEADER_HEIGHT + h + TIMELINE_HEIGHT), (20, 20, 20))
    canvas.paste(Image.fromarray(np.ascontiguousarray(scene)), (0, HEADER_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    color = SOURCE_COLORS[label.source]
    draw.rectangle((0, 0, w - 1, HEADER_HEIGHT - 1), fill=color)
    font = _font(max(9, min(13, w // 20)))
    stage = "-" if label.stage < 0 else str(label.stage)
    draw.text((6, 4), f"ep {label.episode}  step {label.step}/{label.length - 1}", fill=(255, 255, 255), font=font)
    draw.text((6, 23), f"{label.source}  stage {stage}  r {label.reward:.2f}  R {label.episode_return:.2f}",
              fill=(255, 255, 255), font=font)
    # timeline: one column per step, coloured by its source; the current step in white
    top = HEADER_HEIGHT + h
    palette = np.array([SOURCE_COLORS[s] for s in SOURCES], np.uint8)
    cols = (np.arange(w) * len(sources) // max(w, 1)).clip(0, len(sources) - 1)
    strip = np.repeat(palette[sources[cols]][None], TIMELINE_HEIGHT, axis=0)
    x = int((label.step + 0.5) * w / len(sources))
    strip[:, max(0, x - 1):x + 2] = 255
    out = np.asarray(canvas).copy()
    out[top:top + TIMELINE_HEIGHT] = strip
    return out


def grid(frames: Sequence[np.ndarray], cols: int | None = None) -> np.ndarray:
    """Tile equally sized frames row-major (empty cells black)."""
    n = len(frames)
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w, c = frames[0].shape
    out = np.zeros((rows * h, cols * w, c), np.uint8)
    for i, f in enumerate(frames):
        r, k = divmod(i, cols)
        out[r * h:(r + 1) * h, k * w:(k + 1) * w] = f
    return out


def iter_frames(views: Sequence[EpisodeView], cols: int | None = None, every: int = 1) -> Iterator[np.ndarray]:
    """Frames of one episode, or a grid of several (a finished episode holds its last frame)."""
    longest = max(v.length for v in views)
    for t in range(0, longest, every):
        tiles = [v.frame(min(t, v.length - 1)) for v in views]
        yield tiles[0] if len(tiles) == 1 else grid(tiles, cols)


def write_video(frames: Iterator[np.ndarray], out: str | Path, fps: float, overwrite: bool = False) -> int:
    """Encode frames to mp4 (H.264) atomically; returns the number of frames written."""
    import imageio_ffmpeg

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial" + out.suffix)
    writer = None
    count = 0
    try:
        for frame in frames:
            if writer is None:
                h, w = frame.shape[:2]
                writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                                                     pix_fmt_out="yuv420p", macro_block_size=1, quality=None,
                                                     output_params=["-crf", "18"], ffmpeg_log_level="error")
                writer.send(None)
            writer.send(np.ascontiguousarray(frame).tobytes())
            count += 1
        if writer is not None:
            writer.close()
            writer = None
        if count == 0:
            raise StoreError("no frames to write")
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    return count


def stream_rerun(store: EpisodeStore, views: Sequence[EpisodeView], save: str | None = None, spawn: bool = False) -> None:
    """Log scenes, source, stage, reward and actions per step to rerun (rerun-sdk, imported lazily)."""
    try:
        import rerun as rr
    except ImportError:
        raise StoreError("rerun streaming needs rerun-sdk (pip install rerun-sdk)") from None
    rr.init("robolearn_view", spawn=spawn and save is None)
    if save:
        rr.save(save)
    scalar = getattr(rr, "Scalars", None) or rr.Scalar

    def set_step(t: int) -> None:
        if hasattr(rr, "set_time"):
            rr.set_time("step", sequence=t)
        else:
            rr.set_time_sequence("step", t)

    for view in views:
        actions = store.get_episode(view.episode, ["action"])["action"]
        base = f"episode_{view.episode}"
        for t in range(view.length):
            set_step(t)
            label = view.label(t)
            rr.log(f"{base}/scene", rr.Image(view.scene(t)))
            rr.log(f"{base}/reward", scalar(label.reward))
            rr.log(f"{base}/stage", scalar(label.stage))
            rr.log(f"{base}/source", rr.TextLog(label.source))
            for j, a in enumerate(np.atleast_1d(actions[t])):
                rr.log(f"{base}/action/{j}", scalar(float(a)))
    if save and hasattr(rr, "disconnect"):
        rr.disconnect()  # flushes the .rrd file


def run_view_cli(args: argparse.Namespace) -> int:
    """`robolearn data view STORE --episode I [J ...] [--out x.mp4]`."""
    store = EpisodeStore.open(args.path, mode="r")
    episodes = list(args.episode)
    if not episodes:
        raise ValueError("give at least one --episode")
    views = [EpisodeView(store, i, size=args.size, camera=args.camera, mode=args.source_mode) for i in episodes]
    try:
        fps = args.fps or (1.0 / store.control_period if store.control_period else 10.0)
        if args.rerun or args.rerun_save:
            stream_rerun(store, views, save=args.rerun_save, spawn=args.rerun)
            print(f"streamed {len(views)} episode(s) to rerun" + (f" -> {args.rerun_save}" if args.rerun_save else ""))
            if not args.out:
                return 0
        out = args.out or f"{Path(str(store.path)).stem}_ep{'-'.join(str(v.episode) for v in views)}.mp4"
        from tqdm import tqdm

        total = math.ceil(max(v.length for v in views) / args.every)
        frames = tqdm(iter_frames(views, cols=args.cols, every=args.every), total=total, desc="view", unit="frame",
                      disable=not sys.stderr.isatty())
        n = write_video(frames, out, fps=fps / args.every, overwrite=args.overwrite)
        mode = views[0].mode
        print(f"wrote {out}: {n} frames of episode(s) {', '.join(str(v.episode) for v in views)} (from {'sim states' if mode == 'states' else 'stored images'})")
    finally:
        for v in views:
            v.close()
    return 0
