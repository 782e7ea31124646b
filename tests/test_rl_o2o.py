"""Offline-to-online RL at scale (issue 20): evaluation schedule, layout check at start, continual metrics
in `offline` / `finetune` output, vectorized `data rollout`, harness-style mixes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from robolearn.data.store import EpisodeStore, Feature
from tests.test_rl import point_env, point_store  # noqa: F401  (fixture + tiny-task store)


@pytest.fixture(scope="module")
def point_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("point_o2o") / "point.zarr"
    point_store(path).close()
    return path


# ----------------------------------------------------------------------------------- metrics
def test_stability_gap_depth_and_recovery():
    from robolearn.rl.metrics import continual_metrics, stability_gap

    steps = [0, 100, 200, 300, 400, 500]
    gap = stability_gap(steps, [0.6, 0.5, 0.2, 0.4, 0.6, 0.7])
    assert gap["gap_depth"] == pytest.approx(0.4) and gap["gap_step"] == 200
    assert gap["gap_start_step"] == 100 and gap["recovered_step"] == 400 and gap["time_to_recover"] == 300
    never = stability_gap(steps, [0.6, 0.5, 0.2, 0.4, 0.5, 0.55])
    assert never["gap_depth"] == pytest.approx(0.4) and never["recovered_step"] is None and never["time_to_recover"] is None
    flat = stability_gap(steps, [0.3, 0.3, 0.4, 0.5, 0.5, 0.6])
    assert flat["gap_depth"] == 0.0 and flat["time_to_recover"] == 0
    # an explicit reference (e.g. the pre-trained policy measured elsewhere) replaces a(0)
    assert stability_gap(steps, [0.6, 0.5, 0.2, 0.4, 0.6, 0.7], reference=0.8)["recovered_step"] is None
    m = continual_metrics(steps, [0.6, 0.5, 0.2, 0.4, 0.6, 0.7], window=200)
    assert m["min_acc"] == pytest.approx(0.2) and m["gap_depth"] == pytest.approx(0.4) and m["time_to_recover"] == 300
    assert m["wc_acc"] == pytest.approx(0.5 * 0.7 + 0.5 * 0.2)


# ----------------------------------------------------------------------------------- offline: schedules, output, layout
def test_offline_eval_schedule_independent_of_logging(point_data, tmp_path, point_env, capsys):  # noqa: F811
    """Evaluations land every eval_every steps even when log_every is larger (they were tied to the logging block)."""
    from robolearn.cli import main
    from robolearn.training import read_metrics

    run = tmp_path / "run"
    argv = ["offline", "--algo", "td3bc", "--data", str(point_data), "--out", str(run), "--wandb", "off", "--json",  # task: the store's
            "agent.hidden_dims=[8,8]", "train.batch_size=16", "train.steps=40", "train.log_every=40", "train.eval_every=10",
            "train.eval_episodes=2", "train.save_every=40"]
    assert main(argv) == 0
    evals = [r["step"] for r in read_metrics(run) if "eval_score" in r]
    assert evals == [0, 10, 20, 30, 40]
    logs = [r["step"] for r in read_metrics(run) if "critic_loss" in r]
    assert logs == [40]
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [h["step"] for h in out["history"]] == evals and out["score"] == "mean return"
    for key in ("min_acc", "wc_acc", "gap_depth", "time_to_recover", "reference", "initial", "final"):
        assert key in out["metrics"], key
    assert out["metrics"]["initial"] == out["history"][0]["score"]
    assert json.loads((run / "continual.json").read_text())["metrics"] == out["metrics"]
    assert (run / "continual.png").stat().st_size > 0


def _store_like(path: Path, task: str, obs_dim: int, action_dim: int) -> None:
    store = EpisodeStore.create(path, {"obs/state": Feature("float32", (obs_dim,), "obs"),
                                       "action": Feature("float32", (action_dim,), "action")}, task=task)
    rng = np.random.default_rng(0)
    for _ in range(2):
        store.append_episode({"obs/state": rng.normal(size=(5, obs_dim)).astype(np.float32),
                              "action": rng.uniform(-1, 1, (5, action_dim)).astype(np.float32),
                              "reward": rng.normal(size=5).astype(np.float32)}, metadata={"terminated": False})
    store.close()


def test_offline_task_layout_checked_at_start(tmp_path, capsys):
    """A push_cube store trained with --task pick_place fails before any training, with one line (was a
    raw tensor-size error after training); nothing is written."""
    from robolearn.cli import main
    from robolearn.rl.envs import make_env

    pc = make_env("push_cube")
    _store_like(tmp_path / "pc.zarr", "push_cube", pc.obs_dim, pc.action_dim)
    pc.close()
    run = tmp_path / "run"
    capsys.readouterr()
    rc = main(["offline", "--algo", "iql", "--data", str(tmp_path / "pc.zarr"), "--task", "pick_place", "--out", str(run),
               "--wandb", "off", "train.steps=100000", "train.eval_episodes=0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "--task pick_place" in err and "push_cube" in err and "obs" in err
    assert not run.exists()
    # the same store evaluated on its own task passes the check (and trains)
    assert main(["offline", "--algo", "td3bc", "--data", str(tmp_path / "pc.zarr"), "--out", str(tmp_path / "ok"), "--wandb", "off",
                 "agent.hidden_dims=[8,8]", "train.steps=3", "train.batch_size=4", "train.eval_episodes=1"]) == 0


def test_reward_norm_return_range(point_data, tmp_path, point_env):  # noqa: F811
    import yaml

    from robolearn.rl.offline import train_offline

    st = EpisodeStore.open(point_data)
    ret, longest = st.column("return"), int(st.episode_lengths.max())
    run = train_offline("iql", point_data, out=tmp_path / "r", wandb_mode="off", progress=False,
                        overrides=["agent.hidden_dims=[8,8]", "train.steps=2", "train.batch_size=4", "train.eval_episodes=0",
                                   "train.reward_norm=return_range"])
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    # IQL's 1000 / (max - min) is its datasets' episode length over the return span
    assert cfg["agent"]["reward_scale"] == pytest.approx(longest / (ret.max() - ret.min()))
    assert longest < 1000


# ----------------------------------------------------------------------------------- data rollout / mix
def _exit_code(main, argv: list[str]) -> int:
    """The CLI's exit code, whether argparse rejected the flag (SystemExit) or the command returned it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_rollout_vectorized_matches_one_env_and_keep_filter(tmp_path, capsys):
    """Batched collection starts episode k from the same seeded state as one env does, reproduces
    itself, and --keep failure stores only failed episodes."""
    from robolearn.cli import main

    common = ["data", "rollout", "--task", "push_cube", "--episodes", "3", "--task-override", "terminate_on_success=false",
              "--task-override", "obs_relative=true", "--seed", "4", "--policy", "expert", "--noise", "0.1"]
    assert main([*common, "--num-envs", "1", "--out", str(tmp_path / "one.zarr")]) == 0
    assert main([*common, "--num-envs", "3", "--out", str(tmp_path / "three.zarr")]) == 0
    assert main([*common, "--num-envs", "3", "--out", str(tmp_path / "again.zarr")]) == 0
    one, three, again = (EpisodeStore.open(tmp_path / f"{n}.zarr") for n in ("one", "three", "again"))
    assert one.env_kwargs == {"terminate_on_success": False, "obs_relative": True}
    by_seed = {int(s): i for i, s in enumerate(three.column("seed"))}
    assert sorted(by_seed) == sorted(int(s) for s in one.column("seed")) == [4 * 1_000_003 + k for k in range(3)]
    for i, s in enumerate(one.column("seed")):  # same initial state per seed (the expert's mode draws differ with the batch)
        np.testing.assert_array_equal(one.get_episode(i)["obs/state"][0], three.get_episode(by_seed[int(s)])["obs/state"][0])
    np.testing.assert_array_equal(three.read("obs/state"), again.read("obs/state"))
    np.testing.assert_array_equal(three.read("action"), again.read("action"))
    assert one.column("success").all()
    assert main(["data", "rollout", "--task", "push_cube", "--policy", "random", "--episodes", "4", "--num-envs", "2", "--keep", "failure",
                 "--task-override", "terminate_on_success=false", "--out", str(tmp_path / "bad.zarr")]) == 0
    bad = EpisodeStore.open(tmp_path / "bad.zarr")
    assert bad.num_episodes == 4 and not bad.column("success").any()
    assert all(json.loads(m)["keep"] == "failure" for m in bad.column("metadata"))
    capsys.readouterr()
    assert _exit_code(main, ["data", "rollout", "--task", "push_cube", "--policy", "random", "--episodes", "1", "--num-envs", "0",
                             "--out", str(tmp_path / "x.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--num-envs" in err and len(err.splitlines()) == 1 and not (tmp_path / "x.zarr").exists()


def test_mix_pools_bad_stores_and_records_distinct(tmp_path):
    from robolearn.rl.datasets import mix_stores

    for name, seed in (("good", 1), ("bad_a", 2), ("bad_b", 3)):
        point_store(tmp_path / f"{name}.zarr", episodes=6, seed=seed).close()
    mix = mix_stores(tmp_path / "good.zarr", [tmp_path / "bad_a.zarr", tmp_path / "bad_b.zarr"], 0.25, tmp_path / "mix.zarr",
                     size=400, seed=0, progress=False)
    info = mix.attrs["mix"]
    assert info["good_steps"] >= 100 and info["good_steps"] - 20 < 100  # episodes of 20 steps until int(400 * 0.25)
    assert mix.num_steps == 20 * (info["good_episodes"] + info["bad_episodes"]) and mix.num_steps >= 400
    assert 1 <= info["good_distinct"] <= min(6, info["good_episodes"]) and info["bad_distinct"] <= 12
    assert info["bad"] == [str(tmp_path / "bad_a.zarr"), str(tmp_path / "bad_b.zarr")]
    with pytest.raises(FileExistsError):
        mix_stores(tmp_path / "good.zarr", tmp_path / "bad_a.zarr", 0.5, tmp_path / "mix.zarr", progress=False)


def test_batched_evaluation_matches_sequential():
    """evaluate_actor (the shared rollout engine, batched) gives the same per-seed episodes as stepping one env."""
    import torch

    from robolearn.rl.agent import state_stats
    from robolearn.rl.algos import algo_classes, build_agent
    from robolearn.rl.envs import evaluate, evaluate_actor, make_env

    env = make_env("push_cube", terminate_on_success=False, obs_relative=True)
    torch.manual_seed(0)
    _, cfg_cls = algo_classes("td3bc")
    agent = build_agent("td3bc", cfg_cls(hidden_dims=[16, 16]), env.obs_dim, env.action_dim, state_stats(None, env.obs_dim))
    batched = evaluate_actor(agent.policy, env, range(100_000, 100_004), num_envs=3)
    one = evaluate(lambda o: agent.act(o), env, range(100_000, 100_004))
    env.close()
    assert [r["seed"] for r in batched] == [r["seed"] for r in one] == list(range(100_000, 100_004))
    np.testing.assert_allclose([r["return"] for r in batched], [r["return"] for r in one], atol=1e-4)
    assert [r["length"] for r in batched] == [r["length"] for r in one] == [60] * 4


def _rl_reweighting_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """scripts/rl_reweighting.py loaded as a module, its data and results folders moved under tmp_path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rl_reweighting", Path(__file__).resolve().parents[1] / "scripts" / "rl_reweighting.py")
    rr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rr)
    monkeypatch.setattr(rr, "O2O_DATA", tmp_path)
    monkeypatch.setattr(rr, "O2O_RESULTS", tmp_path / "results")
    return rr


def test_good_only_ceiling_store_repeats_the_mix_good_draws(tmp_path, monkeypatch):
    """scripts/rl_reweighting.py's ceiling trains on the mix's good part alone: the store it builds holds
    exactly the good trajectories the mix drew (same episodes, same order), not a fresh draw."""
    from robolearn.rl.datasets import mix_stores

    rr = _rl_reweighting_in(tmp_path, monkeypatch)
    monkeypatch.setattr(rr, "O2O_MIX_SIZE", 400)
    for name, seed in (("expert", 1), ("random", 2), ("failing", 3)):
        point_store(tmp_path / f"pt_{name}.zarr", episodes=6, seed=seed).close()
    mix = mix_stores(tmp_path / "pt_expert.zarr", [tmp_path / "pt_random.zarr", tmp_path / "pt_failing.zarr"], 0.25,
                     rr.o2o_mix_path("pt", 0.25), size=400, seed=0, progress=False)
    good = EpisodeStore.open(rr.build_good_part("pt", 0.25))
    n = mix.attrs["mix"]["good_episodes"]
    assert good.num_episodes == n and good.attrs["mix"]["bad_episodes"] == 0
    for i in range(n):
        np.testing.assert_array_equal(good.get_episode(i)["action"], mix.get_episode(i)["action"])
    rec = json.loads((tmp_path / "results" / "datasets.jsonl").read_text().splitlines()[-1])
    assert rec["name"] == "pt_good0.25.zarr" and rec["episodes"] == n


def test_build_o2o_records_each_piece_once(tmp_path, monkeypatch):
    """scripts/rl_reweighting.py `build`: pools by vectorized rollout, then the mix; each piece appends one
    datasets.jsonl record (pools with their return range, mixes with their `mix` attribute), and a second
    call finds every piece complete and builds nothing."""
    rr = _rl_reweighting_in(tmp_path, monkeypatch)
    monkeypatch.setattr(rr, "O2O_MIX_SIZE", 240)
    monkeypatch.setattr(rr, "O2O_POOLS", {"push_cube": {"expert": ("expert", 0.1, "all", 3, 2), "random": ("random", 0.0, "all", 3, 1)}})
    rr.build_o2o(["push_cube"], [0.5], bad=("random",))
    recs = [json.loads(ln) for ln in (tmp_path / "results" / "datasets.jsonl").read_text().splitlines()]
    assert [r["name"] for r in recs] == ["push_cube_expert.zarr", "push_cube_random.zarr", "push_cube_mix0.5_random.zarr"]
    expert, random_pool, mix = recs
    assert expert["episodes"] == random_pool["episodes"] == 3 and expert["steps"] == 180
    assert expert["return_min"] <= expert["return_mean"] <= expert["return_max"] and "mix" not in expert
    assert expert["return_mean"] > random_pool["return_mean"]
    assert mix["steps"] == 240 and mix["mix"]["good_episodes"] == 2 and "return_mean" not in mix
    assert mix["command"].startswith("robolearn data mix --good") and "--ratio 0.5 --size 240" in mix["command"]
    rr.build_o2o(["push_cube"], [0.5], bad=("random",))
    assert len((tmp_path / "results" / "datasets.jsonl").read_text().splitlines()) == 3


def test_sweep_runs_cql_with_its_own_sampler_alpha_and_tables_it(tmp_path, monkeypatch, capsys):
    """`sweep --algos cql` (the grid's optional third algorithm): a run trains CQL on the mix with the RW
    sampler, records its curve, its loss curve and the batch mass on successful episodes at CQL's alpha (0.2, not IQL's and
    TD3+BC's 0.1), is skipped when swept again, and `table` prints its row."""
    import argparse

    from robolearn.rl.replay import transitions_from_store
    from robolearn.rl.weighting import transition_probs

    rr = _rl_reweighting_in(tmp_path, monkeypatch)
    monkeypatch.setattr(rr, "O2O_RUNS", tmp_path / "runs")
    monkeypatch.setattr(rr, "O2O_MIX_SIZE", 240)
    monkeypatch.setattr(rr, "O2O_POOLS", {"push_cube": {"expert": ("expert", 0.1, "all", 3, 2), "random": ("random", 0.0, "all", 3, 1)}})
    a = argparse.Namespace(tag="t", tasks=["push_cube"], algos=["cql"], ratios=[0.5], samplers=["rw"], seeds=[0],
                           bad_pools=["random"], stop_at=None, steps=4, eval_every=2, eval_episodes=2, batch_size=16,
                           hidden=[16, 16], progress=False)
    # a run killed before its first checkpoint left its directory: started afresh, not appended to
    stale = tmp_path / "runs" / "t" / "push_cube_cql_0.5_rw_s0_bad_random"
    stale.mkdir(parents=True)
    (stale / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval_success": 0.5, "stale": True}) + "\n")
    rr.sweep(a)
    (rec,) = [json.loads(ln) for ln in (tmp_path / "results" / "t.jsonl").read_text().splitlines()]
    assert (rec["algo"], rec["sampler"], rec["steps"]) == ("cql", "rw", 4)
    logged = [json.loads(ln) for ln in (stale / "metrics.jsonl").read_text().splitlines()]
    assert not any(r.get("stale") for r in logged) and [r["step"] for r in logged].count(0) == 1
    assert [c[0] for c in rec["curve"]] == [0, 2, 4]
    # CQL's own statistics (it logs td_loss and cql_penalty, no critic_loss) make the record's loss curve
    assert [x["step"] for x in rec["losses"]] == [2, 4]
    assert all({"td_loss", "cql_penalty", "actor_loss", "q_mean", "temperature"} <= set(x) for x in rec["losses"])
    assert (tmp_path / "runs" / "t" / "push_cube_cql_0.5_rw_s0_bad_random" / "policy" / "checkpoint.json").exists()
    store = EpisodeStore.open(rr.o2o_mix_path("push_cube", 0.5, ("random",)))
    tr = transitions_from_store(store)
    success = store.column("success").astype(bool)[tr.store_episode]
    mass = {alpha: float(np.bincount(tr.episode, weights=transition_probs("rw", tr.episode, tr.episode_return, tr.initial_obs,
                                                                          alpha, 0.1))[success].sum()) for alpha in (0.1, 0.2)}
    assert rec["sampler_mass_on_successes"] == pytest.approx(mass[0.2], abs=1e-4) != pytest.approx(mass[0.1], abs=1e-4)
    rr.sweep(a)  # recorded: skipped, not trained again
    assert len((tmp_path / "results" / "t.jsonl").read_text().splitlines()) == 1
    # the harness paper's CQL settings are their own label: not taken for done by the cql record, trained with
    # min-Q weight 10 and actor lr 3e-4 (cql: 5 and 1e-4), the same sampler alpha
    a.algos = ["cql_harness"]
    rr.sweep(a)
    recs = {r["algo"]: r for r in map(json.loads, (tmp_path / "results" / "t.jsonl").read_text().splitlines())}
    assert set(recs) == {"cql", "cql_harness"}
    assert recs["cql_harness"]["sampler_mass_on_successes"] == rec["sampler_mass_on_successes"]
    agent = {al: yaml.safe_load((tmp_path / "runs" / "t" / f"push_cube_{al}_0.5_rw_s0_bad_random" / "config.yaml").read_text())["agent"]
             for al in recs}
    assert (agent["cql"]["cql_alpha"], agent["cql"]["actor_lr"]) == (5.0, 1e-4)
    assert (agent["cql_harness"]["cql_alpha"], agent["cql_harness"]["actor_lr"]) == (10.0, 3e-4)
    a.algos = ["cql", "cql_harness"]
    rr.table(a)
    out = capsys.readouterr().out.splitlines()
    for al in recs:
        row = [ln for ln in out if ln.startswith(f"| push_cube (bad: random) | {al} |")]
        assert len(row) == 1 and "/2 = " in row[0], row  # 2 evaluation episodes, one seed
    (walls,) = [ln for ln in out if ln.startswith("Wall time per run")]
    assert "cql median" in walls and "cql_harness median" in walls  # per algorithm, not one range over all
    # the hypothesis table says how many seeds stand behind each side of a comparison
    results = tmp_path / "results" / "t.jsonl"
    extra = [{**rec, "sampler": "uniform", "final_successes": 0, "seed": sd} for sd in (0, 1)]
    results.write_text(results.read_text() + "".join(json.dumps(x) + "\n" for x in extra))
    rr.table(a)
    (row,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| push_cube (bad: random) | cql | 50% | rw |")
              and "vs" in ln]
    assert "| 1 / 2 |" in row and "uniform 0" in row, row
    # `critic-stats`: one row per CQL run with its critics' values and losses as logged
    a.algos = ["cql_harness"]
    rr.critic_stats(a)
    out = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| push_cube")]
    h = recs["cql_harness"]
    assert len(out) == 1 and f"| {h['losses'][-1]['td_loss']:.1f} |" in out[0] and "| cql_harness | 50% | rw | 0 |" in out[0], out
    a.algos = ["td3bc"]
    with pytest.raises(SystemExit, match="no CQL records"):
        rr.critic_stats(a)
    # a run resumed from its last checkpoint says so: its wall time covers only the steps after it
    run = tmp_path / "runs" / "t" / "push_cube_cql_harness_0.5_rw_s0_bad_random"
    shutil.rmtree(run / "policy")
    results.write_text("".join(ln + "\n" for ln in results.read_text().splitlines() if '"cql_harness"' not in ln))
    a.algos = ["cql_harness"]
    rr.sweep(a)
    (resumed,) = [r for r in map(json.loads, results.read_text().splitlines()) if r["algo"] == "cql_harness"]
    assert resumed["resumed_from_step"] == 4 and resumed["curve"] == h["curve"]
    a.algos = ["cql_harness"]
    rr.critic_stats(a)
    (row,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| push_cube")]
    assert row.endswith("(from step 4, resumed) |"), row
    a.algos = ["cql", "cql_harness"]
    rr.table(a)
    (walls,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Wall time per run")]
    assert "cql_harness median" not in walls and "1 resumed run(s) left out" in walls, walls


def test_datasets_table_checks_a_rebuilt_store_against_its_first_build(tmp_path, monkeypatch, capsys):
    """A store built again (a fresh machine rebuilds the pools) is one row, and the row says whether the
    rebuild reproduced the first build: returns may differ in the last bits (summation order), nothing else."""
    rr = _rl_reweighting_in(tmp_path, monkeypatch)
    first = {"name": "pc_expert.zarr", "command": "robolearn data rollout --seed 2", "episodes": 10, "steps": 600, "success_rate": 1.0,
             "return_mean": 43.003072006205734, "return_min": 18.8, "return_max": 55.4, "wall_s": 9.0, "loadavg_before": ["1.0"],
             "date": "2026-12-05 03:02 UTC"}
    same = {**first, "return_mean": 43.003072006198007, "wall_s": 5.0, "date": "2026-12-05 21:24 UTC"}
    other = {**first, "episodes": 11, "date": "2026-12-06 01:00 UTC"}
    mix = {"name": "pc_mix0.5.zarr", "command": "robolearn data mix --ratio 0.5", "episodes": 20, "steps": 1200, "success_rate": 0.5,
           "mix": {"good_episodes": 10, "good_distinct": 8, "good_steps": 600}, "wall_s": 3.0, "loadavg_before": ["1.0"],
           "date": "2026-12-05 04:00 UTC"}
    for rec in (first, mix, same, other, {**mix, "mix": {**mix["mix"], "good_distinct": 7}, "date": "2026-12-06 02:00 UTC"}):
        rr._record(tmp_path / "results" / "datasets.jsonl", rec)
    rr.datasets_table(None)
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| pc_")]
    assert len(rows) == 2
    assert rows[0].startswith("| pc_expert.zarr | 10 |") and rows[0].endswith(
        "2026-12-05 21:24 UTC: same; 2026-12-06 01:00 UTC: **differs** |")
    assert rows[1].endswith("| 2026-12-06 02:00 UTC: **differs** |")


def test_awr_weight_shares_follow_the_iql_actor_loss(tmp_path, monkeypatch):
    """`awr-weights` reports what the IQL actor regresses onto: per pool, the sampler's share of the batches
    and the share of the actor loss's weight, sampler probability x min(exp(beta A), max_weight), with A
    from the same function the update uses."""
    import torch

    from types import SimpleNamespace

    from robolearn.rl.algos import algo_classes, build_agent

    rr = _rl_reweighting_in(tmp_path, monkeypatch)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, d, k = 40, 3, 2
    _, cfg_cls = algo_classes("iql")
    stats = {"obs/state": {"mean": np.zeros(d, np.float32), "std": np.ones(d, np.float32),
                           "min": -np.ones(d, np.float32), "max": np.ones(d, np.float32)}}
    agent = build_agent("iql", cfg_cls(hidden_dims=[8, 8], beta=30.0, max_weight=5.0), d, k, stats)
    obs, act = rng.normal(size=(n, d)).astype(np.float32), rng.uniform(-1, 1, size=(n, k)).astype(np.float32)
    tr = SimpleNamespace(obs=obs, action=act)  # the two fields a Transitions the function reads
    probs = rng.uniform(size=n)
    probs /= probs.sum()
    pool = np.array(["expert"] * 10 + ["random"] * 30)
    x = (agent.norm(torch.as_tensor(obs)), torch.as_tensor(act))
    with torch.no_grad():  # centre the untrained advantages on 0 so that about half the weights reach the clip
        last = [m for m in agent.value.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias += agent.advantage_weights(*x)[0].median()
    out = rr.awr_weight_shares(agent, tr, probs, pool, chunk=7)
    adv, w = agent.advantage_weights(agent.norm(torch.as_tensor(obs)), torch.as_tensor(act))
    w = w.numpy().astype(float)
    assert w.max() <= 5.0 and 0 < np.mean(w == 5.0) < 1
    eff = probs * w
    assert out["pools"]["expert"]["batch_share"] == pytest.approx(probs[:10].sum(), abs=1e-4)
    assert out["pools"]["expert"]["actor_share"] == pytest.approx(eff[:10].sum() / eff.sum(), abs=1e-4)
    assert out["pools"]["random"]["clipped"] == pytest.approx(np.mean(w[10:] >= 5.0), abs=1e-4)
    assert out["pools"]["random"]["mean_advantage"] == pytest.approx(adv.numpy()[10:].mean(), abs=1e-4)
    assert out["transitions"] == n and 1 <= out["effective_transitions"] <= n


def test_every_named_variant_is_a_valid_config_that_differs_from_its_base(tmp_path, monkeypatch):
    """A grid label such as cql_harness is its base algorithm's YAML plus overrides: each must load (a misspelt
    key is an error here, not hours into a sweep) and change what it says it changes."""
    import dataclasses

    from robolearn.rl.algos import load_run_config

    rr = _rl_reweighting_in(tmp_path, monkeypatch)
    for label, (base, overrides) in rr.ALGO_VARIANTS.items():
        assert rr.base_algo(label) == base and rr.variant_overrides(label) == list(overrides)
        plain = dataclasses.asdict(load_run_config(base, "offline", None, None).agent)
        varied = dataclasses.asdict(load_run_config(base, "offline", None, list(overrides)).agent)
        changed = {k for k in plain if plain[k] != varied[k]}
        assert changed == {o.split("=", 1)[0].removeprefix("agent.") for o in overrides}, label
    assert rr.variant_overrides("cql_min1") == ["agent.num_min_qs=1"]


def test_cql_value_gaps_match_the_critics_and_the_td_target(tmp_path, monkeypatch):
    """`cql-gaps` reports, per pool, the critics' mean Q on the data's, the policy's and uniform actions, the TD target
    the update fits (min over the target critics, no bootstrap on terminal rows) and what that min removes, all on
    normalised observations, recomputed here from the agent with the same random draws."""
    import torch

    from types import SimpleNamespace

    from robolearn.rl.algos import algo_classes, build_agent

    rr = _rl_reweighting_in(tmp_path, monkeypatch)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, d, k = 30, 3, 2
    _, cfg_cls = algo_classes("cql")
    stats = {"obs/state": {"mean": np.array([1.0, -2.0, 0.5], np.float32), "std": np.array([0.5, 2.0, 3.0], np.float32),
                           "min": -np.ones(d, np.float32), "max": np.ones(d, np.float32)}}
    agent = build_agent("cql", cfg_cls(hidden_dims=[8, 8]), d, k, stats)
    with torch.no_grad():  # target critics that differ from the critics and from each other
        for p_ in agent.critic_target.parameters():
            p_.add_(0.3 * torch.randn_like(p_))
    terminal = np.zeros(n, bool)
    terminal[::5] = True
    tr = SimpleNamespace(obs=rng.normal(size=(n, d)).astype(np.float32), next_obs=rng.normal(size=(n, d)).astype(np.float32),
                         action=rng.uniform(-1, 1, size=(n, k)).astype(np.float32), reward=rng.uniform(size=n).astype(np.float32),
                         terminal=terminal, mc_return=rng.uniform(0, 5, size=n).astype(np.float32))
    pool = np.array(["expert"] * 10 + ["random"] * 20)
    idx = np.array([0, 1, 2, 5, 10, 11, 12, 15, 20, 25, 29, 3])
    out = rr.cql_value_gaps(agent, tr, idx, pool, seed=7, chunk=len(idx))
    gen = torch.Generator().manual_seed(7)  # the function's draws, in its order: pi(s), pi(s'), uniform
    with torch.no_grad():
        obs = (torch.as_tensor(tr.obs[idx]) - torch.as_tensor(stats["obs/state"]["mean"])) / torch.as_tensor(stats["obs/state"]["std"])
        nxt = (torch.as_tensor(tr.next_obs[idx]) - torch.as_tensor(stats["obs/state"]["mean"])) / torch.as_tensor(stats["obs/state"]["std"])
        act = torch.as_tensor(tr.action[idx])
        a_pi, logp = agent.actor.sample(obs, generator=gen)
        a_next, _ = agent.actor.sample(nxt, generator=gen)
        u = torch.rand(act.shape, generator=gen) * 2 - 1
        q_next = agent.critic_target(nxt, a_next)
        want = {"q_data": agent.critic(obs, act).mean(0), "q_pi": agent.critic(obs, a_pi).mean(0),
                "q_random": agent.critic(obs, u).mean(0),
                "target": torch.as_tensor(tr.reward[idx]) + 0.99 * torch.as_tensor(~terminal[idx]).float() * q_next.min(0).values,
                "min_cut": q_next.mean(0) - q_next.min(0).values, "entropy": -logp,
                "mode_dist": torch.linalg.vector_norm(agent.actor.mode(obs) - act, dim=-1)}
    e = np.isin(idx, np.arange(10))
    for key, w in want.items():
        w = w.numpy().astype(float)
        assert out["all"][key] == pytest.approx(w.mean(), abs=2e-3), key
        assert out["pools"]["expert"][key] == pytest.approx(w[e].mean(), abs=2e-3), key
    assert out["all"]["min_cut"] > 0.01 and terminal[idx].any() and not terminal[idx].all()
    assert out["states"] == 12 and out["pools"]["random"]["share"] == pytest.approx(1 - e.mean(), abs=1e-4)
    assert out["all"]["mc"] == pytest.approx(tr.mc_return[idx].mean(), abs=2e-3)
    assert out["all"]["gap_pi"] == pytest.approx(out["all"]["q_data"] - out["all"]["q_pi"], abs=2e-3)
    # chunking does not change what is measured beyond the random draws: the data's action and the return-to-go
    chunked = rr.cql_value_gaps(agent, tr, idx, pool, seed=7, chunk=5)
    assert chunked["all"]["q_data"] == pytest.approx(out["all"]["q_data"], abs=1e-4)


def test_composition_keeps_rows_of_mixes_not_on_this_machine(tmp_path, monkeypatch, capsys):
    """`composition` recomputes the mixes that are built here and keeps the recorded rows of the others
    (a fresh machine holds only the mixes it rebuilt; the page cites the rest)."""
    import argparse

    rr = _rl_reweighting_in(tmp_path, monkeypatch)
    monkeypatch.setattr(rr, "O2O_MIX_SIZE", 240)
    monkeypatch.setattr(rr, "O2O_POOLS", {"push_cube": {"expert": ("expert", 0.1, "all", 3, 2), "random": ("random", 0.0, "all", 3, 1),
                                                        "failing": ("expert", 1.0, "all", 3, 3)}})
    rr.build_o2o(["push_cube"], [0.5])
    old = {"mix": "pick_place_mix0.01.zarr", "task": "pick_place", "ratio": 0.01, "algo": "td3bc", "sampler": "rw",
           "mass": {"expert": 0.979, "random": 0.006, "failing": 0.015}, "non_expert_mean_return": 9.1, "effective_episodes": 40.0}
    stale = {**old, "mix": "push_cube_mix0.5.zarr", "task": "push_cube", "ratio": 0.5, "mass": {"expert": 0.0}}
    (tmp_path / "results" / "sampler_composition.json").write_text(json.dumps([old, stale]))
    rr.composition(argparse.Namespace(tasks=["push_cube"], ratios=[0.5], algos=["td3bc"], samplers=["uniform", "rw", "topk"]))
    rows = json.loads((tmp_path / "results" / "sampler_composition.json").read_text())
    assert old in rows and stale not in rows
    here = [r for r in rows if r["mix"] == "push_cube_mix0.5.zarr"]
    assert [r["sampler"] for r in here] == ["uniform", "rw", "topk"]
    assert here[0]["mass"]["expert"] == pytest.approx(0.5, abs=0.01) and here[1]["mass"]["expert"] > 0.5
    assert "| pick_place_mix0.01.zarr | td3bc | rw | 0.979" in capsys.readouterr().out


def _wsrl_finetune():
    """scripts/wsrl_finetune.py loaded as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("wsrl_finetune", Path(__file__).resolve().parents[1] / "scripts" / "wsrl_finetune.py")
    wf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wf)
    return wf


def test_wsrl_table_pools_final_success_and_checks_the_hypotheses(tmp_path, monkeypatch):
    """scripts/wsrl_finetune.py's table for a study on our tasks: final success pooled over seeds with a
    Wilson interval, min-ACC checked per seed against 0.8 x the pre-trained level, and a re-run's
    record replacing the earlier line of the same (method, seed)."""
    wf = _wsrl_finetune()
    monkeypatch.setattr(wf, "RESULTS", tmp_path)
    wsrl, nowarm, retain = list(wf.METHODS)

    def rec(method, seed, initial, min_acc, final):
        return {"method": method, "seed": seed, "initial": initial, "final": final, "best": max(initial, final),
                "min_acc": min_acc, "min_acc_step": 5000, "gap_depth": max(0.0, initial - min_acc), "time_to_recover": None,
                "wc_acc": 0.5 * final + 0.5 * min_acc, "wall_s": 600.0, "curve": [[0, initial, 1.0], [2500, final, 2.0]]}

    lines = [rec(wsrl, s, 0.5, 0.45, 0.6) for s in range(3)] + [rec(nowarm, s, 0.5, 0.1, 0.3) for s in range(3)]
    lines += [rec(retain, s, 0.5, 0.3, 0.9) for s in range(3)] + [rec(wsrl, 2, 0.5, 0.2, 0.6)]  # seed 2 re-run: collapses
    (tmp_path / "wsrl_t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    runs = wf._runs_of("t")
    assert len(runs) == 9 and next(r for r in runs if r["method"] == wsrl and r["seed"] == 2)["min_acc"] == 0.2
    text = "\n".join(wf.wsrl_table(runs, episodes=50, pretrained=0.5))
    assert "90/150 = 0.60" in text and "135/150 = 0.90" in text  # pooled over 3 seeds x 50 episodes
    assert "on 2/3 seeds of 'WSRL (warm-up, no retention)' -> does not hold" in text
    assert "on 0/3 seeds of 'no warm-up, no retention' -> holds" in text
    assert "WSRL >= retention: 0.60" in text and "does not hold (intervals apart)" in text
    # without a pre-training record each run's own step-0 level is the reference
    assert "Reference for min-ACC: the pre-trained policy's success (each run's step 0)" in "\n".join(wf.wsrl_table(runs, 50, None))


def test_wsrl_training_stats_keep_finished_runs_logs(tmp_path, monkeypatch):
    """`wsrl_finetune.py training-stats` commits each finished run's logged learner statistics and the
    pre-training's last log; an unfinished run (no continual.json) is left out."""
    import argparse

    wf = _wsrl_finetune()
    monkeypatch.setattr(wf, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(wf, "BASE", tmp_path / "rl_study" / "wsrl")
    (tmp_path / "results").mkdir()
    root = tmp_path / "rl_study" / "wsrl_t"
    (root / "pretrain_calql").mkdir(parents=True)
    (root / "study.json").write_text(json.dumps({"pretrain": "calql", "steps": 10}))
    (root / "pretrain_calql" / "metrics.jsonl").write_text(json.dumps({"step": 5, "q_mean": 7.0}) + "\n" + json.dumps({"step": 5, "eval_success": 0.5}) + "\n")
    for name, done in (("wsrl_w5_r0.0_s0", True), ("sac_w0_r0.0_s0", False)):
        (root / name).mkdir()
        (root / name / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval_success": 0.5}) + "\n"
                                                   + json.dumps({"step": 5, "td_loss": 1.0, "q_mean": 9.0, "lr": 3e-4}) + "\n")
        if done:
            (root / name / "continual.json").write_text("{}")
    wf.training_stats(argparse.Namespace(tag="t"))
    out = json.loads((tmp_path / "results" / "wsrl_t_training.json").read_text())
    assert out["pretrain_last_log"] == {"step": 5, "q_mean": 7.0} and out["pretrain_log"] == [{"step": 5, "q_mean": 7.0}]
    assert [r["dir"] for r in out["runs"]] == ["wsrl_w5_r0.0_s0"]
    assert out["runs"][0]["log"] == [{"step": 0, "eval_success": 0.5}, {"step": 5, "td_loss": 1.0, "q_mean": 9.0}]


def test_wsrl_pretraining_gets_the_reward_overrides(tmp_path, monkeypatch):
    """A study's --agent-set agent.reward_bias must reach the pre-training too (Cal-QL's critics and
    Monte-Carlo bounds are in that reward's units); other agent overrides stay fine-tuning only."""
    import argparse

    import robolearn.rl.offline as offline

    wf = _wsrl_finetune()
    monkeypatch.setattr(wf, "BASE", tmp_path / "rl_study" / "wsrl")
    seen = {}
    monkeypatch.setattr(offline, "train_offline", lambda algo, data, **kw: seen.update(algo=algo, overrides=kw["overrides"]))
    a = argparse.Namespace(task="push_cube", pretrain="calql", tag="t", pretrain_from=None, pretrain_extend=None, pretrain_steps=100, eval_episodes=5,
                           batch_size=32, num_qs=2, data="d.zarr", agent_set=["agent.reward_bias=-1", "agent.actor_q=min"])
    wf.pretrain(a)
    assert seen["algo"] == "calql" and "agent.reward_bias=-1" in seen["overrides"]
    assert "agent.actor_q=min" not in seen["overrides"] and "agent.num_qs=2" in seen["overrides"]


def test_wsrl_pretrain_extend_continues_a_copy(tmp_path, monkeypatch):
    """--pretrain-extend TAG copies study TAG's finished pre-training (log and last checkpoint, not its
    final policy) and resumes the copy to --pretrain-steps; the source study is left as it was."""
    import argparse

    import robolearn.rl.offline as offline

    wf = _wsrl_finetune()
    monkeypatch.setattr(wf, "BASE", tmp_path / "rl_study" / "wsrl")
    src = tmp_path / "rl_study" / "wsrl_a" / "pretrain_calql"
    for f in ("policy/checkpoint.json", "checkpoints/last/checkpoint.json", "metrics.jsonl", "continual.json"):
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_text("{}")
    calls = []
    monkeypatch.setattr(offline, "train_offline", lambda algo, data, **kw: calls.append((algo, data, kw)))
    a = argparse.Namespace(task="push_cube", pretrain="calql", tag="b", pretrain_from=None, pretrain_extend="a",
                           pretrain_steps=80, eval_episodes=5, batch_size=32, num_qs=2, data="d.zarr", agent_set=None)
    wf.pretrain(a)
    out = tmp_path / "rl_study" / "wsrl_b" / "pretrain_calql"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["checkpoints/last/checkpoint.json", "metrics.jsonl"]
    assert [(c[0], c[1], c[2]["resume"], c[2]["overrides"]) for c in calls] == [("calql", None, out, ["train.steps=80"])]
    assert (src / "policy" / "checkpoint.json").exists()
    a.pretrain_extend = "missing"
    a.tag = "c"
    with pytest.raises(SystemExit, match="--pretrain-extend missing"):
        wf.pretrain(a)


def test_wsrl_probe_table_compares_studies_over_one_window(tmp_path, monkeypatch):
    """`wsrl_finetune.py probes`: per study its change from the base settings, the pre-trained level, the
    first evaluation after the warm-up pooled over seeds, min-ACC up to --until, and the collapse count."""
    wf = _wsrl_finetune()
    monkeypatch.setattr(wf, "RESULTS", tmp_path)
    monkeypatch.setattr(wf, "BASE", tmp_path / "nowhere" / "wsrl")
    wsrl = list(wf.METHODS)[0]
    base = {"steps": 20, "warmup": 5, "eval_every": 5, "eval_episodes": 10, "task": "push_cube", "pretrain": "calql",
            "utd": 1, "batch_size": 256, "num_qs": 2, "pretrain_steps": 100}
    for tag, extra, after in (("a", {}, [0.0, 0.9]), ("b", {"utd": 4, "num_qs": 10, "agent_set": ["agent.actor_q=min"], "pretrain_from": "a"}, [0.8, 0.9])):
        (tmp_path / f"wsrl_{tag}_study.json").write_text(json.dumps({"settings": {**base, **extra}}))
        lines = [{"method": wsrl, "seed": s, "initial": 1.0, "curve": [[0, 1.0, 0], [5, 1.0, 0], [2505, x, 0], [2600, 0.0, 0]]}
                 for s, x in enumerate(after)]
        (tmp_path / f"wsrl_{tag}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = wf.probe_table(["a", "b"], until=2505)  # the drop to 0 at 2600 lies outside the window
    assert rows[2].startswith("| a | - | calql 100 steps | 1.00 | 2505: 9/20 = 0.45") and "| 0.00 / 0.90 |" in rows[2]
    assert rows[2].endswith("| 1/2 |")
    assert rows[3].startswith("| b | utd 4, num_qs 10, agent.actor_q=min | calql 100 steps (study a's) | 1.00 | 2505: 17/20 = 0.85")
    assert rows[3].endswith("| 2/2 |")


def test_wsrl_pair_table_finds_where_two_studies_runs_part(tmp_path, monkeypatch):
    """`wsrl_finetune.py pair --tags A B`: runs of the same folder in two studies, the first logged step at
    which they differ, and the bound rate / mean Q / success of each every 1000 env steps."""
    wf = _wsrl_finetune()
    monkeypatch.setattr(wf, "RESULTS", tmp_path)
    log = [{"step": s, "q_mean": 90.0 - s / 1000, "calql_bound_rate": 0.0, "eval_success": 0.8} for s in (1000, 1500, 2000, 3000)]
    moved = [dict(r) for r in log]
    moved[2].update(q_mean=70.0, calql_bound_rate=0.25)
    for tag, runs in (("a", [{"dir": "calql_s0", "log": log}]),
                      ("b", [{"dir": "calql_s0", "log": moved}, {"dir": "calql_s1", "log": log}])):
        (tmp_path / f"wsrl_{tag}_training.json").write_text(json.dumps({"runs": runs}))
    rows = wf.pair_table(["a", "b"])
    assert rows[0] == "calql_s0: a and b logged the same values at 3 of 4 logged steps; first difference at step 2000"
    assert rows[4:] == ["| 1000 | 0.0000 | 89.0 | 89.0 | 0.80 | 0.80 |", "| 2000 | 0.2500 | 88.0 | 70.0 | 0.80 | 0.80 |",
                        "| 3000 | 0.0000 | 87.0 | 87.0 | 0.80 | 0.80 |", ""]  # calql_s1 exists in b only


def test_wsrl_at_table_pools_each_method_at_the_same_steps(tmp_path, monkeypatch):
    """`wsrl_finetune.py at --tags A B --at-steps ...`: per study and method, success pooled over seeds at each
    step (50 episodes per evaluation: 45 + 40 of 100), "-" where a run has no evaluation at that step."""
    wf = _wsrl_finetune()
    monkeypatch.setattr(wf, "RESULTS", tmp_path)
    monkeypatch.setattr(wf, "BASE", tmp_path / "nowhere" / "wsrl")
    retain, calql_mix = list(wf.METHODS)[2], list(wf.OPTIONAL)[1]
    for tag, method in (("a", retain), ("b", calql_mix)):
        (tmp_path / f"wsrl_{tag}_study.json").write_text(json.dumps({"settings": {"task": "push_cube", "eval_episodes": 50}}))
        lines = [{"method": method, "seed": s, "curve": [[0, 0.9, 0], [100, x, 0]]} for s, x in ((1, 0.8), (0, 0.9))]
        (tmp_path / f"wsrl_{tag}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = wf.at_table(["a", "b"], [100, 200])
    assert rows[2].startswith(f"| a | {retain} | [0, 1] | 85/100 = 0.85 [")
    assert rows[2].endswith("| - |") and rows[3].startswith(f"| b | {calql_mix} | [0, 1] | 85/100")


def test_wsrl_carry_uses_the_pretraining_final_optimizer_state(tmp_path):
    """With finetune.optimizer_state=checkpoint in --agent-set the study fine-tunes from the pre-training's
    checkpoints/last (which holds the optimizers), and only when it is the same step as the final policy."""
    wf = _wsrl_finetune()
    policy, last = tmp_path / "policy", tmp_path / "checkpoints" / "last"
    for d, step in ((policy, 40), (last, 40)):
        d.mkdir(parents=True)
        (d / "checkpoint.json").write_text(json.dumps({"step": step}))
    assert wf._with_optimizers(policy) == last
    (last / "checkpoint.json").write_text(json.dumps({"step": 36}))
    with pytest.raises(SystemExit, match="not the final step"):
        wf._with_optimizers(policy)


def test_q_landscape_agreement_scores_a_critic_against_rollout_truth():
    """scripts/q_landscape.py: a critic that orders the candidate actions like the true returns scores rank
    correlation 1 and full sign agreement, the reversed critic -1 and none; the gaps are the critic's own."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("q_landscape", Path(__file__).resolve().parents[1] / "scripts" / "q_landscape.py")
    ql = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ql)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(5, 3)).astype(np.float32)
    acts = rng.uniform(-1, 1, (5, 4, 2)).astype(np.float32)  # the mode first, then 3 candidates
    w = np.array([1.0, -2.0], np.float32)
    truth = {"obs": obs, "actions": acts, "returns": acts @ w}

    class Critic:
        norm = staticmethod(lambda x: x)

        def __init__(self, sign: float) -> None:
            self.critic = lambda x, a: torch.stack([sign * (a @ torch.as_tensor(w))] * 2)  # two identical members

    good, bad = ql.agreement(Critic(1.0), truth), ql.agreement(Critic(-1.0), truth)
    assert good["rank_corr"] == pytest.approx(1.0) and good["sign_agree"] == 1.0
    assert bad["rank_corr"] == pytest.approx(-1.0) and bad["sign_agree"] == 0.0
    assert good["d_cand"] == pytest.approx(float((truth["returns"][:, 1:] - truth["returns"][:, :1]).mean()), rel=1e-5)
    # tied true returns share their average rank: when every candidate has the same true return, no critic's
    # ordering agrees with it (ordinal ranks would reward a critic that happens to follow the index order)
    flat = {"obs": obs, "actions": acts, "returns": np.ones((5, 4))}

    class ByIndex:
        norm = staticmethod(lambda x: x)
        critic = staticmethod(lambda x, a: torch.stack([torch.arange(20, dtype=torch.float32) % 4] * 2))

    assert ql.agreement(ByIndex(), flat)["rank_corr"] == 0.0
    for name, setup in ql.SETUPS.items():  # each --setup measures kinds the script knows how to fine-tune
        assert setup["kinds"] and set(setup["kinds"]) <= set(ql.KINDS), name


def test_wsrl_study_without_its_store_stops_before_writing(tmp_path, monkeypatch):
    """`wsrl_finetune.py run` on a missing --data store exits with one line before it creates the study's
    directory (SAC from scratch reads the store too, so a scratch-only process must not get further)."""
    import argparse

    wf = _wsrl_finetune()
    monkeypatch.setattr(wf, "BASE", tmp_path / "rl_study" / "wsrl")
    a = argparse.Namespace(task="hopper", pretrain="calql", tag="t", data=str(tmp_path / "missing.zarr"), methods=["scratch"])
    with pytest.raises(SystemExit, match="no episode store there"):
        wf.run(a)
    assert not (tmp_path / "rl_study").exists()


def test_wsrl_table_on_returns_averages_seeds(tmp_path, monkeypatch):
    """A Hopper study (no success signal) is reported in returns: finals averaged over seeds with their sd,
    min-ACC against 0.8 x the pre-trained return, the retention comparison on the seeds' min..max; the
    success-pooling tables refuse it with one line."""
    wf = _wsrl_finetune()
    monkeypatch.setattr(wf, "RESULTS", tmp_path)
    monkeypatch.setattr(wf, "BASE", tmp_path / "rl_study" / "wsrl")
    wsrl, nowarm, retain = list(wf.METHODS)

    def rec(method, seed, min_acc, final):
        return {"method": method, "seed": seed, "initial": 700.0, "final": final, "best": max(700.0, final), "min_acc": min_acc,
                "min_acc_step": 5000, "gap_depth": 700.0 - min_acc, "time_to_recover": None, "wc_acc": min_acc, "wall_s": 60.0,
                "curve": [[0, 0.0, 700.0], [2500, 0.0, final]]}

    runs = [rec(wsrl, s, 600.0, 1000.0 + 100 * s) for s in range(3)] + [rec(nowarm, s, 100.0, 800.0) for s in range(3)]
    runs += [rec(retain, s, 300.0, 1500.0) for s in range(3)]
    text = "\n".join(wf.wsrl_table(runs, episodes=10, pretrained=700.0, returns=True))
    assert "final (mean ± sd over seeds)" in text and "| 1100 ± 82 |" in text
    assert "Reference for min-ACC: the pre-trained policy's return (700)." in text
    assert "on 3/3 seeds of 'WSRL (warm-up, no retention)' -> holds" in text  # 600 >= 0.8 x 700
    assert "final mean return (seeds' min..max) WSRL >= retention: 1100 [1000, 1200] vs 1500 [1500, 1500] -> does not hold (seeds apart)" in text
    # the last 5 evaluations' mean (here the curves' two points: 700 and the final)
    assert "| 1100 ± 82 | 900 ± 41 |" in text
    assert "last 5 evaluations: 900 [850, 950] vs 1100 [1100, 1100] -> does not hold (seeds apart)" in text
    (tmp_path / "wsrl_h_study.json").write_text(json.dumps({"settings": {"task": "hopper", "eval_episodes": 10}}))
    with pytest.raises(SystemExit, match="scored by returns"):
        wf.at_table(["h"], [2500])


def test_bench_rl_updates_times_each_wsrl_learner_as_configured(tmp_path):
    """scripts/bench_rl_updates.py builds each learner from our YAMLs with the paper's ensemble and UTD (a
    10-critic Cal-QL, a 10-critic SAC that takes 4 critic batches per call), times real updates, and the
    report turns the rate into hours at the paper's lengths."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_rl_updates", Path(__file__).resolve().parents[1] / "scripts" / "bench_rl_updates.py")
    bru = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bru)
    agent, batches = bru._agent("sac_q10_utd4", 18, 4, 8, "cpu")
    assert len(batches) == 4 and agent.cfg.num_qs == 10 and agent.cfg.utd == 4 and agent.cfg.hidden_dims == [256, 256]
    rec = bru.measure("sac_q10_utd4", "cpu", steps=2, warmup=1, repeats=1, obs_dim=18, act_dim=4, batch=8)
    assert rec["s_per_update"] > 0 and rec["hours_500k_online_steps"] == pytest.approx(rec["s_per_update"] * 500_000 / 3600)
    pre = bru.measure("calql_q2", "cpu", steps=1, warmup=0, repeats=1, obs_dim=18, act_dim=4, batch=8)
    assert set(pre) >= {"hours_250k_pretrain", "hours_1000k_pretrain"}
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps({"date": "d", "loadavg": ["1.0"], **r}) for r in (rec, pre)))
    table = bru.report(path)
    assert "| sac_q10_utd4 |" in table and "500k online steps:" in table and "1000k pretrain:" in table
