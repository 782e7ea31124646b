"""LeRobot dataset v3.0 <-> episode store, with pyarrow and imageio-ffmpeg only (no lerobot dependency).

LeRobot v3.0 layout (as written by lerobot 0.4's `LeRobotDataset`):
- `meta/info.json`: `codebase_version` "v3.0", `fps`, `features` (name -> dtype, shape, names,
  and for videos the encoding `info`), `total_episodes`, `total_frames`, `data_path`, `video_path`.
- `data/chunk-000/file-000.parquet` (numbered on): one row per frame, many episodes per file, with the
  features plus `timestamp`, `frame_index`, `episode_index`, `index` and `task_index`.
- `videos/<key>/chunk-000/file-000.mp4`: camera streams, many episodes per file one after another;
  an episode's frames start at its `videos/<key>/from_timestamp`.
- `meta/episodes/chunk-000/file-000.parquet`: one row per episode (`tasks`, `length`, where its
  rows and video frames live, `dataset_from_index`/`dataset_to_index`, per-episode `stats/...`).
- `meta/tasks.parquet` (task strings as the pandas index, `task_index`), `meta/stats.json`.

Name mapping (robolearn -> LeRobot): `obs/state` -> `observation.state`, camera images (uint8
HxWx3 observations) -> `observation.images.<name>` as mp4 video, other `obs/<name>` ->
`observation.<name>`, `action` -> `action`, `reward` -> `next.reward`, `done` -> `next.done`,
everything else -> `complementary_info.<key>` (a '/' becomes '.'), the prefix LeRobot's RL tools
use for extra per-frame data.

Intervention labels, the documented columns: per frame `complementary_info.source` (uint8 code
into `info.json`'s `robolearn.sources` = demo, policy, recovery, correction) and the derived
`complementary_info.is_intervention` (bool: recovery or correction), and per episode
`robolearn/intervention_count` in `meta/episodes`. Every other per-episode column (`success`,
`collector`, `seed`, JSON `metadata`) is a `robolearn/<column>` episode column; the store's
features, masks, control period and root attributes are kept under `robolearn` in `info.json`,
so an exported store imports back with the same values (images up to video encoding; `created`
becomes the import time, as with any copy).

A LeRobot dataset made elsewhere imports too: names map back as above (other names are kept as
aux features), `complementary_info.is_intervention` without a source column becomes
correction/policy steps, `next.success` gives the episode's success (without it every episode
counts as a successful demonstration), and the control period is 1 / fps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.data.schema import Feature
from robolearn.data.location import is_remote, store_location
from robolearn.data.store import SOURCE_CODES, SOURCES, EpisodeStore, StoreError, publish, remove_tree, same_location, temp_sibling

CODEBASE_VERSION = "v3.0"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
TASKS_PATH = "meta/tasks.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
CHUNKS_SIZE = 1000  # files per chunk folder, as LeRobot
DATA_FILE_MB = 100
VIDEO_FILE_MB = 200
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
FRAME_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
SOURCE_COLUMN = "complementary_info.source"
INTERVENTION_COLUMN = "complementary_info.is_intervention"
EPISODE_PREFIX = "robolearn/"
CODEC_NAMES = {"libsvtav1": "av1", "libaom-av1": "av1", "libx264": "h264", "libx265": "hevc", "libvpx-vp9": "vp9"}


def _arrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise StoreError("LeRobot datasets need pyarrow: pip install pyarrow") from None
    return pa, pq


def is_camera(feature: Feature) -> bool:
    """A camera stream: uint8 HxWx3 observation (stored as video on export)."""
    return feature.role == "obs" and feature.dtype == "uint8" and len(feature.shape) == 3 and feature.shape[-1] == 3


def lerobot_name(key: str, feature: Feature) -> str:
    """The LeRobot feature name of a store key (module docstring)."""
    if key == "action":
        return "action"
    if key == "reward":
        return "next.reward"
    if key == "done":
        return "next.done"
    if key.startswith("obs/"):
        name = key[4:].replace("/", ".")
        if is_camera(feature):
            return f"observation.images.{name}"
        return f"observation.{name}"
    return "complementary_info." + key.replace("/", ".")


def store_key(name: str) -> str:
    """The store key of a LeRobot feature name made elsewhere (inverse of `lerobot_name`)."""
    if name == "action":
        return "action"
    if name == "next.reward":
        return "reward"
    if name == "next.done":
        return "done"
    for prefix in ("observation.images.", "observation."):
        if name.startswith(prefix):
            return "obs/" + name[len(prefix):]
    if name.startswith("complementary_info."):
        return name[len("complementary_info."):]
    return name


# ----------------------------------------------------------------------------------- stats
def _stats(values: np.ndarray, image: bool) -> dict[str, np.ndarray]:
    """LeRobot's per-feature stats: per channel in [0, 1] (C,1,1) for images, per dimension otherwise."""
    x = values.astype(np.float64)
    if image:  # (T, H, W, C) -> samples x channels, normalised to [0, 1]
        x = x.reshape(-1, x.shape[-1]) / 255.0
    else:
        x = x.reshape(len(x), -1) if x.ndim > 1 else x[:, None]
    out = {
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
    }
    for q in QUANTILES:
        out[f"q{int(round(q * 100)):02d}"] = np.quantile(x, q, axis=0)
    shape = (-1, 1, 1) if image else (values.shape[1:] or (1,))
    out = {k: v.reshape(shape) for k, v in out.items()}
    out["count"] = np.array([len(values)], dtype=np.int64)
    return out


