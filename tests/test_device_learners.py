"""Online learners on the device vector env (MuJoCo Warp on Warp's CPU device): `robolearn
finetune --backend warp-cpu --num-envs K` and SAILOR's collector with `backend="warp-cpu"`, each
against its host counterpart (MuJoCo C) on the same seeds and action draws.

Kernels come from Warp's kernel cache (~/.cache/warp/<version>); a cold cache adds ~1-2 min.
`ROBOLEARN_TEST_DEVICE_BACKEND=gpu` runs the same tests on CUDA (scripts/gpu_checks.sh does).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from robolearn.checkpoint import load_tensors
from robolearn.rl.replay import discounted_to_go

try:
    import mujoco_warp  # noqa: F401
    import warp  # noqa: F401

    HAVE_WARP = True
except ImportError:
    HAVE_WARP = False

pytestmark = pytest.mark.skipif(not HAVE_WARP, reason="MuJoCo Warp not installed (extra 'gpu')")
DEVICE = os.environ.get("ROBOLEARN_TEST_DEVICE_BACKEND", "warp-cpu")  # the device backend under test

K = 3  # envs
ITERS = 62  # loop steps in the checkpoint: every env passes push_cube's 60-step horizon once


def _finetune(tmp_path, backend: str, name: str):
    from robolearn.rl.wsrl import finetune

    # from scratch: a random-action warm-up over the whole run (the actions are the generator's draws,
    # independent of the observations, so host and device get the same ones), a few SAC updates at the end
    ov = ["finetune.init=scratch", "agent.hidden_dims=[16,16]", "agent.num_qs=2", "agent.utd=1", "finetune.batch_size=8",
          f"finetune.warmup={K * (ITERS + 1)}", "finetune.eval_episodes=0", f"finetune.log_every={K * 16}",
          f"finetune.save_every={K * ITERS}", "finetune.buffer_capacity=1000"]
    return finetune(None, task="push_cube", algo="sac", steps=K * (ITERS + 2), overrides=ov, out=tmp_path / name,
                    wandb_mode="off", progress=False, backend=backend, num_envs=K)


@pytest.fixture(scope="module")
def finetune_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    return {b: _finetune(root, b, b) for b in (DEVICE, "cpu")}


def test_finetune_on_device_stores_k_transitions_per_step_with_timeouts(finetune_runs):
    """K envs x N loop steps = K*N transitions; each env's rows chain (s' of step i is s of step
    i+1) except at its time limit (step 60): there s' is the episode's true last state, not the
    next episode's first, and the transition is not terminal (a time limit is bootstrapped)."""
    run = finetune_runs[DEVICE]
    summary = json.loads((run / "continual.json").read_text())
    assert summary["online_transitions"] == K * (ITERS + 2)
    assert summary["grad_updates"] == K * 1  # the last loop step is past the warm-up: K x utd updates
    cfg = (run / "config.yaml").read_text()
    assert f"backend: {DEVICE}" in cfg and f"num_envs: {K}" in cfg
    replay = load_tensors(run / "checkpoints" / "last", "replay")
    obs, nxt, term = replay["obs"].numpy(), replay["next_obs"].numpy(), replay["terminal"].numpy()
    assert len(obs) == K * ITERS
    assert not term.any()  # random pushes never reach the goal in 62 steps
    horizon = 60
    for e in range(K):
        o, n = obs[e::K], nxt[e::K]  # env e's rows, in step order
        chained = np.all(n[:-1] == o[1:], axis=1)
        assert np.flatnonzero(~chained).tolist() == [horizon - 1], e
        # the timeout's s' continues the episode (a small move), the next row starts a new one
        assert np.abs(n[horizon - 1] - o[horizon - 1]).max() < np.abs(o[horizon] - o[horizon - 1]).max()
    assert (run / "policy" / "checkpoint.json").is_file()


