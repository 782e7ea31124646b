"""Behaviour retrieval: the VAE, the three methods on separable behaviours, S-DTW, and the CLI round trip."""

from __future__ import annotations

import json
import numpy as np
import pytest

from robolearn.data.mixtures import mixture_weights
from robolearn.data.store import EpisodeStore, Feature
from robolearn.retrieval import RetrievalConfig, RetrievalError, retrieve
from robolearn.retrieval.core import check_compatible
from robolearn.retrieval.dtw import subsequence_dtw
from robolearn.retrieval.vae import TransitionVAE, train_vae

FEATS = {"obs/state": Feature("float32", (4,), "obs"), "action": Feature("float32", (2,), "action")}


def _episode(kind: str, rng: np.random.Generator, length: int = 20) -> dict[str, np.ndarray]:
    """'a': the point moves along +x from the left half, action (1, 0); 'b': along +y from the right
    half, action (0, 1). Each with small noise; state = (x, y, vx, vy)."""
    t = np.arange(length, dtype=np.float32) / length
    start = rng.uniform(-0.1, 0.1, 2) + (np.array([-1.0, 0.0]) if kind == "a" else np.array([1.0, -0.5]))
    d = np.array([1.0, 0.0]) if kind == "a" else np.array([0.0, 1.0])
    pos = start[None] + t[:, None] * d[None] * 0.8
    vel = np.repeat(d[None], length, 0)
    state = np.concatenate([pos, vel], 1) + rng.normal(0, 0.01, (length, 4))
    action = np.repeat(d[None], length, 0) + rng.normal(0, 0.05, (length, 2))
    return {"obs/state": state.astype(np.float32), "action": action.astype(np.float32)}