def _aggregate(stats: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Combine per-episode stats as LeRobot does (exact mean/std, count-weighted quantiles)."""
    counts = np.array([s["count"][0] for s in stats], dtype=np.float64)
    total = counts.sum()
    w = counts.reshape(-1, *([1] * stats[0]["mean"].ndim))
    means = np.stack([s["mean"] for s in stats])
    mean = (means * w).sum(axis=0) / total
    var = ((np.stack([s["std"] for s in stats]) ** 2 + (means - mean) ** 2) * w).sum(axis=0) / total
    out = {
        "min": np.min(np.stack([s["min"] for s in stats]), axis=0),
        "max": np.max(np.stack([s["max"] for s in stats]), axis=0),
        "mean": mean,
        "std": np.sqrt(var),
        "count": np.array([int(total)], dtype=np.int64),
    }
    for key in stats[0]:
        if key.startswith("q"):
            out[key] = (np.stack([s[key] for s in stats]) * w).sum(axis=0) / total
    return out


# ----------------------------------------------------------------------------------- arrow helpers
def _fixed_list_column(values: np.ndarray, lerobot_shape: tuple[int, ...]):
    """(T, *shape) numpy -> arrow column: plain for shape (1,), nested fixed-size lists otherwise."""
    pa, _ = _arrow()
    arr = pa.array(np.ascontiguousarray(values).reshape(-1))
    if tuple(lerobot_shape) == (1,):
        return arr
    for dim in reversed(lerobot_shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, int(dim))
    return arr


def _column_numpy(column: Any, n: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Arrow column (plain or nested lists) -> (n, *shape) numpy of `dtype`."""
    pa, _ = _arrow()
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    while pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = arr.flatten()
    flat = arr.to_numpy(zero_copy_only=False)
    want = int(np.prod(shape, dtype=np.int64)) * n if shape else n
    if flat.size != want:
        raise StoreError(f"column has {flat.size} values for {n} frames of shape {shape}")
    return flat.reshape((n, *shape)).astype(dtype, copy=False)


def _task_table_schema(tasks: list[str]):
    """meta/tasks.parquet as pandas writes it: task strings as the (unnamed) index."""
    pa, _ = _arrow()
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "__index_level_0__": pa.array(tasks, pa.string())})
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


# ----------------------------------------------------------------------------------- video
class _VideoFileWriter:
    """One mp4 being written (frames appended episode after episode) through imageio-ffmpeg."""

    def __init__(self, path: Path, size: tuple[int, int], fps: int, vcodec: str, crf: int, gop: int) -> None:
        import imageio_ffmpeg

        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its config banner otherwise
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.frames = 0
        self._gen = imageio_ffmpeg.write_frames(
            str(path), size, fps=fps, codec=vcodec, pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            macro_block_size=1, quality=None, output_params=["-g", str(gop), "-crf", str(crf)],
            ffmpeg_log_level="error",
        )
        self._gen.send(None)

    def write(self, frames: np.ndarray) -> None:
        for frame in frames:
            self._gen.send(np.ascontiguousarray(frame).tobytes())
        self.frames += len(frames)

    def size_mb(self) -> float:
        return self.path.stat().st_size / 2**20 if self.path.exists() else 0.0

    def close(self) -> None:
        self._gen.close()


