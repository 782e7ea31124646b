"""Integrity on read, verify/repair, race-free creation and no silent overwrites (issue 25).

Each test damages a store the way the issue found it damaged (an absurd commit record, a deleted
chunk, a flipped byte, a killed writer's tail) and checks: reads fail naming episode and array,
never zeros; writers refuse instead of truncating; `repair` keeps every healthy episode and moves
the rest into the store's quarantine, byte for byte where it cannot decode it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers_data import make_episode, make_store
from robolearn.cli import main
from robolearn.data.store import (
    EpisodeStore,
    Feature,
    StoreError,
    StoreIntegrityError,
    merge_stores,
    remove_abandoned,
    repair_store,
    verify_store,
)

IMAGE_FEATURES = {
    "obs/image": Feature("uint8", (40, 40, 3), "obs"),  # 4.7 KiB a step: 54 steps a chunk
    "obs/state": Feature("float32", (3,), "obs"),
    "action": Feature("float32", (2,), "action"),
}


def _image_store(path: Path, n_episodes: int = 6, length: int = 40) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    store = EpisodeStore.create(path, IMAGE_FEATURES, task="toy")
    episodes = {}
    for i in range(n_episodes):
        ep = {"obs/image": rng.integers(0, 255, (length, 40, 40, 3), dtype=np.uint8),
              "obs/state": rng.normal(size=(length, 3)).astype(np.float32),
              "action": rng.normal(size=(length, 2)).astype(np.float32)}
        store.append_episode(ep, success=True, seed=i)
        episodes[i] = ep
    store.close()
    return episodes


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != ".robolearn.lock":
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_absurd_commit_record_is_an_error_and_repair_keeps_everything(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    make_store(path, [5] * 6).close()
    st = EpisodeStore.open(path, "a")
    st._ends_array[2] = 10**9
    st.close()
    before = _digest(path)
    with pytest.raises(StoreIntegrityError, match="episode 2.*robolearn data repair"):
        EpisodeStore.open(path)
    with pytest.raises(StoreIntegrityError, match="robolearn data repair"):
        EpisodeStore.open(path, "a")  # the writer no longer truncates to the "valid prefix"
    assert _digest(path) == before
    assert main(["data", "verify", str(path)]) == 1
    assert "episode 2" in capsys.readouterr().out
    result = repair_store(path)
    assert result["kept"] == 5 and result["quarantined"] == 1
    store = EpisodeStore.open(path)
    assert store.num_episodes == 5
    for new, old in enumerate([0, 1, 3, 4, 5]):  # episodes 3..5 survive, in order
        np.testing.assert_array_equal(store.get_episode(new)["obs/state"], make_episode(old, 5)["obs/state"])
    manifest = json.loads(Path(result["manifest"]).read_text())
    assert [q["episode"] for q in manifest["quarantined_episodes"]] == [2]
    saved = np.load(sorted((Path(result["manifest"]).parent / "steps/obs/state").glob("*.npy"))[0])
    np.testing.assert_array_equal(saved, make_episode(2, 5)["obs/state"])  # episode 2's steps, not lost
    assert verify_store(path)["ok"]
    EpisodeStore.open(path, "a").append_episode(make_episode(9, 3))


def test_deleted_chunk_is_an_error_naming_episode_and_array(tmp_path):
    path = tmp_path / "s.zarr"
    episodes = _image_store(path)
    os.remove(path / "data/obs/image/c/1/0/0/0")  # steps 54..107: episodes 1 and 2
    with pytest.raises(StoreIntegrityError, match=r"data/obs/image \(episodes 1, 2\).*missing"):
        EpisodeStore.open(path)
    with pytest.raises(StoreIntegrityError, match="data/obs/image"):
        EpisodeStore.open(path, "a")
    report = verify_store(path)
    assert not report["ok"] and report["damaged_episodes"] == [1, 2]
    view = EpisodeStore.open(path, skip_damaged=True)  # what `train --skip-damaged` reads
    assert view.skipped_episodes == [1, 2] and view.num_episodes == 4
    for new, old in enumerate([0, 3, 4, 5]):
        np.testing.assert_array_equal(view.get_episode(new)["obs/image"], episodes[old]["obs/image"])
    repair_store(path)
    assert verify_store(path)["ok"] and EpisodeStore.open(path).num_episodes == 4


def test_flipped_byte_fails_its_checksum_on_every_read_path(tmp_path):
    from robolearn.data.sampler import SequenceDataset

    path = tmp_path / "s.zarr"
    _image_store(path)
    chunk = path / "data/obs/image/c/4/0/0/0"  # steps 216..239: episode 5
    raw = bytearray(chunk.read_bytes())
    raw[100] ^= 0x01
    chunk.write_bytes(bytes(raw))
    store = EpisodeStore.open(path)  # the chunk exists: opening is fine, reading it is not
    assert store.get_episode(4)["obs/image"].shape == (40, 40, 40, 3)
    with pytest.raises(StoreIntegrityError, match=r"data/obs/image \(episode 5\).*checksum"):
        store.get_episode(5)
    with pytest.raises(StoreIntegrityError, match="data/obs/image"):
        store.array("obs/image")[150:230]
    ds = SequenceDataset(store, ["image", "state"], 2, 8)  # images read lazily through the direct reader
    with pytest.raises(StoreIntegrityError, match="checksum"):
        ds.torch_batch(np.array([len(ds) - 1]))  # the last window: episode 5's last steps
    report = verify_store(path)
    assert report["damaged_episodes"] == [5]
    result = repair_store(path)
    moved = Path(result["manifest"]).parent / "chunks/data/obs/image/c/4/0/0/0"
    assert moved.read_bytes() == bytes(raw)  # the damaged chunk, byte for byte
    assert EpisodeStore.open(path).num_episodes == 5


def test_killed_writers_tail_is_trimmed_by_a_writer_and_kept_by_repair(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path, [4, 4]).close()
    st = EpisodeStore.open(path, "a")  # a writer killed after its steps and columns, before the commit
    st._ends_array.resize((3,))
    st._ends_array[2] = -1
    for key, arr in st._arrays.items():
        arr.append(make_episode(2, 6)[key] if key != "source" else np.zeros(6, np.uint8))
    st.close()
    assert EpisodeStore.open(path).num_episodes == 2  # readers see the committed prefix
    report = verify_store(path)
    assert report["ok"] and report["uncommitted"]["steps"] == 6 and report["uncommitted"]["marker"]
    result = repair_store(path)
    saved = np.load(sorted((Path(result["manifest"]).parent / "steps/action").glob("*.npy"))[0])
    np.testing.assert_array_equal(saved, make_episode(2, 6)["action"])
    assert EpisodeStore.open(path, "a").num_steps == 8


def test_writer_refuses_a_length_column_that_disagrees(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path, [5, 6, 7]).close()
    st = EpisodeStore.open(path, "a")
    st._columns["length"][1] = 60
    st.close()
    before = _digest(path)
    for mode in ("r", "a"):
        with pytest.raises(StoreIntegrityError, match="episode 1"):
            EpisodeStore.open(path, mode)
    assert _digest(path) == before


def test_two_creators_race_one_wins(tmp_path):
    """Ten rounds of two threads creating the same new store: one wins, the other gets a
    StoreError, and the store always opens."""
    feats = {"action": Feature("float32", (2,), "action")}
    for round_ in range(10):
        path = tmp_path / f"r{round_}.zarr"
        barrier = threading.Barrier(2)
        results: list[object] = []

        def create() -> None:
            barrier.wait()
            try:
                EpisodeStore.create(path, feats).close()
                results.append("ok")
            except StoreError as exc:
                results.append(exc)

        threads = [threading.Thread(target=create) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(map(str, results)).count("ok") == 1, results
        assert EpisodeStore.open(path).num_episodes == 0
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f".r{round_}")] == []


def test_merge_whose_second_input_is_corrupt_leaves_nothing(tmp_path):
    make_store(tmp_path / "a.zarr", [5, 5]).close()
    make_store(tmp_path / "b.zarr", [5, 5]).close()
    chunk = tmp_path / "b.zarr/data/action/c/0/0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(StoreIntegrityError, match="data/action"):
        merge_stores(tmp_path / "m.zarr", [tmp_path / "a.zarr", tmp_path / "b.zarr"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr", "b.zarr"]


def test_abandoned_temporaries_of_killed_writers_are_removed(tmp_path):
    dead = tmp_path / ".x.zarr.partial-999999-0123abcd"
    dead.mkdir()
    live = tmp_path / f".x.zarr.partial-{os.getpid()}-0123abcd"
    live.mkdir()
    make_store(tmp_path / "src.zarr", [3]).close()
    assert main(["data", "filter", str(tmp_path / "src.zarr"), str(tmp_path / "x.zarr")]) == 0
    assert not dead.exists() and live.exists()
    assert remove_abandoned(tmp_path / "x.zarr") == []


def test_split_writes_both_masks_atomically(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path, [3] * 10).close()
    assert main(["data", "split", str(path), "--val-ratio", "0.3"]) == 0
    store = EpisodeStore.open(path)
    assert store.mask("train").sum() + store.mask("valid").sum() == 10
    assert not (path / ".masks-pending").exists()


def _train(args: list[str]) -> int:
    flags = [a for a in args if a.startswith("--") or not ("=" in a)]
    overrides = [a for a in args if a not in flags]
    return main(["train", "--policy", "bc", "--wandb", "off", *flags, "policy.hidden_dims=[16,16]", "policy.n_obs_steps=1",
                 "policy.horizon=1", "policy.n_action_steps=1", "train.batch_size=8", "train.log_every=1", "train.eval_every=1000",
                 "train.val_ratio=0", *overrides])


def test_train_refuses_a_damaged_store_unless_told_to_skip(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    _image_store(path)
    os.remove(path / "data/obs/image/c/1/0/0/0")
    assert _train(["--data", str(path), "--out", str(tmp_path / "run"), "train.steps=2", "train.save_every=2"]) == 2
    assert "data/obs/image" in capsys.readouterr().err
    assert _train(["--data", str(path), "--out", str(tmp_path / "run"), "train.steps=2", "train.save_every=2",
                   "--skip-damaged"]) == 0
    err = capsys.readouterr().err
    assert "skipping 2 damaged episode(s)" in err
    assert (tmp_path / "run/policy/checkpoint.json").is_file()


def test_train_out_never_silently_replaces_a_run(tmp_path, capsys):
    data = tmp_path / "s.zarr"
    make_store(data, [6, 6, 6]).close()
    run = tmp_path / "run"
    assert _train(["--data", str(data), "--out", str(run), "train.steps=4", "train.save_every=2"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last", "step_0000002", "step_0000004"]
    capsys.readouterr()
    assert _train(["--data", str(data), "--out", str(run), "train.steps=2", "train.save_every=1"]) == 2
    assert "existing run" in capsys.readouterr().err
    assert json.loads((run / "policy/checkpoint.json").read_text())["step"] == 4  # untouched
    assert _train(["--data", str(data), "--out", str(run), "train.steps=2", "train.save_every=1", "--overwrite"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last", "step_0000001", "step_0000002"]
    assert json.loads((run / "policy/checkpoint.json").read_text())["step"] == 2
    capsys.readouterr()
    assert _train(["--data", str(data), "--out", str(data), "train.steps=2"]) == 2
    assert "episode store" in capsys.readouterr().err
    assert EpisodeStore.open(data).num_episodes == 3


def test_stores_written_before_checksums_still_open(tmp_path):
    """Stores from before this change have no crc32c and skipped chunks equal to the fill value
    (all-demo sources, zero rewards): they must open, read and append as before."""
    import zarr
    from zarr.codecs import BloscCodec

    from robolearn.data.schema import STANDARD_FEATURES, features_to_json
    from robolearn.data.store import EPISODE_COLUMNS, SCHEMA_VERSION

    path = tmp_path / "old.zarr"
    feats = {"obs/state": Feature("float32", (3,), "obs"), "action": Feature("float32", (2,), "action"), **STANDARD_FEATURES}
    g = zarr.open_group(str(path), mode="w")
    steps = {"obs/state": np.ones((12, 3), np.float32), "action": np.ones((12, 2), np.float32), "reward": np.zeros(12, np.float32),
             "done": np.zeros(12, bool), "source": np.zeros(12, np.uint8), "stage": np.full(12, -1, np.int32)}
    for key, feat in feats.items():
        a = g.create_array(f"data/{key}", shape=(12, *feat.shape), chunks=(64, *feat.shape), dtype=feat.dtype,
                           compressors=BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"))
        a[:] = steps[key]
    g.create_array("meta/episode_ends", shape=(2,), chunks=(4096,), dtype="int64", fill_value=-1)[:] = [5, 12]
    rows = {"length": [5, 7], "success": [False, False], "return": [0.0, 0.0], "collector": ["", ""], "task": ["", ""],
            "seed": [-1, -1], "created": ["", ""], "intervention_count": [0, 0], "metadata": ["", ""]}
    for name, (dtype, fill) in EPISODE_COLUMNS.items():
        g.create_array(f"meta/{name}", shape=(2,), chunks=(4096,), dtype=dtype, fill_value=fill)[:] = np.array(rows[name], dtype=dtype)
    g.require_group("masks")
    g.attrs.update({"schema_version": SCHEMA_VERSION, "format": "robolearn.episode_store", "features": features_to_json(feats),
                    "sources": ["demo", "policy", "recovery", "correction"], "control_period": None, "task": "", "env_kwargs": {}})
    assert not (path / "data/source/c").exists()  # never written: all fill value
    store = EpisodeStore.open(path)
    assert store.num_episodes == 2 and store.source_counts()["demo"] == 12
    report = verify_store(path)
    assert report["ok"] and not report["checksummed"]
    writer = EpisodeStore.open(path, "a")
    writer.append_episode({"obs/state": np.zeros((4, 3), np.float32), "action": np.zeros((4, 2), np.float32)})
    writer.close()
    assert EpisodeStore.open(path).episode_lengths.tolist() == [5, 7, 4] and verify_store(path)["ok"]
