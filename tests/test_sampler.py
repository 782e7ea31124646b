"""Sequence windows, pad masks, episode boundaries, weighted sampling, splits, normalization."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers_data import make_store
from robolearn.data.normalizer import Normalizer, compute_stats, load_stats, save_stats
from robolearn.data.sampler import SequenceDataset, WeightedWindowSampler, split_episodes, uniform_sampler


@pytest.fixture()
def store(tmp_path):
    return make_store(tmp_path / "s.zarr", [5, 9, 3])


def test_window_count_and_edges(store):
    ds = SequenceDataset(store, ["state"], n_obs_steps=2, horizon=4)
    assert len(ds) == store.num_steps  # one window per anchor step with default padding
    b = ds.get_batch(np.arange(len(ds)))
    # windows never cross episodes: every window's episode id (state[...,0]) is constant
    ep_ids = b["obs"]["state"][..., 0]
    assert np.all(ep_ids == ep_ids[:, :1])
    assert np.all(b["action"][..., 0] == ep_ids[:, :1])
    # first window of episode 1: obs = [t0, t0] (pad by edge repetition), actions t0,t0,t1,t2
    w = 5
    assert b["obs"]["state"][w, :, 1].tolist() == [0, 0]
    assert b["action"][w, :, 1].tolist() == [0, 0, 1, 2]
    assert b["pad_mask"][w].tolist() == [False, True, True, True]
    # last window of episode 1 (anchor t=8): actions 7,8,8,8 -> two padded at the end
    w = 5 + 8
    assert b["obs"]["state"][w, :, 1].tolist() == [7, 8]
    assert b["action"][w, :, 1].tolist() == [7, 8, 8, 8]
    assert b["pad_mask"][w].tolist() == [True, True, False, False]
    # an episode shorter than the horizon still yields padded windows
    assert (b["obs"]["state"][:, -1, 0] == 2).sum() == 3


def test_no_padding_and_episode_subset(store):
    ds = SequenceDataset(store, ["state"], n_obs_steps=2, horizon=4, pad_before=0, pad_after=0, episodes=[1, 2])
    assert len(ds) == 9 - 4 + 1  # episode 2 (length 3) is too short for an unpadded window
    b = ds.get_batch(np.arange(len(ds)))
    assert b["pad_mask"].all()
    assert np.all(b["obs"]["state"][..., 0] == 1)


def test_images_are_lazy_and_extra_keys(store):
    ds = SequenceDataset(store, ["state", "image"], 2, 4, extra_keys=["stage", "primitive"], lazy_threshold=100)
    assert "obs/image" in ds._lazy_keys and "obs/state" not in ds._lazy_keys
    item = ds[6]
    assert item["obs"]["image"].shape == (2, 8, 8, 3) and item["obs"]["image"].dtype == torch.uint8
    assert item["stage"].shape == (4,) and item["primitive"].shape == (4,)
    b = ds.get_batch([6])
    np.testing.assert_array_equal(b["obs"]["image"][0, :, 0, 0, 0], [1, 2])  # episode 1, t=0,1


def test_dataloader_with_workers(store):
    ds = SequenceDataset(store, ["state", "image"], 2, 4, lazy_threshold=100)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, sampler=uniform_sampler(len(ds), seed=0))
    batches = list(loader)
    assert sum(len(b["action"]) for b in batches) == len(ds)
    seen = torch.cat([b["index"] for b in batches]).sort().values
    assert seen.tolist() == list(range(len(ds)))


def test_weighted_sampler_frequencies_and_resume():
    w = np.array([0.0, 1.0, 2.0, 7.0])
    s = WeightedWindowSampler(w, num_samples=1000, seed=3)
    draws = s.next_batch(200_000)
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, w / w.sum(), atol=0.005)
    # resume mid-epoch reproduces the exact continuation
    a = WeightedWindowSampler(w, num_samples=1000, seed=5)
    a.next_batch(1500)
    state = a.state_dict()
    cont = a.next_batch(700)
    b = WeightedWindowSampler(w, num_samples=1000, seed=5)
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.next_batch(700), cont)
    with pytest.raises(ValueError, match="not all zero"):
        WeightedWindowSampler(np.zeros(3))


def test_step_weights_become_window_weights(store):
    weights = np.zeros(store.num_steps)
    weights[store.episode_starts[1] : store.episode_ends[1]] = 1.0  # only episode 1
    ds = SequenceDataset(store, ["state"], 2, 4, step_weights=weights)
    s = WeightedWindowSampler(ds.window_weights, seed=0)
    b = ds.get_batch(s.next_batch(256))
    assert np.all(b["obs"]["state"][:, -1, 0] == 1)
    with pytest.raises(ValueError, match="shape"):
        SequenceDataset(store, ["state"], 2, 4, step_weights=np.ones(3))


def test_split_by_episode():
    tr, va = split_episodes(10, 0.2, seed=1)
    assert len(va) == 2 and len(tr) == 8 and not set(tr) & set(va)
    tr2, va2 = split_episodes(10, 0.2, seed=1)
    assert tr.tolist() == tr2.tolist()
    assert split_episodes(1, 0.5)[0].tolist() == [0]


def test_exact_stats_and_normalizer(store):
    stats = compute_stats(store, ["obs/state", "action"], chunk=4)  # chunk smaller than the data
    x = store.read("obs/state").astype(np.float64)
    np.testing.assert_allclose(stats["obs/state"]["mean"], x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["obs/state"]["std"], x.std(0), rtol=1e-6)
    np.testing.assert_allclose(stats["obs/state"]["q01"], np.quantile(x, 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["obs/state"]["q99"], np.quantile(x, 0.99, axis=0), rtol=1e-6)
    np.testing.assert_array_equal(stats["obs/state"]["min"], x.min(0))
    save_stats(store, stats)
    loaded = load_stats(store, ["action"])
    np.testing.assert_array_equal(loaded["action"]["max"], stats["action"]["max"])
    norm = Normalizer(stats, {"action": "minmax", "obs/state": "gaussian"})
    a = torch.as_tensor(store.read("action"))
    na = norm.normalize("action", a)
    assert torch.allclose(na.min(0).values, torch.tensor(-1.0)) and torch.allclose(na.max(0).values, torch.tensor(1.0))
    assert torch.allclose(norm.unnormalize("action", na), a, atol=1e-5)
    again = Normalizer.from_json(norm.to_json())
    assert torch.equal(again.normalize("obs/state", torch.ones(3)), norm.normalize("obs/state", torch.ones(3)))
    with pytest.raises(ValueError, match="mode"):
        Normalizer(stats, {"action": "bogus"})


@pytest.fixture()
def image_store(tmp_path):
    """Images big enough for several zarr chunks (21 frames each); pixel (0, 0) = global step % 251."""
    from robolearn.data.store import EpisodeStore, Feature

    feats = {"obs/state": Feature("float32", (2,), "obs"), "obs/image": Feature("uint8", (64, 64, 3), "obs"),
             "action": Feature("float32", (2,), "action")}
    store = EpisodeStore.create(tmp_path / "img.zarr", feats, task="toy")
    step = 0
    for length in (30, 40, 35):
        t = np.arange(step, step + length)
        img = np.random.default_rng(step).integers(0, 256, (length, 64, 64, 3), dtype=np.uint8)
        img[:, 0, 0, 0] = t % 251
        store.append_episode({"obs/state": np.stack([t, t], 1).astype(np.float32), "obs/image": img,
                              "action": np.stack([t, -t], 1).astype(np.float32)}, success=True)
        step += length
    assert store.array("obs/image").chunks[0] < 40  # several chunks
    return store


def test_chunk_cache_gathers_exactly_what_zarr_holds(image_store):
    full = image_store.read("obs/image", cache=False)
    eager = SequenceDataset(image_store, ["state", "image"], 2, 8, lazy_threshold=1 << 62)
    lazy = SequenceDataset(image_store, ["state", "image"], 2, 8)  # cache sized from the store: every chunk fits
    cache = lazy._lazy_arrays()["obs/image"]
    assert cache._read is not None  # the direct blosc path on a plain local store
    assert cache.n_slots == cache.n_chunks and lazy.image_cache_bytes >= full.nbytes
    windows = np.random.default_rng(0).integers(0, len(lazy), 64)
    a, b = eager.get_batch(windows), lazy.get_batch(windows)
    np.testing.assert_array_equal(a["obs"]["image"], b["obs"]["image"])
    np.testing.assert_array_equal(a["action"], b["action"])
    # a pool of 2 chunk slots (smaller than the store) evicts and stays exact, batch after batch
    small = SequenceDataset(image_store, ["image"], 2, 8, image_cache_bytes=2 * cache.pool[0].nbytes)
    small_cache = small._lazy_arrays()["obs/image"]
    assert small_cache.n_slots == 2
    for w in np.random.default_rng(1).integers(0, len(small), (20, 3)):
        np.testing.assert_array_equal(small.get_batch(w)["obs"]["image"], eager.get_batch(w)["obs"]["image"])
    assert small_cache.decoded > small_cache.n_chunks  # it did evict and re-decode
    # a batch needing more chunks than the pool holds falls back to per-chunk reads, still exact
    w = np.array([0, 40, 80, 100])
    np.testing.assert_array_equal(small.get_batch(w)["obs"]["image"], eager.get_batch(w)["obs"]["image"])
    # the zarr path (no direct reader) gives the same bytes
    cache._read = None
    cache.slot_of[:] = -1
    cache.chunk_in[:] = -1
    np.testing.assert_array_equal(lazy.get_batch(windows)["obs"]["image"], a["obs"]["image"])


def test_cache_warms_in_the_background(image_store):
    ds = SequenceDataset(image_store, ["image"], 2, 8)
    ds.warm_cache()
    ds._warmer.join(timeout=30)
    cache = ds._lazy_arrays()["obs/image"]
    assert (cache.slot_of >= 0).all() and cache.decoded == cache.n_chunks
    before = cache.decoded
    ds.get_batch(np.arange(len(ds)))
    assert cache.decoded == before  # warm: nothing left to decode
    ds.close()


def test_prefetched_batches_follow_the_sampler_order(image_store):
    from robolearn.data.sampler import BatchPrefetcher

    ds = SequenceDataset(image_store, ["state", "image"], 2, 8)
    ref_sampler = WeightedWindowSampler(np.ones(len(ds)), seed=4)
    pre = BatchPrefetcher(ds, WeightedWindowSampler(np.ones(len(ds)), seed=4), 16, num_workers=2)
    states = []
    for _ in range(7):
        batch, state = pre.next()
        expect = ds.torch_batch(ref_sampler.next_batch(16))
        states.append(state)
        assert state == ref_sampler.state_dict()  # the position after this batch, not after those in flight
        assert torch.equal(batch["index"], expect["index"]) and torch.equal(batch["obs"]["image"], expect["obs"]["image"])
    pre.close()
    # resuming from a recorded state continues with the very next batch
    resumed = WeightedWindowSampler(np.ones(len(ds)), seed=4)
    resumed.load_state_dict(states[2])
    again = BatchPrefetcher(ds, resumed, 16, num_workers=0)
    replay = WeightedWindowSampler(np.ones(len(ds)), seed=4)
    for _ in range(3):  # states[2]: after the third batch
        replay.next_batch(16)
    assert torch.equal(again.next()[0]["index"], torch.as_tensor(replay.next_batch(16)))
    with pytest.raises(ValueError, match="num_workers"):
        BatchPrefetcher(ds, resumed, 16, num_workers=-1)