def _stores(tmp_path, n_a: int = 20, n_b: int = 20, n_target: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    prior = EpisodeStore.create(tmp_path / "prior.zarr", FEATS, task="toy")
    kinds = ["a"] * n_a + ["b"] * n_b
    rng.shuffle(kinds)
    for k in kinds:
        prior.append_episode(_episode(k, rng), metadata={"behavior": k})
    target = EpisodeStore.create(tmp_path / "target.zarr", FEATS, task="toy")
    for _ in range(n_target):
        target.append_episode(_episode("a", rng), success=True)
    labels = np.repeat(np.asarray(kinds), 20)
    prior.close()
    target.close()
    return EpisodeStore.open(tmp_path / "prior.zarr"), EpisodeStore.open(tmp_path / "target.zarr"), labels


def test_vae_reconstruction_improves_on_a_toy_store(tmp_path):
    prior, _, _ = _stores(tmp_path)
    x = np.concatenate([prior.read("obs/state"), prior.read("action")], 1)
    x = (x - x.mean(0)) / x.std(0)
    import torch

    torch.manual_seed(0)
    before = TransitionVAE(x.shape[1], 4, (64, 64)).reconstruction_error(x.astype(np.float32))
    vae, history = train_vae(x.astype(np.float32), latent_dim=4, hidden_dims=(64, 64), epochs=80, batch_size=64,
                             seed=0, progress=False)
    after = vae.reconstruction_error(x.astype(np.float32))
    assert history[-1] < 0.5 * history[0]
    assert after < 0.3 * before, (before, after)


@pytest.mark.parametrize("method", ["br", "strap", "importance"])
def test_each_method_retrieves_the_target_behaviour(tmp_path, method):
    prior, target, labels = _stores(tmp_path)
    cfg = RetrievalConfig(method=method, fraction=0.4, vae_epochs=100, latent_dim=4, hidden_dims=[64, 64],
                          vae_batch_size=64, segment_len=8, progress=False)
    res = retrieve(prior, target, cfg)
    precision = (labels[res.mask] == "a").mean()
    assert res.mask.sum() >= 0.35 * prior.num_steps
    assert precision >= 0.9, (method, precision)
    assert res.scores.shape == (prior.num_steps,) and np.isfinite(res.scores).all()


def test_strap_top_k_and_state_features(tmp_path):
    prior, target, labels = _stores(tmp_path)
    res = retrieve(prior, target, RetrievalConfig(method="strap", top_k=5, strap_features="state", segment_len=10, progress=False))
    # 3 demos x 2 sub-trajectories, 5 whole-segment matches each, all from behaviour a
    assert (labels[res.mask] == "a").mean() >= 0.9
    assert 0 < res.mask.sum() <= 3 * 2 * 5 * 19


def test_dtw_finds_a_planted_subtrajectory():
    rng = np.random.default_rng(1)
    lengths = [50, 60, 40, 70]
    series = np.cumsum(rng.normal(0, 1, (sum(lengths), 3)), 0)
    ends = np.cumsum(lengths)
    query = np.cumsum(rng.normal(0, 1, (12, 3)), 0) + 40.0
    # plant a time-warped copy (frames 3-5 repeated, i.e. slower there) into episode 2 at offset 10
    warped = np.concatenate([query[:3], np.repeat(query[3:6], 2, 0), query[6:]])
    lo = ends[1] + 10
    series[lo : lo + len(warped)] = warped
    m = subsequence_dtw(query, series, ends)
    assert int(np.argmin(m["cost"])) == 2
    assert m["start"][2] == lo and m["end"][2] == lo + len(warped) - 1
    assert m["cost"][2] < 1e-9
    # a match never crosses an episode boundary
    ep = np.repeat(np.arange(len(ends)), lengths)
    assert all(ep[s] == ep[e] == i for i, (s, e) in enumerate(zip(m["start"], m["end"])))


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run(capsys):
    """`robolearn ...` in this process (the console entry point's main; saves re-importing torch)."""
    from robolearn.cli import main

    def call(*args) -> Result:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        out = capsys.readouterr()
        return Result(code or 0, out.out, out.err)

    return call


def test_data_retrieve_round_trip_info_and_train(tmp_path, run):
    prior, target, labels = _stores(tmp_path, n_a=6, n_b=6, n_target=2)
    out = tmp_path / "ret.zarr"
    res = run("data", "retrieve", "--prior", prior.path, "--target", target.path, "--method", "br", "--fraction", "0.4",
              "--vae-epochs", "30", "--out", out)
    assert res.returncode == 0, res.stderr
    info = json.loads(run("data", "info", out, "--json").stdout)
    assert info["episodes"] == 14 and info["masks"]["retrieval_target"] == 2 and info["masks"]["retrieval_prior"] == 12
    assert {"retrieved", "retrieval_score", "retrieval_weight"} <= set(info["features"])
    assert "retrieval: method br" in info["retrieval"]
    assert "retrieval: method br" in run("data", "info", out).stdout
    store = EpisodeStore.open(out)
    retrieved, weight = store.read("retrieved"), store.read("retrieval_weight")
    n_t = 40
    assert not retrieved[:n_t].any() and retrieved[n_t:].sum() == round(0.4 * prior.num_steps)
    assert np.isnan(store.read("retrieval_score")[:n_t]).all()
    # half of the sampling mass on the target, half on the retrieved steps, none elsewhere
    assert weight[:n_t].sum() == pytest.approx(weight[n_t:].sum(), rel=1e-5)
    assert (weight[n_t:][~retrieved[n_t:]] == 0).all() and (weight[n_t:][retrieved[n_t:]] > 0).all()
    mix = mixture_weights(store, "retrieval", np.flatnonzero(store.mask("train")))
    assert np.allclose(mix.sampling, weight)
    # the stored mask is what the prior's episodes got, in order
    assert np.array_equal(store.read("obs/state")[n_t:], prior.read("obs/state"))
    res = run("train", "--policy", "bc", "--data", out, "--out", tmp_path / "run", "--wandb", "off", "train.steps=20",
              "train.batch_size=16", "data.mix=retrieval", "policy.hidden_dims=[32,32]")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "run" / "policy").is_dir()
    # an existing output is refused, fast and in one line
    res = run("data", "retrieve", "--prior", prior.path, "--target", target.path, "--method", "br", "--out", out)
    assert res.returncode == 2 and "already exists" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_incompatible_stores_are_one_line_errors(tmp_path, run):
    prior, target, _ = _stores(tmp_path, n_a=2, n_b=2, n_target=1)
    other = EpisodeStore.create(tmp_path / "other.zarr", {"obs/state": Feature("float32", (4,), "obs"),
                                                          "action": Feature("float32", (3,), "action")}, task="toy")
    other.append_episode({"obs/state": np.zeros((5, 4), np.float32), "action": np.zeros((5, 3), np.float32)})
    other.close()
    res = run("data", "retrieve", "--prior", prior.path, "--target", tmp_path / "other.zarr", "--method", "br",
              "--out", tmp_path / "x.zarr")
    assert res.returncode == 2 and "action shapes differ" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.zarr").exists()
    no_action = EpisodeStore.create(tmp_path / "noact.zarr", {"obs/state": Feature("float32", (4,), "obs"),
                                                              "command": Feature("float32", (2,), "action")}, task="toy")
    with pytest.raises(RetrievalError, match="no actions"):
        check_compatible(prior, no_action)
    layout = EpisodeStore.create(tmp_path / "layout.zarr", FEATS, task="toy", env_kwargs={"obs_relative": True})
    layout.append_episode(_episode("a", np.random.default_rng(0)))
    plain = EpisodeStore.create(tmp_path / "plain.zarr", FEATS, task="toy", env_kwargs={"obs_relative": False})
    plain.append_episode(_episode("a", np.random.default_rng(0)))
    with pytest.raises(RetrievalError, match="obs_relative"):
        check_compatible(layout, plain)
    with pytest.raises(RetrievalError, match="one of"):
        RetrievalConfig(method="br", fraction=0.1, top_k=3)
