"""`robolearn data ...` end to end through the console entry point."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers_data import make_episode, make_store
from robolearn.data.store import EpisodeStore


def run(*args):
    return subprocess.run([sys.executable, "-m", "robolearn.cli", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_info_merge_filter_split(tmp_path):
    s = make_store(tmp_path / "a.zarr", [4, 5, 6])
    s.append_episode(make_episode(3, 4, ["policy", "policy", "recovery", "correction"]), success=True)
    s.close()
    out = run("data", "info", tmp_path / "a.zarr", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["episodes"] == 4 and info["steps"] == 19
    assert info["features"]["obs/state"] == {"shape": [3], "dtype": "float32", "role": "obs"}
    assert info["sources"] == {"demo": 15, "policy": 2, "recovery": 1, "correction": 1}
    assert "episodes 4" in run("data", "info", tmp_path / "a.zarr").stdout

    assert run("data", "merge", tmp_path / "m.zarr", tmp_path / "a.zarr", tmp_path / "a.zarr").returncode == 0
    assert EpisodeStore.open(tmp_path / "m.zarr").num_episodes == 8

    assert run("data", "filter", tmp_path / "m.zarr", tmp_path / "f.zarr", "--success", "true", "--source", "demo").returncode == 0
    f = EpisodeStore.open(tmp_path / "f.zarr")
    assert f.num_episodes == 4 and f.column("success").all()

    out = run("data", "split", tmp_path / "m.zarr", "--val-ratio", "0.25", "--seed", "0")
    assert out.returncode == 0, out.stderr
    m = EpisodeStore.open(tmp_path / "m.zarr")
    assert m.mask("train").sum() == 6 and m.mask("valid").sum() == 2
    assert not (m.mask("train") & m.mask("valid")).any()


def test_clear_errors(tmp_path):
    out = run("data", "info", tmp_path / "nope.zarr")
    assert out.returncode == 2 and "no episode store" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    (tmp_path / "dir").mkdir()
    out = run("data", "info", tmp_path / "dir")
    assert out.returncode == 2 and "not a robolearn episode store" in out.stderr
    make_store(tmp_path / "a.zarr", [3]).close()
    out = run("data", "filter", tmp_path / "a.zarr", tmp_path / "b.zarr", "--success", "maybe")
    assert out.returncode == 2
    out = run("data", "filter", tmp_path / "a.zarr", tmp_path / "a.zarr")
    assert out.returncode == 2 and "already exists" in out.stderr
    assert EpisodeStore.open(tmp_path / "a.zarr").num_episodes == 1