class _VideoReader:
    """Sequential frames of one mp4; episodes of a file are read in order, rewinding if needed."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise StoreError(f"missing video file {path}")
        self.path = path
        self._open()

    def _open(self) -> None:
        import imageio_ffmpeg

        self._gen = imageio_ffmpeg.read_frames(str(self.path), pix_fmt="rgb24")
        meta = next(self._gen)
        self.width, self.height = meta["size"]
        self.pos = 0

    def read(self, start: int, count: int) -> np.ndarray:
        if start < self.pos:
            self.close()
            self._open()
        out = np.empty((count, self.height, self.width, 3), np.uint8)
        frame_bytes = self.height * self.width * 3
        got = 0
        for raw in self._gen:
            if self.pos >= start:
                out[got] = np.frombuffer(raw, np.uint8, count=frame_bytes).reshape(self.height, self.width, 3)
                got += 1
            self.pos += 1
            if got == count:
                break
        if got < count:
            raise StoreError(f"{self.path} ends after {self.pos} frames; an episode needs frames {start}..{start + count - 1}")
        return out

    def close(self) -> None:
        self._gen.close()


# ----------------------------------------------------------------------------------- export
def export_lerobot(
    src: str | Path | EpisodeStore,
    dst: str | Path,
    fps: int | None = None,
    vcodec: str = "libsvtav1",
    crf: int = 30,
    gop: int = 2,
    robot_type: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a store as a LeRobot v3.0 dataset directory; returns its `info.json` content.

    Camera images become mp4 (LeRobot's defaults: AV1 via SVT-AV1, yuv420p, GOP 2, CRF 30);
    everything else goes to parquet unchanged. The directory appears whole or not at all.
    """
    from tqdm import tqdm

    pa, pq = _arrow()
    store = src if isinstance(src, EpisodeStore) else EpisodeStore.open(src, mode="r")
    dst = Path(dst)
    if dst.exists():
        if not overwrite:
            raise FileExistsError(f"{dst} already exists (pass --overwrite to replace it)")
        if not (dst / INFO_PATH).is_file():
            raise StoreError(f"refusing to overwrite {dst}: it is not a LeRobot dataset (no {INFO_PATH})")
    if store.num_episodes == 0:
        raise StoreError(f"{store.path} holds no episodes to export")
    fps = _export_fps(store, fps)
    names: dict[str, str] = {}
    for key, feat in store.features.items():
        name = lerobot_name(key, feat)
        if name in names.values():
            raise StoreError(f"two features map to the LeRobot name {name!r}; rename one of them")
        names[key] = name
    cameras = [k for k, f in store.features.items() if is_camera(f)]
    frame_features = [k for k in store.features if k not in cameras]

    lr_features: dict[str, dict[str, Any]] = {}
    for key in store.features:
        feat = store.features[key]
        if key in cameras:
            h, w, c = feat.shape
            lr_features[names[key]] = {
                "dtype": "video", "shape": [h, w, c], "names": ["height", "width", "channels"],
                "info": {"video.height": h, "video.width": w, "video.codec": CODEC_NAMES.get(vcodec, vcodec),
                         "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                         "video.channels": c, "has_audio": False},
            }
        else:
            lr_features[names[key]] = {"dtype": feat.dtype, "shape": list(feat.shape or (1,)), "names": None}
    if "source" in store.features:
        lr_features[INTERVENTION_COLUMN] = {"dtype": "bool", "shape": [1], "names": None}
    for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"), ("task_index", "int64")):
        lr_features[name] = {"dtype": dtype, "shape": [1], "names": None}

    if isinstance(store.path, Path) and same_location(dst, store.path):
        raise StoreError(f"output {dst} is the input store {store.path}: write to a new path")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(dst, "partial")  # built under a private name, published with one rename
    tmp.mkdir()
    table = store.episode_table()
    tasks: list[str] = []
    task_of: dict[str, int] = {}
    episode_rows: list[dict[str, Any]] = []
    episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
    data_writer = None
    data_writer_bytes = 0
    data_loc = (0, 0)
    video_writers: dict[str, _VideoFileWriter] = {}
    video_loc: dict[str, tuple[int, int]] = {k: (0, 0) for k in cameras}
    global_index = 0
    try:
        for i in tqdm(range(store.num_episodes), desc="export-lerobot", unit="ep", disable=not progress):
            ep = store.get_episode(i)
            n = len(ep["action"])
            task = str(table["task"][i]) or store.task or "task"
            if task not in task_of:
                task_of[task] = len(tasks)
                tasks.append(task)
            cols: dict[str, Any] = {}
            stats: dict[str, dict[str, np.ndarray]] = {}
            for key in frame_features:
                values = ep[key]
                cols[names[key]] = _fixed_list_column(values, tuple(lr_features[names[key]]["shape"]))
                stats[names[key]] = _stats(values, image=False)
            if "source" in store.features:
                inter = np.isin(ep["source"], [SOURCE_CODES["recovery"], SOURCE_CODES["correction"]])
                cols[INTERVENTION_COLUMN] = pa.array(inter)
                stats[INTERVENTION_COLUMN] = _stats(inter, image=False)
            structural = {
                "timestamp": (np.arange(n) / fps).astype(np.float32),
                "frame_index": np.arange(n, dtype=np.int64),
                "episode_index": np.full(n, i, np.int64),
                "index": np.arange(global_index, global_index + n, dtype=np.int64),
                "task_index": np.full(n, task_of[task], np.int64),
            }
            for name, values in structural.items():
                cols[name] = pa.array(values)
                stats[name] = _stats(values, image=False)
            frame_table = pa.table(cols)
            if data_writer is not None and data_writer_bytes + frame_table.nbytes > DATA_FILE_MB * 2**20:
                data_writer.close()
                data_writer = None
                data_loc = _next_file(*data_loc)
            if data_writer is None:
                path = tmp / DATA_PATH.format(chunk_index=data_loc[0], file_index=data_loc[1])
                path.parent.mkdir(parents=True, exist_ok=True)
                data_writer = pq.ParquetWriter(path, frame_table.schema, compression="snappy")
                data_writer_bytes = 0
            data_writer.write_table(frame_table)
            data_writer_bytes += frame_table.nbytes
            row: dict[str, Any] = {
                "episode_index": i,
                "tasks": [task],
                "length": n,
                "data/chunk_index": data_loc[0],
                "data/file_index": data_loc[1],
                "dataset_from_index": global_index,
                "dataset_to_index": global_index + n,
            }
            for key in cameras:
                frames = ep[key]
                writer = video_writers.get(key)
                if writer is not None and writer.size_mb() >= VIDEO_FILE_MB:
                    writer.close()
                    writer = None
                    video_loc[key] = _next_file(*video_loc[key])
                if writer is None:
                    c, f = video_loc[key]
                    path = tmp / VIDEO_PATH.format(video_key=names[key], chunk_index=c, file_index=f)
                    writer = video_writers[key] = _VideoFileWriter(path, (frames.shape[2], frames.shape[1]), fps, vcodec, crf, gop)
                start = writer.frames
                writer.write(frames)
                row[f"videos/{names[key]}/chunk_index"] = video_loc[key][0]
                row[f"videos/{names[key]}/file_index"] = video_loc[key][1]
                row[f"videos/{names[key]}/from_timestamp"] = start / fps
                row[f"videos/{names[key]}/to_timestamp"] = (start + n) / fps
                stats[names[key]] = _stats(frames, image=True)
            for col in ("success", "collector", "seed", "intervention_count", "metadata", "created"):
                value = table[col][i]
                row[EPISODE_PREFIX + col] = value.item() if isinstance(value, np.generic) else value
            row["meta/episodes/chunk_index"] = 0
            row["meta/episodes/file_index"] = 0
            for name, s in stats.items():
                for stat, value in s.items():
                    row[f"stats/{name}/{stat}"] = value.tolist()
            episode_rows.append(row)
            episode_stats.append(stats)
            global_index += n
        if data_writer is not None:
            data_writer.close()
        for writer in video_writers.values():
            writer.close()
        video_writers.clear()

        episodes_path = tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(episode_rows), episodes_path)
        pq.write_table(_task_table_schema(tasks), tmp / TASKS_PATH)
        all_stats = {name: _aggregate([s[name] for s in episode_stats]) for name in episode_stats[0]}
        _write_json(tmp / STATS_PATH, {name: {k: v.tolist() for k, v in s.items()} for name, s in all_stats.items()})
        masks = {name: np.flatnonzero(m).tolist() for name, m in store.masks.items()}
        managed = ("schema_version", "format", "features", "sources", "task", "env_kwargs", "control_period", "robolearn_version")
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": store.num_episodes,
            "total_frames": global_index,
            "total_tasks": len(tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILE_MB,
            "video_files_size_in_mb": VIDEO_FILE_MB,
            "fps": fps,
            "splits": {"train": f"0:{store.num_episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if cameras else None,
            "features": lr_features,
            "robolearn": {
                "format_version": 1,
                "sources": list(SOURCES),
                "features": {names[k]: {"key": k, **f.to_json()} for k, f in store.features.items()},
                "task": store.task,
                "env_kwargs": store.env_kwargs,
                "control_period": store.control_period,
                "masks": masks,
                "attrs": {k: v for k, v in store.attrs.items() if k not in managed},
                "robolearn_version": store.attrs.get("robolearn_version"),
            },
        }
        _write_json(tmp / INFO_PATH, info)
    except BaseException:
        for writer in video_writers.values():
            try:
                writer.close()
            except Exception:
                pass
        remove_tree(tmp)
        raise
    try:
        publish(tmp, dst, overwrite=overwrite)  # an old dataset is swapped out atomically, then removed
    finally:
        if os.path.lexists(tmp):
            remove_tree(tmp)
    return info


def _export_fps(store: EpisodeStore, fps: int | None) -> int:
    if fps is not None:
        if fps <= 0:
            raise StoreError(f"--fps must be positive, got {fps}")
        return int(fps)
    period = store.control_period
    if not period:
        raise StoreError(f"{store.path} records no control period; pass --fps")
    rate = 1.0 / float(period)
    if abs(rate - round(rate)) > 1e-6 * rate:
        raise StoreError(f"control period {period} s is not a whole number of frames per second (LeRobot needs an integer fps); pass --fps")
    return int(round(rate))


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == CHUNKS_SIZE - 1 else (chunk, file + 1)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False))


