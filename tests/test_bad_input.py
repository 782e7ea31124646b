"""Bad input across every command: one line on stderr, exit code 2 (1 for `data verify` finding
damage), no traceback, and every input byte-for-byte unchanged.

Cases run in-process through `robolearn.cli.main([...])` (fast); a handful run as subprocesses
to check the real console behaviour. The inputs -- good, damaged and hostile stores, checkpoints,
robomimic files, run directories, configs -- are built once per module; each case hashes all of
them before and after.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from helpers_data import make_store
from robolearn.cli import main
from robolearn.data.store import EpisodeStore, Feature

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ inputs
def _checkpoint(store_path: Path, out: Path) -> Path:
    from robolearn.checkpoint import save_policy
    from robolearn.data.normalizer import compute_stats
    from robolearn.policies import make_policy
    from robolearn.policies.bc.configuration import BCConfig

    store = EpisodeStore.open(store_path)
    cfg = BCConfig(n_obs_steps=1, horizon=1, n_action_steps=1, hidden_dims=[16, 16]).with_features(store.features)
    stats = compute_stats(store, list(cfg.normalizer_modes()))
    return save_policy(make_policy("bc", cfg, stats), out, task="push_cube")


def _edit_json(path: Path, rehash: bool, **changes) -> None:
    from robolearn.checkpoint import CONTENT_HASH, content_hash

    meta = json.loads((path / "checkpoint.json").read_text())
    for key, value in changes.items():
        node = meta
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    if rehash:
        meta[CONTENT_HASH] = content_hash(meta)
    (path / "checkpoint.json").write_text(json.dumps(meta))


def _robomimic_files(w: Path) -> None:
    import h5py

    from robolearn.data.robomimic_io import export_robomimic

    export_robomimic(w / "good.zarr", w / "good.hdf5")
    (w / "garbage.hdf5").write_bytes(os.urandom(4096))
    with h5py.File(w / "nodata.hdf5", "w") as f:
        f.create_group("other")
    shutil.copy(w / "good.hdf5", w / "noactions.hdf5")
    with h5py.File(w / "noactions.hdf5", "a") as f:
        del f["data/demo_0/actions"]
    shutil.copy(w / "good.hdf5", w / "badmask.hdf5")  # fails after every demo was imported
    with h5py.File(w / "badmask.hdf5", "a") as f:
        f.require_group("mask").create_dataset("bad", data=np.array([b"demo_0", b"demo_99"]))
    shutil.copy(w / "good.hdf5", w / "baddemo.hdf5")  # the third demo has a wrong action shape
    with h5py.File(w / "baddemo.hdf5", "a") as f:
        del f["data/demo_2/actions"]
        f["data/demo_2"].create_dataset("actions", data=np.zeros((7, 5), np.float32))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Every input the cases read, built once."""
    w = tmp_path_factory.mktemp("inputs")
    s = make_store(w / "good.zarr", [5, 6, 7])
    s.set_mask("m", [1])
    s.close()
    make_store(w / "good2.zarr", [4, 4]).close()
    make_store(w / "empty.zarr", []).close()
    other = EpisodeStore.create(w / "other.zarr", {"action": Feature("float32", (2,), "action")})
    other.append_episode({"action": np.zeros((3, 2), np.float32)})
    other.close()
    # damaged stores: the three kinds of the issue, and more
    make_store(w / "ends1e9.zarr", [5] * 6).close()
    st = EpisodeStore.open(w / "ends1e9.zarr", "a")
    st._ends_array[2] = 10**9
    st.close()
    make_store(w / "missing_chunk.zarr", [5, 6, 7]).close()
    os.remove(w / "missing_chunk.zarr/data/action/c/0/0")
    make_store(w / "corrupt_chunk.zarr", [5, 6, 7]).close()
    chunk = w / "corrupt_chunk.zarr/data/action/c/0/0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    make_store(w / "corrupt_source.zarr", [5, 6, 7]).close()
    chunk = w / "corrupt_source.zarr/data/source/c/0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    make_store(w / "length.zarr", [5, 6, 7]).close()
    st = EpisodeStore.open(w / "length.zarr", "a")
    st._columns["length"][1] = 60
    st.close()
    make_store(w / "schema99.zarr", [3]).close()
    doc = json.loads((w / "schema99.zarr/zarr.json").read_text())
    doc["attributes"]["schema_version"] = 99
    (w / "schema99.zarr/zarr.json").write_text(json.dumps(doc))
    make_store(w / "noarray.zarr", [3]).close()
    shutil.rmtree(w / "noarray.zarr/data/action")
    make_store(w / "badjson.zarr", [3]).close()
    (w / "badjson.zarr/zarr.json").write_text("{not json")
    import zarr

    zarr.open_group(str(w / "plainzarr.zarr"), mode="w")
    (w / "notstore").mkdir()
    (w / "notstore/readme.txt").write_text("hello")
    (w / "file.zarr").write_text("not a directory")
    # checkpoints
    ck = _checkpoint(w / "good.zarr", w / "ckpt")
    for name in ("trunc", "hash", "huge", "shapes", "nan", "v99", "notjson", "nomodel", "header", "unknown", "bigjson", "badcfg", "negative"):
        shutil.copytree(ck, w / f"ckpt_{name}")
    model = w / "ckpt_trunc/model.safetensors"
    model.write_bytes(model.read_bytes()[:-100])
    _edit_json(w / "ckpt_hash", rehash=False, task="pick_place")
    _edit_json(w / "ckpt_huge", rehash=True, **{"config.hidden_dims": [1 << 20, 1 << 20]})
    _edit_json(w / "ckpt_shapes", rehash=True, **{"config.hidden_dims": [60000, 60000]})
    _edit_json(w / "ckpt_nan", rehash=False, **{"config.dropout": "NaN"})
    (w / "ckpt_nan/checkpoint.json").write_text((w / "ckpt_nan/checkpoint.json").read_text().replace('"NaN"', "NaN"))
    _edit_json(w / "ckpt_badcfg", rehash=True, **{"config.dropout": 2.0})
    _edit_json(w / "ckpt_negative", rehash=True, **{"config.hidden_dims": [16, -16]})
    _edit_json(w / "ckpt_v99", rehash=True, format_version=99)
    (w / "ckpt_notjson/checkpoint.json").write_text("{truncated")
    os.remove(w / "ckpt_nomodel/model.safetensors")
    model = w / "ckpt_header/model.safetensors"
    model.write_bytes((1 << 40).to_bytes(8, "little") + model.read_bytes()[8:])
    _edit_json(w / "ckpt_unknown", rehash=True, policy="transformer")
    _edit_json(w / "ckpt_bigjson", rehash=True, **{"config.hidden_dims": [16, 16, 16]})
    # run directories
    run = w / "run_existing"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"data": str(w / "good.zarr"), "task": None, "policy": "bc"}))
    (run / "config.yaml").write_text("name: bc\n")
    trunc_run = w / "run_trunc"
    (trunc_run / "checkpoints").mkdir(parents=True)
    from robolearn.config import to_dict
    from robolearn.policies.configuration import load_run_config

    import yaml

    cfg = to_dict(load_run_config(REPO / "policies/bc.yaml", ["policy.hidden_dims=[16,16]", "train.steps=10"], name="bc"))
    (trunc_run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (trunc_run / "run.json").write_text(json.dumps({"data": str(w / "good.zarr"), "task": None, "policy": "bc"}))
    shutil.copytree(w / "ckpt_trunc", trunc_run / "checkpoints/last")
    # configs
    (w / "bad.yaml").write_text("name: bc\npolicy: [unclosed\n")
    (w / "nan.yaml").write_text((REPO / "policies/bc.yaml").read_text().replace("lr: 0.0001", "lr: .nan"))
    _robomimic_files(w)
    for lock in w.rglob(".robolearn.lock"):
        lock.unlink()
    return w


_HASHES: dict[tuple, str] = {}


def _digest(root: Path) -> dict[str, str]:
    """sha256 of every input file (lock files hold no data and come and go with writers).

    A file's hash is reused while its inode, size, mtime and ctime are unchanged (any write
    changes ctime), which makes the before/after comparison of ~1000 files cheap."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != ".robolearn.lock":
            st = p.stat()
            key = (str(p), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if key not in _HASHES:
                _HASHES[key] = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = _HASHES[key]
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = ""
    return out


@contextlib.contextmanager
def unwritable(path: Path):
    """A directory nobody may write into: mode 0555, or the immutable flag where we are root
    (root ignores mode bits)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a directory unwritable as root here (no chattr)")
        try:
            yield path
        finally:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    else:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)