def test_finetune_device_transitions_replayed_on_mujoco_c(finetune_runs):
    """The device run's actions, replayed on K MuJoCo C envs with the same episode seeds through the
    same engine and ReplayHook, give the same transitions: episode boundaries, terminal flags, and
    states / rewards within float32 physics tolerance for the whole 62-step segment (any device)."""
    from robolearn.rl.replay import ReplayBuffer
    from robolearn.rl.vector import ReplayHook
    from robolearn.tasks.rollout import FunctionActor, persistent_rollout
    from robolearn.tasks.sim import TaskSim

    dev = load_tensors(finetune_runs[DEVICE] / "checkpoints" / "last", "replay")
    actions = iter(dev["action"].numpy().reshape(ITERS, K, -1))
    sim = TaskSim("push_cube", num_envs=K)
    buffer = ReplayBuffer(sim.obs_dim, sim.action_dim, 1000)
    seeds = iter(range(10_000))  # finetune.seed=0: episode k has seed k (env_seed)
    engine = persistent_rollout(sim, FunctionActor(lambda s: next(actions)), lambda: next(seeds),
                                [ReplayHook(buffer, 1.0, 0.0)])  # sac.yaml: reward scale 1, bias 0
    engine.run(max_steps=ITERS)
    engine.close()
    assert len(buffer) == len(dev["obs"])
    n = len(buffer)
    np.testing.assert_array_equal(buffer.terminal[:n], dev["terminal"].numpy())
    for k in ("obs", "next_obs", "reward"):
        np.testing.assert_allclose(getattr(buffer, k)[:n], dev[k].numpy(), rtol=0, atol=5e-4, err_msg=k)


@pytest.mark.skipif(DEVICE != "warp-cpu", reason="compares action draws: the same generator only on a CPU device")
def test_finetune_device_replay_matches_host_vector_env(finetune_runs):
    """The same K envs on MuJoCo C (finetune.num_envs=K, host vector path) and MuJoCo Warp: same
    actions (same generator stream), the same episode boundaries, and states / rewards within
    float32 physics tolerance for the whole 62-step segment."""
    dev = load_tensors(finetune_runs[DEVICE] / "checkpoints" / "last", "replay")
    host = load_tensors(finetune_runs["cpu"] / "checkpoints" / "last", "replay")
    assert set(dev) == set(host)
    torch.testing.assert_close(dev["action"], host["action"], rtol=0, atol=0)
    torch.testing.assert_close(dev["terminal"], host["terminal"], rtol=0, atol=0)
    torch.testing.assert_close(dev["obs"], host["obs"], rtol=0, atol=5e-4)
    torch.testing.assert_close(dev["next_obs"], host["next_obs"], rtol=0, atol=5e-4)
    torch.testing.assert_close(dev["reward"], host["reward"], rtol=0, atol=5e-4)