# ----------------------------------------------------------------------------------- import
def read_lerobot_info(root: str | Path) -> dict[str, Any]:
    """`meta/info.json` of a LeRobot v3 dataset directory (clear errors for other layouts)."""
    root = Path(root)
    path = root / INFO_PATH
    if not path.is_file():
        raise FileNotFoundError(f"no LeRobot dataset at {root} (no {INFO_PATH})")
    try:
        info = json.loads(path.read_text())
    except ValueError as exc:
        raise StoreError(f"{path} is not valid JSON: {exc}") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise StoreError(f"{root} is LeRobot dataset format {version or '(unknown)'}; this reads v3.x (convert it with lerobot's v2.1 -> v3.0 script)")
    for required in ("fps", "features"):
        if required not in info:
            raise StoreError(f"{path} has no {required!r}")
    return info


def _read_parquet_dir(root: Path, sub: str):
    pa, pq = _arrow()
    files = sorted((root / sub).glob("*/*.parquet"))
    if not files:
        raise StoreError(f"{root} has no parquet files under {sub}/")
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def _read_tasks(root: Path) -> dict[int, str]:
    _, pq = _arrow()
    path = root / TASKS_PATH
    if not path.is_file():
        return {}
    t = pq.read_table(path)
    index = [c for c in t.column_names if c != "task_index"]
    if "task_index" not in t.column_names or not index:
        raise StoreError(f"{path} has no task_index and task column")
    name = "task" if "task" in index else index[0]
    return {int(i): str(s) for i, s in zip(t.column("task_index").to_pylist(), t.column(name).to_pylist())}


