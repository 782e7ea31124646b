"""Episode stores on zarr/fsspec locations: URLs, zarr store objects, and a real S3 HTTP endpoint on
127.0.0.1 (moto's server): commit point, a writer SIGKILLed mid-episode, the writer lock's lease."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest

from robolearn.data import location as location_mod
from robolearn.data.sampler import SequenceDataset
from robolearn.data.schema import Feature
from robolearn.data.store import EpisodeStore, StoreError, StoreLockedError, copy_store

FEATURES = {"obs/state": Feature("float32", (3,), "obs"), "action": Feature("float32", (2,), "action")}


def episode(i: int, n: int) -> dict[str, np.ndarray]:
    t = np.arange(n, dtype=np.float32)
    return {"obs/state": np.stack([np.full(n, i, np.float32), t, t * 2], 1), "action": np.stack([t, -t], 1),
            "source": ["policy"] * (n // 2) + ["correction"] * (n - n // 2)}


def check_episodes(store: EpisodeStore, lengths: list[int]) -> None:
    assert store.episode_lengths.tolist() == lengths
    for i, n in enumerate(lengths):
        ep = store.get_episode(i)
        assert np.array_equal(ep["obs/state"], episode(i, n)["obs/state"]) and np.array_equal(ep["action"], episode(i, n)["action"])


@pytest.mark.parametrize("target", ["memory_url", "memory_store", "file_url"])
def test_urls_and_store_objects(target, tmp_path, monkeypatch):
    import zarr

    monkeypatch.chdir(tmp_path)  # a URL taken for a path would show up here as a 'memory:' / 'file:' directory
    location = {"memory_url": f"memory://{uuid.uuid4().hex}.zarr", "memory_store": zarr.storage.MemoryStore(),
                "file_url": f"file://{tmp_path}/s.zarr"}[target]
    store = EpisodeStore.create(location, FEATURES, task="t", control_period=0.1)
    for i, n in enumerate([4, 6]):
        store.append_episode(episode(i, n), success=True)
    store.set_mask("train", [1])
    with pytest.raises(StoreLockedError):
        EpisodeStore.open(store.path, mode="a")
    store.close()
    back = EpisodeStore.open(store.path)
    check_episodes(back, [4, 6])
    assert back.mask("train").tolist() == [False, True] and back.column("intervention_count").tolist() == [1, 1]
    assert sorted(os.listdir(tmp_path)) == (["s.zarr"] if target == "file_url" else [])
    with pytest.raises(StoreError, match="already exists"):
        EpisodeStore.create(location, FEATURES)


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    with location_mod.local_s3_server(bucket="robolearn-test") as endpoint:
        assert endpoint.startswith("http://127.0.0.1:")
        yield "s3://robolearn-test"


def cli(capsys, *argv: str) -> int:
    """The `robolearn` command in this process (the AWS variables point at the local endpoint)."""
    from robolearn.cli import main

    capsys.readouterr()
    return main(list(argv))


def test_s3_store_round_trip_and_training_windows(s3, tmp_path, capsys):
    url = f"{s3}/roundtrip.zarr"
    store = EpisodeStore.create(url, FEATURES, task="t", control_period=0.1)
    for i, n in enumerate([5, 8, 3]):
        store.append_episode(episode(i, n), success=i != 1, seed=i)
    store.set_masks({"train": [0, 1], "valid": [2]})
    store.set_attr("stats", {"note": 1})
    follower = EpisodeStore.open(url)  # a reader following the writer
    store.append_episode(episode(3, 7))
    assert follower.num_episodes == 3
    follower.refresh()
    assert follower.num_episodes == 4
    store.close()
    back = EpisodeStore.open(url)
    check_episodes(back, [5, 8, 3, 7])
    assert back.masks["valid"].tolist() == [False, False, True, False] and back.attrs["stats"] == {"note": 1}
    # training windows from object storage equal those from a local copy
    local = copy_store(back, tmp_path / "local.zarr")
    draws = np.arange(0, 20, 3)
    a = SequenceDataset(back, ["state"], n_obs_steps=2, horizon=4).get_batch(draws)
    b = SequenceDataset(local, ["state"], n_obs_steps=2, horizon=4).get_batch(draws)
    assert all(np.array_equal(a["obs"]["state"], b["obs"]["state"]) for _ in [0]) and np.array_equal(a["action"], b["action"])
    # the CLI takes the URL like a path (the AWS variables point at the local endpoint)
    assert cli(capsys, "data", "info", url, "--json") == 0 and '"episodes": 4' in capsys.readouterr().out
    assert cli(capsys, "data", "info", f"{s3}/nothing.zarr") == 2 and "no episode store" in capsys.readouterr().err


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import zarr
    sys.path.insert(0, sys.argv[3])
    from test_store_remote import episode
    from robolearn.data.store import EpisodeStore
    store = EpisodeStore.open(sys.argv[1], mode="a")
    kill_at, calls = int(sys.argv[2]), [0]
    append = zarr.Array.append
    def dying_append(self, *a, **k):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return append(self, *a, **k)
    zarr.Array.append = dying_append
    store.append_episode(episode(2, 9))
""")


