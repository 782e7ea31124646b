"""robomimic hdf5 interop: lossless round trip and windows equal to robomimic's own SequenceDataset."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from robolearn.data.robomimic_io import export_robomimic, import_robomimic
from robolearn.data.sampler import SequenceDataset
from robolearn.data.store import EpisodeStore, StoreError

LENGTHS = [7, 4, 11]


def write_robomimic(path):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}})
        data.attrs["total"] = sum(LENGTHS)
        for i, n in enumerate(LENGTHS):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = n
            g.attrs["model_file"] = f"<mujoco model='m{i}'/>"
            g.create_dataset("actions", data=rng.uniform(-1, 1, (n, 7)))
            g.create_dataset("rewards", data=(np.arange(n) == n - 1).astype(np.float64))
            g.create_dataset("dones", data=(np.arange(n) == n - 1).astype(np.int64))
            g.create_dataset("states", data=rng.normal(size=(n, 32)))
            for prefix in ("obs", "next_obs"):
                g.create_dataset(f"{prefix}/robot0_eef_pos", data=rng.normal(size=(n, 3)))
                g.create_dataset(f"{prefix}/object", data=rng.normal(size=(n, 10)).astype(np.float32))
                g.create_dataset(f"{prefix}/agentview_image", data=rng.integers(0, 255, (n, 12, 12, 3), dtype=np.uint8))
        mask = f.create_group("mask")
        mask.create_dataset("train", data=np.array(["demo_0", "demo_2"], dtype="S"))
        mask.create_dataset("valid", data=np.array(["demo_1"], dtype="S"))


def _walk(f):
    out = {}
    f.visititems(lambda name, obj: out.__setitem__(name, obj[()] if isinstance(obj, h5py.Dataset) else dict(obj.attrs)))
    out["__data_attrs__"] = dict(f["data"].attrs)
    return out


def test_round_trip_preserves_every_value(tmp_path):
    src = tmp_path / "in.hdf5"
    write_robomimic(src)
    store = import_robomimic(src, tmp_path / "s.zarr")
    assert store.num_episodes == 3 and store.episode_lengths.tolist() == LENGTHS
    assert store.task == "Lift"
    assert store.mask("train").tolist() == [True, False, True]
    export_robomimic(tmp_path / "s.zarr", tmp_path / "out.hdf5")
    with h5py.File(src) as a, h5py.File(tmp_path / "out.hdf5") as b:
        wa, wb = _walk(a), _walk(b)
        assert sorted(wa) == sorted(wb)
        for key, va in wa.items():
            vb = wb[key]
            if isinstance(va, dict):
                assert {k: (v.decode() if isinstance(v, bytes) else v) for k, v in va.items()} == {
                    k: (v.decode() if isinstance(v, bytes) else v) for k, v in vb.items()
                }, key
            else:
                assert va.dtype == vb.dtype, key
                np.testing.assert_array_equal(va, vb, err_msg=key)
        assert json.loads(a["data"].attrs["env_args"]) == json.loads(b["data"].attrs["env_args"])


def test_windows_match_robomimic_sequence_dataset(tmp_path):
    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.utils.dataset import SequenceDataset as RMSequenceDataset

    src = tmp_path / "in.hdf5"
    write_robomimic(src)
    import_robomimic(src, tmp_path / "s.zarr")
    keys = ["robot0_eef_pos", "object", "agentview_image"]
    ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": keys[:2], "rgb": keys[2:]}})
    frame_stack, seq_length = 2, 3
    rm = RMSequenceDataset(
        hdf5_path=str(src), obs_keys=keys, dataset_keys=("actions", "rewards", "dones"), frame_stack=frame_stack,
        seq_length=seq_length, pad_frame_stack=True, pad_seq_length=True, get_pad_mask=True, goal_mode=None,
        hdf5_cache_mode=None, hdf5_use_swmr=False, hdf5_normalize_obs=False, filter_by_attribute=None,
    )
    window = frame_stack - 1 + seq_length  # robomimic returns obs and actions over the same window
    ours = SequenceDataset(
        EpisodeStore.open(tmp_path / "s.zarr"), keys, n_obs_steps=window, horizon=window,
        pad_before=frame_stack - 1, pad_after=seq_length - 1, extra_keys=["reward", "done"],
    )
    assert len(ours) == len(rm) == sum(LENGTHS)
    batch = ours.get_batch(np.arange(len(ours)))
    for i in range(len(rm)):
        ref = rm[i]
        np.testing.assert_array_equal(batch["action"][i], ref["actions"])
        np.testing.assert_array_equal(batch["reward"][i], ref["rewards"])
        np.testing.assert_array_equal(batch["done"][i], ref["dones"].astype(bool))
        for k in keys:
            np.testing.assert_array_equal(batch["obs"][k][i], ref["obs"][k], err_msg=k)
        np.testing.assert_array_equal(batch["pad_mask"][i], ref["obs"]["pad_mask"][:, 0])


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        import_robomimic(tmp_path / "none.hdf5", tmp_path / "x.zarr")
    (tmp_path / "junk.hdf5").write_text("not hdf5")
    with pytest.raises(StoreError, match="not a readable hdf5"):
        import_robomimic(tmp_path / "junk.hdf5", tmp_path / "x.zarr")
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("other")
    with pytest.raises(StoreError, match="no 'data' group"):
        import_robomimic(tmp_path / "empty.hdf5", tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()