def import_lerobot(src: str | Path, dst: str | Path, task: str | None = None, progress: bool = True) -> EpisodeStore:
    """Convert a LeRobot v3 dataset directory into a new episode store (atomically)."""
    from tqdm import tqdm

    pa, pq = _arrow()
    import pyarrow.compute as pc

    root = Path(src)
    info = read_lerobot_info(root)
    fps = int(info["fps"])
    extra = info.get("robolearn") or {}
    lr_features: dict[str, dict[str, Any]] = info["features"]
    spec: dict[str, tuple[str, Feature]] = {}  # lerobot name -> (store key, feature)
    for name, ft in lr_features.items():
        if name in FRAME_COLUMNS or (name == INTERVENTION_COLUMN and extra):
            continue
        if name in extra.get("features", {}):
            rec = dict(extra["features"][name])
            spec[name] = (rec.pop("key"), Feature.from_json(rec))
            continue
        key = store_key(name)
        shape = tuple(int(s) for s in ft.get("shape", (1,)))
        if ft["dtype"] in ("video", "image"):
            if len(shape) != 3:
                raise StoreError(f"{name}: image shape {shape} is not (H, W, C)")
            if shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
                shape = (shape[1], shape[2], shape[0])  # CHW -> HWC
            feat = Feature("uint8", shape, "obs")
        else:
            if key in ("reward", "done", "source", "stage") and shape == (1,):
                shape = ()
            role = {"action": "action", "reward": "reward", "done": "done", "source": "source", "stage": "stage"}.get(key)
            role = role or ("obs" if key.startswith("obs/") else "aux")
            if ft["dtype"] == "string":
                continue  # per-frame strings: a store has no string features (LeRobot keeps language in tasks)
            feat = Feature(ft["dtype"], shape, role)
        spec[name] = (key, feat)
    if not any(f.role == "action" for _, f in spec.values()):
        raise StoreError(f"{root}: no 'action' feature")
    from_intervention = INTERVENTION_COLUMN in lr_features and not extra and "source" not in {k for k, _ in spec.values()}
    if from_intervention:
        spec.pop(INTERVENTION_COLUMN, None)
    features = {key: feat for key, feat in spec.values()}
    if from_intervention:
        features["source"] = Feature("uint8", (), "source")

    tasks = _read_tasks(root)
    episodes = _read_parquet_dir(root, "meta/episodes").sort_by("episode_index").to_pylist()
    if len(episodes) != int(info.get("total_episodes", len(episodes))):
        raise StoreError(f"{root}: meta/episodes lists {len(episodes)} episodes, info.json says {info.get('total_episodes')}")
    store_task = task or extra.get("task") or (tasks.get(0, "") if len(set(tasks.values())) == 1 else "")
    control_period = extra.get("control_period") or 1.0 / fps

    dst = store_location(dst)
    remote = is_remote(dst)
    if remote:  # object storage has no rename: written in place, removed again on failure
        if not dst.is_empty():
            raise FileExistsError(f"{dst} already exists")
        tmp = dst
    else:
        if os.path.lexists(dst):
            raise FileExistsError(f"{dst} already exists")
        if same_location(dst, root):
            raise StoreError(f"output {dst} is inside the input dataset {root}: write to a new path")
        tmp = temp_sibling(dst, "importing")
    store = EpisodeStore.create(tmp, features, task=store_task, env_kwargs=extra.get("env_kwargs") or {}, control_period=control_period)
    data_path = info.get("data_path", DATA_PATH)
    video_path = info.get("video_path") or VIDEO_PATH
    readers: dict[str, tuple[tuple[int, int], _VideoReader]] = {}
    loaded: tuple[tuple[int, int] | None, Any] = (None, None)
    try:
        for row in tqdm(episodes, desc="import-lerobot", unit="ep", disable=not progress):
            e = int(row["episode_index"])
            loc = (int(row["data/chunk_index"]), int(row["data/file_index"]))
            if loaded[0] != loc:
                path = root / data_path.format(chunk_index=loc[0], file_index=loc[1])
                if not path.is_file():
                    raise StoreError(f"missing data file {path}")
                loaded = (loc, pq.read_table(path))
            frames = loaded[1].filter(pc.equal(loaded[1].column("episode_index"), e))
            if "frame_index" in frames.column_names:
                frames = frames.sort_by("frame_index")
            n = frames.num_rows
            if n != int(row["length"]):
                raise StoreError(f"episode {e}: {n} frames in {data_path.format(chunk_index=loc[0], file_index=loc[1])}, meta/episodes says {row['length']}")
            steps: dict[str, np.ndarray] = {}
            for name, (key, feat) in spec.items():
                ft = lr_features[name]
                if ft["dtype"] == "video":
                    vloc = (int(row[f"videos/{name}/chunk_index"]), int(row[f"videos/{name}/file_index"]))
                    if name not in readers or readers[name][0] != vloc:
                        if name in readers:
                            readers[name][1].close()
                        readers[name] = (vloc, _VideoReader(root / video_path.format(video_key=name, chunk_index=vloc[0], file_index=vloc[1])))
                    t0 = float(row[f"videos/{name}/from_timestamp"])
                    if "timestamp" in frames.column_names:
                        t0 += float(frames.column("timestamp")[0].as_py())
                    images = readers[name][1].read(int(round(t0 * fps)), n)
                    steps[key] = _to_hwc(images, feat.shape, name)
                elif ft["dtype"] == "image":
                    steps[key] = _decode_images(frames.column(name).to_pylist(), feat.shape, name)
                else:
                    steps[key] = _column_numpy(frames.column(name), n, feat.shape, feat.dtype)
            if from_intervention:
                inter = _column_numpy(frames.column(INTERVENTION_COLUMN), n, (), "bool")
                steps["source"] = np.where(inter, SOURCE_CODES["correction"], SOURCE_CODES["policy"]).astype(np.uint8)
            ep_tasks = row.get("tasks") or []
            meta_raw = row.get(EPISODE_PREFIX + "metadata")
            if meta_raw is not None:
                metadata = json.loads(meta_raw) if meta_raw else None
                success = bool(row[EPISODE_PREFIX + "success"])
                collector = str(row[EPISODE_PREFIX + "collector"])
                seed = int(row[EPISODE_PREFIX + "seed"])
                count = row.get(EPISODE_PREFIX + "intervention_count")
            else:
                metadata = {"lerobot_episode_index": e, "lerobot_tasks": list(ep_tasks)}
                success = bool(_column_numpy(frames.column("next.success"), n, (), "bool").any()) if "next.success" in frames.column_names else True
                collector, seed, count = "lerobot", -1, None
            store.append_episode(
                steps, success=success, collector=collector, seed=seed, metadata=metadata,
                task=task or (str(ep_tasks[0]) if ep_tasks else store_task),
                intervention_count=None if count is None else int(count),
            )
        for name, members in (extra.get("masks") or {}).items():
            store.set_mask(name, np.asarray(members, dtype=np.int64))
        for key, value in (extra.get("attrs") or {}).items():
            store.set_attr(key, value)
        if not extra:
            store.set_attr("lerobot_info", {k: v for k, v in info.items() if k != "features"})
    except BaseException:
        store.close()
        if remote:
            dst.clear()
        else:
            remove_tree(tmp)
        raise
    finally:
        for _, reader in readers.values():
            reader.close()
    store.close()
    if not remote:
        try:
            publish(tmp, dst)
        finally:
            if os.path.lexists(tmp):
                remove_tree(tmp)
    return EpisodeStore.open(dst, mode="r")


def _to_hwc(images: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    if images.shape[1:] != tuple(shape):
        if len(shape) == 3 and shape[-1] == 1:
            return images[..., :1]
        raise StoreError(f"{name}: decoded frames are {images.shape[1:]}, info.json says {tuple(shape)}")
    return images


def _decode_images(cells: list[Any], shape: tuple[int, ...], name: str) -> np.ndarray:
    """LeRobot `image` features: PNG/JPEG bytes in a {bytes, path} struct per frame."""
    import io

    from PIL import Image

    out = np.empty((len(cells), *shape), np.uint8)
    for i, cell in enumerate(cells):
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            raise StoreError(f"{name}: frame {i} has no embedded image bytes")
        img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB" if shape[-1] == 3 else "L"))
        out[i] = img.reshape(shape)
    return out