@pytest.mark.parametrize("kill_at,where", [(3, "step arrays"), (13, "per-episode columns")])
def test_writer_killed_mid_episode_on_s3(s3, kill_at, where):
    url = f"{s3}/killed-{kill_at}.zarr"
    store = EpisodeStore.create(url, FEATURES, task="t")
    store.append_episode(episode(0, 5))
    store.append_episode(episode(1, 6))
    store.close()
    env = {**os.environ, "ROBOLEARN_LOCK_LEASE_S": "6"}
    child = subprocess.run([sys.executable, "-c", KILLED_WRITER, url, str(kill_at), os.path.dirname(__file__)],
                           env=env, capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr  # died inside the append, in the {where}
    lock = json.loads(location_mod.store_location(url).get(location_mod.RemoteLock.KEY))
    if lock["expires"] - time.time() > 1.0:  # (a very busy machine may have used up the lease already)
        with pytest.raises(StoreLockedError, match=rf"pid {lock['pid']}.*lease"):  # its lock outlives it, for its lease
            EpisodeStore.open(url, mode="a")
    raw = EpisodeStore.open(url)
    check_episodes(raw, [5, 6])  # readers see exactly the committed episodes
    assert raw.array("action").shape[0] > 11  # the dead writer's tail is there, uncommitted
    time.sleep(max(0.0, lock["expires"] - time.time() + 0.3))
    writer = EpisodeStore.open(url, mode="a")  # lease over: the next writer takes over and trims the tail
    assert writer.array("action").shape[0] == 11
    writer.append_episode(episode(2, 4))
    writer.close()
    check_episodes(EpisodeStore.open(url), [5, 6, 4])


def test_second_writer_and_lost_lease_on_s3(s3, monkeypatch):
    url = f"{s3}/lock.zarr"
    first = EpisodeStore.create(url, FEATURES)
    with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
        EpisodeStore.open(url, mode="a")
    first.append_episode(episode(0, 3))
    first.close()  # releases the lock object
    monkeypatch.setattr(location_mod, "LOCK_LEASE_S", 1.0)
    stale = EpisodeStore.open(url, mode="a")
    time.sleep(1.3)  # the lease runs out while `stale` is idle
    second = EpisodeStore.open(url, mode="a")
    with pytest.raises(StoreLockedError, match="lost its lock"):
        stale.append_episode(episode(1, 3))
    second.append_episode(episode(1, 4))
    second.close()
    stale._lock_fd = None
    check_episodes(EpisodeStore.open(url), [3, 4])


def test_local_only_operations_say_why(s3, tmp_path, capsys):
    url = f"{s3}/local-only.zarr"
    store = EpisodeStore.create(url, FEATURES)
    store.append_episode(episode(0, 3))
    with pytest.raises(StoreError, match="local directory"):
        store.drop_episodes([0])
    store.close()
    assert cli(capsys, "data", "filter", url, f"{s3}/out.zarr") == 2 and "write it to a local path" in capsys.readouterr().err
    assert cli(capsys, "data", "filter", url, str(tmp_path / "out.zarr")) == 0  # object storage in, local disk out
    assert EpisodeStore.open(tmp_path / "out.zarr").num_episodes == 1


def test_import_lerobot_into_s3(s3, tmp_path):
    pytest.importorskip("pyarrow")
    from robolearn.data.lerobot_io import export_lerobot, import_lerobot

    local = EpisodeStore.create(tmp_path / "a.zarr", FEATURES, control_period=0.1)
    for i, n in enumerate([4, 5]):
        local.append_episode(episode(i, n))
    export_lerobot(local, tmp_path / "lr", progress=False)
    back = import_lerobot(tmp_path / "lr", f"{s3}/from-lerobot.zarr", progress=False)
    check_episodes(back, [4, 5])
    assert back.column("intervention_count").tolist() == [1, 1]
    with pytest.raises(FileExistsError):
        import_lerobot(tmp_path / "lr", f"{s3}/from-lerobot.zarr", progress=False)
