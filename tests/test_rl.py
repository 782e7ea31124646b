"""Offline / online RL: samplers, replay, algorithms on a tiny task, WSRL warm-up, checkpoints, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch


from robolearn.data.store import EpisodeStore, Feature
from robolearn.rl.replay import discounted_to_go, transitions_from_store
from robolearn.rl.weighting import linear_value_baseline, make_sampler, minmax, transition_probs


# ----------------------------------------------------------------------------------- tiny task
class PointEnv:
    """1-D point: x' = clip(x + 0.25 a), reward 1 - |x'|, 20 steps; the optimum drives x to 0."""

    task = "point"
    obs_dim = 1
    action_dim = 1
    max_episode_steps = 20

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def reset(self, seed=None):
        self.rng = np.random.default_rng(seed)
        self.x = float(self.rng.uniform(-1, 1))
        self.t = 0
        return np.array([self.x], np.float32)

    def step(self, action):
        self.x = float(np.clip(self.x + 0.25 * float(np.clip(np.asarray(action).reshape(-1)[0], -1, 1)), -1, 1))
        self.t += 1
        return np.array([self.x], np.float32), 1.0 - abs(self.x), False, self.t >= 20, {"success": abs(self.x) < 0.05}

    def close(self):
        pass


def point_store(path: Path, episodes: int = 40, seed: int = 0) -> EpisodeStore:
    env = PointEnv()
    rng = np.random.default_rng(seed)
    store = EpisodeStore.create(path, {"obs/state": Feature("float32", (1,), "obs"), "action": Feature("float32", (1,), "action")},
                                task="point")
    for ep in range(episodes):
        obs = env.reset(seed=1000 + ep)
        rows = {"obs/state": [], "action": [], "reward": [], "done": []}
        while True:
            a = rng.uniform(-1, 1, 1).astype(np.float32)
            nxt, r, term, trunc, _ = env.step(a)
            for k, v in (("obs/state", obs), ("action", a), ("reward", r), ("done", term or trunc)):
                rows[k].append(v)
            obs = nxt
            if term or trunc:
                break
        store.append_episode({k: np.asarray(v) for k, v in rows.items()}, metadata={"terminated": False}, seed=ep)
    return store


def policy_return(act, episodes: int = 10) -> float:
    from robolearn.rl.envs import evaluate

    return float(np.mean([r["return"] for r in evaluate(act, PointEnv(), range(50_000, 50_000 + episodes))]))


@pytest.fixture(scope="module")
def point_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("point") / "point.zarr"
    point_store(path).close()
    return path


# ----------------------------------------------------------------------------------- samplers
def hand_store(path: Path) -> EpisodeStore:
    """3 episodes: lengths 3, 2, 4; rewards chosen so returns are 3, 0, 8; s0 = [0], [1], [2]."""
    store = EpisodeStore.create(path, {"obs/state": Feature("float32", (1,), "obs"), "action": Feature("float32", (1,), "action")})
    for s0, rewards, term in (([0.0], [1, 1, 1], True), ([1.0], [0, 0], True), ([2.0], [2, 2, 2, 2], False)):
        n = len(rewards)
        store.append_episode({"obs/state": np.array([[s0[0] + 0.1 * t] for t in range(n)], np.float32),
                              "action": np.zeros((n, 1), np.float32), "reward": np.array(rewards, np.float32),
                              "done": np.eye(n, dtype=bool)[-1]}, metadata={"terminated": term})
    return store


def test_replay_terminal_timeout_and_returns(tmp_path):
    trans = transitions_from_store(hand_store(tmp_path / "h.zarr"), gamma=0.5)
    # the time-limited 3rd episode loses its last step; terminated ones keep all steps
    assert len(trans) == 3 + 2 + 3
    np.testing.assert_array_equal(trans.episode, [0, 0, 0, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(trans.terminal, [0, 0, 1, 0, 1, 0, 0, 0])
    np.testing.assert_allclose(trans.next_obs[:2, 0], [0.1, 0.2], atol=1e-6)
    np.testing.assert_allclose(trans.episode_return, [3, 0, 8])
    np.testing.assert_allclose(trans.initial_obs[:, 0], [0, 1, 2])
    np.testing.assert_allclose(trans.mc_return[:3], [1.75, 1.5, 1.0])
    np.testing.assert_allclose(discounted_to_go(np.array([2, 2, 2, 2.0]), 0.5)[:3], trans.mc_return[5:])


def test_sampler_probabilities_match_formulas(tmp_path):
    trans = transitions_from_store(hand_store(tmp_path / "h.zarr"))
    ep, G, s0 = trans.episode, trans.episode_return, trans.initial_obs
    # uniform
    np.testing.assert_allclose(transition_probs("uniform", ep, G, s0), np.full(8, 1 / 8))
    # RW: w = minmax(G) = [3/8, 0, 1]; p_j ∝ exp(w_i(j) / alpha) over transitions
    alpha = 0.1
    w = np.array([3 / 8, 0.0, 1.0])
    expect = np.exp(w[ep] / alpha)
    np.testing.assert_allclose(transition_probs("rw", ep, G, s0, alpha=alpha), expect / expect.sum(), rtol=1e-10)
    # AW: A = G - V(s0), V the least-squares line through (0,3), (1,0), (2,8): slope 2.5, intercept 1.25 - 0... solve
    slope, intercept = np.polyfit([0.0, 1.0, 2.0], [3.0, 0.0, 8.0], 1)
    adv = np.array([3.0, 0.0, 8.0]) - (slope * np.array([0.0, 1.0, 2.0]) + intercept)
    np.testing.assert_allclose(linear_value_baseline(s0, G), G - adv, atol=1e-9)
    a = (adv - adv.min()) / (adv.max() - adv.min())
    expect = np.exp(a[ep] / 0.2)
    np.testing.assert_allclose(transition_probs("aw", ep, G, s0, alpha=0.2), expect / expect.sum(), rtol=1e-10)
    # top-k: int(0.34 * 3) = 1 trajectory (the best, episode 2), uniform over its 3 transitions
    np.testing.assert_allclose(transition_probs("topk", ep, G, s0, topk=0.34), [0, 0, 0, 0, 0, 1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(transition_probs("topk", ep, G, s0, topk=0.7), np.r_[[1 / 6] * 3, 0, 0, [1 / 6] * 3])
    # the sampler draws with those probabilities and resumes exactly
    p = transition_probs("rw", ep, G, s0, alpha=0.5)
    sampler = make_sampler(p, seed=3)
    counts = np.bincount(sampler.next_batch(40_000), minlength=8) / 40_000
    np.testing.assert_allclose(counts, p, atol=0.01)
    state = sampler.state_dict()
    nxt = sampler.next_batch(17)
    again = make_sampler(p, seed=3)
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.next_batch(17), nxt)
    assert np.all(minmax(np.ones(3)) == 0)
    with pytest.raises(ValueError, match="unknown sampler"):
        transition_probs("bogus", ep, G, s0)


def test_mix_ratio_and_cli_errors(tmp_path, capsys):
    from robolearn.cli import main

    good = point_store(tmp_path / "good.zarr", episodes=5, seed=1)
    bad = point_store(tmp_path / "bad.zarr", episodes=10, seed=2)
    good.close(), bad.close()
    assert main(["data", "mix", "--good", str(tmp_path / "good.zarr"), "--bad", str(tmp_path / "bad.zarr"),
                 "--ratio", "0.3", "--size", "100", "--out", str(tmp_path / "mix.zarr")]) == 0
    mix = EpisodeStore.open(tmp_path / "mix.zarr")
    info = mix.attrs["mix"]
    assert info["good_episodes"] * 20 >= 30 and (info["good_episodes"] - 1) * 20 < 30
    assert info["bad_episodes"] * 20 >= 70 and mix.num_steps == 20 * (info["good_episodes"] + info["bad_episodes"])
    capsys.readouterr()
    try:  # argparse rejects it (exit 2), or the command does
        rc = main(["data", "mix", "--good", str(tmp_path / "good.zarr"), "--bad", str(tmp_path / "bad.zarr"),
                   "--ratio", "1.5", "--out", str(tmp_path / "m2.zarr")])
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and "--ratio" in err and "1.5" in err and len(err.strip().splitlines()) == 1, err
    assert main(["offline", "--algo", "iql", "--data", str(tmp_path / "nope.zarr"), "--wandb", "off"]) == 2
    assert "no episode store" in capsys.readouterr().err
    assert main(["offline", "--algo", "iql", "--data", str(tmp_path / "mix.zarr"), "--wandb", "off", "agent.bogus=1"]) == 2
    assert "unknown key(s) bogus" in capsys.readouterr().err
    assert main(["offline", "--algo", "iql", "--data", str(tmp_path / "mix.zarr"), "--wandb", "off", "sampler.kind=best"]) == 2
    assert "sampler.kind must be one of" in capsys.readouterr().err
    assert main(["finetune", "--checkpoint", str(tmp_path / "none"), "--wandb", "off"]) == 2


def test_continual_metrics():
    from robolearn.rl.metrics import continual_metrics, running_min, wc_acc_curve, windowed_forgetting

    steps = [0, 100, 200, 300, 400]
    scores = [0.6, 0.2, 0.4, 0.8, 0.7]
    m = continual_metrics(steps, scores, window=100)
    assert m["min_acc"] == 0.2 and m["min_acc_step"] == 100 and m["final"] == 0.7
    assert m["wc_acc"] == pytest.approx(0.5 * 0.7 + 0.5 * 0.2)
    np.testing.assert_allclose(running_min(scores), [0.6, 0.2, 0.2, 0.2, 0.2])
    np.testing.assert_allclose(wc_acc_curve(scores), [0.6, 0.2, 0.3, 0.5, 0.45])
    assert windowed_forgetting(steps, scores, 100) == pytest.approx(0.4)
    assert windowed_forgetting([0, 1, 2], [0.1, 0.2, 0.3], 1000) == 0.0


# ----------------------------------------------------------------------------------- algorithms
SMALL = {"hidden_dims": [32, 32]}


def _train_offline_agent(name: str, data: Path, steps: int, **cfg_kw):
    from robolearn.rl.agent import state_stats
    from robolearn.rl.algos import algo_classes, build_agent

    torch.manual_seed(0)
    trans = transitions_from_store(EpisodeStore.open(data), gamma=0.9)
    _, cfg_cls = algo_classes(name)
    cfg = cfg_cls(**{**SMALL, "discount": 0.9, **cfg_kw})
    agent = build_agent(name, cfg, 1, 1, state_stats(trans.obs, 1))
    sampler = make_sampler(transition_probs("uniform", trans.episode, trans.episode_return), seed=0)
    for _ in range(steps):
        agent.update(trans.batch(sampler.next_batch(128)))
    return agent


@pytest.mark.parametrize("name,steps,kw", [
    ("iql", 1000, {"actor_lr": 1e-3, "critic_lr": 1e-3, "value_lr": 1e-3}),
    ("td3bc", 800, {}),
    pytest.param("cql", 1000, {"cql_n_actions": 4, "cql_alpha": 1.0}, marks=pytest.mark.slow),
    pytest.param("calql", 1000, {"cql_n_actions": 4, "cql_alpha": 1.0}, marks=pytest.mark.slow),
])
def test_offline_algorithms_improve_on_behaviour(point_data, name, steps, kw):
    data_return = EpisodeStore.open(point_data).column("return").mean()  # the random behaviour policy's
    agent = _train_offline_agent(name, point_data, steps, **kw)
    learned = policy_return(lambda o: agent.act(o))
    assert learned > data_return + 4.0, (name, learned, data_return)


@pytest.mark.slow
def test_sac_online_improves():
    from robolearn.rl.agent import state_stats
    from robolearn.rl.replay import ReplayBuffer
    from robolearn.rl.sac import SAC, SACConfig

    torch.manual_seed(0)
    env = PointEnv()
    agent = SAC(SACConfig(hidden_dims=[32, 32], num_qs=4, utd=2, discount=0.9), 1, 1, state_stats(None, 1))
    buf = ReplayBuffer(1, 1, 10_000)
    before = policy_return(lambda o: agent.act(o))
    obs = env.reset(seed=0)
    for t in range(1500):
        a = agent.act(obs, deterministic=False)
        nxt, r, term, trunc, _ = env.step(a)
        buf.add(obs, a, r, nxt, term)
        obs = env.reset(seed=t) if term or trunc else nxt
        if len(buf) >= 128:
            agent.update([buf.sample(128) for _ in range(2)])
    after = policy_return(lambda o: agent.act(o))
    assert after > before + 2.0 and after > 15.0, (before, after)


def test_online_returns_to_go_filled_when_episodes_end():
    """Cal-QL fine-tuning's online buffer: a row's Monte-Carlo return-to-go is unknown (-inf: no bound)
    while its episode runs and becomes the discounted sum of its episode's stored rewards to the end
    once `close_episodes` is called; interleaved envs (stride K), the ring's wrap-around, overwritten
    rows, device storage and the checkpoint state all keep it."""
    from robolearn.rl.replay import ReplayBuffer

    gamma, rng = 0.9, np.random.default_rng(0)
    for device in (None, "cpu"):
        buf = ReplayBuffer(1, 1, 12, device=device, returns_to_go=True)
        # two envs stepping together (stride 2): env 0 ends after 3 steps, env 1 after 5; 7 steps in all
        rewards = rng.normal(size=(7, 2)).astype(np.float32)
        for t in range(7):
            z = np.zeros((2, 1), np.float32)
            if device is None:
                buf.add_batch(z, z, rewards[t], z, np.zeros(2, bool))
            else:
                buf.add_batch(*(torch.from_numpy(x) for x in (z, z, rewards[t], z, np.zeros(2, bool))))
            ends = {2: [0], 4: [1]}.get(t, [])
            buf.close_episodes(ends, [{0: 3, 1: 5}[e] for e in ends], 2, gamma)
        mc = np.asarray(torch.as_tensor(buf.mc_return))
        # 14 rows in a ring of 12: step 0's rows (0, 1) were overwritten by step 6's
        by_step = {t: ((2 * t) % 12, (2 * t + 1) % 12) for t in range(1, 7)}
        env0 = discounted_to_go(rewards[:3, 0], gamma)
        np.testing.assert_allclose([mc[by_step[t][0]] for t in (1, 2)], env0[1:], rtol=1e-6)
        env1 = discounted_to_go(rewards[:5, 1], gamma)
        np.testing.assert_allclose([mc[by_step[t][1]] for t in (1, 2, 3, 4)], env1[1:], rtol=1e-6)
        running = [by_step[t][0] for t in (3, 4, 5, 6)] + [by_step[t][1] for t in (5, 6)]
        assert np.isneginf(mc[running]).all()
        assert buf.sample(5)["mc_return"].shape == (5,)
        tensors, meta = buf.state_dict()
        again = ReplayBuffer(1, 1, 12, device=device, returns_to_go=True)
        again.load_state_dict(tensors, meta)
        np.testing.assert_array_equal(np.asarray(torch.as_tensor(again.mc_return)), mc)
        # a checkpoint from before returns-to-go were kept loads with no bounds
        old = {k: v for k, v in tensors.items() if k != "mc_return"}
        again.load_state_dict(old, meta)
        assert np.isneginf(np.asarray(torch.as_tensor(again.mc_return))).all()
    # an episode longer than the ring keeps the returns of its newest rows
    buf = ReplayBuffer(1, 1, 4, returns_to_go=True)
    r = np.arange(1, 7, dtype=np.float32)
    for x in r:
        buf.add(np.zeros(1), np.zeros(1), x, np.zeros(1), False)
    buf.close_episodes([0], [6], 1, gamma)
    np.testing.assert_allclose(buf.mc_return[[2, 3, 0, 1]], discounted_to_go(r, gamma)[2:], rtol=1e-6)
    assert "mc_return" not in ReplayBuffer(1, 1, 4).state_dict()[0]


# ----------------------------------------------------------------------------------- offline run, resume, finetune
@pytest.fixture()
def point_env(monkeypatch):
    import robolearn.rl.envs as envs

    real = envs.make_env
    monkeypatch.setattr(envs, "make_env", lambda task, **kw: PointEnv() if task == "point" else real(task, **kw))
    monkeypatch.setattr(envs, "is_own_task", lambda task: False)


def test_offline_resume_is_exact(point_data, tmp_path, point_env):
    from robolearn.checkpoint import load_tensors
    from robolearn.rl.offline import train_offline

    ov = ["agent.hidden_dims=[16,16]", "train.batch_size=32", "train.eval_episodes=0", "train.log_every=10"]
    full = train_offline("td3bc", point_data, sampler="rw", out=tmp_path / "full", wandb_mode="off", progress=False,
                         overrides=[*ov, "train.steps=40", "train.save_every=40"])
    part = train_offline("td3bc", point_data, sampler="rw", out=tmp_path / "part", wandb_mode="off", progress=False,
                         overrides=[*ov, "train.steps=20", "train.save_every=20"])
    train_offline("td3bc", None, resume=part, wandb_mode="off", progress=False, overrides=["train.steps=40"])
    a, b = load_tensors(full / "policy", "agent"), load_tensors(part / "policy", "agent")
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    with pytest.raises(ValueError, match="already finished"):
        train_offline("td3bc", None, resume=full, wandb_mode="off", progress=False)
    # stopped after its final checkpoint, before writing policy/: resuming trains nothing and writes the outputs
    shutil.rmtree(full / "policy")
    (full / "continual.json").unlink()
    logged = (full / "metrics.jsonl").read_text()
    train_offline("td3bc", None, resume=full, wandb_mode="off", progress=False)
    assert (full / "metrics.jsonl").read_text() == logged  # no step trained, nothing logged twice
    again = load_tensors(full / "policy", "agent")
    for k in a:
        torch.testing.assert_close(a[k], again[k], msg=k)
    assert json.loads((full / "continual.json").read_text())["steps"] == 40
    # a damaged final checkpoint.json is named, not a raw JSON / int error; resuming leaves the run as it was
    from helpers_resume import file_bytes

    from robolearn.checkpoint import CheckpointError

    meta = full / "policy" / "checkpoint.json"
    assert '"step": 40,' in meta.read_text()
    for damage, msg in (("{not json", "is not valid JSON"), (meta.read_text().replace('"step": 40', '"step": "40"'), "not an integer"),
                        (meta.read_text().replace('"step": 40,', ''), "step is None, not an integer")):
        meta.write_text(damage)
        before = file_bytes(full)
        with pytest.raises(CheckpointError, match=msg):
            train_offline("td3bc", None, resume=full, wandb_mode="off", progress=False)
        assert file_bytes(full) == before


def test_wsrl_warmup_no_updates_no_offline_data(point_data, tmp_path, point_env):
    from robolearn.checkpoint import load_tensors
    from robolearn.rl.offline import train_offline
    from robolearn.rl.wsrl import finetune

    ckpt = train_offline("iql", point_data, out=tmp_path / "iql", wandb_mode="off", progress=False,
                         overrides=["agent.hidden_dims=[16,16]", "agent.num_qs=3", "train.steps=30", "train.batch_size=32",
                                    "train.eval_episodes=0"])
    ov = ["agent.utd=2", "finetune.batch_size=16", "finetune.eval_every=30", "finetune.eval_episodes=2", "finetune.log_every=10"]
    # warm-up only: no gradient update, weights untouched, buffer holds only online transitions
    run = finetune(ckpt, task="point", algo="wsrl", warmup=60, steps=60, overrides=ov, out=tmp_path / "w", wandb_mode="off", progress=False)
    summary = json.loads((run / "continual.json").read_text())
    assert summary["grad_updates"] == 0 and summary["offline_samples"] == 0 and summary["online_transitions"] == 60
    before, after = load_tensors(ckpt / "policy"), load_tensors(run / "policy")
    for k in before:
        torch.testing.assert_close(before[k], after[k])
    assert summary["metrics"]["initial"] == summary["metrics"]["final"]  # same policy, same eval seeds
    # warm-up then updates: none during warm-up, UTD per env step after, still no offline data
    run = finetune(ckpt, task="point", algo="wsrl", warmup=40, steps=70, overrides=ov, out=tmp_path / "w2", wandb_mode="off", progress=False)
    summary = json.loads((run / "continual.json").read_text())
    assert summary["warmup_grad_updates"] == 0 and summary["grad_updates"] == 2 * 30 and summary["offline_samples"] == 0
    # the 50/50 retention baseline draws half of every batch from the offline store
    run = finetune(ckpt, task="point", algo="sac", retain_offline=0.5, steps=20, overrides=ov, out=tmp_path / "r",
                   wandb_mode="off", progress=False)
    summary = json.loads((run / "continual.json").read_text())
    assert summary["warmup"] == 0 and summary["offline_samples"] == 8 * summary["grad_updates"] > 0
    assert (run / "continual.png").is_file()


def test_finetune_refuses_a_reward_transform_the_checkpoint_was_not_trained_on(point_data, tmp_path, point_env):
    """The critics of a pre-trained agent estimate returns of its reward transform: an explicit
    agent.reward_bias that differs is an error before any env step, the same value is accepted."""
    from robolearn.rl.offline import train_offline
    from robolearn.rl.wsrl import finetune

    ckpt = train_offline("iql", point_data, out=tmp_path / "iql", wandb_mode="off", progress=False,
                         overrides=["agent.hidden_dims=[16,16]", "train.steps=5", "train.batch_size=16", "train.eval_episodes=0",
                                    "agent.reward_bias=-1"])
    ov = ["finetune.batch_size=8", "finetune.eval_every=10", "finetune.eval_episodes=1", "finetune.log_every=10"]
    with pytest.raises(ValueError, match="agent.reward_bias=0.0 differs from the pre-trained agent's -1.0"):
        finetune(ckpt, task="point", algo="sac", steps=10, overrides=[*ov, "agent.reward_bias=0"], out=tmp_path / "bad",
                 wandb_mode="off", progress=False)
    assert not (tmp_path / "bad").exists()
    run = finetune(ckpt, task="point", algo="sac", steps=10, overrides=[*ov, "agent.reward_bias=-1"], out=tmp_path / "ok",
                   wandb_mode="off", progress=False)
    assert (run / "continual.json").is_file()


@pytest.mark.parametrize("algo, extra", [("wsrl", ["finetune.warmup=30"]),  # warm-up with the pre-trained policy
                                         # 50/50 retention, from scratch with a random-action warm-up
                                         ("sac", ["finetune.retain_offline=0.5", "finetune.init=scratch", "finetune.warmup=30",
                                                  "agent.hidden_dims=[16,16]", "agent.num_qs=3"]),
                                         # the conservative learner continuing online, penalty included
                                         ("calql", ["finetune.warmup=30", "finetune.retain_offline=0", "agent.cql_n_actions=2"])])
def test_finetune_resume_is_exact(point_data, tmp_path, point_env, monkeypatch, algo, extra):
    """Interrupted right after its checkpoint (mid-episode, mid-log-window) and resumed, a fine-tuning run
    reproduces the uninterrupted run: metrics, continual-evaluation history, final weights."""
    from helpers_resume import assert_same_run, interrupt_after_checkpoint
    from robolearn.rl.offline import train_offline
    from robolearn.rl.wsrl import finetune

    ckpt = train_offline("iql", point_data, out=tmp_path / "iql", wandb_mode="off", progress=False,
                         overrides=["agent.hidden_dims=[16,16]", "agent.num_qs=3", "train.steps=20", "train.batch_size=32",
                                    "train.eval_episodes=0"])
    ov = ["agent.utd=2", "finetune.batch_size=16", "finetune.eval_every=50", "finetune.eval_episodes=2", "finetune.log_every=25", *extra]
    kw = dict(task="point", algo=algo, data=point_data if "sac" == algo else None, wandb_mode="off", progress=False)
    full = finetune(ckpt, overrides=[*ov, "finetune.steps=200", "finetune.save_every=1000"], out=tmp_path / "full", **kw)
    # episodes last 20 steps: 110 is mid-episode and mid-log-window
    interrupt_after_checkpoint(monkeypatch, lambda: finetune(ckpt, overrides=[*ov, "finetune.steps=200", "finetune.save_every=110"],
                                                             out=tmp_path / "part", **kw))
    part = finetune(None, resume=tmp_path / "part", wandb_mode="off", progress=False)
    assert part == tmp_path / "part"
    with pytest.raises(ValueError, match="already finished"):
        finetune(None, resume=full, wandb_mode="off", progress=False)
    continual = assert_same_run(full, part)
    assert len(continual["history"]) == 5 and continual["online_transitions"] == 200


def test_finetune_resume_bad_input(point_data, tmp_path, capsys):
    from robolearn.cli import main
    from robolearn.rl.offline import train_offline

    off = train_offline("td3bc", point_data, out=tmp_path / "off", wandb_mode="off", progress=False,
                        overrides=["agent.hidden_dims=[8,8]", "train.steps=5", "train.batch_size=8", "train.eval_episodes=0"])
    for argv, msg in ((["finetune", "--resume", str(tmp_path / "nope")], "no such run directory"),
                      (["finetune", "--resume", str(off)], "robolearn offline run (algo 'td3bc')"),
                      (["finetune", "--resume", str(off), "--warmup", "5"], "drop --warmup"),
                      (["finetune", "--resume", str(tmp_path)], "no config.yaml / run.json"),
                      (["offline", "--resume", str(tmp_path)], "not a robolearn offline run")):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err
    # a damaged run.json is named in one line, and nothing in the run changes
    from helpers_resume import file_bytes

    for damage, msg in (('{"algo": "td3', "run.json is not valid JSON"), ('{"algo": "td3bc", "task": "point"}', "run.json lacks data")):
        (off / "run.json").write_text(damage)
        before = file_bytes(off)
        assert main(["offline", "--resume", str(off)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err
        assert file_bytes(off) == before


def test_checkpoint_evaluates_with_robolearn_eval(tmp_path, capsys):
    from robolearn.checkpoint import load_policy
    from robolearn.cli import main
    from robolearn.policies.rl_actor.modeling import RLActorPolicy

    assert main(["data", "rollout", "--task", "push_cube", "--policy", "random", "--episodes", "2", "--out", str(tmp_path / "pc.zarr")]) == 0
    store = EpisodeStore.open(tmp_path / "pc.zarr")
    assert store.num_steps == 120 and store.column("return").min() > 0  # dense task rewards stored per step
    assert main(["offline", "--algo", "td3bc", "--data", str(tmp_path / "pc.zarr"), "--out", str(tmp_path / "run"), "--wandb", "off",
                 "agent.hidden_dims=[16,16]", "train.steps=20", "train.batch_size=16", "train.eval_episodes=1"]) == 0
    policy = load_policy(tmp_path / "run" / "policy")
    assert isinstance(policy, RLActorPolicy) and policy.config.n_obs_steps == policy.config.horizon == 1
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--episodes", "2", "--num-envs", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 2 and report["task"] == "push_cube"


def test_sac_actor_maximises_the_ensemble_mean_or_its_min():
    """`agent.actor_q`: the actor's objective is the critics' mean (REDQ, default) or their min (WSRL's
    reference code); with the same draws the two losses differ by exactly mean(Q) - min(Q)."""
    from robolearn.config import ConfigError
    from robolearn.rl.agent import state_stats
    from robolearn.rl.sac import SAC, SACConfig

    losses = {}
    for kind in ("mean", "min"):
        torch.manual_seed(0)
        agent = SAC(SACConfig(hidden_dims=[8], num_qs=2, actor_q=kind), 3, 2, state_stats(None, 3))
        agent.critic.forward = lambda obs, action: torch.stack([action.sum(-1) * 0 + 1.0, action.sum(-1) * 0 + 4.0])
        torch.manual_seed(1)
        losses[kind] = agent.actor_and_temperature_step(torch.zeros(5, 3))["actor_loss"]
    assert losses["min"] - losses["mean"] == pytest.approx(2.5 - 1.0)
    with pytest.raises(ConfigError, match="actor_q"):
        SACConfig(actor_q="max")


def test_finetune_continues_the_pretrained_optimizers(point_data, tmp_path, point_env):
    """`finetune.optimizer_state=checkpoint` starts from the offline agent's Adam moments and step counts
    (critic moments tiled like the critics), keeps the fine-tuning learning rates, and needs a checkpoint
    that holds optimizers; `fresh` (default) starts new ones."""
    from robolearn.checkpoint import CheckpointError
    from robolearn.rl.algos import load_agent
    from robolearn.rl.offline import train_offline
    from robolearn.rl.wsrl import finetune

    pre = train_offline("cql", point_data, out=tmp_path / "cql", wandb_mode="off", progress=False,
                        overrides=["agent.hidden_dims=[16,16]", "agent.num_qs=2", "train.steps=12", "train.batch_size=16",
                                   "train.eval_episodes=0", "train.save_every=12"])
    last = pre / "checkpoints" / "last"
    ov = ["agent.utd=1", "agent.num_qs=3", "agent.critic_lr=0.001", "finetune.batch_size=8", "finetune.eval_every=40",
          "finetune.eval_episodes=1", "finetune.log_every=10", "finetune.save_every=30"]
    steps = {}
    for mode in ("fresh", "checkpoint"):
        run = finetune(last, task="point", algo="wsrl", warmup=20, steps=40, overrides=[*ov, f"finetune.optimizer_state={mode}"],
                       out=tmp_path / mode, wandb_mode="off", progress=False)
        ft, _ = load_agent(run / "checkpoints" / "last", with_optimizers=True)  # saved at 30: 10 updates after the warm-up
        steps[mode] = {name: int(next(iter(opt.state.values()))["step"]) for name, opt in ft.optimizers().items()}
        assert all(g["lr"] == 0.001 for g in ft.optimizers()["critic"].param_groups)
    assert steps["fresh"] == {"actor": 10, "critic": 10, "temperature": 10}
    assert steps["checkpoint"] == {"actor": 22, "critic": 22, "temperature": 22}
    # the moments themselves: member i of the fine-tuned critic starts from member i % 2 of the offline one
    from robolearn.rl.agent import state_stats
    from robolearn.rl.sac import SAC, SACConfig
    from robolearn.rl.wsrl import _carry_optimizers, _init_from

    src, _ = load_agent(last, with_optimizers=True)
    agent = SAC(SACConfig(hidden_dims=[16, 16], num_qs=3), src.obs_dim, src.action_dim, state_stats(None, 1))
    _init_from(agent, src)
    assert _carry_optimizers(agent, src) == ["actor", "critic", "temperature"]
    for p_dst, p_src in zip(agent.critic.parameters(), src.critic.parameters()):
        moments, source = agent.optimizers()["critic"].state[p_dst], src.optimizers()["critic"].state[p_src]
        torch.testing.assert_close(moments["exp_avg_sq"], source["exp_avg_sq"][[0, 1, 0]])
    for p_dst, p_src in zip(agent.actor.parameters(), src.actor.parameters()):
        torch.testing.assert_close(agent.optimizers()["actor"].state[p_dst]["exp_avg"], src.optimizers()["actor"].state[p_src]["exp_avg"])
    # a final policy holds no optimizers; from scratch there is nothing to continue
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        finetune(pre / "policy", task="point", algo="wsrl", warmup=20, steps=40, out=tmp_path / "bad",
                 overrides=[*ov, "finetune.optimizer_state=checkpoint"], wandb_mode="off", progress=False)
    with pytest.raises(ValueError, match="needs --checkpoint"):
        finetune(last, task="point", algo="wsrl", steps=40, out=tmp_path / "bad2", wandb_mode="off", progress=False,
                 overrides=[*ov, "finetune.optimizer_state=checkpoint", "finetune.init=scratch"])
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()


def test_finetune_critic_only_steps_hold_the_policy(point_data, tmp_path, point_env):
    """`finetune.critic_only=N`: for N env steps after the warm-up only the critics learn; the actor and
    the temperature stay the pre-trained ones, and the actor starts learning after them."""
    from robolearn.checkpoint import load_tensors
    from robolearn.config import ConfigError
    from robolearn.rl.offline import train_offline
    from robolearn.rl.wsrl import finetune

    pre = train_offline("cql", point_data, out=tmp_path / "cql", wandb_mode="off", progress=False,
                        overrides=["agent.hidden_dims=[16,16]", "agent.num_qs=2", "train.steps=5", "train.batch_size=16",
                                   "train.eval_episodes=0"])
    ov = ["agent.num_qs=2", "agent.utd=1", "finetune.batch_size=8", "finetune.eval_every=40", "finetune.eval_episodes=1", "finetune.log_every=10"]
    before = load_tensors(pre / "policy", "agent")
    changed = {}
    for held in (20, 10):
        run = finetune(pre / "policy", task="point", algo="wsrl", warmup=20, steps=40, overrides=[*ov, f"finetune.critic_only={held}"],
                       out=tmp_path / f"held{held}", wandb_mode="off", progress=False)
        after = load_tensors(run / "policy", "agent")
        changed[held] = {k for k in before if not torch.equal(before[k], after[k])}
        assert json.loads((run / "continual.json").read_text())["grad_updates"] == 20
    assert changed[20] and all(k.startswith(("critic.", "critic_target.")) for k in changed[20])
    assert any(k.startswith("policy.actor.") for k in changed[10]) and "log_alpha" in changed[10]
    with pytest.raises(ConfigError, match="critic_only"):
        finetune(pre / "policy", task="point", algo="wsrl", steps=40, overrides=[*ov, "finetune.critic_only=-1"],
                 out=tmp_path / "bad", wandb_mode="off", progress=False)


def test_calql_finetuning_keeps_its_penalty_online(point_data, tmp_path, point_env, capsys, monkeypatch):
    """`finetune --algo calql`: the pre-trained Cal-QL learner continues online with its conservative penalty
    (Cal-QL's and CQL's own fine-tuning), by default on 50/50 batches from the checkpoint's data, with
    Monte-Carlo bounds on both halves (online rows get theirs when their episode ends); offline and
    fine-tuning runs of the same algorithm name are told apart on --resume."""
    import yaml

    from robolearn.cli import main
    from robolearn.rl.offline import train_offline
    from robolearn.rl.wsrl import finetune

    pre = train_offline("calql", point_data, out=tmp_path / "pre", wandb_mode="off", progress=False,
                        overrides=["agent.hidden_dims=[16,16]", "agent.num_qs=2", "agent.cql_n_actions=2", "train.steps=10",
                                   "train.batch_size=16", "train.eval_episodes=0"])
    ov = ["agent.cql_n_actions=2", "finetune.batch_size=8", "finetune.eval_every=40", "finetune.eval_episodes=1", "finetune.log_every=20"]
    from robolearn.rl.cql import CQL

    seen: list[torch.Tensor] = []  # the bounds each critic update gets: offline and online halves both carry one
    real_loss = CQL.critic_loss
    monkeypatch.setattr(CQL, "critic_loss", lambda self, o, a, t, batch, n: (seen.append(batch["mc_return"]), real_loss(self, o, a, t, batch, n))[1])
    run = finetune(pre / "policy", task="point", algo="calql", steps=40, overrides=[*ov, "finetune.save_every=30"], out=tmp_path / "ft",
                   wandb_mode="off", progress=False)
    assert len(seen) == 37 and all(len(b) == 8 for b in seen)  # an update per step once 4 online rows exist
    assert all(torch.isfinite(b[4:]).all() for b in seen)  # offline rows
    assert torch.isinf(seen[0][:4]).all() and torch.isfinite(seen[-1][:4]).any()  # online rows: bounded once their episode ended
    # the checkpoint at step 30: the first 20-step episode's rows hold its returns-to-go, the running one's -inf
    from robolearn.checkpoint import load_tensors

    replay = load_tensors(run / "checkpoints" / "last", "replay")
    np.testing.assert_allclose(replay["mc_return"][:20].numpy(), discounted_to_go(replay["reward"][:20].numpy(), 0.99), rtol=1e-5)
    assert torch.isneginf(replay["mc_return"][20:30]).all()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["cql_penalty"] > 0 for r in logged if "td_loss" in r) and any("td_loss" in r for r in logged)
    assert all(0 <= r[k] <= 1 for r in logged if "td_loss" in r for k in ("calql_bound_rate", "calql_bound_rate_next"))
    summary = json.loads((run / "continual.json").read_text())
    assert summary["warmup"] == 0 and summary["offline_samples"] == 4 * summary["grad_updates"] > 0
    assert yaml.safe_load((run / "config.yaml").read_text())["agent"]["calql"] is True
    wsrl = finetune(pre / "policy", task="point", algo="wsrl", warmup=0, steps=20, overrides=ov[1:], out=tmp_path / "w",
                    wandb_mode="off", progress=False)
    assert not any("cql_penalty" in json.loads(line) for line in (wsrl / "metrics.jsonl").read_text().splitlines())
    for argv, msg in ((["finetune", "--resume", str(pre)], "robolearn offline run (algo 'calql')"),
                      (["offline", "--resume", str(run)], "robolearn finetune run (algo 'calql')")):
        capsys.readouterr()
        assert main(argv) == 2
        assert msg in capsys.readouterr().err
