import datetime as dt

from robolearn.experiments import run_jobs, stop_time


def _square(x: int) -> dict:
    return {"x": x, "y": x * x}


def test_run_jobs_runs_all_and_saves_after_each():
    saved = []
    out = run_jobs([1, 2, 3], _square, 2, lambda j: False, lambda res: saved.append(len(res)))
    assert sorted(r["y"] for r in out) == [1, 4, 9]
    assert saved == [1, 2, 3]


def test_run_jobs_stop_launches_only_finished_jobs():
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    out = run_jobs([1, 2, 3], _square, 1, lambda j: j == 2, lambda res: None, stop=past)
    assert [r["x"] for r in out] == [2]  # a done job is still "run" (it returns its stored result)
    assert stop_time(None) is None and stop_time("10:30").minute == 30


def test_rac_rounds_merge_pools_seeds(tmp_path):
    """scripts/rac_rounds.py --merge: success pooled over seeds' evaluation episodes, Wilson CI."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    dirs = []
    for seed, (k, steps) in enumerate([(10, 100), (30, 140)]):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        rows = [{"seed": seed, "method": "base", "round": 0, "operator_labelled_steps": 50, "n": 100, "successes": 5,
                 "success_rate": 0.05, "ci95": [0, 0.1], "eval_recoveries_per_successful_episode": 1.0},
                {"seed": seed, "method": "rac", "round": 1, "operator_labelled_steps": steps, "n": 100, "successes": k,
                 "success_rate": k / 100, "ci95": [0, 1], "eval_recoveries_per_successful_episode": 0.5}]
        (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        dirs.append(str(d))
    out = tmp_path / "pooled"
    proc = subprocess.run([sys.executable, str(root / "scripts" / "rac_rounds.py"), "--merge", *dirs, "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    table = (out / "pooled.md").read_text()
    # rac round 1: 40 of 200 episodes, Wilson [0.150, 0.259], mean steps 120
    assert "| rac | 1 | 2 | 120 | 0.200 (40/200) | [0.15, 0.26] | s0: 0.10, s1: 0.30 |" in table, table
    assert (out / "pooled_success_vs_steps.png").stat().st_size > 0
    assert (out / "pooled_success_vs_recoveries.png").stat().st_size > 0


def test_sailor_experiment_merge_pools_seeds(tmp_path):
    """scripts/sailor_experiment.py --merge: per policy, successes summed over the seeds' runs."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    dirs = []
    for seed, k in ((0, 14), (1, 26)):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        ev = {f"DP (20 demos)/seed{seed}": {"n": 100, "successes": k, "success_rate": k / 100, "mean_return": 1.0}}
        (d / "results.json").write_text(json.dumps({"eval": ev, "auroc": {f"seed{seed}": {"auroc": 0.9}}}))
        dirs.append(str(d))
    proc = subprocess.run([sys.executable, str(root / "scripts" / "sailor_experiment.py"), "--merge", *dirs],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| DP (20 demos) | 2 | 0.200 (40/200) | [0.15, 0.26] | s0: 0.14, s1: 0.26 | 1.00 |" in proc.stdout, proc.stdout
    assert "AUROC per seed: 0.900, 0.900" in proc.stdout


def test_sailor_experiment_table_pairs_rows_on_the_same_episodes(tmp_path):
    """scripts/sailor_experiment.py --table: the paired columns count, seed by seed, the episodes only
    one side solved, and the McNemar p is the exact two-sided binomial tail (e.g. 1 vs 9: p = 0.021)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def ev(name, seed, ok):
        return {"kind": "eval", "name": name, "seed": seed, "n": len(ok), "successes": sum(ok), "success_rate": sum(ok) / len(ok),
                "mean_return": 1.0, "successes_per_episode": ok}

    base = [True] * 5 + [False] * 5
    distilled = [True] * 9 + [False]  # solves 4 more than the base, loses none
    planner = [True] * 3 + [False] * 6 + [True]  # vs distilled: +1 (the last), -6; vs base: +1, -2
    rows = [ev("DP (50 demos)", 0, base), ev("SAILOR distilled DP (50 demos)", 0, distilled),
            ev("SAILOR, planner on at test time (50 demos)", 0, planner),
            ev("DP (50 demos)", 1, [False] * 4), ev("SAILOR distilled DP (50 demos)", 1, [True] * 4),
            ev("SAILOR, planner on at test time (50 demos)", 1, [True, False, False, False])]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, str(root / "scripts" / "sailor_experiment.py"), "--table", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {ln.split(" | ")[0]: ln for ln in proc.stdout.splitlines()}
    assert lines["| SAILOR distilled DP (50 demos)"].endswith("| +8 / -0 (p 0.0078) | - |"), proc.stdout
    # vs base: seed 0 +1/-2, seed 1 +1/-0; vs distilled: seed 0 +1/-6, seed 1 +0/-3 -> 1 vs 9: p = 2 * 11 / 1024
    assert lines["| SAILOR, planner on at test time (50 demos)"].endswith("| +2 / -2 (p 1) | +1 / -9 (p 0.021) |"), proc.stdout


def test_sort_perturbed_tables_p_to_the_k_from_recorded_evaluations(tmp_path):
    """scripts/sort_perturbed.py: evaluations already in OUT.jsonl are not rerun; the table pools
    seeds, p is the policy's own K = 1 success, and the verdicts compare K > 1 against p^K."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "sp"
    rows = [{"policy": "h", "perturb": 0.02, "K": k, "seed": s, "checkpoint": "none", "successes": n_ok, "n": 100,
             "mean_length": 10.0, "failure_events_per_episode": 1.0, "recoveries_per_episode": 0.5, "eval_s": 1.0,
             "date": "2026-11-27"}
            for k, oks in ((1, (90, 80)), (2, (80, 70))) for s, n_ok in zip((0, 1), oks)]
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [sys.executable, str(root / "scripts" / "sort_perturbed.py"), "--perturb", "0.02", "--cubes", "1", "2",
           "--seeds", "0", "1", "--policy", "h=missing/s{seed}-K{K}", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    md = out.with_suffix(".md").read_text()
    # K = 1: 170/200 = 0.85 -> p^2 = 0.7225 (printed 0.722); K = 2: 150/200 = 0.75 is above it
    assert "| 1 | 0.850 [0.794, 0.893] (0.90 / 0.80), n = 200 | 0.850 | 1.00 / 0.50 / - |" in md, md
    assert "| 2 | 0.750 [0.686, 0.805] (0.80 / 0.70), n = 200 | 0.722 |" in md, md
    assert "K = 2: 0.750 vs p^K = 0.722 (above)" in md
    assert out.with_suffix(".png").stat().st_size > 0
    bad = subprocess.run(cmd[:-4] + ["--policy", "h=no-placeholders", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode != 0 and "NAME=PATTERN" in bad.stderr


def test_imitation_results_records_regenerate_the_section_table(tmp_path):
    """scripts/imitation_results.py: each finished run appends a raw record (with its label and command)
    to --records, and --table over those records prints exactly the table of the section it wrote."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = str(root / "scripts" / "imitation_results.py")
    records, out = tmp_path / "records.jsonl", tmp_path / "page.md"
    cmd = [sys.executable, script, "--tasks", "push_cube", "--policies", "bc", "--demos", "2", "--seeds", "0", "1",
           "--steps", "4", "--eval-episodes", "2", "--num-envs", "1", "--label", "tiny", "--workdir", str(tmp_path / "w"),
           "--out", str(out), "--records", str(records), "--extra", "train.val_ratio=0", "train.log_every=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(ln) for ln in records.read_text().splitlines()]
    assert [(r["seed"], r["label"], r["n"]) for r in rows] == [(0, "tiny", 2), (1, "tiny", 2)]
    assert "--label tiny" in rows[0]["command"] and "train.steps=4" in rows[0]["train_overrides"]
    table = subprocess.run([sys.executable, script, "--table", str(records), "--label", "tiny"],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert table.stdout.strip() in out.read_text() and "| push_cube | bc | 2 | 4 |" in table.stdout
    missing = subprocess.run([sys.executable, script, "--table", str(records), "--label", "other"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no records with label 'other'" in missing.stderr


def test_rl_reweighting_table_pairs_samplers_by_training_seed(tmp_path):
    """scripts/rl_reweighting.py table: besides the pooled Wilson table, each sampler is compared with
    uniform seed by seed on the mean of the last 3 evaluations (a seed is the unit of replication)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def rec(sampler, seed, late):
        curve = [[0, 0.0, 1.0], [1000, 0.5, 1.0]] + [[2000 + i, v, 1.0] for i, v in enumerate(late)]
        return {"task": "push_cube", "algo": "td3bc", "ratio": 0.01, "sampler": sampler, "seed": seed, "steps": 5000,
                "eval_episodes": 50, "final_success": late[-1], "final_successes": int(late[-1] * 50), "final_return": 1.0,
                "curve": curve, "wall_s": 100.0, "loadavg_before": ["1.0", "1.0", "1.0"]}

    rows = [rec("uniform", 0, [0.10, 0.10, 0.10]), rec("rw", 0, [0.20, 0.20, 0.26]),
            rec("uniform", 1, [0.30, 0.30, 0.30]), rec("rw", 1, [0.20, 0.20, 0.20]), rec("rw", 2, [0.9, 0.9, 0.9]),
            {**rec("uniform", 0, [0.0, 0.0, 0.0]), "bad_pools": ["random"]}]  # another mix: a row of its own
    out = tmp_path / "docs" / "results" / "offline_to_online"
    out.mkdir(parents=True)
    (out / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, str(root / "scripts" / "rl_reweighting.py"), "table", "--tag", "t"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # seed 2 has no uniform run: left out of the pairing; s0: 0.22 - 0.10, s1: 0.20 - 0.30
    assert "| push_cube | td3bc | 1% | rw | s0: +0.120, s1: -0.100 | +0.010 | 1 of 2 |" in proc.stdout, proc.stdout
    assert "| push_cube (bad: random) | td3bc | 1% | 0/50 = 0.00" in proc.stdout, proc.stdout
