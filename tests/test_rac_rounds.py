"""scripts/rac_rounds.py end to end at toy size: the demo-scaling stage, fine-tuning rounds with
continual evaluation for every method, records appended per unit, a rerun that skips finished
units and redoes a cut-off one, and the tables/plots regenerated from the records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--task", "pick_place", "--perturb", "0.05", "--seeds", "0", "--demo-counts", "2", "4", "--policy", "bc",
       "--train-steps", "20", "--eval-episodes", "4", "--num-envs", "2", "policy.hidden_dims=[16,16]", "train.batch_size=16"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "rac_rounds.py"), *args], capture_output=True, text=True,
                          timeout=900, env={"OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl", "WANDB_MODE": "disabled",
                                            "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})


def records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines() if x.strip()]


@pytest.mark.slow
def test_scaling_then_rounds_resume_and_tables(tmp_path):
    out = tmp_path / "run"
    p = run("--stage", "scaling", "--out", str(out), *TOY)
    assert p.returncode == 0, p.stderr[-3000:]
    rs = records(out)
    assert [(r["kind"], r["demos"]) for r in rs] == [("scaling", 2), ("scaling", 4)]
    assert all(r["n"] == 4 and r["recoveries_per_episode"] is not None for r in rs)
    rounds = ["--stage", "rounds", "--out", str(out), "--base-demos", "4", "--rounds", "1", "--budget", "30",
              "--max-episodes", "3", "--finetune-steps", "10", "--continual-every", "5", "--continual-episodes", "2",
              "--stall-steps", "5", *TOY]
    p = run(*rounds, "--methods", "rac", "hg_dagger", "demos")
    assert p.returncode == 0, p.stderr[-3000:]
    rs = records(out)
    rd = [r for r in rs if r["kind"] == "round"]
    assert [r["method"] for r in rd] == ["rac", "hg_dagger", "demos"]
    for r in rd:
        assert [h["step"] for h in r["continual"]["history"]] == [0, 5, 10]
        assert {"min_acc", "wc_acc"} <= set(r["continual"]["metrics"])
        assert json.loads((out / "seed0" / f"{r['method']}_r1" / "run" / "run.json").read_text())["init_from"].endswith(
            "scale_n4/policy") or r["method"] == "demos"
    demos = next(r for r in rd if r["method"] == "demos")
    assert demos["round_collection"]["operator_steps"] >= 30 and demos["data_sources"]["policy"] == 0
    hg = next(r for r in rd if r["method"] == "hg_dagger")
    assert hg["round_collection"]["recovery_steps"] == 0
    # every method collects on the same scenes and spends the round's budget (at most one episode over)
    assert len({r["round_collection"]["collection_seed"] for r in rd}) == 1
    assert all(r["round_collection"]["round_budget"] == 30 and r["round_collection"]["operator_steps"] >= 30 for r in rd)
    assert hg["mixture_shares"]["intervention"] > 0 and abs(sum(hg["mixture_shares"].values()) - 1) < 1e-6
    # a rerun skips finished units; a cut-off unit (collection done, record missing) is finished
    cut = [x for x in (out / "records.jsonl").read_text().splitlines() if x.strip()]
    (out / "records.jsonl").write_text("\n".join(cut[:-1]) + "\n")
    p = run(*rounds, "--methods", "rac", "hg_dagger", "demos")
    assert p.returncode == 0, p.stderr[-3000:]
    again = records(out)
    assert len(again) == len(rs) and again[-1]["method"] == "demos" and again[-1]["successes"] == demos["successes"]
    # its step checkpoints were evaluated and deleted before the cut: the curve comes back from continual.jsonl
    assert again[-1]["continual"]["history"] == demos["continual"]["history"]
    # the control fine-tunes the base on its own demos: nothing collected, no labelled step added
    p = run(*rounds, "--methods", "no_new_data")
    assert p.returncode == 0, p.stderr[-3000:]
    again = records(out)
    control = again[-1]
    assert control["method"] == "no_new_data" and control["round_collection"]["operator_steps"] == 0
    assert control["operator_labelled_steps"] == rs[1]["demo_steps"] and control["data_sources"]["policy"] == 0
    # records written before evaluations kept per-episode outcomes: --stage episodes re-evaluates the
    # recorded checkpoints on the same episodes, checks the count and appends the outcomes
    assert all(len(r["successes_per_episode"]) == r["n"] for r in again if r["kind"] in ("scaling", "round"))
    old = [{k: v for k, v in r.items() if k != "successes_per_episode"} for r in again]
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    p = run("--stage", "episodes", "--out", str(out), *TOY)
    assert p.returncode == 0, p.stderr[-3000:]
    eps = [r for r in records(out) if r["kind"] == "episodes"]
    assert len(eps) == 6 and all(r["matches_record"] for r in eps), p.stdout
    by = {(r["of"], r.get("demos"), r.get("method")): r["successes_per_episode"] for r in eps}
    assert by[("round", None, "hg_dagger")] == next(r for r in again if r.get("method") == "hg_dagger")["successes_per_episode"]
    # the ablation stage: RaC's round-1 recordings without recovery / without robot steps, from the base
    p = run(*[a for a in rounds if a != "--stage" and a != "rounds"], "--stage", "ablation")
    assert p.returncode == 0, p.stderr[-3000:]
    abl = [r for r in records(out) if r["kind"] == "ablation"]
    assert sorted(r["mix"] for r in abl) == ["corrections", "hg_dagger"] and all(r["n"] == 4 for r in abl)
    assert next(r for r in abl if r["mix"] == "corrections")["mixture_shares"]["robot"] == 0
    # tables and plots from the records
    p = run("--stage", "table", "--from", str(out), "--out", str(tmp_path / "tables"))
    assert p.returncode == 0, p.stderr[-3000:]
    text = (tmp_path / "tables" / "tables.md").read_text()
    assert "### Demo-scaling curve" in text and "| 4 | rac | 1 | 1 |" in text
    rac_row = next(ln for ln in text.splitlines() if ln.startswith("| 4 | rac | 1 |"))
    assert rac_row.count("(p ") == 3, rac_row  # paired with the base, the demos and the no-new-data control
    assert "| 4 | demos + corrections | 1 |" in text
    for png in ("demo_scaling.png", "success_vs_operator_steps.png", "success_vs_true_recoveries.png",
                "success_vs_recoveries_across_policies.png"):
        assert (tmp_path / "tables" / png).stat().st_size > 0


def test_bad_arguments_fail_with_exit_code_2(tmp_path):
    p = run("--stage", "rounds", "--out", str(tmp_path / "x"))
    assert p.returncode == 2 and "--base-demos" in p.stderr
    p = run("--stage", "table", "--from", str(tmp_path / "missing"), "--out", str(tmp_path / "t"))
    assert p.returncode == 2 and "not found" in p.stderr
