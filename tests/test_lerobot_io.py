"""LeRobot v3 interop: round trip lossless up to video encoding, the published v3 layout, foreign datasets."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from helpers_data import FEATURES, make_episode  # noqa: E402

from robolearn.data import lerobot_io  # noqa: E402
from robolearn.data.lerobot_io import export_lerobot, import_lerobot  # noqa: E402
from robolearn.data.schema import Feature  # noqa: E402
from robolearn.data.store import SOURCE_CODES, EpisodeStore, StoreError  # noqa: E402

LENGTHS = [6, 9, 4]
SOURCES_OF = [
    ["demo"] * 6,
    ["policy"] * 3 + ["correction"] * 3 + ["policy"] * 2 + ["recovery"],
    ["policy", "recovery", "recovery", "policy"],
]


def intervention_store(path):
    """Three episodes with takeovers, a mask, root attrs and a (16, 16, 3) camera with distinct frames."""
    feats = dict(FEATURES)
    feats["obs/image"] = Feature("uint8", (16, 16, 3), "obs")
    feats["next_obs/state"] = Feature("float32", (3,), "aux")
    store = EpisodeStore.create(path, feats, task="toy", env_kwargs={"num_cubes": 2}, control_period=0.05)
    for i, n in enumerate(LENGTHS):
        ep = make_episode(i, n, source=SOURCES_OF[i])
        ep["obs/image"] = np.broadcast_to(((np.arange(n) * 40 + i * 9) % 240).astype(np.uint8)[:, None, None, None], (n, 16, 16, 3)).copy()
        ep["next_obs/state"] = ep["obs/state"] + 1
        store.append_episode(ep, success=i != 1, collector=f"op{i}", seed=10 + i, metadata={"note": i})
    store.set_mask("train", [0, 2])
    store.set_attr("stats", {"obs/state": {"min": [0.0, 0.0, 0.0]}})
    return store


def test_round_trip_is_lossless_up_to_video(tmp_path):
    src = intervention_store(tmp_path / "a.zarr")
    info = export_lerobot(src, tmp_path / "lr", progress=False)
    assert info["total_episodes"] == 3 and info["total_frames"] == sum(LENGTHS) and info["fps"] == 20
    back = import_lerobot(tmp_path / "lr", tmp_path / "b.zarr", progress=False)
    assert back.features == src.features
    assert (back.task, back.env_kwargs, back.control_period) == (src.task, src.env_kwargs, src.control_period)
    for i in range(3):
        a, b = src.get_episode(i), back.get_episode(i)
        for key in a:
            if key == "obs/image":  # lossy video: same frames in the same order, small coding error
                err = np.abs(a[key].astype(int) - b[key].astype(int))
                assert err.max() <= 4, key
                # frames are 40 grey levels apart: any off-by-one frame would show up as >= 36
                assert np.array_equal(np.abs(a[key].astype(int)[:, 0, 0, 0] - b[key][:, 0, 0, 0]) < 10, np.ones(len(a[key]), bool))
            else:
                assert b[key].dtype == a[key].dtype and np.array_equal(a[key], b[key]), key
    ta, tb = src.episode_table(), back.episode_table()
    for col in ta:
        if col != "created":
            assert np.array_equal(ta[col], tb[col]), col
    assert tb["intervention_count"].tolist() == [0, 2, 1]
    assert back.masks.keys() == {"train"} and back.mask("train").tolist() == [True, False, True]
    assert back.attrs["stats"] == src.attrs["stats"]


def test_export_follows_lerobot_v3_layout(tmp_path):
    src = intervention_store(tmp_path / "a.zarr")
    export_lerobot(src, tmp_path / "lr", progress=False)
    root = tmp_path / "lr"
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    feats = info["features"]
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert feats[name]["shape"] == [1]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [3], "names": None}
    assert feats["next.reward"]["shape"] == [1] and feats["next.done"]["dtype"] == "bool"
    video = feats["observation.images.image"]
    assert video["dtype"] == "video" and video["shape"] == [16, 16, 3] and video["info"]["video.codec"] == "av1"
    assert feats["complementary_info.source"]["dtype"] == "uint8"
    assert feats["complementary_info.is_intervention"]["dtype"] == "bool"
    assert all("/" not in name for name in feats)  # LeRobot rejects '/' in feature names
    assert info["robolearn"]["sources"] == ["demo", "policy", "recovery", "correction"]

    frames = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert frames.num_rows == sum(LENGTHS)
    assert set(frames.column_names) == {n for n, f in feats.items() if f["dtype"] != "video"}
    assert pa.types.is_fixed_size_list(frames.schema.field("action").type)
    assert frames.column("index").to_pylist() == list(range(sum(LENGTHS)))
    source = np.array(frames.column("complementary_info.source").to_pylist())
    inter = np.array(frames.column("complementary_info.is_intervention").to_pylist())
    assert np.array_equal(inter, np.isin(source, [SOURCE_CODES["recovery"], SOURCE_CODES["correction"]]))

    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    starts = np.cumsum([0] + LENGTHS)
    for i, ep in enumerate(eps):
        assert ep["episode_index"] == i and ep["length"] == LENGTHS[i] and ep["tasks"] == ["toy"]
        assert (ep["dataset_from_index"], ep["dataset_to_index"]) == (starts[i], starts[i + 1])
        assert ep["videos/observation.images.image/from_timestamp"] == pytest.approx(starts[i] / 20)
        assert ep["videos/observation.images.image/to_timestamp"] == pytest.approx(starts[i + 1] / 20)
        assert ep["stats/action/count"] == [LENGTHS[i]]
        assert np.array(ep["stats/observation.images.image/mean"]).shape == (3, 1, 1)
    assert [ep["robolearn/intervention_count"] for ep in eps] == [0, 2, 1]

    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]
    assert tasks.column("__index_level_0__").to_pylist() == ["toy"] and tasks.column("task_index").to_pylist() == [0]
    stats = json.loads((root / "meta/stats.json").read_text())
    state = src.read("obs/state")
    assert np.allclose(stats["observation.state"]["mean"], state.mean(0)) and np.allclose(stats["observation.state"]["std"], state.std(0))
    assert stats["observation.state"]["count"] == [sum(LENGTHS)]

    import imageio_ffmpeg

    nframes, _ = imageio_ffmpeg.count_frames_and_secs(str(root / "videos/observation.images.image/chunk-000/file-000.mp4"))
    assert nframes == sum(LENGTHS)


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def write_foreign_dataset(root, n_eps=2, length=5):
    """A LeRobot v3 dataset as LeRobot itself lays it out (no robolearn block), PNG image feature."""
    fps = 30
    feats = {
        "observation.state": {"dtype": "float32", "shape": [2], "names": None},
        "observation.images.top": {"dtype": "image", "shape": [4, 4, 3], "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": [2], "names": None},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.success": {"dtype": "bool", "shape": [1], "names": None},
        "complementary_info.is_intervention": {"dtype": "bool", "shape": [1], "names": None},
        "language": {"dtype": "string", "shape": [1], "names": None},
        **{k: {"dtype": "float32" if k == "timestamp" else "int64", "shape": [1], "names": None} for k in lerobot_io.FRAME_COLUMNS},
    }
    rows, eps = [], []
    for e in range(n_eps):
        for t in range(length):
            rows.append({
                "observation.state": [float(e), float(t)], "action": [float(t), -float(t)],
                "observation.images.top": {"bytes": _png(np.full((4, 4, 3), 10 * t + e, np.uint8)), "path": None},
                "next.reward": float(t == length - 1), "next.success": e == 0 and t == length - 1,
                "complementary_info.is_intervention": t >= 3, "language": "pick",
                "timestamp": t / fps, "frame_index": t, "episode_index": e, "index": e * length + t, "task_index": 0,
            })
        eps.append({"episode_index": e, "tasks": ["pick up the cube"], "length": length, "data/chunk_index": 0, "data/file_index": 0,
                    "dataset_from_index": e * length, "dataset_to_index": (e + 1) * length,
                    "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
    (root / "data/chunk-000").mkdir(parents=True)
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "data/chunk-000/file-000.parquet")
    pq.write_table(pa.Table.from_pylist(eps), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": [0], "__index_level_0__": ["pick up the cube"]}), root / "meta/tasks.parquet")
    info = {"codebase_version": "v3.0", "fps": fps, "total_episodes": n_eps, "total_frames": n_eps * length,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet", "video_path": None, "features": feats}
    (root / "meta/info.json").write_text(json.dumps(info))


def test_import_foreign_lerobot_dataset(tmp_path):
    write_foreign_dataset(tmp_path / "lr")
    store = import_lerobot(tmp_path / "lr", tmp_path / "s.zarr", progress=False)
    assert store.num_episodes == 2 and store.num_steps == 10
    assert store.features["obs/state"] == Feature("float32", (2,), "obs")
    assert store.features["obs/top"] == Feature("uint8", (4, 4, 3), "obs")
    assert store.features["reward"].shape == () and "language" not in store.features
    assert store.control_period == pytest.approx(1 / 30) and store.task == "pick up the cube"
    ep = store.get_episode(1)
    assert ep["obs/state"].tolist() == [[1.0, t] for t in range(5)]
    assert ep["obs/top"][:, 0, 0, 0].tolist() == [10 * t + 1 for t in range(5)]  # PNG is lossless
    assert ep["source"].tolist() == [SOURCE_CODES["policy"]] * 3 + [SOURCE_CODES["correction"]] * 2
    assert store.column("success").tolist() == [True, False]  # from next.success
    assert store.column("intervention_count").tolist() == [1, 1]
    assert store.column("collector").tolist() == ["lerobot", "lerobot"]


def test_bad_inputs_fail_cleanly(tmp_path):
    write_foreign_dataset(tmp_path / "lr")
    info_path = tmp_path / "lr/meta/info.json"
    info = json.loads(info_path.read_text())
    info["codebase_version"] = "v2.1"
    info_path.write_text(json.dumps(info))
    with pytest.raises(StoreError, match="v2.1"):
        import_lerobot(tmp_path / "lr", tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists()
    src = intervention_store(tmp_path / "a.zarr")
    (tmp_path / "notlr").mkdir()
    with pytest.raises(StoreError, match="not a LeRobot dataset"):
        export_lerobot(src, tmp_path / "notlr", overwrite=True, progress=False)
    with pytest.raises(FileExistsError):
        export_lerobot(src, tmp_path / "notlr", progress=False)
    src.close()
    r = subprocess.run([sys.executable, "-m", "robolearn.cli", "data", "import-lerobot", str(tmp_path / "missing"), str(tmp_path / "x.zarr")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no LeRobot dataset" in r.stderr


def test_failed_export_leaves_nothing_and_keeps_old_output(tmp_path, monkeypatch):
    src = intervention_store(tmp_path / "a.zarr")
    export_lerobot(src, tmp_path / "lr", progress=False)
    before = (tmp_path / "lr/meta/info.json").read_text()

    def boom(self, frames):
        raise RuntimeError("encoder died")

    monkeypatch.setattr(lerobot_io._VideoFileWriter, "write", boom)
    with pytest.raises(RuntimeError, match="encoder died"):
        export_lerobot(src, tmp_path / "lr", overwrite=True, progress=False)
    assert (tmp_path / "lr/meta/info.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr", "lr"]


def test_cli_round_trip(tmp_path):
    intervention_store(tmp_path / "a.zarr").close()
    run = [sys.executable, "-m", "robolearn.cli", "data"]
    r = subprocess.run(run + ["export-lerobot", str(tmp_path / "a.zarr"), str(tmp_path / "lr"), "--vcodec", "libx264", "--crf", "10"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "exported 3 episodes (19 frames, 20 fps)" in r.stdout
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert info["features"]["observation.images.image"]["info"]["video.codec"] == "h264"
    r = subprocess.run(run + ["import-lerobot", str(tmp_path / "lr"), str(tmp_path / "b.zarr")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    back = EpisodeStore.open(tmp_path / "b.zarr")
    assert back.num_steps == 19 and back.column("intervention_count").tolist() == [0, 2, 1]


def test_many_files_round_trip(tmp_path, monkeypatch):
    """Size limits reached: every episode in its own data and video file (chunk/file indices, from_timestamp 0)."""
    monkeypatch.setattr(lerobot_io, "DATA_FILE_MB", 1e-6)
    monkeypatch.setattr(lerobot_io, "VIDEO_FILE_MB", 0)
    monkeypatch.setattr(lerobot_io, "CHUNKS_SIZE", 2)  # two files per chunk folder
    src = intervention_store(tmp_path / "a.zarr")
    export_lerobot(src, tmp_path / "lr", progress=False)
    eps = pq.read_table(tmp_path / "lr/meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(e["data/chunk_index"], e["data/file_index"]) for e in eps] == [(0, 0), (0, 1), (1, 0)]
    assert [e["videos/observation.images.image/from_timestamp"] for e in eps] == [0.0, 0.0, 0.0]
    assert (tmp_path / "lr/videos/observation.images.image/chunk-001/file-000.mp4").is_file()
    back = import_lerobot(tmp_path / "lr", tmp_path / "b.zarr", progress=False)
    for i in range(3):
        a, b = src.get_episode(i), back.get_episode(i)
        assert np.array_equal(a["action"], b["action"]) and np.abs(a["obs/image"].astype(int) - b["obs/image"]).max() <= 4


def test_import_dataset_written_by_lerobot(tmp_path):
    """tests/fixtures/lerobot_v3_by_lerobot was written by lerobot 0.4.4 itself (make_lerobot_fixture.py)."""
    from pathlib import Path

    root = Path(__file__).parent / "fixtures" / "lerobot_v3_by_lerobot"
    store = import_lerobot(root, tmp_path / "s.zarr", progress=False)
    assert store.episode_lengths.tolist() == [6, 7, 8] and store.control_period == pytest.approx(1 / 15)
    assert store.features["obs/cam"] == Feature("uint8", (32, 48, 3), "obs")
    assert store.column("task").tolist() == ["task 0", "task 1", "task 0"]
    for e, n in enumerate([6, 7, 8]):
        ep = store.get_episode(e)
        t = np.arange(n)
        assert np.array_equal(ep["obs/state"], np.stack([np.full(n, e), t, 100 * e + t], 1).astype(np.float32))
        assert np.array_equal(ep["action"], np.stack([t, -t], 1).astype(np.float32))
        grey = (t * 30 + e * 7) % 240  # AV1 at LeRobot's CRF 30: a few grey levels off, never another frame
        assert np.abs(ep["obs/cam"].astype(int) - grey[:, None, None, None]).max() <= 4