# ------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    argv: str  # {w}: the inputs; {o}: a fresh output directory; split on spaces
    match: str  # a piece of the one-line message (or of the report, for rc 1)
    rc: int = 2
    id: str = ""


C = Case
CASES: list[Case] = [
    # data info
    C("data info {w}/missing.zarr", "no episode store"),
    C("data info {w}/notstore", "not a robolearn episode store"),
    C("data info {w}/file.zarr", "it is a file"),
    C("data info {w}/schema99.zarr", "schema version 99"),
    C("data info {w}/ends1e9.zarr", "robolearn data repair"),
    C("data info {w}/missing_chunk.zarr", "data/action"),
    C("data info {w}/corrupt_source.zarr", "data/source"),
    C("data info {w}/length.zarr", "episode 1"),
    C("data info {w}/noarray.zarr", "missing array"),
    C("data info {w}/badjson.zarr", "not a robolearn episode store"),
    C("data info {w}/plainzarr.zarr", "not a robolearn episode store"),
    C("data info {w}/good.zarr --bogus", "unrecognized arguments"),
    # data verify: damage is exit 1 with a report; unusable paths exit 2
    C("data verify {w}/ends1e9.zarr", "DAMAGED", 1),
    C("data verify {w}/missing_chunk.zarr", "missing_chunk data/action", 1),
    C("data verify {w}/corrupt_chunk.zarr", "corrupt_chunk data/action", 1),
    C("data verify {w}/length.zarr", "DAMAGED", 1),
    C("data verify {w}/missing.zarr", "no episode store"),
    C("data verify {w}/notstore", "not a robolearn episode store"),
    C("data verify {w}/file.zarr", "it is a file"),
    C("data verify {w}/schema99.zarr", "schema version 99"),
    # data repair on paths that are not stores
    C("data repair {w}/missing.zarr", "no episode store"),
    C("data repair {w}/notstore", "not a robolearn episode store"),
    C("data repair {w}/file.zarr", "it is a file"),
    C("data repair {w}/schema99.zarr", "schema version 99"),
    # data merge
    C("data merge {w}/good.zarr {w}/good.zarr {w}/good2.zarr", "is the input"),
    C("data merge {w}/good2.zarr {w}/good.zarr", "already exists"),
    C("data merge {o}/m.zarr {w}/good.zarr {w}/corrupt_chunk.zarr", "data/action"),
    C("data merge {o}/m.zarr {w}/good.zarr {w}/ends1e9.zarr", "robolearn data repair"),
    C("data merge {o}/m.zarr {w}/good.zarr {w}/other.zarr", "features differ"),
    C("data merge {o}/m.zarr {w}/good.zarr {w}/missing.zarr", "no episode store"),
    C("data merge {w}/good.zarr/inner.zarr {w}/good.zarr", "is the input"),
    C("data merge {o}/no/such/dir/m.zarr {w}/good.zarr", "does not exist"),
    C("data merge {o}/m.zarr {w}/notstore", "not a robolearn episode store"),
    # data filter
    C("data filter {w}/good.zarr {w}/good.zarr", "is the input"),
    C("data filter {w}/good.zarr {w}/good2.zarr", "already exists"),
    C("data filter {w}/ends1e9.zarr {o}/f.zarr", "robolearn data repair"),
    C("data filter {w}/missing_chunk.zarr {o}/f.zarr", "data/action"),
    C("data filter {w}/good.zarr {o}/f.zarr --success maybe", "expected true or false"),
    C("data filter {w}/good.zarr {o}/f.zarr --mask nosuch", "no mask 'nosuch'"),
    C("data filter {w}/good.zarr {o}/f.zarr --source robot", "unknown source"),
    C("data filter {w}/good.zarr {o}/no/dir/f.zarr", "does not exist"),
    C("data filter {w}/missing.zarr {o}/f.zarr", "no episode store"),
    C("data filter {w}/good.zarr {w}/good.zarr/sub.zarr", "is the input"),
    # data split
    C("data split {w}/good.zarr --val-ratio 0", "must be > 0"),
    C("data split {w}/good.zarr --val-ratio 1", "must be < 1"),
    C("data split {w}/good.zarr --val-ratio -0.1", "must be > 0"),
    C("data split {w}/good.zarr --val-ratio nan", "finite"),
    C("data split {w}/good.zarr --val-ratio inf", "finite"),
    C("data split {w}/good.zarr --val-ratio 2", "must be < 1"),
    C("data split {w}/good.zarr --val-ratio abc", "expected a number"),
    C("data split {w}/good.zarr --val-ratio 0.5 --seed -1", "must be >= 0"),
    C("data split {w}/good.zarr --val-ratio 0.5 --train-name a --val-name a", "both 'a'"),
    C("data split {w}/good.zarr --val-ratio 0.5 --train-name a/b", "bad mask name"),
    C("data split {w}/ends1e9.zarr --val-ratio 0.5", "robolearn data repair"),
    C("data split {w}/length.zarr --val-ratio 0.5", "robolearn data repair"),
    C("data split {w}/missing_chunk.zarr --val-ratio 0.5", "data/action"),
    C("data split {w}/missing.zarr --val-ratio 0.5", "no episode store"),
    C("data split {w}/good.zarr", "required: --val-ratio"),
    # data stats
    C("data stats {w}/ends1e9.zarr", "robolearn data repair"),
    C("data stats {w}/corrupt_chunk.zarr", "data/action"),
    C("data stats {w}/missing.zarr", "no episode store"),
    C("data stats {w}/good.zarr --keys nosuch", "nosuch"),
    C("data stats {w}/empty.zarr", "no committed steps"),
    # data import-robomimic
    C("data import-robomimic {w}/missing.hdf5 {o}/i.zarr", "no robomimic file"),
    C("data import-robomimic {w}/garbage.hdf5 {o}/i.zarr", "not a readable hdf5"),
    C("data import-robomimic {w}/nodata.hdf5 {o}/i.zarr", "no 'data' group"),
    C("data import-robomimic {w}/noactions.hdf5 {o}/i.zarr", "no 'actions'"),
    C("data import-robomimic {w}/badmask.hdf5 {o}/i.zarr", "unknown demo"),
    C("data import-robomimic {w}/baddemo.hdf5 {o}/i.zarr", "'action' has shape"),
    C("data import-robomimic {w}/good.hdf5 {w}/good.zarr", "already exists"),
    C("data import-robomimic {w}/good.hdf5 {w}/good.hdf5", "is the input"),
    C("data import-robomimic {w}/good.hdf5 {o}/x/y/i.zarr", "does not exist"),
    C("data import-robomimic {w}/notstore {o}/i.zarr", "no robomimic file"),
    # data export-robomimic
    C("data export-robomimic {w}/missing.zarr {o}/e.hdf5", "no episode store"),
    C("data export-robomimic {w}/ends1e9.zarr {o}/e.hdf5", "robolearn data repair"),
    C("data export-robomimic {w}/corrupt_chunk.zarr {o}/e.hdf5", "data/action"),
    C("data export-robomimic {w}/good.zarr {w}/good.hdf5", "already exists"),
    C("data export-robomimic {w}/good.zarr {w}/notstore --overwrite", "is a directory"),
    C("data export-robomimic {w}/good.zarr {w}/good.zarr", "is the input"),
    C("data export-robomimic {w}/good.zarr {w}/good.zarr --overwrite", "is the input"),
    C("data export-robomimic {w}/good.zarr {o}/q/e.hdf5", "does not exist"),
    # data mix
    C("data mix --good {w}/good.zarr --bad {w}/good2.zarr --ratio nan --out {o}/x.zarr", "finite"),
    C("data mix --good {w}/good.zarr --bad {w}/good2.zarr --ratio -0.1 --out {o}/x.zarr", "must be >= 0"),
    C("data mix --good {w}/good.zarr --bad {w}/good2.zarr --ratio 1.5 --out {o}/x.zarr", "must be <= 1"),
    C("data mix --good {w}/good.zarr --bad {w}/good2.zarr --ratio 0.5 --size 0 --out {o}/x.zarr", "must be >= 1"),
    C("data mix --good {w}/good.zarr --bad {w}/good2.zarr --ratio 0.5 --seed -1 --out {o}/x.zarr", "must be >= 0"),
    C("data mix --good {w}/good.zarr --bad {w}/good2.zarr --ratio 0.5 --out {w}/good.zarr", "is the input"),
    C("data mix --good {w}/good.zarr --bad {w}/good2.zarr --ratio 0.5 --out {w}/good2.zarr --overwrite", "is the input"),
    C("data mix --good {w}/good.zarr --bad {w}/good2.zarr --ratio 0.5 --out {w}/empty.zarr", "already exists"),
    C("data mix --good {w}/good.zarr --bad {w}/good2.zarr --ratio 0.5 --out {w}/notstore --overwrite", "not a robolearn episode store"),
    C("data mix --good {w}/missing.zarr --bad {w}/good2.zarr --ratio 0.5 --out {o}/x.zarr", "no episode store"),
    C("data mix --good {w}/good.zarr --bad {w}/other.zarr --ratio 0.5 --out {o}/x.zarr", "features differ"),
    C("data mix --good {w}/good.zarr --bad {w}/ends1e9.zarr --ratio 0.5 --out {o}/x.zarr", "robolearn data repair"),
    # data rollout
    C("data rollout --task push_cube --episodes 0 --out {o}/r.zarr", "must be >= 1"),
    C("data rollout --task push_cube --episodes -3 --out {o}/r.zarr", "must be >= 1"),
    C("data rollout --task push_cube --episodes nan --out {o}/r.zarr", "expected an integer"),
    C("data rollout --task push_cube --episodes 2 --noise nan --out {o}/r.zarr", "finite"),
    C("data rollout --task push_cube --episodes 2 --noise -1 --out {o}/r.zarr", "must be >= 0"),
    C("data rollout --task push_cube --episodes 2 --max-steps 0 --out {o}/r.zarr", "must be >= 1"),
    C("data rollout --task push_cube --episodes 2 --num-envs 0 --out {o}/r.zarr", "must be >= 1"),
    C("data rollout --task push_cube --episodes 2 --num-envs 1000000000 --out {o}/r.zarr", "must be <= 65536"),
    C("data rollout --task push_cube --episodes 2 --seed -5 --out {o}/r.zarr", "must be >= 0"),
    C("data rollout --task nosuch --episodes 2 --out {o}/r.zarr", "unknown task"),
    # other data actions
    C("data export-lerobot {w}/missing.zarr {o}/le", "no episode store"),
    C("data export-lerobot {w}/good.zarr {o}/le --crf 99", "must be <= 63"),
    C("data export-lerobot {w}/good.zarr {o}/le --fps 0", "must be >= 1"),
    C("data import-lerobot {w}/notstore {o}/i.zarr", "notstore"),
    C("data view {w}/good.zarr --episode -1", "must be >= 0"),
    C("data view {w}/good.zarr --episode 0 --size 0", "must be >= 16"),
    C("data view {w}/missing.zarr --episode 0", "no episode store"),
    C("data nosuchaction", "invalid choice"),
    # tasks / collect
    C("tasks nosuchtask", "unknown task"),
    C("collect --task push_cube --episodes 0 --out {o}/c.zarr", "must be >= 1"),
    C("collect --task push_cube --episodes -1 --out {o}/c.zarr", "must be >= 1"),
    C("collect --task push_cube --episodes abc --out {o}/c.zarr", "expected an integer"),
    C("collect --task push_cube --episodes 1 --num-envs 0 --out {o}/c.zarr", "must be >= 1"),
    C("collect --task push_cube --episodes 1 --num-envs 1000000000 --out {o}/c.zarr", "must be <= 65536"),
    C("collect --task push_cube --episodes 1 --num-envs nan --out {o}/c.zarr", "expected an integer"),
    C("collect --task push_cube --episodes 1 --noise nan --out {o}/c.zarr", "finite"),
    C("collect --task push_cube --episodes 1 --noise -0.5 --out {o}/c.zarr", ">= 0"),
    C("collect --task push_cube --episodes 1 --noise inf --out {o}/c.zarr", "finite"),
    C("collect --task push_cube --episodes 1 --perturb nan --out {o}/c.zarr", "finite"),
    C("collect --task push_cube --episodes 1 --perturb -1 --out {o}/c.zarr", ">= 0"),
    C("collect --task push_cube --episodes 1 --seed -1 --out {o}/c.zarr", "must be >= 0"),
    C("collect --task push_cube --episodes 1 --expert-mode -2 --out {o}/c.zarr", "must be >= 0"),
    C("collect --task nosuch --episodes 1 --out {o}/c.zarr", "unknown task"),
    C("collect --task push_cube --episodes 1 --out {w}/ends1e9.zarr", "robolearn data repair"),
    C("collect --task push_cube --episodes 1 --out {w}/missing_chunk.zarr", "data/action"),
    C("collect --task push_cube --episodes 1 --out {w}/notstore", "not a robolearn episode store"),
    C("collect --task push_cube --episodes 1 --out {w}/file.zarr", "it is a file"),
    C("collect --task push_cube --episodes 1 --out {w}/good.zarr", "holds task"),
    C("collect --task push_cube --episodes 1 --out {o}/c.zarr --set nosuchkey=1", "nosuchkey"),
    C("collect --task push_cube --episodes 1 --out {o}/c.zarr --set horizon=-5", "horizon"),
    # train
    C("train --policy nosuch --data {w}/good.zarr --out {o}/r", "unknown policy"),
    C("train --policy bc --data {w}/missing.zarr --out {o}/r", "no episode store"),
    C("train --policy bc --data {w}/missing_chunk.zarr --out {o}/r", "data/action"),
    C("train --policy bc --data {w}/corrupt_chunk.zarr --out {o}/r", "data/action"),
    C("train --policy bc --data {w}/ends1e9.zarr --out {o}/r", "robolearn data repair"),
    C("train --policy bc --data {w}/length.zarr --out {o}/r", "robolearn data repair"),
    C("train --policy bc --data {w}/empty.zarr --out {o}/r", "no episodes"),
    C("train --policy bc --data {w}/good.zarr --out {w}/run_existing", "existing run"),
    C("train --policy bc --data {w}/good.zarr --out {w}/good2.zarr", "episode store"),
    C("train --policy bc --data {w}/good.zarr --out {w}/good2.zarr/run", "inside the episode store"),
    C("train --policy bc --data {w}/good.zarr --out {w}/notstore", "not a robolearn run"),
    C("train --policy bc --data {w}/good.zarr --out {w}/file.zarr", "is a file"),
    C("train --policy bc --data {w}/good.zarr --out {o}/r train.lr=nan", "finite"),
    C("train --policy bc --data {w}/good.zarr --out {o}/r train.batch_size=-4", "must be"),
    C("train --policy bc --data {w}/good.zarr --out {o}/r train.batch_size=0", "must be"),
    C("train --policy bc --data {w}/good.zarr --out {o}/r train.steps=0", "must be"),
    C("train --policy bc --data {w}/good.zarr --out {o}/r policy.dropout=1.5", "dropout"),
    C("train --policy bc --data {w}/good.zarr --out {o}/r policy.hidden_dims=[100000000]", "limit"),
    C("train --policy bc --data {w}/good.zarr --out {o}/r train.bogus=1", "unknown key"),
    C("train --policy bc --data {w}/good.zarr --out {o}/r notakeyvalue", "key=value"),
    C("train --policy bc --data {w}/good.zarr --out {o}/r --config {w}/missing.yaml", "missing.yaml"),
    C("train --policy bc --data {w}/good.zarr --out {o}/r --config {w}/bad.yaml", "not valid YAML"),
    C("train --policy bc --data {w}/good.zarr --out {o}/r --config {w}/nan.yaml", "finite"),
    C("train --resume {w}/missing_run", "missing_run"),
    C("train --resume {w}/notstore", "not a robolearn run directory"),
    C("train --resume {w}/run_trunc", "truncated"),
    C("train --data {w}/good.zarr", "needs --policy"),
    # offline / finetune
    C("offline --algo nosuch --data {w}/good.zarr", "invalid choice"),
    C("offline --algo iql --data {w}/missing.zarr --out {o}/r", "no episode store"),
    C("offline --algo iql --data {w}/ends1e9.zarr --out {o}/r", "robolearn data repair"),
    C("offline --algo iql --data {w}/corrupt_chunk.zarr --out {o}/r", "data/"),
    C("offline --algo iql", "needs --algo and --data"),
    C("finetune --checkpoint {w}/missing_ckpt --out {o}/r", "missing_ckpt"),
    C("finetune --checkpoint {w}/ckpt_trunc --out {o}/r", "truncated"),
    C("finetune --checkpoint {w}/ckpt --warmup -1 --out {o}/r", "must be >= 0"),
    C("finetune --checkpoint {w}/ckpt --retain-offline 2 --out {o}/r", "must be <= 1"),
    C("finetune --checkpoint {w}/ckpt --retain-offline nan --out {o}/r", "finite"),
    C("finetune --checkpoint {w}/ckpt --steps 0 --out {o}/r", "must be >= 1"),
    # config values (policies/<algo>.yaml + key=value overrides): robolearn.validation's rules, before any work
    # (each of these passes the config classes' own checks)
    C("offline --algo iql --data {w}/good.zarr --out {o}/r train.seed=-3", "config.train.seed must be >= 0"),
    C("offline --algo cql --data {w}/good.zarr --out {o}/r agent.hidden_dims=[256,1000000]", "limit of 65536"),
    C("offline --algo td3bc --data {w}/good.zarr --out {o}/r train.batch_size=1000000000000000", "absurdly large"),
    C("finetune --checkpoint {w}/ckpt --out {o}/r finetune.seed=-2", "config.finetune.seed must be >= 0"),
    C("finetune --algo sac --checkpoint {w}/ckpt --out {o}/r agent.hidden_dims=[256,1000000]", "limit of 65536"),
    C("finetune --checkpoint {w}/ckpt --out {o}/r finetune.batch_size=1000000000000000", "absurdly large"),
    # eval: hostile checkpoints and flags
    C("eval --checkpoint {w}/missing_ckpt", "missing_ckpt"),
    C("eval --checkpoint {w}/notstore", "checkpoint"),
    C("eval --checkpoint {w}/ckpt_trunc", "truncated"),
    C("eval --checkpoint {w}/ckpt_hash", "content_sha256"),
    C("eval --checkpoint {w}/ckpt_huge", "limit of 65536"),
    C("eval --checkpoint {w}/ckpt_shapes", "weight shapes differ"),
    C("eval --checkpoint {w}/ckpt_bigjson", "weights missing"),
    C("eval --checkpoint {w}/ckpt_nan", "content_sha256"),
    C("eval --checkpoint {w}/ckpt_badcfg", "dropout"),
    C("eval --checkpoint {w}/ckpt_negative", "must be > 0"),
    C("eval --checkpoint {w}/ckpt_v99", "format version 99"),
    C("eval --checkpoint {w}/ckpt_notjson", "not valid JSON"),
    C("eval --checkpoint {w}/ckpt_nomodel", "missing model.safetensors"),
    C("eval --checkpoint {w}/ckpt_header", "not a valid safetensors file"),
    C("eval --checkpoint {w}/ckpt_unknown", "not registered"),
    C("eval --checkpoint {w}/ckpt --episodes 0", "must be >= 1"),
    C("eval --checkpoint {w}/ckpt --num-envs 0", "must be >= 1"),
    C("eval --checkpoint {w}/ckpt --num-envs -2", "must be >= 1"),
    C("eval --checkpoint {w}/ckpt --perturb nan", "finite"),
    C("eval --checkpoint {w}/ckpt --perturb -1", ">= 0"),
    C("eval --checkpoint {w}/ckpt --seed abc", "expected an integer"),
    C("eval --checkpoint {w}/ckpt --seed -1", "must be >= 0"),
    C("eval --checkpoint {w}/ckpt --video -1", "must be >= 0"),
    C("eval --checkpoint {w}/ckpt --num-envs 1000000000", "must be <= 65536"),
    C("eval --checkpoint {w}/ckpt --action-steps 0", "must be >= 1"),
    C("eval --checkpoint {w}/ckpt --backend tpu", "invalid choice"),
    C("eval --checkpoint {w}/ckpt --task nosuch", "unknown task"),
    # intervene
    C("intervene --checkpoint {w}/ckpt_trunc --teleop scripted --episodes 1 --out {o}/i.zarr", "truncated"),
    C("intervene --checkpoint {w}/ckpt_hash --teleop scripted --episodes 1 --out {o}/i.zarr", "content_sha256"),
    C("intervene --checkpoint {w}/missing_ckpt --teleop scripted --episodes 1 --out {o}/i.zarr", "missing_ckpt"),
    C("intervene --checkpoint {w}/ckpt --teleop scripted --episodes 0 --out {o}/i.zarr", "must be >= 1"),
    C("intervene --checkpoint {w}/ckpt --teleop scripted --episodes 1 --seed -1 --out {o}/i.zarr", "must be >= 0"),
    C("intervene --checkpoint {w}/ckpt --teleop scripted --episodes 1 --perturb nan --out {o}/i.zarr", "finite"),
    C("intervene --checkpoint {w}/ckpt --teleop scripted --episodes 1 --speed 0 --out {o}/i.zarr", "must be > 0"),
    C("intervene --checkpoint {w}/ckpt --teleop scripted --episodes 1 --slowmo -1 --out {o}/i.zarr", "must be > 0"),
    C("intervene --checkpoint {w}/ckpt --teleop scripted --episodes 1 --max-operator-steps -1 --out {o}/i.zarr", "must be >= 0"),
    C("intervene --checkpoint {w}/ckpt --teleop joystick --episodes 1 --out {o}/i.zarr", "invalid choice"),
    # demo
    C("demo --episodes 0 --out {o}/d", "must be >= 1"),
    C("demo --steps -5 --out {o}/d", "must be >= 1"),
    C("demo --num-envs 1000000000 --out {o}/d", "must be <= 65536"),
    C("demo --seed -1 --out {o}/d", "must be >= 0"),
    C("demo --eval-episodes nan --out {o}/d", "expected an integer"),
    C("demo --task nosuch --out {o}/d", "unknown task"),
    # sailor
    C("sailor --base {w}/missing_ckpt --demos {w}/good.zarr --task push_cube --env-steps 10 --out {o}/s", "missing_ckpt"),
    C("sailor --base {w}/ckpt --demos {w}/good.zarr --task push_cube --env-steps 0 --out {o}/s", "must be >= 1"),
    C("sailor --base {w}/ckpt --demos {w}/good.zarr --task push_cube --env-steps 10 --perturb nan --out {o}/s", "finite"),
    C("sailor --base {w}/ckpt --demos {w}/good.zarr --task push_cube --env-steps 10 --out {o}/s agent.world_model.batch_size=1000000000000000", "absurdly large"),
    C("sailor --base {w}/ckpt --demos {w}/good.zarr --task push_cube --env-steps 10 --out {o}/s seed=-1", "config.seed must be >= 0"),
    C("sailor --base {w}/ckpt --demos {w}/good.zarr --task push_cube --env-steps 10 --out {o}/s loop.eval_episodes=-5", "must be >= 0"),
    C("sailor --base {w}/ckpt --demos {w}/good.zarr --task push_cube --env-steps 10 --perturb 3 --out {o}/s", "must be <= 1"),
    C("sailor --base {w}/ckpt_trunc --demos {w}/good.zarr --task push_cube --env-steps 10 --out {o}/s", "truncated"),
    C("sailor --base {w}/ckpt --demos {w}/ends1e9.zarr --task push_cube --env-steps 10 --out {o}/s", ""),
    C("nosuchcommand", "invalid choice"),
]