def test_finetune_device_cli_and_resume(tmp_path, capsys):
    """`robolearn finetune --backend warp-cpu --num-envs 2` from the command line; `--resume --steps N`
    continues it from checkpoints/last with the restored replay (fresh episodes in every env)."""
    from robolearn.cli import main

    out = tmp_path / "cli"
    args = ["finetune", "--task", "push_cube", "--algo", "sac", "--backend", DEVICE, "--num-envs", "2", "--steps", "12",
            "--out", str(out), "--wandb", "off", "--json", "finetune.init=scratch", "finetune.eval_episodes=2",
            "finetune.eval_num_envs=2", "finetune.eval_every=8",
            "agent.hidden_dims=[8,8]", "agent.num_qs=2", "agent.utd=1", "finetune.batch_size=4", "finetune.warmup=6",
            "finetune.save_every=8", "finetune.log_every=4"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["online_transitions"] == 12 and summary["grad_updates"] == 6  # steps 6..11: 3 loop steps x 2 envs x utd 1
    assert [h["step"] for h in summary["history"]] == [0, 8, 12]  # evaluated on warp-cpu too
    assert all(len(h["per_seed_return"]) == 2 for h in summary["history"])
    state = json.loads((out / "checkpoints" / "last" / "checkpoint.json").read_text())
    assert state["step"] == 8
    assert main(["finetune", "--resume", str(out), "--steps", "16", "--wandb", "off", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["online_transitions"] == 16  # 8 restored from the checkpoint + 4 loop steps x 2 envs
    assert summary["grad_updates"] == 2 + 8  # 1 loop step (6..7) before the checkpoint, 4 after it
    assert [h["step"] for h in summary["history"]] == [0, 8, 16]


def _expert_replay(backend: str, num_envs: int, steps: int):
    """push_cube's scripted expert (no noise) through the finetune loop's engine pieces
    (persistent_rollout + ReplayHook) into a replay buffer: episodes that terminate on success."""
    from robolearn.rl.replay import ReplayBuffer
    from robolearn.rl.vector import ReplayHook
    from robolearn.tasks.registry import expert_class
    from robolearn.tasks.rollout import ExpertActor, persistent_rollout

    if backend == "cpu":
        from robolearn.tasks.sim import TaskSim

        sim = TaskSim("push_cube", num_envs=num_envs)
        actor = ExpertActor(expert_class("push_cube")(sim.task, num_envs, noise=0.0, seed=0), sim)
        buffer = ReplayBuffer(sim.obs_dim, sim.action_dim, 1000, returns_to_go=True)
    else:
        from robolearn.tasks.device_collect import DeviceExpertActor
        from robolearn.tasks.device_env import DeviceVectorEnv

        sim = DeviceVectorEnv("push_cube", num_envs, backend=backend, final_obs=True)
        actor = DeviceExpertActor(expert_class("push_cube")(sim.task, num_envs, noise=0.0, seed=0), sim)
        buffer = ReplayBuffer(sim.obs_dim, sim.action_dim, 1000, device=sim.device, returns_to_go=True)
    seeds = iter(range(100, 10_000))
    hook = ReplayHook(buffer, reward_scale=2.0, reward_bias=-1.0, discount=0.9)
    engine = persistent_rollout(sim, actor, lambda: next(seeds), [hook], refill_every=4)
    engine.run(max_steps=steps)
    returns = hook.take_returns()
    engine.close()
    keys = ("obs", "next_obs", "action", "reward", "terminal", "mc_return")
    return {k: np.asarray(torch.as_tensor(getattr(buffer, k)[: len(buffer)]).cpu()) for k in keys}, returns


def test_device_replay_terminations_match_host():
    """Episodes that end in success: the transition is terminal, its s' is the episode's last state
    (not the next episode's first), its reward the success reward (scaled: 2 * 1 - 1); MuJoCo Warp
    and MuJoCo C end the same episodes at the same steps, with the same finished-episode returns;
    each finished episode's rows get their Monte-Carlo returns-to-go (Cal-QL's bounds)."""
    n, steps = 3, 40
    dev, dev_ret = _expert_replay(DEVICE, n, steps)
    host, host_ret = _expert_replay("cpu", n, steps)
    assert len(dev["reward"]) == n * steps
    term = dev["terminal"].reshape(steps, n)
    assert term.sum() >= n  # every env's first episode succeeds within 40 steps
    np.testing.assert_array_equal(dev["terminal"], host["terminal"])
    np.testing.assert_allclose(dev["reward"][dev["terminal"]], 1.0)
    for e in range(n):
        o, nx = dev["obs"][e::n], dev["next_obs"][e::n]
        ends = np.flatnonzero(term[:, e])
        chained = np.all(nx[:-1] == o[1:], axis=1)
        assert np.flatnonzero(~chained).tolist() == [i for i in ends.tolist() if i < steps - 1], e
    # states are not compared here: float32 physics flips one of push_cube's expert decisions in
    # one env after ~10 steps (the same episodes still end at the same steps); the random-action
    # finetune test above compares states
    np.testing.assert_allclose(dev["action"][:n], host["action"][:n], atol=1e-4)  # first step: same states, same expert
    assert dev_ret[1] == host_ret[1] == term.sum()
    for replay, (total, _) in ((dev, dev_ret), (host, host_ret)):  # finished returns: raw rewards up to each env's last end
        raw = (replay["reward"].reshape(steps, n) + 1.0) / 2.0
        ends = replay["terminal"].reshape(steps, n)
        expect = sum(raw[: np.flatnonzero(ends[:, e]).max() + 1, e].sum() for e in range(n))
        assert total == pytest.approx(expect, abs=1e-4)
        # Cal-QL's returns-to-go, filled per env when its episodes end; the running episodes' rows hold -inf
        rewards, mc = replay["reward"].reshape(steps, n), replay["mc_return"].reshape(steps, n)
        for e in range(n):
            start = 0
            for end in np.flatnonzero(ends[:, e]).tolist():
                np.testing.assert_allclose(mc[start:end + 1, e], discounted_to_go(rewards[start:end + 1, e], 0.9), rtol=1e-5)
                start = end + 1
            assert np.isneginf(mc[start:, e]).all()


def test_endless_episode_ring_gives_every_episode_its_seed():
    """The device env's endless source at its fastest turnover (every env ends an episode every
    step, the ring topped up every 2 steps): every episode starts from the initial state of its
    own seed (as TaskSim.reset(seeds=) samples it on the host), seeds in the order handed out."""
    from robolearn.tasks.device_env import DeviceVectorEnv
    from robolearn.tasks.rollout import DeviceBatch, EndlessSeeds
    from robolearn.tasks.sim import TaskSim

    n, steps = 3, 9
    env = DeviceVectorEnv("push_cube", n, backend=DEVICE, max_episode_steps=1)
    counter = iter(range(500, 10_000, 7))
    batch = DeviceBatch(env, EndlessSeeds(lambda: next(counter)), refill_every=2)
    host = TaskSim("push_cube", num_envs=1)
    try:
        obs = batch.start()["state"]
        seen = []
        for _ in range(steps):
            for e in range(n):
                k = int(env.slot_episode[e])
                seen.append(k)
                want = host.reset(seeds=[env.episode_seeds[k]])["state"][0]
                np.testing.assert_allclose(obs[e].cpu().numpy(), want, atol=1e-5, err_msg=f"episode {k}")
            step = batch.step(torch.zeros(n, env.action_dim))
            assert bool(step.done.all())  # one-step episodes
            obs = step.obs["state"]
        assert seen == list(range(n * steps))
        assert env.episode_seeds[: n * steps] == list(range(500, 500 + 7 * n * steps, 7))
    finally:
        batch.close()
        host.close()


def test_gpu_backend_without_cuda_is_a_one_line_error(tmp_path, capsys):
    from robolearn.cli import main
    from robolearn.tasks.warp_backend import cuda_available

    if cuda_available():
        pytest.skip("this machine has CUDA")
    assert main(["finetune", "--task", "push_cube", "--algo", "sac", "--backend", "gpu", "--out", str(tmp_path / "f"),
                 "--wandb", "off", "finetune.init=scratch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "needs a CUDA device" in err and not (tmp_path / "f").exists()


@pytest.mark.parametrize("algo", ["sac", "calql"])
def test_finetune_host_vector_resume_is_exact(tmp_path, monkeypatch, algo):
    """`finetune.num_envs=2` on MuJoCo C, interrupted right after its checkpoint (mid-episode in both
    envs, mid-log-window) and resumed, reproduces the uninterrupted run: metrics (incl. the finished
    episodes' mean return), continual-evaluation history, final weights; for Cal-QL also the online
    rows' returns-to-go of the episodes running at the checkpoint."""
    from helpers_resume import assert_same_run, interrupt_after_checkpoint
    from robolearn.rl.wsrl import finetune

    ov = ["finetune.init=scratch", "agent.hidden_dims=[16,16]", "agent.num_qs=2", "agent.utd=1", "finetune.batch_size=8",
          "finetune.warmup=40", "finetune.eval_episodes=2", "finetune.eval_num_envs=2", "finetune.eval_every=60",
          "finetune.log_every=30", "finetune.steps=140"]
    if algo == "calql":
        ov += ["finetune.retain_offline=0", "agent.cql_n_actions=2"]
    kw = dict(task="push_cube", algo=algo, wandb_mode="off", progress=False, num_envs=2)
    full = finetune(None, overrides=[*ov, "finetune.save_every=1000"], out=tmp_path / "full", **kw)
    # step 80: 40 steps into both envs' first 60-step episodes
    interrupt_after_checkpoint(monkeypatch, lambda: finetune(None, overrides=[*ov, "finetune.save_every=80"],
                                                             out=tmp_path / "part", **kw))
    part = finetune(None, resume=tmp_path / "part", wandb_mode="off", progress=False)
    assert "train_episode_return" in (full / "metrics.jsonl").read_text()  # episodes finished after the resume
    assert assert_same_run(full, part)["online_transitions"] == 140


def test_finetune_vector_path_refuses_gym_tasks(tmp_path):
    from robolearn.rl.wsrl import finetune

    with pytest.raises(ValueError, match="gymnasium"):
        finetune(None, task="gym:Pendulum-v1", algo="sac", steps=4, overrides=["finetune.init=scratch"], out=tmp_path / "g",
                 wandb_mode="off", progress=False, num_envs=2)


def test_replay_buffer_on_device_matches_host_buffer():
    """add_batch on a device buffer and on a host buffer (and K single adds) keep the same rows,
    wrap-around and samples; the checkpoint state round-trips."""
    from robolearn.rl.replay import ReplayBuffer

    rng = np.random.default_rng(0)
    host, dev, single = (ReplayBuffer(3, 2, 10, seed=1, device=d) for d in (None, "cpu", None))
    for k in (4, 4, 5, 13):
        o, a, r = rng.normal(size=(k, 3)).astype(np.float32), rng.normal(size=(k, 2)).astype(np.float32), rng.normal(size=k)
        n, t = rng.normal(size=(k, 3)).astype(np.float32), rng.random(k) < 0.3
        host.add_batch(o, a, r.astype(np.float32), n, t)
        dev.add_batch(torch.from_numpy(o), torch.from_numpy(a), torch.from_numpy(r), torch.from_numpy(n), torch.from_numpy(t))
        for j in range(k):
            single.add(o[j], a[j], r[j], n[j], t[j])
    for b in (host, dev):
        assert (b.size, b.pos, b.added) == (single.size, single.pos, single.added)
    for name in ("obs", "next_obs", "action", "reward", "terminal"):
        np.testing.assert_array_equal(np.asarray(getattr(dev, name)), getattr(single, name))
        np.testing.assert_array_equal(getattr(host, name), getattr(single, name))
    x, y = host.sample(6), dev.sample(6)
    for name in x:
        torch.testing.assert_close(x[name], y[name])
    tensors, meta = dev.state_dict()
    again = ReplayBuffer(3, 2, 10, device="cpu")
    again.load_state_dict(tensors, meta)
    torch.testing.assert_close(again.sample(6), dev.sample(6))


# ----------------------------------------------------------------------------------- SAILOR
TINY = [
    "agent.world_model.deter=32", "agent.world_model.stoch=4", "agent.world_model.classes=4", "agent.world_model.hidden=32",
    "agent.world_model.units=32", "agent.world_model.batch_size=8", "agent.world_model.batch_length=8",
    "agent.reward.units=32", "agent.critic.units=32", "agent.critic.num_models=3", "agent.planner.horizon=6",
    "agent.critic.imag_horizon=5", "loop.num_envs=2", "loop.max_episode_steps=9", "loop.eval_episodes=0",
    "loop.holdout_demo_fraction=0", "loop.data_collect_noise_std=0.1",
]


@pytest.fixture(scope="module")
def sailor_base(tmp_path_factory):
    from helpers_data import make_sailor_base

    return make_sailor_base(tmp_path_factory.mktemp("sailor_dev"), "push_cube", episodes=4, num_envs=2, steps=4,
                            batch_size=8, warmup=1)


def _sailor_collect(root, backend: str):
    from robolearn.data.store import EpisodeStore
    from robolearn.sailor.configuration import load_sailor_config
    from robolearn.sailor.loop import SailorTrainer

    cfg = load_sailor_config(None, TINY + ["device=cpu"])
    out = root / f"run_{backend}"
    trainer = SailorTrainer(cfg, root / "dp", root / "demos.zarr", "push_cube", 100, out, wandb_mode="off",
                            progress=False, backend=backend)
    m = trainer.collect(40, "noisy_base")  # 20 steps per env: two 9-step episodes each, a third one running
    trainer.agent.planner_ready.fill_(True)  # the planner's path on the device too (untrained: it keeps the base plan)
    planned = trainer.collect(8, "planner")  # 4 more steps per env: the third episodes reach 6 steps
    m.update({k: planned[k] for k in ("collect_steps", "planner_decisions", "planner_accept_frac")})
    pending = trainer._pending_episodes()
    cut = trainer.close_collector()
    trainer.replay_store.close()
    return m, pending, cut, trainer, EpisodeStore.open(out / "replay.zarr")


def test_sailor_device_collector_writes_the_host_collectors_records(sailor_base):
    """SAILOR's collector on MuJoCo Warp produces the replay the host one does: the same episodes
    (order, lengths, seeds, success, collector, metadata incl. env_step), the same per-step columns
    and dtypes, the same chunk offsets / labels, and states, actions and base chunks within float32
    tolerance; the planner (forced ready) decides at the same steps; the unfinished episodes are
    pending for training, then committed as cut ones."""
    mh, ph, ch, th, host = _sailor_collect(sailor_base, "cpu")
    md, pd, cd, td, dev = _sailor_collect(sailor_base, DEVICE)
    assert mh == md
    assert mh["collect_steps"] == 8 and mh["collect_episodes"] == 4 and mh["planner_decisions"] == 2
    assert ch == cd == 2 and [len(e.action) for e in ph] == [len(e.action) for e in pd] == [6, 6]
    assert td.env_step == th.env_step == 48
    assert set(host.features) == set(dev.features)
    for k in host.features:
        assert (host.features[k].shape, host.features[k].dtype) == (dev.features[k].shape, dev.features[k].dtype), k
    np.testing.assert_array_equal(host.episode_lengths, dev.episode_lengths)
    assert host.num_episodes == 6
    a, b = host.episode_table(), dev.episode_table()
    for col in ("seed", "success", "collector"):
        np.testing.assert_array_equal(a[col], b[col])
    for i in range(host.num_episodes):
        assert host.episode_metadata(i) == dev.episode_metadata(i)
        ea, eb = host.get_episode(i), dev.get_episode(i)
        for k in ("chunk_offset", "done", "stage", "failure_event", "source"):
            np.testing.assert_array_equal(ea[k], eb[k], err_msg=k)
        for k in ("obs/state", "action", "base_action", "residual", "reward"):
            np.testing.assert_allclose(ea[k], eb[k], atol=5e-3, err_msg=k)
    # the in-memory replay the models train on holds the same episodes
    assert [len(e.action) for e in th.replay.episodes] == [len(e.action) for e in td.replay.episodes]


def test_sailor_device_checkpoint_resumes_with_cut_episodes(sailor_base):
    """A checkpoint taken while device envs run keeps their unfinished episodes' steps; resuming
    commits them as cut episodes (done, not successful) and collects on fresh envs."""
    from robolearn.sailor.configuration import load_sailor_config
    from robolearn.sailor.loop import SailorTrainer

    cfg = load_sailor_config(None, TINY + ["device=cpu"])
    out = sailor_base / "run_resume"
    kw = dict(wandb_mode="off", progress=False, backend=DEVICE)
    trainer = SailorTrainer(cfg, sailor_base / "dp", sailor_base / "demos.zarr", "push_cube", 100, out, **kw)
    trainer.collect(24, "noisy_base")  # 12 steps per env: one 9-step episode each, 3 steps of the next
    trainer.checkpoint()
    trainer.replay_store.close()
    assert trainer.replay_store.num_episodes == 2
    again = SailorTrainer(cfg, sailor_base / "dp", sailor_base / "demos.zarr", "push_cube", 100, out, resume=True, **kw)
    store = again.replay_store
    assert store.num_episodes == 4 and again.env_step == 24
    cut = [store.episode_metadata(i)["mode"] for i in range(4)]
    assert cut == ["noisy_base", "noisy_base", "cut", "cut"]
    assert store.episode_lengths.tolist() == [9, 9, 3, 3] and not store.column("success")[2:].any()
    assert store.get_episode(2)["done"].tolist() == [False, False, True]
    m = again.collect(4, "noisy_base")
    assert m["collect_steps"] == 4 and again.env_step == 28
    again.close_collector()
    again.replay_store.close()