def _argv(case: Case, w: Path, o: Path) -> list[str]:
    return [part.format(w=w, o=o) for part in case.argv.split(" ")]


def _run_case(case: Case, w: Path, o: Path, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main(_argv(case, w, o))
    except SystemExit as exc:  # argparse
        rc = exc.code
    captured = capsys.readouterr()
    return int(rc), captured.out, captured.err


@pytest.mark.parametrize("case", CASES, ids=[c.argv.split(" {")[0].replace(" ", "-") + f"-{i}" for i, c in enumerate(CASES)])
def test_bad_input(case, world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a case that wrongly got going would write runs/ here, not in the repo
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = _digest(world)
    rc, out, err = _run_case(case, world, out_dir, capsys)
    assert rc == case.rc, f"exit {rc}, stderr: {err!r}, stdout: {out[-500:]!r}"
    assert "Traceback" not in err and "Traceback" not in out
    if case.rc == 2:
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("robolearn train: warning")]
        assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
        assert case.match in lines[0], f"{case.match!r} not in {lines[0]!r}"
    else:
        assert case.match in out, out
    assert _digest(world) == before, "an input changed"
    leftovers = [p.name for p in out_dir.iterdir()]
    assert not leftovers, f"a failed command left {leftovers}"


def test_suite_size():
    assert len(CASES) >= 150
    commands = {c.argv.split(" ")[0] for c in CASES}
    assert {"data", "tasks", "collect", "train", "offline", "finetune", "eval", "intervene", "demo", "sailor"} <= commands


# ------------------------------------------------------------------------------------ OS errors
def test_unwritable_output_directory(world, tmp_path, capsys):
    with unwritable(tmp_path / "ro") as ro:
        before = _digest(world)
        for argv in (
            ["data", "filter", str(world / "good.zarr"), str(ro / "f.zarr")],
            ["data", "merge", str(ro / "m.zarr"), str(world / "good.zarr")],
            ["data", "export-robomimic", str(world / "good.zarr"), str(ro / "e.hdf5")],
            ["data", "import-robomimic", str(world / "good.hdf5"), str(ro / "i.zarr")],
            ["collect", "--task", "push_cube", "--episodes", "1", "--out", str(ro / "c.zarr")],
            ["train", "--policy", "bc", "--data", str(world / "good.zarr"), "--out", str(ro / "run"), "train.steps=1"],
        ):
            capsys.readouterr()
            rc = main(argv)
            err = capsys.readouterr().err
            assert rc == 2, (argv, err)
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
            assert "ermission denied" in err or "not permitted" in err, err
        assert not list(ro.iterdir())
        assert _digest(world) == before


@pytest.fixture()
def tiny_tmpfs(tmp_path):
    """A 256 KiB tmpfs (ENOSPC after a few chunks), where this process may mount one."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_leaves_nothing(world, tiny_tmpfs, tmp_path, capsys):
    big = tmp_path / "big.zarr"
    store = EpisodeStore.create(big, {"obs/image": Feature("uint8", (32, 32, 3), "obs"), "action": Feature("float32", (2,), "action")})
    rng = np.random.default_rng(0)
    for _ in range(4):
        store.append_episode({"obs/image": rng.integers(0, 255, (60, 32, 32, 3), dtype=np.uint8),
                              "action": rng.normal(size=(60, 2)).astype(np.float32)})
    store.close()
    before = _digest(world)
    for argv in (
        ["data", "filter", str(big), str(tiny_tmpfs / "f.zarr")],
        ["data", "merge", str(tiny_tmpfs / "m.zarr"), str(big), str(big)],
        ["data", "export-robomimic", str(big), str(tiny_tmpfs / "e.hdf5")],
    ):
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, (argv, err)
        assert ("No space left on device" in err or "Errno 28" in err) and len(err.strip().splitlines()) == 1, err
        assert not list(tiny_tmpfs.iterdir()), list(tiny_tmpfs.iterdir())
    assert _digest(world) == before


def test_simulator_fatal_error_is_one_line(capsys, monkeypatch):
    """A MuJoCo FatalError (e.g. out of memory for a huge batch) is one line, exit 2."""
    import mujoco

    import robolearn.tasks.cli as tasks_cli

    def boom(args):
        raise mujoco.FatalError("mj_makeData: could not allocate memory")

    monkeypatch.setattr(tasks_cli, "run_collect", boom)
    capsys.readouterr()
    rc = main(["collect", "--task", "push_cube", "--episodes", "1", "--out", "x.zarr"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == "robolearn collect: error: simulator: mj_makeData: could not allocate memory"


# ------------------------------------------------------------------------------------ subprocesses
SUBPROCESS_CASES = [
    ("collect --task push_cube --episodes 1 --num-envs 1000000000 --out {o}/c.zarr", "must be <= 65536"),
    ("data info {w}/missing_chunk.zarr", "data/action"),
    ("train --policy bc --data {w}/good.zarr --out {w}/good2.zarr", "episode store"),
    ("eval --checkpoint {w}/ckpt_trunc", "truncated"),
    ("data export-robomimic {w}/good.zarr {w}/notstore --overwrite", "is a directory"),
]


@pytest.mark.parametrize("argv,match", SUBPROCESS_CASES, ids=[a.split(" {")[0].replace(" ", "-") for a, _ in SUBPROCESS_CASES])
def test_bad_input_console(argv, match, world, tmp_path):
    before = _digest(world)
    args = [part.format(w=world, o=tmp_path) for part in argv.split(" ")]
    proc = subprocess.run([sys.executable, "-m", "robolearn.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert _digest(world) == before
